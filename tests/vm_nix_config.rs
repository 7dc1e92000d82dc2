//! Scenario: the config the NixOS module generates boots. The reference
//! layout's `boot.initrd.ember` options (nixos-module/eval/reference.nix:
//! the reference layout with its keyfile) go through
//! nixos-module/lib/to-config.nix, evaluated with Debian's `nix-instantiate`;
//! the JSON it prints is built into an initrd by ember-initrd and boots the
//! reference disk with ember as /init. The checker (the real init, in /nix)
//! sees every subvolume mounted and /etc/machine-id bound from /persist.
//!
//! In NixOS ember runs as systemd stage-1 units rather than as /init; this
//! proves that what the module writes into the initrd is a config ember
//! boots the reference disk with.

mod common;

use std::process::Command;

use common::ember::{BOOT_TIMEOUT, boot, build_initrd};

/// to-config.nix applied to the reference layout's options, with `init`.
fn nix_generated_config(init: &str) -> String {
    let repo = common::repo_dir();
    let out = Command::new("nix-instantiate")
        .args(["--store", "dummy://", "--eval", "--strict", "--json", "-E"])
        .arg(
            "{ repo, init }: import (repo + \"/nixos-module/lib/to-config.nix\") \
             (import (repo + \"/nixos-module/eval/reference.nix\") // { inherit init; })",
        )
        .args(["--argstr", "repo"])
        .arg(&repo)
        .args(["--argstr", "init", init])
        .env_remove("NIX_PATH")
        .env("XDG_CACHE_HOME", common::work_dir().join("nix-cache"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run nix-instantiate ({e}): install Debian's nix-bin (scripts/setup-host does)")
        });
    assert!(
        out.status.success(),
        "nix-instantiate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 JSON")
}

#[test]
fn nix_generated_reference_config_boots() {
    let a = common::assets();
    let config = nix_generated_config(a.checker_init());
    assert!(
        config.starts_with('{') && config.contains("/etc/ember/keys/cryptroot.key"),
        "unexpected config from to-config.nix: {config}"
    );
    let built = build_initrd(&a, "nix-config", &config);
    let disk = common::overlay(&a.base_disk, "nix-config");

    let mut vm = boot(
        &a,
        "nix-config",
        &built.initrd,
        &disk,
        &format!("init={} checker.phase=1", a.checker_init()),
    );
    vm.wait_exit(BOOT_TIMEOUT)
        .expect("the Nix-generated config boots to the checker, which powers off");
    let transcript = vm.transcript();
    assert!(
        transcript.contains("ember: unlocked LABEL=luks (/dev/vda2) as /dev/mapper/cryptroot"),
        "{transcript}"
    );
    common::assert_checks_passed(
        &transcript,
        &[
            "mount-root",
            "mount-home",
            "mount-nix",
            "mount-persist",
            "mount-var-log",
            "bind-machine-id",
        ],
    );
}
