//! Scenario: both copies of the LUKS2 header are damaged (their JSON areas
//! zeroed, as a stray `dd` would). ember reads the header before asking for
//! any key, says the header is damaged and how to restore a backup, halts,
//! and writes nothing: the disk is byte for byte what it was before the boot.

mod common;

use std::path::Path;
use std::process::Command;

use common::ember::{BOOT_TIMEOUT, boot, build_initrd, reference_config};

/// Byte offset of GPT partition `n` (1-based) in a qcow2 image.
fn partition_offset(disk: &Path, n: usize) -> u64 {
    let raw = common::work_dir().join("corrupt-header.gpt.raw");
    let _ = std::fs::remove_file(&raw);
    let o = Command::new("qemu-img")
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=34"])
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", raw.display()))
        .output()
        .expect("run qemu-img dd");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gpt = std::fs::read(&raw).expect("read GPT");
    let entry = 1024 + (n - 1) * 128;
    let first_lba = u64::from_le_bytes(gpt[entry + 32..entry + 40].try_into().expect("8 bytes"));
    assert!(first_lba > 0, "no partition {n}");
    first_lba * 512
}

fn zero(disk: &Path, offset: u64, len: u64) {
    let o = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P 0 {offset} {len}")])
        .arg(disk)
        .output()
        .expect("run qemu-io");
    assert!(
        o.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn damaged_header_is_named_and_nothing_is_written() {
    let a = common::assets();
    let name = "corrupt-header";
    // The partition label: blkid may not recognise a damaged header.
    let config =
        reference_config(&a).replace("device = \"LABEL=luks\"", "device = \"PARTLABEL=luks\"");
    let built = build_initrd(&a, name, &config);
    let disk = common::overlay(&a.base_disk, name);
    let luks = partition_offset(&disk, 2);
    // Default LUKS2 metadata: 16 KiB per copy (4 KiB binary header, then
    // JSON); the secondary copy follows the primary.
    zero(&disk, luks + 4096, 4096);
    zero(&disk, luks + 16384 + 4096, 4096);
    assert!(
        !common::disks_identical(&a.base_disk, &disk),
        "the damage is in place"
    );
    let before = common::work_dir().join(format!("{name}.before.qcow2"));
    std::fs::copy(&disk, &before).expect("snapshot the damaged overlay");

    let mut vm = boot(&a, name, &built.initrd, &disk, "checker.phase=1");
    vm.wait_for(
        "boot failed: luks[0]: the LUKS2 header of /dev/vda2 is damaged (",
        BOOT_TIMEOUT,
    )
    .expect("a specific message");
    vm.wait_for(
        "nothing was written to it. With a header backup: cryptsetup luksHeaderRestore /dev/vda2 --header-backup-file FILE",
        BOOT_TIMEOUT,
    )
    .expect("what to do about it");
    vm.wait_for("boot stopped; the system is halted", BOOT_TIMEOUT)
        .expect("halt, not panic");
    assert!(!vm.panicked());
    vm.kill();
    assert!(
        common::disks_identical(&before, &disk),
        "ember wrote to a disk with a damaged header"
    );
}
