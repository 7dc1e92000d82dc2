//! ember-specific helpers for the VM scenarios: the static binary, the
//! initrd builder, scenario configs derived from the reference one, and a
//! boot with ember as /init on an overlay of the reference disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Assets, Vm, VmSpec, repo_dir, work_dir};

/// `target/static/ember`, built by `scripts/build-static` (the README's test
/// command builds it first; building it from inside `cargo test` would
/// contend for cargo's lock).
pub fn static_ember() -> PathBuf {
    let p = repo_dir().join("target/static/ember");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build-static (scripts/test does)",
        p.display()
    );
    p
}

/// `target/release/ember-initrd`.
pub fn initrd_builder() -> PathBuf {
    let p = repo_dir().join("target/release/ember-initrd");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --release -p ember-initrd` (scripts/test does)",
        p.display()
    );
    p
}

/// The reference config (examples/reference.toml) with the checker in the
/// /nix subvolume as the real init.
pub fn reference_config(a: &Assets) -> String {
    let text = std::fs::read_to_string(repo_dir().join("examples/reference.toml"))
        .expect("read examples/reference.toml");
    text.lines()
        .map(|l| {
            if l.starts_with("init = ") {
                format!("init = \"{}\"", a.checker_init())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The reference config, unlocking with a typed passphrase instead of the keyfile.
pub fn passphrase_config(a: &Assets) -> String {
    reference_config(a).replace("keyfile = \"/etc/ember/keys/cryptroot.key\"\n", "")
}

pub struct Built {
    pub initrd: PathBuf,
    /// What ember-initrd printed (warnings go to stderr).
    pub stdout: String,
    pub stderr: String,
}

/// Builds `<target>/vm-tests/<name>.initrd.gz` from a config text (JSON if
/// it starts with `{`, else TOML); includes the reference keyfile when the
/// config names it. Panics if the build fails.
pub fn build_initrd(a: &Assets, name: &str, config: &str) -> Built {
    build_initrd_with(a, name, config, &[])
}

/// [`build_initrd`] with extra `ember-initrd` arguments (`--busybox /bin/busybox`).
pub fn build_initrd_with(a: &Assets, name: &str, config: &str, extra: &[&str]) -> Built {
    build_initrd_from(a, name, config, &a.modules_dir, extra)
}

/// [`build_initrd`] from another kernel module tree.
pub fn build_initrd_with_modules(a: &Assets, name: &str, config: &str, modules: &Path) -> Built {
    build_initrd_from(a, name, config, modules, &[])
}

fn build_initrd_from(
    a: &Assets,
    name: &str,
    config: &str,
    modules: &Path,
    extra: &[&str],
) -> Built {
    let dir = work_dir();
    let ext = if config.trim_start().starts_with('{') {
        "json"
    } else {
        "toml"
    };
    let config_path = dir.join(format!("{name}.{ext}"));
    std::fs::write(&config_path, config).expect("write scenario config");
    let out = dir.join(format!("{name}.initrd.gz"));
    let mut cmd = Command::new(initrd_builder());
    cmd.arg("--config")
        .arg(&config_path)
        .arg("--ember")
        .arg(static_ember())
        .arg("--kernel-modules")
        .arg(modules)
        .arg("--output")
        .arg(&out);
    if config.contains("/etc/ember/keys/cryptroot.key") {
        cmd.arg("--keyfile").arg(format!(
            "{}:/etc/ember/keys/cryptroot.key",
            a.keyfile.display()
        ));
    }
    cmd.args(extra);
    let o = cmd.output().expect("run ember-initrd");
    let built = Built {
        initrd: out,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        o.status.success(),
        "ember-initrd failed for {name}:\n{}{}",
        built.stdout,
        built.stderr
    );
    built
}

/// Boots `initrd` with ember as /init on `disk`.
pub fn boot(a: &Assets, name: &str, initrd: &Path, disk: &Path, append: &str) -> Vm {
    Vm::boot(VmSpec {
        kernel: a.kernel.clone(),
        initrd: initrd.to_path_buf(),
        disks: vec![disk.to_path_buf()],
        // loglevel=4: the kernel's own chatter stays off the console; ember
        // prints its info lines itself and everything goes to /dev/kmsg.
        append: format!("loglevel=4 {append}"),
        memory_mb: 1024,
        ..VmSpec::new(name)
    })
}

/// Generous limit for one boot under TCG (about 7 s on an idle machine; CI
/// runs two at once).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The reference config with a rollback block for the root subvolume.
pub fn rollback_config(a: &Assets, block: &str) -> String {
    reference_config(a).replacen(
        "[[btrfs.subvolumes]]\nsubvolume = \"root\"",
        &format!("[btrfs.rollback]\n{block}\n\n[[btrfs.subvolumes]]\nsubvolume = \"root\""),
        1,
    )
}

/// The usual block: blank strategy from root-blank on the `nixos` filesystem.
pub const BLANK_ROLLBACK: &str = "subvolume = \"root\"\nstrategy = \"blank\"\nblank_snapshot = \"root-blank\"\nfilesystem = \"LABEL=nixos\"";

/// Appends a second archive that replaces /etc/ember/config.json: how a
/// test gets a config the builder would refuse into an initrd. The kernel
/// unpacks concatenated archives in order (later entries win); an
/// uncompressed archive must start 4-byte aligned.
pub fn with_config_override(initrd: &Path, name: &str, config_json: &str) -> PathBuf {
    with_overrides(
        initrd,
        name,
        &[("etc/ember/config.json", config_json.as_bytes())],
    )
}

/// Boots `initrd` with ember as /init on several disks (vda, vdb, ...).
pub fn boot_disks(a: &Assets, name: &str, initrd: &Path, disks: &[PathBuf], append: &str) -> Vm {
    Vm::boot(VmSpec {
        kernel: a.kernel.clone(),
        initrd: initrd.to_path_buf(),
        disks: disks.to_vec(),
        append: format!("loglevel=4 {append}"),
        memory_mb: 1024,
        ..VmSpec::new(name)
    })
}

/// One file out of a built (gzip'd newc) initrd, e.g. `etc/ember/modules.json`.
pub fn initrd_file(initrd: &Path, path: &str) -> Vec<u8> {
    let o = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$0\" | cpio -i --quiet --to-stdout \"$1\"")
        .arg(initrd)
        .arg(path)
        .output()
        .expect("run gzip | cpio");
    assert!(
        o.status.success() && !o.stdout.is_empty(),
        "{path} not in {}: {}",
        initrd.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Like [`with_config_override`], for any files: `(path in the initrd, contents)`.
pub fn with_overrides(initrd: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let mut overlay = super::Initramfs::new(&format!("{name}-override"));
    for (path, bytes) in files {
        overlay.bytes(path, bytes, 0o644);
    }
    let mut image = std::fs::read(initrd).expect("read initrd");
    while !image.len().is_multiple_of(4) {
        image.push(0);
    }
    image.extend(std::fs::read(overlay.build()).expect("read override archive"));
    let out = work_dir().join(format!("{name}.combined.cpio"));
    std::fs::write(&out, image).expect("write combined initrd");
    out
}

/// A config text (TOML) as the JSON the initrd carries, without the
/// builder's checks (a keyfile the initrd lacks, ...).
pub fn config_json(toml: &str) -> String {
    let config = ember::config::parse(toml, ember::config::Syntax::Toml, "scenario")
        .unwrap_or_else(|e| panic!("scenario config: {e}"));
    serde_json::to_string_pretty(&config).expect("serialise config")
}

/// At the reference volume's passphrase prompt: types `wrong`, waits for
/// ember to report it, then types `right` at the second prompt.
pub fn type_wrong_then_right_passphrase(vm: &mut Vm, wrong: &str, right: &str) {
    vm.wait_for(
        "Passphrase for cryptroot (LABEL=luks on /dev/vda2): ",
        BOOT_TIMEOUT,
    )
    .expect("first prompt");
    vm.send_line(wrong);
    vm.wait_for(
        "wrong passphrase for cryptroot (attempt 1 of 3)",
        BOOT_TIMEOUT,
    )
    .expect("the wrong passphrase is reported");
    vm.wait_for("Passphrase for cryptroot", BOOT_TIMEOUT)
        .expect("second prompt");
    vm.send_line(right);
}
