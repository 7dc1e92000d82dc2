//! Scenario: three wrong passphrases. ember says so, applies the failure
//! policy (no rescue shell in this initrd: halt), never panics the kernel,
//! and the disk is exactly as it was.

mod common;

use common::ember::{BOOT_TIMEOUT, boot, build_initrd, passphrase_config};

#[test]
fn exhausted_passphrase_tries_halt_and_change_nothing() {
    let a = common::assets();
    let built = build_initrd(&a, "wrong-passphrase", &passphrase_config(&a));
    let disk = common::overlay(&a.base_disk, "wrong-passphrase");
    let mut vm = boot(
        &a,
        "wrong-passphrase",
        &built.initrd,
        &disk,
        "checker.phase=1",
    );
    for attempt in 1..=3 {
        vm.wait_for("Passphrase for cryptroot", BOOT_TIMEOUT)
            .expect("prompt");
        vm.send_line(&format!("wrong-{attempt}"));
        vm.wait_for(
            &format!("wrong passphrase for cryptroot (attempt {attempt} of 3)"),
            BOOT_TIMEOUT,
        )
        .expect("each wrong try is reported");
    }
    vm.wait_for(
        "boot failed: luks[0]: LABEL=luks was not unlocked: 3 wrong passphrase(s)",
        BOOT_TIMEOUT,
    )
    .expect("a specific failure message");
    vm.wait_for("boot stopped; the system is halted", BOOT_TIMEOUT)
        .expect("halt, not panic");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!vm.panicked(), "kernel panicked:\n{}", vm.transcript());
    vm.kill();
    assert!(
        common::disks_identical(&a.base_disk, &disk),
        "the disk changed after a failed unlock"
    );
}
