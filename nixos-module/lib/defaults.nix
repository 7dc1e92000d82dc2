# Default values of the `boot.initrd.ember` options, shared by the option
# declarations (../options.nix) and the pure translation (./normalize.nix), so
# that a host's options mean the same thing with and without the module system.
# They follow ember's own defaults (src/config/schema.rs) where both exist.
{
  # ember's `init`; only read when ember itself is the initrd's /init (the VM
  # harness). In NixOS the kernel's `init=` always wins.
  init = "/nix/var/nix/profiles/system/init";
  deviceTimeout = 30;
  onFailure = "rescue";
  continueOnFailure = [ ];
  kernelModules = [ ];

  luksDevice = {
    keyFile = null;
    keys = [ ];
    passphraseTimeout = null;
    passphraseTries = 3;
    allowDiscards = false;
  };

  btrfs = {
    options = [ ];
  };

  subvolume = {
    options = [ ];
    neededForBoot = true;
  };

  rollback = {
    enable = false;
    # null: the subvolume mounted at "/".
    subvolume = null;
    strategy = "blank";
    blankSnapshot = "root-blank";
    filesystem = null;
    archiveDir = "old_roots";
    keepDays = null;
    keepCount = null;
    onGuardFailure = "continue";
  };

  persistRoot = {
    enable = true;
    files = [ ];
    directories = [ ];
  };
}
