//! Scenario: impermanence-style entries, run with `ember persist` against a
//! new root mounted by hand (as a rescue shell or a systemd unit would):
//! missing sources are created with the configured owner and mode (and the
//! parent policy: a user's home 0700 and owned by the user), missing
//! targets likewise, a file target as a file; the symlink method; per-entry
//! `ro`; `x-gvfs-hide` recorded for libmount; /etc/machine-id created as
//! `uninitialized` for systemd's first boot; a non-empty target reported;
//! `--dry-run` states; and a second run changes nothing (no stacked mounts).

mod common;

use common::disk_shell;
use common::ember::{reference_config, static_ember};

fn config(a: &common::Assets) -> String {
    // /home on the root subvolume (impermanent homes), so user entries bind.
    let base = reference_config(a).replace(
        "[[btrfs.subvolumes]]\nsubvolume = \"home\"\nmount_point = \"/home\"\n\n",
        "",
    );
    let persist_at = base.find("[[persist]]").expect("persist section");
    format!(
        "{}{}",
        &base[..persist_at],
        r#"[[persist]]
root = "/persist"
options = ["x-gvfs-hide"]
files = [
  "/etc/machine-id",
  { path = "/etc/ssh/ssh_host_ed25519_key", mode = "0600" },
  { path = "/etc/adjtime", method = "symlink" },
]
directories = [
  "/var/lib/systemd",
  { path = "/var/lib/private", mode = "0700" },
  { path = "/srv/data", user = 2000, group = 2000, mode = "0750", options = ["ro"] },
]

[persist.users.alice]
uid = 1000
gid = 100
directories = [".ssh", { path = ".local/share/keyrings", mode = "0700" }]
files = [".bash_history"]
"#
    )
}

const SCRIPT: &str = r#"
mkdir -p /sysroot /run/mount
mount -o subvol=root,noatime /dev/mapper/cryptroot /sysroot
mkdir -p /sysroot/persist /sysroot/var/lib/systemd
mount -o subvol=persist,noatime /dev/mapper/cryptroot /sysroot/persist
echo "left by the old root" > /sysroot/var/lib/systemd/stale
echo DRY1-BEGIN
/bin/ember persist --config /cfg.toml --sysroot /sysroot --dry-run || echo "dry-run exit $?"
echo DRY1-END
echo RUN1-BEGIN
/bin/ember persist --config /cfg.toml --sysroot /sysroot 2>&1; echo "exit $?"
echo RUN1-END
echo RUN2-BEGIN
/bin/ember persist --config /cfg.toml --sysroot /sysroot 2>&1; echo "exit $?"
echo RUN2-END
echo DRY2-BEGIN
/bin/ember persist --config /cfg.toml --sysroot /sysroot --dry-run; echo "exit $?"
echo DRY2-END
for t in /sysroot/etc/machine-id /sysroot/var/lib/systemd /sysroot/home/alice/.ssh /sysroot/srv/data; do
  echo "MOUNTS $t $(grep -c " $t " /proc/self/mountinfo)"
done
for p in persist/etc/machine-id persist/etc/ssh/ssh_host_ed25519_key persist/var/lib/private persist/srv/data \
         persist/home persist/home/alice persist/home/alice/.ssh persist/home/alice/.local persist/home/alice/.local/share/keyrings \
         persist/home/alice/.bash_history home/alice home/alice/.ssh etc/ssh/ssh_host_ed25519_key; do
  echo "STAT $p $(stat -c '%a %u %g %F' /sysroot/$p 2>&1 | sed 's/regular empty file/regular file/')"
done
echo "LINK etc/adjtime $(readlink /sysroot/etc/adjtime)"
echo "MACHINE-ID $(cat /sysroot/persist/etc/machine-id)"
touch /sysroot/srv/data/x 2>/dev/null && echo "RO writable" || echo "RO read-only"
grep -q 'TARGET=/etc/machine-id ROOT=/persist/etc/machine-id OPTS=x-gvfs-hide' /run/mount/utab && echo "UTAB ok" || { echo "UTAB missing"; cat /run/mount/utab; }
umount -R /sysroot 2>/dev/null || { for m in $(grep ' /sysroot' /proc/self/mountinfo | cut -d' ' -f5 | sort -r); do umount $m; done; }
"#;

