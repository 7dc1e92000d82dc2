//! The command-line tools without a VM: `ember check` and `ember-initrd`
//! refuse bad configs with the field named and the documented exit codes,
//! and write nothing.

use std::path::PathBuf;
use std::process::Command;

fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

fn reference() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/reference.toml"
    ))
    .expect("reference config")
}

#[test]
fn check_prints_the_plan_and_the_var_log_warning() {
    let o = ember()
        .args([
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/reference.toml"),
        ])
        .output()
        .expect("run ember");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("unlock LABEL=luks as /dev/mapper/cryptroot"),
        "{out}"
    );
    assert!(
        out.contains("bind file /sysroot/persist/etc/machine-id -> /sysroot/etc/machine-id"),
        "{out}"
    );
    assert!(
        out.contains(
            "warning: persist[0].directories[1]: /var/log already lives on subvolume `log`"
        ),
        "{out}"
    );
    assert!(
        !out.contains("-> /sysroot/var/log"),
        "no bind over /var/log: {out}"
    );
}

#[test]
fn check_refuses_with_the_field_named() {
    let cases = [
        (
            "unknown.toml",
            reference().replace("allow_discards", "allow_discard"),
            "luks[0].allow_discard: unknown field",
        ),
        (
            "duplicate.toml",
            reference().replace("mount_point = \"/nix\"", "mount_point = \"/home\""),
            "btrfs[0].subvolumes[2].mount_point: /home is already the mount point of btrfs[0].subvolumes[1]",
        ),
        (
            "outside.toml",
            reference().replace("\"/etc/machine-id\"", "\"/etc/../../etc/shadow\""),
            "persist[0].files[0]",
        ),
        (
            "no-parent.toml",
            reference().replace("mount_point = \"/\"\n", "mount_point = \"/old-root\"\n"),
            "/home has no mounted parent",
        ),
    ];
    for (name, text, expected) in cases {
        let path = scratch(name);
        std::fs::write(&path, text).expect("write config");
        let o = ember().arg("check").arg(&path).output().expect("run ember");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in {err}"
        );
    }
}

#[test]
fn check_usage_errors_exit_2() {
    let o = ember().args(["check"]).output().expect("run ember");
    assert_eq!(o.status.code(), Some(2));
    let o = ember().args(["frobnicate"]).output().expect("run ember");
    assert_eq!(o.status.code(), Some(2));
    let o = ember()
        .args(["check", "/nonexistent/config.toml"])
        .output()
        .expect("run ember");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot read config /nonexistent/config.toml")
    );
}

#[test]
fn readme_config_example_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let start = readme
        .find("```toml\n")
        .expect("a toml block in the README")
        + "```toml\n".len();
    let end = start + readme[start..].find("```").expect("closed block");
    let path = scratch("readme.toml");
    std::fs::write(&path, &readme[start..end]).expect("write");
    let o = ember().arg("check").arg(&path).output().expect("run ember");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn initrd_builder_refuses_a_bad_config_and_writes_nothing() {
    let builder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/ember-initrd");
    let builder = if builder.is_file() {
        builder
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/ember-initrd")
    };
    assert!(
        builder.is_file(),
        "build ember-initrd first (scripts/test does)"
    );
    let config = scratch("bad-for-builder.toml");
    std::fs::write(
        &config,
        reference().replace("name = \"cryptroot\"", "name = \"crypt/root\""),
    )
    .expect("write");
    let out = scratch("never-written.cpio.gz");
    let _ = std::fs::remove_file(&out);
    // The builder with this config and the (dynamically linked) test ember.
    let build = |config: &std::path::Path| {
        Command::new(&builder)
            .arg("--config")
            .arg(config)
            .args(["--ember", env!("CARGO_BIN_EXE_ember"), "--output"])
            .arg(&out)
            .output()
            .expect("run ember-initrd")
    };
    let o = build(&config);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("luks[0].name: `crypt/root` is not a valid device-mapper name"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written for a bad config");

    // A dynamically linked ember is refused too: it could not run as /init.
    std::fs::write(
        &config,
        reference().replace("keyfile = \"/etc/ember/keys/cryptroot.key\"\n", ""),
    )
    .expect("write");
    let o = build(&config);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("dynamically linked"), "{err}");
    assert!(!out.exists());
}

/// `ember check CONFIG | head -1`: when the reader is gone, ember ends like
/// other tools (SIGPIPE), without a panic message on the terminal.
#[test]
fn a_closed_pipe_ends_ember_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (read_end, write_end) = rustix::pipe::pipe().expect("pipe");
    drop(read_end);
    let o = ember()
        .args(["check", "examples/reference.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run ember");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        o.status
    );
}

/// Every subcommand parses its arguments the same way: values after the
/// option or after `=`, usage errors that name the argument, exit code 2.
#[test]
fn arguments_are_parsed_alike_everywhere() {
    for (args, message) in [
        (&["check"][..], "ember check needs a CONFIG path"),
        (&["check", "a", "b"][..], "check: unexpected argument `b`"),
        (
            &["check", "--cmdline"][..],
            "check: --cmdline needs a value",
        ),
        (&["diff", "--bogus"][..], "diff: unknown argument `--bogus`"),
        (
            &["status", "--sysroot"][..],
            "status: --sysroot needs a path",
        ),
        (
            &["mount", "--dry-run"][..],
            "mount: unknown argument `--dry-run`",
        ),
        (
            &["unlock", "--ask-password=bad"][..],
            "--ask-password=bad: expected auto, console or agent",
        ),
    ] {
        let o = ember().args(args).output().expect("run ember");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    let o = ember()
        .args([
            "check",
            "--cmdline=ember.rollback=0",
            "examples/reference.toml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run ember");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}
