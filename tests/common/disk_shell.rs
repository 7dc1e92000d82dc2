//! A shell on the reference disk, outside ember: a throwaway busybox VM with
//! Debian's cryptsetup and btrfs that opens the LUKS volume with the keyfile,
//! mounts the Btrfs top level at /top and runs a script there. Scenarios use
//! it to set up state before an ember boot (markers, nested subvolumes, a
//! missing blank snapshot) and to inspect the result after it, so what they
//! assert never depends on ember's own view.

use std::path::{Path, PathBuf};

use super::{Assets, Initramfs, Vm, VmSpec, secs};

const INIT: &str = r#"
set -eu
/bin/busybox mkdir -p /proc /sys /dev /run/cryptsetup /top /usr/sbin /usr/bin /sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
trap 'echo "DISK-SHELL-FAILED exit $?"; poweroff -f' EXIT
while read -r ko; do insmod "$ko" 2>/dev/null || true; done </modules.list
i=0
while [ ! -e /dev/vda2 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
cryptsetup open --key-file /reference.key /dev/vda2 cryptroot
mount -o subvolid=5 /dev/mapper/cryptroot /top
cd /top
echo DISK-SHELL-START
. /script.sh
cd /
sync
umount /top
cryptsetup close cryptroot
trap - EXIT
echo DISK-SHELL-DONE
poweroff -f
"#;

fn initramfs(a: &Assets, name: &str, script: &str, files: &[(&Path, &str)]) -> PathBuf {
    let mut ird = Initramfs::new(name);
    for (src, dest) in files {
        ird.file(dest, src, 0o755);
    }
    ird.modules(
        a,
        &[
            "virtio_pci",
            "virtio_blk",
            "dm_crypt",
            "xts",
            "aesni_intel",
            "af_alg",
            "algif_skcipher",
            "btrfs",
        ],
    );
    ird.binary_with_libs(Path::new("/sbin/cryptsetup"), "/sbin/cryptsetup");
    ird.binary_with_libs(Path::new("/bin/btrfs"), "/sbin/btrfs");
    ird.file("/reference.key", &a.keyfile, 0o400);
    ird.bytes("/script.sh", script.as_bytes(), 0o644);
    ird.init_script(INIT);
    ird.build()
}

/// Runs `script` (busybox sh, `set -eu`, cwd = the top level, `btrfs` and
/// `cryptsetup` on PATH) against `disk` and returns what it printed between
/// start and end. Panics, with the transcript, if anything fails.
pub fn run(a: &Assets, name: &str, disk: &Path, script: &str) -> String {
    run_with(a, name, disk, script, &[])
}

/// Like [`run`], with extra host files copied in (`(source, destination)`).
pub fn run_with(
    a: &Assets,
    name: &str,
    disk: &Path,
    script: &str,
    files: &[(&Path, &str)],
) -> String {
    let initrd = initramfs(a, name, script, files);
    let mut vm = Vm::boot(VmSpec {
        kernel: a.kernel.clone(),
        initrd,
        disks: vec![disk.to_path_buf()],
        append: "loglevel=3".into(),
        memory_mb: 768,
        ..VmSpec::new(name)
    });
    vm.wait_exit(secs(180))
        .unwrap_or_else(|e| panic!("disk shell {name}: {e}"));
    let t = vm.transcript();
    assert!(
        t.contains("DISK-SHELL-DONE"),
        "disk shell {name} failed:\n{t}"
    );
    let start = t
        .find("DISK-SHELL-START")
        .map(|i| i + "DISK-SHELL-START".len())
        .unwrap_or(0);
    let end = t.find("DISK-SHELL-DONE").unwrap_or(t.len());
    t[start..end].trim().to_string()
}

/// The markers most rollback scenarios plant: one in the root subvolume
/// (must go), one each in /home and /persist (must stay), and a nested
/// subvolume inside the root, as systemd-nspawn or portabled create.
pub const PLANT_MARKERS: &str = r#"
echo root > root/ember-root-marker
echo home > home/ember-home-marker
echo persist > persist/ember-persist-marker
mkdir -p root/var/lib
btrfs -q subvolume create root/var/lib/machines
echo nested > root/var/lib/machines/inside
"#;

/// Prints `STATE name=value` lines the scenarios assert on.
pub const REPORT_STATE: &str = r#"
state() { echo "STATE $1=$2"; }
[ -e root/ember-root-marker ] && state root-marker present || state root-marker absent
[ -e root/var/lib/machines ] && state nested present || state nested absent
[ -e home/ember-home-marker ] && state home-marker present || state home-marker absent
[ -e persist/ember-persist-marker ] && state persist-marker present || state persist-marker absent
for n in root.ember-new root.ember-old; do [ -e $n ] && state $n present || state $n absent; done
state root-blank-ro "$(btrfs property get -ts root-blank ro 2>/dev/null | cut -d= -f2)"
state subvolumes "$(btrfs subvolume list -o . 2>/dev/null | awk '{print $NF}' | sort | tr '\n' ' ')"
"#;

/// Parses `STATE k=v` lines.
pub fn state(output: &str) -> std::collections::BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("STATE "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// After a rollback: the old root's marker and nested subvolume are gone,
/// /home's and /persist's markers are still there.
pub fn assert_rolled_back(after: &std::collections::BTreeMap<String, String>) {
    assert_eq!(after["root-marker"], "absent", "{after:?}");
    assert_eq!(after["nested"], "absent", "{after:?}");
    assert_eq!(after["home-marker"], "present", "{after:?}");
    assert_eq!(after["persist-marker"], "present", "{after:?}");
}
