//! Scenario: the initrd lacks a kernel module the unlock needs (its module
//! list is overlaid without it, as an initrd built for other hardware would
//! be). The key is right, the unlock fails, and ember names the missing
//! module and what to do, then halts; the disk is unchanged. Two modules,
//! two places where the unlock fails: dm_crypt (activation) and
//! algif_skcipher (libcryptsetup decrypts the LUKS2 keyslot through AF_ALG,
//! and has no other way for LUKS2).

mod common;

use common::ember::{
    BOOT_TIMEOUT, boot, build_initrd, initrd_file, reference_config, with_overrides,
};
use ember::modules::ModuleManifest;

/// Boots the reference disk with `module` left out of the initrd's module
/// list and waits for `message` before the halt.
fn boot_without(name: &str, module: &str, message: &str) {
    let a = common::assets();
    let built = build_initrd(&a, name, &reference_config(&a));
    let mut manifest: ModuleManifest =
        serde_json::from_slice(&initrd_file(&built.initrd, "etc/ember/modules.json"))
            .expect("module manifest");
    let before = manifest.modules.len();
    manifest.modules.retain(|m| m.name != module);
    assert_eq!(
        manifest.modules.len(),
        before - 1,
        "{module} was in the initrd"
    );
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest json");
    let initrd = with_overrides(&built.initrd, name, &[("etc/ember/modules.json", &json)]);

    let disk = common::overlay(&a.base_disk, name);
    let mut vm = boot(&a, name, &initrd, &disk, "checker.phase=1");
    vm.wait_for(
        "boot failed: luks[0]: cannot activate /dev/vda2 as /dev/mapper/cryptroot: ",
        BOOT_TIMEOUT,
    )
    .expect("the unlock fails");
    vm.wait_for(message, BOOT_TIMEOUT)
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

#[test]
fn missing_dm_crypt_is_named() {
    boot_without(
        "missing-module",
        "dm_crypt",
        "kernel module dm_crypt is not loaded and not in this initrd: add \"dm_crypt\" to kernel_modules and rebuild the initrd",
    );
}

#[test]
fn missing_af_alg_skcipher_is_named() {
    boot_without(
        "missing-algif",
        "algif_skcipher",
        "libcryptsetup cannot decrypt the keyslot through the kernel's AF_ALG interface (kernel module algif_skcipher is not loaded and not in this initrd: add \"algif_skcipher\" to kernel_modules and rebuild the initrd)",
    );
}
