#!/bin/busybox sh
# Reference stage 1 in busybox shell: does by hand what ember must do, so the
# harness can prove the reference disk + checker pair is sound independently of
# ember (tests/harness_smoke.rs boots it through both checker phases). When an
# ember scenario fails, diffing its transcript against this one is a quick way
# to tell an ember bug from a harness bug.
#
# Initramfs contents (built by the test): busybox, Debian's cryptsetup with its
# libraries, /modules.list (virtio, dm-crypt, btrfs ...), /reference.key.
# The real init comes from `init=` on the kernel command line.
set -eu
/bin/busybox mkdir -p /proc /sys /dev /run/cryptsetup /sysroot
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

die() {
  echo "MOCK-STAGE1-FAILED: $*"
  poweroff -f
  while :; do sleep 3600; done
}
trap 'die "command failed (exit $?)"' EXIT

while read -r ko; do insmod "$ko" 2>/dev/null || echo "mock-stage1: insmod $ko failed"; done </modules.list

i=0
while [ ! -b /dev/vda2 ]; do
  i=$((i + 1)); [ $i -le 100 ] || die "/dev/vda2 never appeared"
  sleep 0.1
done

# What udev would provide; ember has to create these itself.
mkdir -p /dev/disk/by-label
ln -s ../../vda1 /dev/disk/by-label/boot
ln -s ../../vda2 /dev/disk/by-label/luks

cryptsetup open --key-file /reference.key /dev/disk/by-label/luks cryptroot

opts=compress=zstd,noatime
mount -t btrfs -o subvol=root,$opts /dev/mapper/cryptroot /sysroot
for m in home:home nix:nix persist:persist log:var/log; do
  sv=${m%%:*} mp=${m#*:}
  mkdir -p "/sysroot/$mp"
  mount -t btrfs -o "subvol=$sv,$opts" /dev/mapper/cryptroot "/sysroot/$mp"
done

# Persisted paths: the source lives in /persist, bind-mounted over the path in
# the (ephemeral) root. Create both ends if missing (a file for machine-id).
mkdir -p /sysroot/persist/etc /sysroot/persist/var/lib/systemd /sysroot/etc /sysroot/var/lib/systemd
[ -e /sysroot/persist/etc/machine-id ] || : >/sysroot/persist/etc/machine-id
[ -e /sysroot/etc/machine-id ] || : >/sysroot/etc/machine-id
mount --bind /sysroot/persist/etc/machine-id /sysroot/etc/machine-id
mount --bind /sysroot/persist/var/lib/systemd /sysroot/var/lib/systemd

init=/nix/store/11111111111111111111111111111111-ember-checker/bin/init
for arg in $(cat /proc/cmdline); do
  case $arg in init=*) init=${arg#init=} ;; esac
done

for fs in proc sys dev; do
  mkdir -p "/sysroot/$fs"
  mount --move "/$fs" "/sysroot/$fs"
done
trap - EXIT
echo "mock-stage1: switching root to $init"
exec switch_root /sysroot "$init"
