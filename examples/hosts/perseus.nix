# perseus: a laptop. The reference layout on its NVMe disk, unlocked with a
# passphrase typed at boot, the root rolled back to blank at every boot, and
# what must survive kept in /persist. docs/nixos.md walks through adding
# ember to this host.
#
# In a flake, use `inputs.ember.nixosModules.default` and
# `inputs.ember.lib.diskoLayout` instead of the relative paths, and add
# `inputs.disko.nixosModules.disko` to the host's modules.
{ ... }:
{
  imports = [
    ../../nixos-module
    (import ../../nixos-module/disko-lib.nix { device = "/dev/nvme0n1"; })
  ];

  boot.initrd.ember = {
    enable = true;
    referenceLayout.enable = true;
    kernelModules = [ "nvme" ];
    rollback.enable = true;
    persist."/persist" = {
      hideMounts = true;
      files = [ "/etc/machine-id" ];
      directories = [
        "/var/lib/nixos"
        "/var/lib/systemd"
        "/var/lib/bluetooth"
        "/etc/NetworkManager/system-connections"
        # systemd's DynamicUser= state: must stay 0700
        {
          directory = "/var/lib/private";
          mode = "0700";
        }
      ];
    };
  };

  # sshd creates its host keys where it is told: straight in /persist.
  services.openssh.hostKeys = [
    {
      path = "/persist/etc/ssh/ssh_host_ed25519_key";
      type = "ed25519";
    }
  ];

  networking.hostName = "perseus";
  networking.networkmanager.enable = true;
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  users.mutableUsers = false;
  users.users.root.hashedPasswordFile = "/persist/secrets/root.hash";
  system.stateVersion = "26.05";
}
