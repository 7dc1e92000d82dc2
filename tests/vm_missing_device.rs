//! Scenario: the configured LUKS device never appears. After the timeout
//! ember names the missing device, the config field, and every block device
//! it did see; it halts (no panic) and the disk is unchanged.

mod common;

use common::ember::{BOOT_TIMEOUT, boot, build_initrd, reference_config};

#[test]
fn missing_device_times_out_with_a_useful_message() {
    let a = common::assets();
    let config = reference_config(&a)
        .replace(
            "device = \"LABEL=luks\"",
            "device = \"PARTLABEL=disk-main-luks\"",
        )
        .replace("device_timeout_secs = 30", "device_timeout_secs = 3");
    let built = build_initrd(&a, "missing-device", &config);
    let disk = common::overlay(&a.base_disk, "missing-device");
    let mut vm = boot(
        &a,
        "missing-device",
        &built.initrd,
        &disk,
        "checker.phase=1",
    );
    vm.wait_for(
        "boot failed: no device matching PARTLABEL=disk-main-luks (luks[0].device) appeared within 3s; block devices seen: ",
        BOOT_TIMEOUT,
    )
    .expect("the timeout names the device and the field");
    vm.wait_for("boot stopped; the system is halted", BOOT_TIMEOUT)
        .expect("halt");
    let t = vm.transcript();
    let line = t
        .lines()
        .find(|l| l.contains("block devices seen:"))
        .unwrap_or_default();
    assert!(
        line.contains("vda2 (TYPE=crypto_LUKS LABEL=luks PARTLABEL=luks"),
        "seen devices listed with their tags: {line}"
    );
    assert!(
        line.contains("vda1 (TYPE=vfat LABEL=boot PARTLABEL=boot"),
        "{line}"
    );
    assert!(!vm.panicked());
    vm.kill();
    assert!(
        common::disks_identical(&a.base_disk, &disk),
        "the disk changed"
    );
}
