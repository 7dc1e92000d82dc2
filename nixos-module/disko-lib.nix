# ember's reference layout as a disko configuration:
#
#   imports = [ (ember.lib.diskoLayout { device = "/dev/nvme0n1"; }) ];
#
# returns `{ disko.devices = ...; }` (a module, like disko's examples):
#
#   GPT  "boot"  EFI system partition, vfat labelled `boot`, mounted at /boot
#        "luks"  LUKS2 labelled `luks`, opened as /dev/mapper/cryptroot
#                  Btrfs labelled `nixos`, subvolumes root home nix persist log
#                  at / /home /nix /persist /var/log (compress=zstd,noatime)
#                  + read-only `root-blank`: the empty root, snapshotted when
#                  the filesystem is created, for ember's rollback
#
# The LUKS device is left to ember (`initrdUnlock = false`): nothing is added
# to boot.initrd.luks.devices. Pair it with
# `boot.initrd.ember.referenceLayout.enable = true`, which describes the same
# layout (both read ./lib/reference-layout.nix). Builtins only, so it
# evaluates without nixpkgs.
{
  # The whole disk, e.g. "/dev/nvme0n1" or "/dev/disk/by-id/...".
  device,
  # A file holding the key to format with (disko's `settings.keyFile`; the
  # same key then goes to boot.initrd.secrets for ember). null: disko asks
  # for a passphrase when formatting.
  keyFile ? null,
  espSize ? null,
  # Extra `cryptsetup luksFormat` arguments (e.g. [ "--pbkdf" "argon2id" ]).
  luksFormatArgs ? [ ],
  ...
}:
let
  r = import ./lib/reference-layout.nix;
  subvolumes = builtins.listToAttrs (
    map (mountpoint: {
      name = r.subvolumes.${mountpoint};
      value = {
        inherit mountpoint;
        mountOptions = r.mountOptions;
      };
    }) (builtins.attrNames r.subvolumes)
  );
in
{
  disko.devices.disk.main = {
    type = "disk";
    inherit device;
    content = {
      type = "gpt";
      partitions = {
        boot = {
          # GPT partition name (PARTLABEL=boot)
          label = r.espLabel;
          priority = 1;
          size = if espSize == null then r.espSize else espSize;
          type = "EF00";
          content = {
            type = "filesystem";
            format = "vfat";
            extraArgs = [
              "-n"
              r.espLabel
            ];
            mountpoint = "/boot";
            mountOptions = [ "umask=0077" ];
          };
        };
        luks = {
          label = r.luksLabel;
          size = "100%";
          content = {
            type = "luks";
            name = r.luksName;
            # ember unlocks it, not systemd-cryptsetup.
            initrdUnlock = false;
            extraFormatArgs = [
              "--type"
              "luks2"
              "--label"
              r.luksLabel
            ]
            ++ luksFormatArgs;
            settings = {
              allowDiscards = true;
            }
            // (if keyFile == null then { } else { inherit keyFile; });
            content = {
              type = "btrfs";
              extraArgs = [
                "-f"
                "-L"
                r.btrfsLabel
              ];
              inherit subvolumes;
              postCreateHook = ''
                # The blank snapshot ember's rollback starts from: the root
                # subvolume as created, still empty. Only once: formatting
                # again must not snapshot a root that has been used.
                (
                  top=$(mktemp -d)
                  mount -t btrfs -o subvolid=5 /dev/mapper/${r.luksName} "$top"
                  trap 'umount "$top"; rm -rf "$top"' EXIT
                  if ! btrfs subvolume show "$top/${r.blankSnapshot}" >/dev/null 2>&1; then
                    btrfs subvolume snapshot -r "$top/${r.subvolumes."/"}" "$top/${r.blankSnapshot}"
                  fi
                )
              '';
            };
          };
        };
      };
    };
  };
}
