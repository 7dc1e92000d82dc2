//! Scenario: a hostile previous boot. The running system (untrusted) left
//! symlinks in /persist where ember expects a file and a directory: one to
//! /etc/shadow, one out of the persist root into /home. At the next boot
//! ember refuses exactly those entries with a clear message, binds the
//! rest, boots on, and no file outside the persist root is touched.

mod common;

use common::disk_shell;
use common::ember::{BOOT_TIMEOUT, boot, build_initrd, reference_config};

const PLANT: &str = r#"
mkdir -p root/etc persist/etc persist/var/lib
printf 'root:$6$secret:19000:0:99999:7:::\n' > root/etc/shadow
chmod 0640 root/etc/shadow
echo "alice's notes" > home/notes
ln -s /etc/shadow persist/etc/machine-id
ln -s ../../../home persist/var/lib/systemd
"#;

const REPORT: &str = r#"
echo "SHADOW $(stat -c '%a %u %g %s' root/etc/shadow) $(md5sum root/etc/shadow | cut -d' ' -f1)"
echo "HOME $(ls -A home | tr '\n' ' ')"
echo "NOTES $(md5sum home/notes | cut -d' ' -f1)"
echo "LINK1 $(readlink persist/etc/machine-id)"
echo "LINK2 $(readlink persist/var/lib/systemd)"
"#;

#[test]
fn planted_symlinks_are_refused_and_nothing_outside_is_touched() {
    let a = common::assets();
    let built = build_initrd(&a, "persist-hostile", &reference_config(&a));
    let disk = common::overlay(&a.base_disk, "persist-hostile");
    let before = disk_shell::run(
        &a,
        "persist-hostile-plant",
        &disk,
        &format!("{PLANT}\n{REPORT}"),
    );

    // Phase 2 only reads: the checker stands for the next system's init.
    let mut vm = boot(
        &a,
        "persist-hostile",
        &built.initrd,
        &disk,
        "checker.phase=2 checker.expect_id=0",
    );
    vm.wait_exit(BOOT_TIMEOUT)
        .expect("the boot goes on to the real init");
    let t = vm.transcript();
    assert!(
        t.contains("persist[0].files[0]: not persisting /etc/machine-id: source refused: /sysroot/persist/etc/machine-id is a symbolic link; refusing to follow it"),
        "{t}"
    );
    assert!(
        t.contains("persist[0].directories[0]: not persisting /var/lib/systemd: source refused: /sysroot/persist/var/lib/systemd is a symbolic link; refusing to follow it"),
        "{t}"
    );
    assert!(
        t.contains("2 persisted path(s) refused"),
        "the summary counts them: {t}"
    );
    assert!(
        t.contains("EMBER-CHECK ok mount-persist"),
        "the boot continued: {t}"
    );
    drop(vm);

    let after = disk_shell::run(&a, "persist-hostile-inspect", &disk, REPORT);
    let lines = |s: &str| -> Vec<String> {
        s.lines()
            .map(str::trim)
            .filter(|l| {
                ["SHADOW", "HOME", "NOTES", "LINK1", "LINK2"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        lines(&before),
        lines(&after),
        "nothing outside the persist root changed"
    );
    assert_eq!(lines(&after).len(), 5);
}
