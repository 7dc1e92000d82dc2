//! Scenario: the initrd carries a malformed config (the builder refuses one,
//! so the test overlays it with a second cpio archive, as a hand-edited or
//! corrupted initrd would have). ember refuses it before touching anything,
//! names the field, halts, and the disk is unchanged.

mod common;

use common::ember::{BOOT_TIMEOUT, boot, build_initrd, reference_config, with_config_override};

#[test]
fn malformed_config_is_refused_before_anything_is_touched() {
    let a = common::assets();
    let built = build_initrd(&a, "malformed-config", &reference_config(&a));
    let bad =
        r#"{"luks":[{"name":"cryptroot","device":"LABEL=luks","allow_discard":true}],"btrfs":[]}"#;
    let initrd = with_config_override(&built.initrd, "malformed-config", bad);

    let disk = common::overlay(&a.base_disk, "malformed-config");
    let mut vm = boot(&a, "malformed-config", &initrd, &disk, "checker.phase=1");
    vm.wait_for(
        "boot failed: config /etc/ember/config.json: luks[0].allow_discard: unknown field `allow_discard`",
        BOOT_TIMEOUT,
    )
    .expect("the refusal names the field");
    vm.wait_for("boot stopped; the system is halted", BOOT_TIMEOUT)
        .expect("halt");
    let t = vm.transcript();
    assert!(
        !t.contains("ember: found LABEL=luks"),
        "nothing is touched after a config error:\n{t}"
    );
    assert!(!vm.panicked());
    vm.kill();
    assert!(
        common::disks_identical(&a.base_disk, &disk),
        "the disk changed"
    );
}
