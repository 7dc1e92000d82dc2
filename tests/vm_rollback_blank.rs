//! Scenario: the blank strategy. Markers are planted in the root, /home and
//! /persist, and a nested subvolume inside the root (as systemd-machined
//! makes). After one ember boot, the root marker and the nested subvolume
//! are gone, /home and /persist are untouched, no temporary name is left,
//! and the blank snapshot is still read-only.

mod common;

use common::disk_shell::{self, PLANT_MARKERS, REPORT_STATE};
use common::ember::{BLANK_ROLLBACK, BOOT_TIMEOUT, boot, build_initrd, rollback_config};

#[test]
fn blank_rollback_wipes_root_and_nested_subvolumes_only() {
    let a = common::assets();
    let built = build_initrd(&a, "rollback-blank", &rollback_config(&a, BLANK_ROLLBACK));
    let disk = common::overlay(&a.base_disk, "rollback-blank");
    let before = disk_shell::state(&disk_shell::run(
        &a,
        "rollback-blank-plant",
        &disk,
        &format!("{PLANT_MARKERS}\n{REPORT_STATE}"),
    ));
    assert_eq!(before["root-marker"], "present");
    assert_eq!(before["nested"], "present");

    let mut vm = boot(
        &a,
        "rollback-blank",
        &built.initrd,
        &disk,
        "checker.phase=1",
    );
    vm.wait_exit(BOOT_TIMEOUT).expect("boots to the checker");
    let t = vm.transcript();
    assert!(
        t.contains(
            "rollback step 4/4: delete subvolume root.ember-old and everything nested in it"
        ),
        "{t}"
    );
    common::assert_checks_passed(
        &t,
        &[
            "mount-root",
            "mount-home",
            "mount-persist",
            "bind-machine-id",
        ],
    );

    let after = disk_shell::state(&disk_shell::run(
        &a,
        "rollback-blank-inspect",
        &disk,
        REPORT_STATE,
    ));
    disk_shell::assert_rolled_back(&after);
    assert_eq!(after["root.ember-new"], "absent");
    assert_eq!(after["root.ember-old"], "absent");
    assert_eq!(after["root-blank-ro"], "true");
}
