# The reference layout, as data: GPT with an EFI partition labelled `boot` and
# a LUKS2 partition labelled `luks`, opened as /dev/mapper/cryptroot, holding
# one Btrfs filesystem labelled `nixos` with subvolumes for /, /home, /nix,
# /persist and /var/log and a read-only blank snapshot of the empty root.
#
# The only description of that layout on the Nix side: ../disko-lib.nix
# formats it, and `boot.initrd.ember.referenceLayout` configures ember for it
# (see `options` below), so the two cannot drift apart. The same layout is
# the VM harness's reference disk (scripts/provision-disk,
# examples/reference.toml).
rec {
  espLabel = "boot";
  espSize = "512M";
  luksLabel = "luks";
  luksName = "cryptroot";
  btrfsLabel = "nixos";
  mountOptions = [
    "compress=zstd"
    "noatime"
  ];
  # mount point -> subvolume
  subvolumes = {
    "/" = "root";
    "/home" = "home";
    "/nix" = "nix";
    "/persist" = "persist";
    "/var/log" = "log";
  };
  blankSnapshot = "root-blank";

  # The `boot.initrd.ember` option values the layout implies. `unlock =
  # false` leaves unlocking to systemd-cryptsetup (TPM2, FIDO2, ...): ember
  # then only rolls back and persists.
  options =
    { unlock }:
    {
      luks.devices =
        if unlock then
          {
            ${luksName} = {
              device = "LABEL=${luksLabel}";
              allowDiscards = true;
            };
          }
        else
          { };
      btrfs = {
        device = "/dev/mapper/${luksName}";
        options = mountOptions;
        subvolumes = builtins.mapAttrs (_: subvolume: { inherit subvolume; }) subvolumes;
      };
      rollback = {
        filesystem = "LABEL=${btrfsLabel}";
        inherit blankSnapshot;
      };
    };
}
