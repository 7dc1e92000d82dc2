//! Scenario: the empty strategy replaces the root with a new, empty
//! subvolume (no blank snapshot involved); /home and /persist stay.

mod common;

use common::disk_shell::{self, PLANT_MARKERS, REPORT_STATE};
use common::ember::{BOOT_TIMEOUT, boot, build_initrd, rollback_config};

#[test]
fn empty_rollback_starts_from_nothing() {
    let a = common::assets();
    let block = "subvolume = \"root\"\nstrategy = \"empty\"\nfilesystem = \"LABEL=nixos\"";
    let built = build_initrd(&a, "rollback-empty", &rollback_config(&a, block));
    let disk = common::overlay(&a.base_disk, "rollback-empty");
    disk_shell::run(&a, "rollback-empty-plant", &disk, PLANT_MARKERS);
    let mut vm = boot(
        &a,
        "rollback-empty",
        &built.initrd,
        &disk,
        "checker.phase=1",
    );
    vm.wait_exit(BOOT_TIMEOUT).expect("boots to the checker");
    let t = vm.transcript();
    assert!(
        t.contains("rollback step 1/4: create empty subvolume root.ember-new"),
        "{t}"
    );
    common::assert_checks_passed(&t, &["mount-root", "mount-persist", "bind-machine-id"]);
    let after = disk_shell::state(&disk_shell::run(
        &a,
        "rollback-empty-inspect",
        &disk,
        REPORT_STATE,
    ));
    disk_shell::assert_rolled_back(&after);
}
