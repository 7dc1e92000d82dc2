//! Scenario: every key source fails: the key device never appears and the
//! keyfile is missing from the initrd (the builder refuses that, so the
//! config is overlaid). ember names each source and why, and with
//! `ember.on_failure=retry` runs the boot again 3 times, 5 s apart, then
//! falls back to rescue (no shell here: halt). The disk is unchanged.

mod common;

use common::ember::{
    BOOT_TIMEOUT, boot, build_initrd, config_json, reference_config, with_overrides,
};

#[test]
fn missing_keyfiles_are_named_then_retried_then_halt() {
    let a = common::assets();
    let name = "keyfile-missing";
    let built = build_initrd(&a, name, &reference_config(&a));
    let config = reference_config(&a).replace(
        "keyfile = \"/etc/ember/keys/cryptroot.key\"",
        "keys = [{ keyfile = \"/k.bin\", device = \"LABEL=NOKEY\", timeout_secs = 1 }, { keyfile = \"/etc/ember/keys/absent.key\" }]",
    );
    let initrd = with_overrides(
        &built.initrd,
        name,
        &[("etc/ember/config.json", config_json(&config).as_bytes())],
    );
    let disk = common::overlay(&a.base_disk, name);
    let mut vm = boot(
        &a,
        name,
        &initrd,
        &disk,
        "checker.phase=1 ember.on_failure=retry",
    );
    let message = "boot failed: luks[0]: LABEL=luks was not unlocked: \
        luks[0].keys[0]: key device LABEL=NOKEY did not appear within 1s; \
        luks[0].keys[1]: cannot read keyfile /etc/ember/keys/absent.key: No such file or directory";
    for attempt in 2..=4 {
        vm.wait_for(message, BOOT_TIMEOUT)
            .expect("every key source is named with its reason");
        vm.wait_for(
            &format!("retrying the boot in 5s (attempt {attempt} of 4)"),
            BOOT_TIMEOUT,
        )
        .expect("retry");
    }
    vm.wait_for(message, BOOT_TIMEOUT).expect("the last round");
    vm.wait_for("the boot failed 4 times; giving up retrying", BOOT_TIMEOUT)
        .expect("bounded");
    vm.wait_for("boot stopped; the system is halted", BOOT_TIMEOUT)
        .expect("halt, not panic");
    let t = vm.transcript();
    assert!(
        t.contains("ember: warning: luks[0].keys[0]: key device LABEL=NOKEY did not appear within 1s; trying the next key source"),
        "{}",
        common::vm::tail(&t, 40)
    );
    assert!(!vm.panicked());
    vm.kill();
    assert!(
        common::disks_identical(&a.base_disk, &disk),
        "the disk changed after a failed unlock"
    );
}
