#!/bin/busybox sh
# /init of the throwaway provisioning VM built by scripts/provision-disk.
#
# Lays out the blank virtio disk (/dev/vda) as ember's reference disk:
#   GPT: vda1 "boot" 512 MiB ESP (vfat, label boot), vda2 "luks" (LUKS2, label luks)
#   LUKS2 slot 0 = /reference.key, slot 1 = $PASSPHRASE, opened as cryptroot
#   Btrfs "nixos": subvolumes root home nix persist log + read-only root-blank
#   nix/store/...-busybox/bin/busybox and nix/store/...-ember-checker/bin/init
#
# Everything it needs is inside the initramfs: busybox, Debian's cryptsetup,
# sfdisk, mkfs.vfat, mkfs.btrfs, btrfs, blkid (+ their shared libraries), the kernel
# modules listed in /modules.list (already in dependency order), /provision.env
# (UUIDs, passphrase, KDF parameters), /reference.key and /checker.sh.
#
# On success it prints EMBER-PROVISION-OK on the serial console; on any error it
# prints EMBER-PROVISION-FAILED. Either way it powers the VM off (never lets PID 1
# exit, which would panic the kernel and, with -no-reboot, look like success).
set -eu

/bin/busybox mkdir -p /proc /sys /dev /tmp /run/cryptsetup /mnt /usr/bin /usr/sbin /sbin
/bin/busybox --install -s /bin
# Debian tools first: busybox has its own (more limited) fdisk/mkdosfs applets.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

die() {
  echo "EMBER-PROVISION-FAILED: $*"
  poweroff -f
  while :; do sleep 3600; done
}
# set -e exits the shell (PID 1 -> kernel panic); turn any failing command into
# a clean failure report instead.
trap 'die "command failed (exit $?)"' EXIT

. /provision.env
step() { echo "provision: $*"; }

step "loading modules"
while read -r ko; do
  [ -n "$ko" ] || continue
  # insmod fails with EEXIST when already loaded (e.g. listed twice); only a
  # genuinely missing module matters, and the steps below will surface it.
  insmod "$ko" 2>/dev/null || echo "provision: insmod $ko failed (ignored)"
done </modules.list

step "waiting for /dev/vda"
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1)); [ $i -le 100 ] || die "/dev/vda never appeared"
  sleep 0.1
done

wait_dev() {
  i=0
  while [ ! -b "$1" ]; do
    i=$((i + 1)); [ $i -le 100 ] || die "$1 never appeared"
    sleep 0.1
  done
}

step "partitioning"
# GPT with named partitions; type U = EFI System, L = Linux filesystem.
sfdisk --quiet --wipe always /dev/vda <<EOF
label: gpt
size=512MiB, type=U, name="boot"
type=L, name="luks"
EOF
wait_dev /dev/vda1
wait_dev /dev/vda2

step "formatting ESP"
# mkfs.fat warns that lowercase labels may not work everywhere; blkid and
# /dev/disk/by-label use it verbatim, which is what the tests expect.
mkfs.vfat -F 32 -n boot -i "$BOOT_VOLID" /dev/vda1

step "luksFormat"
cryptsetup luksFormat --batch-mode --type luks2 --label luks --uuid "$LUKS_UUID" \
  --cipher aes-xts-plain64 --key-size 512 --hash sha256 $KDF_ARGS \
  --key-slot 0 /dev/vda2 /reference.key
# Passphrase from a file without trailing newline = the same bytes a user types.
printf '%s' "$PASSPHRASE" >/tmp/passphrase
cryptsetup luksAddKey --batch-mode $KDF_ARGS --key-file /reference.key \
  --key-slot 1 /dev/vda2 /tmp/passphrase
step "verifying keyslots"
cryptsetup open --test-passphrase --key-slot 0 --key-file /reference.key /dev/vda2
cryptsetup open --test-passphrase --key-slot 1 --key-file /tmp/passphrase /dev/vda2
rm /tmp/passphrase

step "opening cryptroot"
cryptsetup open --key-file /reference.key /dev/vda2 cryptroot
wait_dev /dev/mapper/cryptroot

step "mkfs.btrfs"
# -K: no discard pass (pointless on a fresh qcow2, slow under TCG).
mkfs.btrfs --quiet -K -L nixos -U "$BTRFS_UUID" /dev/mapper/cryptroot

# Report what blkid sees (low-level probe, includes GPT entry names) so the
# host can cross-check labels/UUIDs against what it asked for.
report() { blkid -p -o export "$2" | sed "s/^/EMBER-PROVISION-BLKID $1 /"; }
report cryptroot /dev/mapper/cryptroot

step "subvolumes"
mount -t btrfs -o subvolid=5,compress=zstd,noatime /dev/mapper/cryptroot /mnt
for sv in root home nix persist log; do
  btrfs subvolume create "/mnt/$sv"
done
# Snapshot of the pristine (empty) root, for roll-back-on-boot setups.
btrfs subvolume snapshot -r /mnt/root /mnt/root-blank

step "nix store"
bb=/mnt/nix/store/00000000000000000000000000000000-busybox
ck=/mnt/nix/store/11111111111111111111111111111111-ember-checker
mkdir -p "$bb/bin" "$ck/bin"
cp /bin/busybox "$bb/bin/busybox"
cp /checker.sh "$ck/bin/init"
chmod 0755 "$bb/bin/busybox" "$ck/bin/init"

btrfs subvolume list /mnt
sync
umount /mnt
cryptsetup close cryptroot

report vda1 /dev/vda1
report vda2 /dev/vda2
cryptsetup luksDump /dev/vda2 | grep -E '^(Label|[[:space:]]+[0-9]+: luks2|[[:space:]]+PBKDF|[[:space:]]+(Cipher|Cipher key):)' || true
sync

trap - EXIT
echo "EMBER-PROVISION-OK"
poweroff -f
while :; do sleep 3600; done
