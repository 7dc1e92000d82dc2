//! Scenario: the power is cut (QEMU killed) after each step of a blank
//! rollback has reached the disk; the next boot finishes or redoes the
//! rollback and succeeds, /persist and /home are untouched, and no temporary
//! subvolume is left behind. `ember.rollback_pause_after=N` makes ember stop
//! right after step N is committed, so the cut lands exactly there.

mod common;

use common::disk_shell::{self, PLANT_MARKERS, REPORT_STATE};
use common::ember::{BLANK_ROLLBACK, BOOT_TIMEOUT, boot, build_initrd, rollback_config};

#[test]
fn power_cut_after_every_step_recovers() {
    let a = common::assets();
    let built = build_initrd(&a, "power-cut", &rollback_config(&a, BLANK_ROLLBACK));
    for step in 1..=4 {
        let name = format!("power-cut-{step}");
        let disk = common::overlay(&a.base_disk, &name);
        disk_shell::run(&a, &format!("{name}-plant"), &disk, PLANT_MARKERS);

        let mut vm = boot(
            &a,
            &name,
            &built.initrd,
            &disk,
            &format!("checker.phase=1 ember.rollback_pause_after={step}"),
        );
        vm.wait_for(&format!("rollback paused after step {step}"), BOOT_TIMEOUT)
            .expect("ember pauses at the cut point");
        vm.kill();
        drop(vm);
        let cut = disk_shell::state(&disk_shell::run(
            &a,
            &format!("{name}-at-cut"),
            &disk,
            REPORT_STATE,
        ));
        assert_eq!(cut["persist-marker"], "present", "step {step}: {cut:?}");
        assert_eq!(cut["home-marker"], "present", "step {step}: {cut:?}");

        let mut vm = boot(
            &a,
            &format!("{name}-next"),
            &built.initrd,
            &disk,
            "checker.phase=1",
        );
        vm.wait_exit(BOOT_TIMEOUT).expect("the next boot succeeds");
        let t = vm.transcript();
        common::assert_checks_passed(
            &t,
            &[
                "mount-root",
                "mount-home",
                "mount-persist",
                "bind-machine-id",
            ],
        );
        drop(vm);
        let after = disk_shell::state(&disk_shell::run(
            &a,
            &format!("{name}-after"),
            &disk,
            REPORT_STATE,
        ));
        assert_eq!(after["root-marker"], "absent", "step {step}: {after:?}");
        assert_eq!(after["nested"], "absent", "step {step}: {after:?}");
        assert_eq!(after["persist-marker"], "present", "step {step}: {after:?}");
        assert_eq!(after["home-marker"], "present", "step {step}: {after:?}");
        assert_eq!(after["root.ember-new"], "absent", "step {step}: {after:?}");
        assert_eq!(after["root.ember-old"], "absent", "step {step}: {after:?}");
        assert_eq!(after["root-blank-ro"], "true", "step {step}");
    }
}
