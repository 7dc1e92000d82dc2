//! Scenario: the reference disk boots with a keyfile, twice. Boot 1: the
//! checker (the real init, in /nix) sees every link, mapper device, subvolume
//! mount with its options and persist bind, and `/var/log` kept as a
//! subvolume rather than bind-mounted over; it writes a machine-id into
//! /persist and a marker into /home. Boot 2, with `quiet` on the kernel
//! command line: both survived, and the console showed ember's warnings but
//! not its progress.

mod common;

use common::ember::{BOOT_TIMEOUT, boot, build_initrd, reference_config};

const VAR_LOG_WARNING: &str = "persist[0].directories[1]: /var/log already lives on subvolume `log` (mounted at /var/log), which is never rolled back";

#[test]
fn reference_disk_boots_twice_and_keeps_state() {
    let a = common::assets();
    let built = build_initrd(&a, "reference", &reference_config(&a));
    assert!(
        built.stderr.contains(VAR_LOG_WARNING),
        "the builder must warn about /var/log:\n{}",
        built.stderr
    );
    let disk = common::overlay(&a.base_disk, "reference");

    let mut vm = boot(
        &a,
        "reference-boot1",
        &built.initrd,
        &disk,
        "checker.phase=1",
    );
    vm.wait_exit(BOOT_TIMEOUT)
        .expect("boot 1 reaches the checker, which powers off");
    let t1 = vm.transcript();
    drop(vm);
    assert!(
        t1.contains(&format!("ember: warning: {VAR_LOG_WARNING}")),
        "boot log lacks the /var/log warning:\n{t1}"
    );
    for phase in [
        "modules ",
        "devices ",
        "unlock ",
        "(pbkdf ",
        "mount ",
        "persist ",
        "total ",
        "in mount syscalls ",
    ] {
        let summary = t1
            .lines()
            .find(|l| l.contains("ember: boot summary:"))
            .unwrap_or_default();
        assert!(
            summary.contains(phase),
            "boot summary lacks {phase:?}: {summary:?}"
        );
    }
    assert!(
        t1.contains("ember: unlocked LABEL=luks (/dev/vda2) as /dev/mapper/cryptroot"),
        "{t1}"
    );
    let mut required = common::COMMON_CHECKS.to_vec();
    required.push("id-written");
    common::assert_checks_passed(&t1, &required);
    let id = common::checker_id(&t1).expect("boot 1 printed the machine-id it wrote");

    let mut vm = boot(
        &a,
        "reference-boot2",
        &built.initrd,
        &disk,
        &format!("checker.phase=2 checker.expect_id={id} quiet"),
    );
    vm.wait_exit(BOOT_TIMEOUT)
        .expect("boot 2 reaches the checker");
    let t2 = vm.transcript();
    let mut required = common::COMMON_CHECKS.to_vec();
    required.extend(["machine-id-persisted", "home-marker-survived"]);
    common::assert_checks_passed(&t2, &required);
    assert!(
        t2.contains(&format!("ember: warning: {VAR_LOG_WARNING}")),
        "quiet still shows warnings:\n{t2}"
    );
    for progress in ["ember: mounted subvolume", "ember: boot summary"] {
        assert!(
            !t2.contains(progress),
            "quiet: {progress:?} on the console:\n{t2}"
        );
    }
}
