# archon: a server. The reference layout on a SATA SSD, but the LUKS device
# stays with systemd-cryptsetup, which unlocks it with the TPM2 (enrolled with
# `systemd-cryptenroll --tpm2-device=auto /dev/disk/by-partlabel/luks`):
# ember only rolls the root back (keeping the old roots for a month) and
# binds the persisted state. Unattended: a failed step reboots, and a failed
# rollback boots the previous root rather than nothing.
{ ... }:
{
  imports = [
    ../../nixos-module
    (import ../../nixos-module/disko-lib.nix { device = "/dev/sda"; })
  ];

  boot.initrd.luks.devices.cryptroot = {
    device = "/dev/disk/by-partlabel/luks";
    allowDiscards = true;
    crypttabExtraOpts = [ "tpm2-device=auto" ];
  };
  boot.initrd.systemd.tpm2.enable = true;

  boot.initrd.ember = {
    enable = true;
    referenceLayout = {
      enable = true;
      unlock = false;
    };
    kernelModules = [
      "ahci"
      "sd_mod"
    ];
    onFailure = "reboot";
    continueOnFailure = [ "rollback" ];
    rollback = {
      enable = true;
      strategy = "archive";
      keepDays = 30;
      keepCount = 10;
    };
    persist."/persist" = {
      files = [ "/etc/machine-id" ];
      directories = [
        "/var/lib/nixos"
        "/var/lib/systemd"
        "/var/lib/postgresql"
        "/srv"
      ];
    };
  };

  services.openssh = {
    enable = true;
    hostKeys = [
      {
        path = "/persist/etc/ssh/ssh_host_ed25519_key";
        type = "ed25519";
      }
    ];
  };

  networking.hostName = "archon";
  boot.loader.systemd-boot.enable = true;
  system.stateVersion = "26.05";
}
