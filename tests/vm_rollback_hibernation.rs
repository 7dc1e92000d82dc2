//! Scenario: `resume=` names a swap device that holds a hibernation image.
//! ember asks the kernel to resume from it; the image is not a real one, so
//! the kernel declines, and ember then refuses to touch the root: the resume
//! must happen before any rollback. Without `resume=` the rollback runs.

mod common;

use common::disk_shell::{self, PLANT_MARKERS, REPORT_STATE};
use common::ember::{BLANK_ROLLBACK, BOOT_TIMEOUT, build_initrd, rollback_config};
use common::{Vm, VmSpec};

#[test]
fn hibernation_image_blocks_the_rollback() {
    let a = common::assets();
    let built = build_initrd(&a, "hibernation", &rollback_config(&a, BLANK_ROLLBACK));
    let disk = common::overlay(&a.base_disk, "hibernation");
    disk_shell::run(&a, "hibernation-plant", &disk, PLANT_MARKERS);
    // A 4 MiB "swap" whose header says an image is stored.
    let swap = common::work_dir().join("hibernation-swap.img");
    let mut bytes = vec![0u8; 4 << 20];
    bytes[4096 - 10..4096 - 1].copy_from_slice(b"S1SUSPEND");
    std::fs::write(&swap, bytes).expect("write swap image");

    let mut vm = Vm::boot(VmSpec {
        kernel: a.kernel.clone(),
        initrd: built.initrd.clone(),
        disks: vec![disk.clone(), swap],
        append: "loglevel=4 checker.phase=1 resume=/dev/vdb".into(),
        memory_mb: 1024,
        ..VmSpec::new("hibernation")
    });
    vm.wait_exit(BOOT_TIMEOUT).expect("boots to the checker");
    let t = vm.transcript();
    assert!(t.contains("hibernation image on /dev/vdb: resuming"), "{t}");
    assert!(t.contains("a hibernation image is on /dev/vdb (resume=/dev/vdb); the resume must happen before the root may be touched"), "{t}");
    assert!(!t.contains("rollback step"), "{t}");
    drop(vm);
    let after = disk_shell::state(&disk_shell::run(
        &a,
        "hibernation-inspect",
        &disk,
        REPORT_STATE,
    ));
    assert_eq!(after["root-marker"], "present", "{after:?}");
}
