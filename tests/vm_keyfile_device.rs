//! Scenario: the key is on a USB-key-like second disk (FAT, label
//! EMBERKEY), inside a file, at an offset, with a size; a passphrase is the
//! fallback. ember waits for the key device, mounts it read-only, reads
//! exactly the 64 key bytes, unmounts it, and boots without asking anything.

mod common;

use std::process::Command;

use common::ember::{BOOT_TIMEOUT, boot_disks, build_initrd, reference_config};

/// A 2 MiB FAT image labelled EMBERKEY holding /keys/cryptroot.bin =
/// 16 junk bytes, the reference key (64 bytes), 100 junk bytes.
fn key_disk(a: &common::Assets, name: &str) -> std::path::PathBuf {
    let dir = common::work_dir();
    let blob = dir.join(format!("{name}.blob"));
    let mut bytes = vec![0x5au8; 16];
    bytes.extend(std::fs::read(&a.keyfile).expect("reference key"));
    bytes.extend(vec![0xa5u8; 100]);
    std::fs::write(&blob, &bytes).expect("write blob");
    let img = dir.join(format!("{name}.keydisk.img"));
    let _ = std::fs::remove_file(&img);
    let run = |cmd: &mut Command| {
        let o = cmd.output().expect("run host tool (scripts/setup-host)");
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "EMBERKEY"])
        .arg(&img)
        .arg("2048"));
    run(Command::new("mmd").arg("-i").arg(&img).arg("::/keys"));
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(&blob)
        .arg("::/keys/cryptroot.bin"));
    img
}

#[test]
fn keyfile_on_another_device_with_offset_and_size() {
    let a = common::assets();
    let name = "keyfile-device";
    let config = reference_config(&a).replace(
        "keyfile = \"/etc/ember/keys/cryptroot.key\"",
        "keys = [{ keyfile = \"/keys/cryptroot.bin\", device = \"LABEL=EMBERKEY\", offset = 16, size = 64, timeout_secs = 20 }, \"passphrase\"]",
    );
    let built = build_initrd(&a, name, &config);
    let disk = common::overlay(&a.base_disk, name);
    let keydisk = key_disk(&a, name);
    let mut vm = boot_disks(&a, name, &built.initrd, &[disk, keydisk], "checker.phase=1");
    vm.wait_exit(BOOT_TIMEOUT)
        .expect("the boot completes and the checker powers off");
    let t = vm.transcript();
    common::assert_checks_passed(&t, &["mount-root", "mount-persist", "bind-machine-id"]);
    assert!(
        t.contains(
            "ember: unlocked LABEL=luks (/dev/vda2) as /dev/mapper/cryptroot with keyfile /keys/cryptroot.bin on LABEL=EMBERKEY (64 bytes at offset 16)"
        ),
        "{}",
        common::vm::tail(&t, 60)
    );
    assert!(!t.contains("Passphrase for"), "no passphrase was asked");
}
