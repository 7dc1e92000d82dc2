//! Exercises the VM harness itself (tests/common): assets, overlays, Vm boot,
//! serial I/O, checker-output parsing, and the reference disk + checker pair
//! (through a busybox stand-in for ember, tests/vm/mock-stage1.sh).

mod common;

use common::{Initramfs, Vm, VmSpec, secs};
use std::path::Path;
use std::time::Instant;

const SMOKE_INIT: &str = r#"
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
while read -r m; do /bin/busybox insmod "$m"; done </modules.list
i=0
while [ ! -e /sys/class/block/vda2 ] && [ $i -lt 100 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done
for p in vda1 vda2; do
  /bin/busybox sed "s/^/SMOKE-UEVENT $p /" /sys/class/block/$p/uevent
done
echo SMOKE-READY
read -r line
echo "SMOKE-GOT $line"
/bin/busybox poweroff -f
"#;

/// Boots a minimal busybox initramfs on an overlay of the reference disk:
/// proves QEMU starts, serial output arrives, `send` reaches the guest, the
/// GPT partition names are visible, poweroff ends QEMU, and a read-only guest
/// leaves the overlay identical to the base.
#[test]
fn vm_boots_and_sees_reference_disk() {
    let a = common::assets();
    let name = "harness-smoke";
    let mut ird = Initramfs::new(name);
    ird.modules(&a, &["virtio_pci", "virtio_blk"]);
    ird.init_script(SMOKE_INIT);
    let initrd = ird.build();
    let disk = common::overlay(&a.base_disk, name);

    let t0 = Instant::now();
    let mut vm = Vm::boot(VmSpec {
        kernel: a.kernel.clone(),
        initrd,
        disks: vec![disk.clone()],
        append: "quiet".into(),
        memory_mb: 256,
        ..VmSpec::new(name)
    });
    vm.wait_for("SMOKE-READY", secs(60)).unwrap();
    let ready = t0.elapsed();
    vm.send_line("hello-from-host");
    vm.wait_for("SMOKE-GOT hello-from-host", secs(20)).unwrap();
    vm.wait_exit(secs(30)).unwrap();
    eprintln!(
        "smoke VM: ready after {ready:?}, exited after {:?}",
        t0.elapsed()
    );

    let t = vm.transcript();
    assert!(
        t.contains("SMOKE-UEVENT vda1 PARTNAME=boot"),
        "{}",
        common::vm::tail(&t, 40)
    );
    assert!(
        t.contains("SMOKE-UEVENT vda2 PARTNAME=luks"),
        "{}",
        common::vm::tail(&t, 40)
    );
    assert!(!vm.panicked());
    assert!(vm.serial_log().exists());
    assert!(common::disks_identical(&disk, &a.base_disk));
    // wait_for is expect-style: the marker was consumed, it must not match again.
    assert!(vm.wait_for("SMOKE-READY", secs(1)).is_err());
}

/// The checker accepts a correct stage 1: boots tests/vm/mock-stage1.sh
/// (busybox + Debian cryptsetup doing by hand what ember does) into the
/// checker twice — phase 1 writes an id, phase 2 finds it persisted — and
/// checks that the checker's failure reporting works by tampering with phase 2.
#[test]
fn checker_accepts_reference_stage1() {
    let a = common::assets();
    let name = "harness-mock-stage1";
    let mut ird = Initramfs::new(name);
    ird.modules(
        &a,
        &["virtio_pci", "virtio_blk", "dm_crypt", "xts", "btrfs"],
    );
    ird.binary_with_libs(Path::new("/usr/sbin/cryptsetup"), "/usr/sbin/cryptsetup");
    ird.file("/reference.key", &a.keyfile, 0o600);
    let script =
        std::fs::read_to_string(common::repo_dir().join("tests/vm/mock-stage1.sh")).unwrap();
    ird.init_script(&script);
    let initrd = ird.build();
    let disk = common::overlay(&a.base_disk, name);

    let boot = |phase: &str, append: String| {
        let t0 = Instant::now();
        let mut vm = Vm::boot(VmSpec {
            kernel: a.kernel.clone(),
            initrd: initrd.clone(),
            disks: vec![disk.clone()],
            append: format!("quiet init={} {append}", a.checker_init()),
            ..VmSpec::new(&format!("{name}-{phase}"))
        });
        vm.wait_exit(secs(120)).unwrap();
        eprintln!("mock stage 1 {phase}: {:?}", t0.elapsed());
        vm.transcript()
    };

    let t1 = boot("phase1", "checker.phase=1".into());
    common::assert_checks_passed(
        &t1,
        &[common::COMMON_CHECKS, common::PHASE1_CHECKS].concat(),
    );
    let id = common::checker_id(&t1).expect("phase 1 printed no id");

    let t2 = boot("phase2", format!("checker.phase=2 checker.expect_id={id}"));
    common::assert_checks_passed(
        &t2,
        &[common::COMMON_CHECKS, common::PHASE2_CHECKS].concat(),
    );

    // A wrong expectation must be reported as failures, not crash the checker.
    let t3 = boot(
        "phase2-wrong",
        "checker.phase=2 checker.expect_id=00000000000000000000000000000000".into(),
    );
    let failed: Vec<String> = common::checks(&t3)
        .into_iter()
        .filter(|c| !c.1)
        .map(|c| c.0)
        .collect();
    assert_eq!(
        failed,
        ["machine-id-persisted", "home-marker-survived"],
        "{}",
        common::vm::tail(&t3, 40)
    );
    assert_eq!(common::checker_done(&t3).map(|d| d.1), Some(2));
}

#[test]
fn parses_checker_output() {
    let t = "noise\nEMBER-CHECK start phase=1\r\nEMBER-CHECK ok mount-root\r\n[ 1.0] x EMBER-CHECK fail mount-nix /nix: root=/x (want /nix)\nEMBER-CHECK id=0123456789abcdef0123456789abcdef\nEMBER-CHECK done passed=1 failed=1\n";
    let c = common::checks(t);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0], ("mount-root".to_string(), true, String::new()));
    assert_eq!(
        c[1],
        (
            "mount-nix".to_string(),
            false,
            "/nix: root=/x (want /nix)".to_string()
        )
    );
    assert_eq!(
        common::checker_id(t).as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(common::checker_done(t), Some((1, 1)));

    let env = common::parse_env("# c\nA=b\nB='x y'\nC=a\\ b\n");
    assert_eq!(env["A"], "b");
    assert_eq!(env["B"], "x y");
    assert_eq!(env["C"], "a b");
}
