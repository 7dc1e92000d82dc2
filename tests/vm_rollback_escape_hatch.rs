//! Scenario: `ember.rollback=0` on the kernel command line skips the
//! rollback for one boot (the root marker survives, the log says why);
//! `ember.rollback=dry-run` only logs the steps.

mod common;

use common::disk_shell::{self, PLANT_MARKERS, REPORT_STATE};
use common::ember::{BLANK_ROLLBACK, BOOT_TIMEOUT, boot, build_initrd, rollback_config};

#[test]
fn rollback_zero_and_dry_run_change_nothing() {
    let a = common::assets();
    let built = build_initrd(&a, "rollback-escape", &rollback_config(&a, BLANK_ROLLBACK));
    let disk = common::overlay(&a.base_disk, "rollback-escape");
    disk_shell::run(&a, "rollback-escape-plant", &disk, PLANT_MARKERS);

    let mut vm = boot(
        &a,
        "rollback-zero",
        &built.initrd,
        &disk,
        "checker.phase=1 ember.rollback=0",
    );
    vm.wait_exit(BOOT_TIMEOUT).expect("boots");
    let t = vm.transcript();
    assert!(
        t.contains("btrfs[0].rollback: skipped for this boot (ember.rollback=0"),
        "{t}"
    );
    drop(vm);

    let mut vm = boot(
        &a,
        "rollback-dry-run",
        &built.initrd,
        &disk,
        "checker.phase=1 ember.rollback=dry-run",
    );
    vm.wait_exit(BOOT_TIMEOUT).expect("boots");
    let t = vm.transcript();
    assert!(
        t.contains("rollback dry run (ember.rollback=dry-run): would do 4 steps"),
        "{t}"
    );
    assert!(
        t.contains("1. snapshot root-blank as writable root.ember-new"),
        "{t}"
    );
    drop(vm);

    let after = disk_shell::state(&disk_shell::run(
        &a,
        "rollback-escape-inspect",
        &disk,
        REPORT_STATE,
    ));
    assert_eq!(after["root-marker"], "present", "{after:?}");
    assert_eq!(after["nested"], "present", "{after:?}");
}
