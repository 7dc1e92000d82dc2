# `boot.initrd.ember` with impermanence-style persisted entries: owner, mode,
# hidden mounts and per-user entries, on a layout whose homes live on the
# root subvolume (no /home subvolume), so that they must be persisted.
# Owner names resolve through `users` below (for the module: config.users).
# tests/nix_eval.rs feeds to-config.nix's result to `ember check`.
{
  ember = {
    enable = true;
    luks.devices.cryptroot = {
      device = "PARTLABEL=luks";
      keyFile = "/etc/ember/keys/cryptroot.key";
    };
    btrfs = {
      device = "/dev/mapper/cryptroot";
      options = [ "compress=zstd" ];
      subvolumes = {
        "/".subvolume = "@";
        "/nix".subvolume = "@nix";
        "/persist".subvolume = "@persist";
      };
    };
    rollback = {
      enable = true;
      strategy = "empty";
      filesystem = "LABEL=nixos";
    };
    persist."/persist" = {
      hideMounts = true;
      files = [ "/etc/machine-id" ];
      directories = [
        "/var/lib/nixos"
        {
          directory = "/var/lib/private";
          mode = "0700";
          user = "root";
        }
        {
          directory = "/srv/www";
          user = "alice";
          group = "www";
          options = [ "nosuid" ];
        }
      ];
      users.alice = {
        files = [ ".bash_history" ];
        directories = [
          "Documents"
          {
            directory = ".ssh";
            mode = "0700";
          }
        ];
      };
    };
  };

  users = {
    users.alice = {
      isNormalUser = true;
      uid = 1000;
    };
    groups.www.gid = 33;
  };
}
