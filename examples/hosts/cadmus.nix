# cadmus: a virtual machine (virtio disk) that still uses the scripted stage 1
# (boot.initrd.systemd.enable = false), the legacy fallback: ember runs from
# the stage-1 hooks instead of systemd units. The LUKS key is a keyfile in the
# initrd, and the root starts from an empty subvolume at every boot.
{ ... }:
{
  imports = [
    ../../nixos-module
    (import ../../nixos-module/disko-lib.nix {
      device = "/dev/vda";
      # formatted with the same key the initrd gets below
      keyFile = "/tmp/cryptroot.key";
    })
  ];

  boot.initrd.systemd.enable = false;
  boot.initrd.secrets."/etc/ember/keys/cryptroot.key" = "/root/cryptroot.key";

  boot.initrd.ember = {
    enable = true;
    referenceLayout.enable = true;
    kernelModules = [
      "virtio_pci"
      "virtio_blk"
    ];
    luks.devices.cryptroot.keyFile = "/etc/ember/keys/cryptroot.key";
    rollback = {
      enable = true;
      strategy = "empty";
    };
    persist."/persist" = {
      files = [ "/etc/machine-id" ];
      directories = [
        "/var/lib/nixos"
        "/var/lib/systemd"
      ];
    };
  };

  networking.hostName = "cadmus";
  boot.loader.systemd-boot.enable = true;
  system.stateVersion = "26.05";
}
