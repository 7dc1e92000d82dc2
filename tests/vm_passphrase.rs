//! Scenario: no keyfile; the passphrase is typed on the serial console, first
//! a wrong one, then the right one. The boot completes, and neither string
//! appears anywhere in the console transcript (no echo, never logged).

mod common;

use common::ember::{BOOT_TIMEOUT, boot, build_initrd, passphrase_config};

#[test]
fn wrong_then_right_passphrase_boots_without_echo() {
    let a = common::assets();
    let built = build_initrd(&a, "passphrase", &passphrase_config(&a));
    let disk = common::overlay(&a.base_disk, "passphrase");
    let mut vm = boot(&a, "passphrase", &built.initrd, &disk, "checker.phase=1");

    let wrong = "hunter2-not-the-passphrase";
    common::ember::type_wrong_then_right_passphrase(&mut vm, wrong, &a.passphrase);
    vm.wait_exit(BOOT_TIMEOUT)
        .expect("the boot completes and the checker powers off");

    let t = vm.transcript();
    common::assert_checks_passed(&t, &["mount-root", "mount-persist", "bind-machine-id"]);
    assert!(
        !t.contains(&a.passphrase),
        "the passphrase leaked into the console transcript"
    );
    assert!(
        !t.contains(wrong),
        "the wrong passphrase leaked into the console transcript"
    );
}
