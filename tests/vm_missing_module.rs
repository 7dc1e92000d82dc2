//! Scenario: the initrd lacks the dm-crypt kernel module (its module list is
//! overlaid without dm_crypt, as an initrd built for other hardware would
//! be). The key is right, activation fails, and ember names the missing
//! module and what to do, then halts; the disk is unchanged.

mod common;

use common::ember::{
    BOOT_TIMEOUT, boot, build_initrd, initrd_file, reference_config, with_overrides,
};
use ember::modules::ModuleManifest;

#[test]
fn missing_dm_crypt_is_named() {
    let a = common::assets();
    let name = "missing-module";
    let built = build_initrd(&a, name, &reference_config(&a));
    let mut manifest: ModuleManifest =
        serde_json::from_slice(&initrd_file(&built.initrd, "etc/ember/modules.json"))
            .expect("module manifest");
    let before = manifest.modules.len();
    manifest.modules.retain(|m| m.name != "dm_crypt");
    assert_eq!(
        manifest.modules.len(),
        before - 1,
        "dm_crypt was in the initrd"
    );
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest json");
    let initrd = with_overrides(&built.initrd, name, &[("etc/ember/modules.json", &json)]);

    let disk = common::overlay(&a.base_disk, name);
    let mut vm = boot(&a, name, &initrd, &disk, "checker.phase=1");
    vm.wait_for(
        "boot failed: luks[0]: cannot activate /dev/vda2 as /dev/mapper/cryptroot: ",
        BOOT_TIMEOUT,
    )
    .expect("activation fails");
    vm.wait_for(
        "kernel module dm_crypt is not loaded and not in this initrd: add \"dm_crypt\" to kernel_modules and rebuild the initrd",
        BOOT_TIMEOUT,
    )
    .expect("the missing module is named");
    vm.wait_for("boot stopped; the system is halted", BOOT_TIMEOUT)
        .expect("halt, not panic");
    assert!(!vm.panicked());
    vm.kill();
    assert!(
        common::disks_identical(&a.base_disk, &disk),
        "the disk changed"
    );
}
