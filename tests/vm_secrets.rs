//! Scenario: two passphrase volumes, the reference disk and a second LUKS2
//! disk with 8 keyslots whose keyslot 7 holds the same passphrase (hinted
//! with `keyslot = 7`). A wrong passphrase, then the right one, are typed
//! once: the right one opens both volumes without a second prompt. The boot
//! then fails on purpose (`init=` names a missing init) into the rescue
//! shell, where `ember status` (text and JSON) and `ember unlock` run, and
//! `dmesg` and the environments are printed. Neither passphrase appears
//! anywhere in the serial transcript, which holds the whole kmsg buffer.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::ember::{BOOT_TIMEOUT, boot_disks, build_initrd_with, passphrase_config};

/// A 32 MiB LUKS2 image labelled `second`: keyslots 0-6 hold other keys
/// (cheap PBKDF2), keyslot 7 the reference passphrase (argon2id).
fn second_disk(a: &common::Assets, name: &str) -> PathBuf {
    let dir = common::work_dir();
    let img = dir.join(format!("{name}.second.img"));
    let _ = std::fs::remove_file(&img);
    let f = std::fs::File::create(&img).expect("create image");
    f.set_len(32 << 20).expect("size image");
    let key = |i: usize| {
        let p = dir.join(format!("{name}.key{i}"));
        let text = if i == 7 {
            a.passphrase.clone()
        } else {
            format!("other-key-{i}")
        };
        std::fs::write(&p, text).expect("write key");
        p
    };
    let cheap = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
    let argon = [
        "--pbkdf",
        "argon2id",
        "--pbkdf-memory",
        "32768",
        "--pbkdf-force-iterations",
        "4",
        "--pbkdf-parallel",
        "1",
    ];
    let run = |cmd: &mut Command| {
        let o = cmd.output().expect("run cryptsetup (scripts/setup-host)");
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(Command::new("cryptsetup")
        .args(["luksFormat", "-q", "--type", "luks2", "--label", "second"])
        .args(cheap)
        .args(["--key-slot", "0", "--key-file"])
        .arg(key(0))
        .arg(&img));
    for i in 1..=7 {
        run(Command::new("cryptsetup")
            .args(["luksAddKey", "-q"])
            .args(if i == 7 { &argon[..] } else { &cheap[..] })
            .arg("--key-file")
            .arg(key(0))
            .args(["--new-key-slot", &i.to_string()])
            .arg(&img)
            .arg(key(i)));
    }
    img
}

/// The text between a line that is exactly `start` and one that is exactly `end`.
fn between(t: &str, start: &str, end: &str) -> String {
    let lines: Vec<&str> = t.lines().collect();
    let s = lines
        .iter()
        .rposition(|l| l.trim() == start)
        .unwrap_or_else(|| panic!("no {start} line"));
    let e = lines[s..]
        .iter()
        .position(|l| l.trim() == end)
        .map(|i| s + i)
        .unwrap_or_else(|| panic!("no {end} line"));
    lines[s + 1..e].join("\n")
}

#[test]
fn one_passphrase_opens_both_and_never_leaks() {
    let a = common::assets();
    let name = "secrets";
    let config = passphrase_config(&a).replacen(
        "[[btrfs]]",
        "[[luks]]\nname = \"second\"\ndevice = \"LABEL=second\"\nkeys = [{ passphrase = true, keyslot = 7 }]\n\n[[btrfs]]",
        1,
    );
    let built = build_initrd_with(&a, name, &config, &["--busybox", "/bin/busybox"]);
    let disk = common::overlay(&a.base_disk, name);
    let second = second_disk(&a, name);
    let mut vm = boot_disks(
        &a,
        name,
        &built.initrd,
        &[disk, second],
        "checker.phase=1 init=/nonexistent/init",
    );

    let wrong = "Wrong-horse-battery-9d1e";
    common::ember::type_wrong_then_right_passphrase(&mut vm, wrong, &a.passphrase);
    vm.wait_for(
        "the passphrase typed for cryptroot also opened second (LABEL=second on /dev/vdb) as /dev/mapper/second (keyslot 7)",
        BOOT_TIMEOUT,
    )
    .expect("one passphrase, both volumes");
    vm.wait_for(
        "boot failed: init /nonexistent/init is missing from the new root /sysroot",
        BOOT_TIMEOUT,
    )
    .expect("the planned failure");
    vm.wait_for("ember-rescue# ", BOOT_TIMEOUT)
        .expect("rescue shell");

    // One command at a time, each after the prompt, so typed text never
    // lands in the middle of the previous command's output.
    let mut run = |line: &str, done: &str| {
        vm.send_line(line);
        vm.wait_for(done, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        vm.wait_for("ember-rescue# ", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
    };
    run("ember status; echo STATUS-EXIT=$?", "\nSTATUS-EXIT=0\n");
    run(
        "echo JSON-BEGIN; ember status --json; echo JSON-END",
        "\nJSON-END\n",
    );
    run("ember unlock; echo UNLOCK-EXIT=$?", "\nUNLOCK-EXIT=0\n");
    run("echo DMESG-BEGIN; dmesg; echo DMESG-END", "\nDMESG-END\n");
    run(
        "cat /proc/1/environ /proc/self/environ; echo; echo ENV-END",
        "\nENV-END\n",
    );
    vm.send_line("poweroff -f");
    vm.wait_exit(BOOT_TIMEOUT).expect("powers off");

    let t = vm.transcript();
    assert!(!t.contains(&a.passphrase), "the passphrase leaked");
    assert!(!t.contains(wrong), "the wrong passphrase leaked");
    assert!(
        !t.contains("Passphrase for second"),
        "the second volume was not asked for"
    );
    let dmesg = between(&t, "DMESG-BEGIN", "DMESG-END");
    assert!(
        dmesg.contains("ember: unlocked LABEL=luks (/dev/vda2) as /dev/mapper/cryptroot"),
        "the kmsg buffer was printed:\n{dmesg}"
    );
    for line in [
        "  cryptroot    LABEL=luks (luks[0]): open as /dev/mapper/cryptroot (dm-",
        "  second       LABEL=second (luks[1]): open as /dev/mapper/second (dm-",
        "  /            root of /dev/mapper/cryptroot: mounted at /sysroot",
        "  file /persist/etc/machine-id -> /etc/machine-id (bind): mounted",
        "  attempt 1: failed: init /nonexistent/init is missing from the new root /sysroot",
        "  then: rescue shell",
        "  second (LABEL=second on /dev/vdb): with the passphrase typed for cryptroot (keyslot 7)",
    ] {
        assert!(
            t.contains(line),
            "ember status lacks {line:?}:\n{}",
            common::vm::tail(&t, 120)
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&between(&t, "JSON-BEGIN", "JSON-END")).expect("status --json parses");
    let vols = &json["last_boot"]["volumes"];
    assert_eq!(vols[0]["name"], "cryptroot");
    assert_eq!(
        vols[0]["keyslot"], 1,
        "the passphrase is keyslot 1 of the reference disk"
    );
    assert_eq!(vols[1]["name"], "second");
    assert_eq!(vols[1]["keyslot"], 7);
    assert_eq!(
        vols[1]["keyslots_tried"], 1,
        "the hint saved 7 key derivations"
    );
    assert_eq!(vols[1]["opened_with"], "cryptroot");
    assert_eq!(json["volumes"][1]["open"], true);
    assert!(t.contains("UNLOCK-EXIT=0"));
}
