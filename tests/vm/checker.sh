#!/nix/store/00000000000000000000000000000000-busybox/bin/busybox sh
# ember VM test "real init".
#
# Provisioned into the reference disk as
#   /nix/store/11111111111111111111111111111111-ember-checker/bin/init
# and exec'd as PID 1 by ember after switch_root. The root filesystem is the
# (otherwise empty) `root` subvolume, so nothing but the busybox binary in the
# nix store exists: every command goes through $BB explicitly (see below).
#
# Behaviour is selected on the kernel command line:
#   checker.phase=1                       checks, then writes a fresh id
#   checker.phase=2 checker.expect_id=ID  checks, then verifies the id survived
#
# Output (console), one machine-readable line each:
#   EMBER-CHECK ok <name>
#   EMBER-CHECK fail <name> <detail>
#   EMBER-CHECK id=<id>                   (phase 1 only)
#   EMBER-CHECK done passed=<n> failed=<m>
# then `poweroff -f`. Never exits: PID 1 exiting would panic the kernel.
#
# Deliberately no `set -e`: a failing check must be reported, not abort the run.

BB=/nix/store/00000000000000000000000000000000-busybox/bin/busybox
set -f # no globbing: we split /proc/cmdline and mountinfo lines on whitespace

# Route every applet we use through the absolute busybox path so the script
# works even if the busybox build lacks FEATURE_SH_STANDALONE and no PATH exists.
for applet in cat dd grep mount mkdir od tr sync poweroff sleep head sed cut; do
  eval "$applet() { \"\$BB\" $applet \"\$@\"; }"
done
export PATH=/nix/store/00000000000000000000000000000000-busybox/bin

# ember hands /proc, /sys, /dev over (MS_MOVE); mount them only if it did not,
# so the checks below can still report instead of crashing.
[ -e /proc/self/mountinfo ] || { mkdir -p /proc; mount -t proc proc /proc; }
[ -d /sys/class ] || { mkdir -p /sys; mount -t sysfs sysfs /sys; }
[ -e /dev/null ] || { mkdir -p /dev; mount -t devtmpfs devtmpfs /dev; }

# Talk to the console explicitly: whatever fds ember left us, the harness reads
# the serial console.
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

passed=0
failed=0
ok() { echo "EMBER-CHECK ok $1"; passed=$((passed + 1)); }
fail() { local n="$1"; shift; echo "EMBER-CHECK fail $n $*"; failed=$((failed + 1)); }
check() { # check NAME DETAIL-IF-FAILING COMMAND...
  local n="$1" d="$2"
  shift 2
  if "$@"; then ok "$n"; else fail "$n" "$d"; fi
}

finish() {
  echo "EMBER-CHECK done passed=$passed failed=$failed"
  sync
  poweroff -f
  # poweroff -f should not return; if it does, do not let PID 1 exit (panic).
  while :; do sleep 3600; done
}

# --- command line -----------------------------------------------------------
cmdline=$(cat /proc/cmdline 2>/dev/null)
phase=""
expect_id=""
for arg in $cmdline; do
  case $arg in
    checker.phase=*) phase=${arg#checker.phase=} ;;
    checker.expect_id=*) expect_id=${arg#checker.expect_id=} ;;
  esac
done
echo "EMBER-CHECK start phase=${phase:-none}"
case $phase in
  1) ;;
  2) [ -n "$expect_id" ] || { fail cmdline "checker.phase=2 without checker.expect_id"; finish; } ;;
  *) fail cmdline "missing or bad checker.phase (cmdline: $cmdline)"; finish ;;
esac

# --- devices ----------------------------------------------------------------
check by-label-boot "/dev/disk/by-label/boot missing" [ -e /dev/disk/by-label/boot ]
check by-label-luks "/dev/disk/by-label/luks missing" [ -e /dev/disk/by-label/luks ]
check cryptroot-block "/dev/mapper/cryptroot missing or not a block device" [ -b /dev/mapper/cryptroot ]
# Btrfs superblock magic lives at 64 KiB + 0x40 = 0x10040 = 65600 = 8200 * 8.
magic=$(dd if=/dev/mapper/cryptroot bs=8 skip=8200 count=1 2>/dev/null)
check cryptroot-btrfs "no btrfs magic at 0x10040 (got '$magic')" [ "$magic" = "_BHRfS_M" ]