#[test]
fn entries_are_created_bound_linked_and_idempotent() {
    let a = common::assets();
    let cfg = common::work_dir().join("persist-entries.toml");
    std::fs::write(&cfg, config(&a)).expect("write config");
    let check = std::process::Command::new(static_ember())
        .arg("check")
        .arg(&cfg)
        .output()
        .expect("ember check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let disk = common::overlay(&a.base_disk, "persist-entries");
    let out = disk_shell::run_with(
        &a,
        "persist-entries",
        &disk,
        SCRIPT,
        &[(&static_ember(), "/bin/ember"), (&cfg, "/cfg.toml")],
    );
    let section = |name: &str| -> String {
        let b = format!("{name}-BEGIN");
        let e = format!("{name}-END");
        let s = out.find(&b).map(|i| i + b.len()).unwrap_or(0);
        out[s..out.find(&e).unwrap_or(out.len())].to_string()
    };
    let line = |prefix: &str| -> String {
        out.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in:\n{out}"))
            .trim()
            .to_string()
    };

    let dry1 = section("DRY1");
    assert!(dry1.contains("persist[0].files[0]: file /persist/etc/machine-id -> /etc/machine-id (bind): missing (source and target would be created)"), "{dry1}");
    assert!(
        dry1.contains(
            "persist[0].files[2]: file /persist/etc/adjtime -> /etc/adjtime (symlink): missing"
        ),
        "{dry1}"
    );

    let run1 = section("RUN1");
    assert!(run1.contains("exit 0"), "{run1}");
    assert!(run1.contains("/sysroot/var/lib/systemd already holds 1 entries in the new root, which the bind mount hides"), "{run1}");
    assert!(
        run1.contains("linked file /etc/adjtime to /persist/etc/adjtime"),
        "{run1}"
    );

    let run2 = section("RUN2");
    assert!(run2.contains("exit 0"), "{run2}");
    assert!(
        run2.contains("/etc/machine-id is already bound from /persist/etc/machine-id"),
        "{run2}"
    );
    assert!(
        run2.contains("/etc/adjtime already links to /persist/etc/adjtime"),
        "{run2}"
    );
    assert!(
        !run2.contains("hides"),
        "second run reports nothing new: {run2}"
    );

    let dry2 = section("DRY2");
    assert!(dry2.contains("(bind): mounted"), "{dry2}");
    assert!(dry2.contains("(symlink): linked"), "{dry2}");
    assert!(dry2.contains("exit 0"), "{dry2}");

    for t in [
        "/sysroot/etc/machine-id",
        "/sysroot/var/lib/systemd",
        "/sysroot/home/alice/.ssh",
        "/sysroot/srv/data",
    ] {
        assert_eq!(
            line(&format!("MOUNTS {t} ")),
            format!("MOUNTS {t} 1"),
            "exactly one mount, never stacked"
        );
    }
    let expect_stat = [
        ("persist/etc/machine-id", "644 0 0 regular file"),
        (
            "persist/etc/ssh/ssh_host_ed25519_key",
            "600 0 0 regular file",
        ),
        ("persist/var/lib/private", "700 0 0 directory"),
        ("persist/srv/data", "750 2000 2000 directory"),
        ("persist/home", "755 0 0 directory"),
        ("persist/home/alice", "700 1000 100 directory"),
        ("persist/home/alice/.ssh", "755 1000 100 directory"),
        ("persist/home/alice/.local", "755 1000 100 directory"),
        (
            "persist/home/alice/.local/share/keyrings",
            "700 1000 100 directory",
        ),
        (
            "persist/home/alice/.bash_history",
            "644 1000 100 regular file",
        ),
        ("home/alice", "700 1000 100 directory"),
        ("etc/ssh/ssh_host_ed25519_key", "600 0 0 regular file"),
    ];
    for (p, want) in expect_stat {
        assert_eq!(line(&format!("STAT {p} ")), format!("STAT {p} {want}"));
    }
    assert_eq!(line("LINK "), "LINK etc/adjtime /persist/etc/adjtime");
    assert_eq!(line("MACHINE-ID"), "MACHINE-ID uninitialized");
    assert_eq!(line("RO "), "RO read-only");
    assert_eq!(line("UTAB "), "UTAB ok");
}