# --- mounts -----------------------------------------------------------------
# mountinfo fields: id parent maj:min ROOT MOUNTPOINT MOUNT-OPTS [optional...] - FSTYPE SOURCE SUPER-OPTS
# Prints the LAST (i.e. top-most) line for a mount point, or nothing.
mi_line() {
  grep -E "^[0-9]+ [0-9]+ [0-9]+:[0-9]+ [^ ]+ $1 " /proc/self/mountinfo | sed -n '$p'
}
mi_count() {
  grep -cE "^[0-9]+ [0-9]+ [0-9]+:[0-9]+ [^ ]+ $1 " /proc/self/mountinfo
}
# Splits a mountinfo line into mi_root mi_mopts mi_fstype mi_sopts.
mi_parse() {
  set -- $1
  mi_root=$4 mi_mopts=$6
  shift 6
  while [ $# -gt 0 ] && [ "$1" != "-" ]; do shift; done
  mi_fstype=$2 mi_sopts=$4
}
has_opt() { # has_opt OPTLIST OPT-REGEX
  echo ",$1," | grep -qE ",$2,"
}

check_subvol_mount() { # NAME MOUNTPOINT SUBVOL-PATH
  local name="$1" mp="$2" sv="$3" line problems
  line=$(mi_line "$mp")
  if [ -z "$line" ]; then fail "$name" "$mp not mounted"; return; fi
  mi_parse "$line"
  problems=""
  [ "$mi_fstype" = btrfs ] || problems="$problems fstype=$mi_fstype"
  [ "$mi_root" = "$sv" ] || problems="$problems root=$mi_root(want $sv)"
  has_opt "$mi_mopts" noatime || problems="$problems no-noatime($mi_mopts)"
  has_opt "$mi_sopts" 'compress=zstd(:[0-9]+)?' || problems="$problems no-compress=zstd($mi_sopts)"
  if [ -z "$problems" ]; then ok "$name"; else fail "$name" "$mp:$problems"; fi
}
check_subvol_mount mount-root / /root
check_subvol_mount mount-home /home /home
check_subvol_mount mount-nix /nix /nix
check_subvol_mount mount-persist /persist /persist
check_subvol_mount mount-var-log /var/log /log

check_bind() { # NAME MOUNTPOINT ROOT-IN-FS
  local name="$1" mp="$2" want="$3" line
  line=$(mi_line "$mp")
  if [ -z "$line" ]; then fail "$name" "$mp not mounted"; return; fi
  mi_parse "$line"
  if [ "$mi_fstype" = btrfs ] && [ "$mi_root" = "$want" ]; then
    ok "$name"
  else
    fail "$name" "$mp: fstype=$mi_fstype root=$mi_root (want btrfs $want)"
  fi
}
check_bind bind-machine-id /etc/machine-id /persist/etc/machine-id
check_bind bind-var-lib-systemd /var/lib/systemd /persist/var/lib/systemd

n=$(mi_count /var/log)
check var-log-not-stacked "/var/log mounted $n times (want exactly 1)" [ "$n" = 1 ]

# --- phase-specific -----------------------------------------------------------
if [ "$phase" = 1 ]; then
  # 16 random bytes -> 32 lowercase hex chars.
  id=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  # Write through the persist subvolume (the bind source); /etc/machine-id
  # must then show it, proving the bind mount is live.
  if echo "$id" >/persist/etc/machine-id && echo "$id" >/home/ember-marker; then
    sync
    got=$(cat /etc/machine-id 2>/dev/null)
    check id-written "/etc/machine-id reads '$got' after writing /persist/etc/machine-id" [ "$got" = "$id" ]
    echo "EMBER-CHECK id=$id"
  else
    fail id-written "could not write /persist/etc/machine-id or /home/ember-marker"
  fi
else
  got=$(cat /etc/machine-id 2>/dev/null)
  check machine-id-persisted "/etc/machine-id='$got' want '$expect_id'" [ "$got" = "$expect_id" ]
  got=$(cat /home/ember-marker 2>/dev/null)
  check home-marker-survived "/home/ember-marker='$got' want '$expect_id'" [ "$got" = "$expect_id" ]
fi

finish
