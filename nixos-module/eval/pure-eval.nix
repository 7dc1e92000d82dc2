# ember's Nix library evaluated on its own, with builtins only (no nixpkgs):
# systemd unit ordering, scripted stage-1 hooks, assertions, path escaping
# and the disko layout. Run by tests/nix_eval.rs:
#
#   nix-instantiate --eval --strict --json nixos-module/eval/pure-eval.nix
#
# prints the names of the scenarios that passed, or fails listing every
# failed expectation. The whole module (option types, merging, mkDefault
# priorities) is evaluated by ./module-eval.nix, which needs nixpkgs' lib.
let
  emberLib = import ../lib;
  expect = import ./expect.nix;
  reference = import ./reference.nix;
  inherit (builtins) filter map removeAttrs;

  exe = "/nix/store/00000000000000000000000000000000-ember/bin/ember";
  unitsOf = opts: emberLib.units { n = emberLib.normalize opts; inherit exe; };

  # fileSystems as the module defines them from ember's options.
  emberFileSystems =
    n:
    map (sv: {
      name = sv.mountPoint;
      inherit (sv) mountPoint neededForBoot;
      inherit (n.btrfs) device;
      fsType = "btrfs";
      options = [ "subvol=${sv.subvolume}" ] ++ n.btrfs.options ++ sv.options;
    }) n.btrfs.subvolumes;

  checksOf =
    opts: facts:
    let
      n = emberLib.normalize opts;
      fsOverride = facts.fileSystems or [ ];
      overridden = map (fs: fs.mountPoint) fsOverride;
      r = emberLib.checks (
        {
          inherit n;
          fileSystems =
            filter (fs: !(builtins.elem fs.mountPoint overridden)) (emberFileSystems n) ++ fsOverride;
          secrets = [ "/etc/ember/keys/cryptroot.key" ];
        }
        // removeAttrs facts [ "fileSystems" ]
      );
    in
    {
      failed = map (a: a.message) (filter (a: !a.assertion) r.assertions);
      inherit (r) warnings;
    };

  withRollback = reference // {
    rollback.enable = true;
  };
  allSteps = [
    "rollback"
    "persist"
  ];

  personal = import ./persist-users.nix;
  personalOptions = personal.ember // {
    _resolve = emberLib.resolveIds personal.users;
  };

  disko = (import ../disko-lib.nix { device = "/dev/vda"; }).disko.devices.disk.main;
  luks = disko.content.partitions.luks;
  btrfs = luks.content.content;
  layout = emberLib.referenceLayout;
  persist-entries =
    let
      p = builtins.head (emberLib.toConfig personalOptions).persist;
    in
    expect.eq "root options (hideMounts)" p.options [ "x-gvfs-hide" ]
    ++ expect.eq "plain entries stay paths" (builtins.head p.directories) "/var/lib/nixos"
    ++ expect.eq "owner names resolve to ids" (builtins.elemAt p.directories 2) {
      path = "/srv/www";
      user = 1000;
      group = 33;
      options = [ "nosuid" ];
    }
    ++ expect.eq "root is 0" (builtins.elemAt p.directories 1) {
      path = "/var/lib/private";
      mode = "0700";
      user = 0;
    }
    ++ expect.eq "per-user entries" p.users.alice {
      uid = 1000;
      gid = 100;
      home = "/home/alice";
      files = [ ".bash_history" ];
      directories = [
        "Documents"
        {
          path = ".ssh";
          mode = "0700";
        }
      ];
    }
    ++ expect.noFailures "persisted entries with owners" (checksOf personalOptions { }).failed;

  checks-unresolved-owner =
    expect.assertionFails "unknown owner name" (checksOf (
      personalOptions
      // {
        persist."/persist".directories = [
          {
            directory = "/srv/git";
            user = "git";
          }
        ];
      }
    ) { }).failed
      [
        "/srv/git is owned by \"git\""
        "users.users.<name>.uid"
      ]
    ++ expect.assertionFails "per-user entries without ids" (checksOf (
      personalOptions
      // {
        persist."/persist".users.bob.files = [ ".profile" ];
      }
    ) { }).failed
      [ "users.bob: no uid/gid known for `bob`" ];

  checks-duplicate-home-path =
    expect.assertionFails "a home path persisted twice" (checksOf (
      personalOptions
      // {
        persist."/persist" = personal.ember.persist."/persist" // {
          directories = [ "/home/alice/Documents" ];
        };
      }
    ) { }).failed
      [ "/home/alice/Documents is persisted more than once" ];

  escape = emberLib.paths.escapeSystemdPath;
in
expect.report {
  units-reference = expect.units "reference" (unitsOf reference).services {
    unlock = true;
    rollback = false;
    persist = true;
    stops = allSteps;
    failureAction = null;
  };

  units-rollback = expect.units "rollback" (unitsOf withRollback).services {
    unlock = true;
    rollback = true;
    persist = true;
    stops = allSteps;
    failureAction = null;
  };

  units-continue-on-failure =
    expect.units "continueOnFailure" (unitsOf (withRollback // { continueOnFailure = allSteps; })).services
      {
        unlock = true;
        rollback = true;
        persist = true;
        stops = [ ];
        failureAction = null;
      };

  units-halt =
    expect.units "onFailure = halt" (unitsOf (withRollback // { onFailure = "halt"; })).services
      {
        unlock = true;
        rollback = true;
        persist = true;
        stops = allSteps;
        failureAction = "halt";
      };

  # systemd-cryptsetup keeps the LUKS device; ember rolls back and persists.
  units-keep-cryptsetup =
    expect.units "referenceLayout.unlock = false"
      (unitsOf (
        withRollback
        // {
          referenceLayout = {
            enable = true;
            unlock = false;
          };
          luks = { };
        }
      )).services
      {
        unlock = false;
        rollback = true;
        persist = true;
        stops = allSteps;
        failureAction = null;
      };

  units-passphrase =
    let
      u =
        (unitsOf (
          reference
          // {
            luks = { };
          }
        )).services.ember-unlock;
    in
    expect.eq "passphrase: ember-unlock StandardInput" (u.serviceConfig.StandardInput or null) "tty"
    ++ expect.eq "passphrase: ember-unlock TimeoutStartSec" (u.serviceConfig.TimeoutStartSec or null) "infinity";

  scripted =
    let
      s = (unitsOf withRollback).scripted;
    in
    expect.check (expect.hasInfix "ember unlock ||" s.postDeviceCommands) "postDeviceCommands: ${s.postDeviceCommands}"
    ++ expect.check (expect.hasInfix "ember rollback ||" s.postResumeCommands) "postResumeCommands: ${s.postResumeCommands}"
    ++ expect.check (expect.hasInfix "ember persist --sysroot /mnt-root ||" s.postMountCommands) "postMountCommands: ${s.postMountCommands}"
    ++ expect.check (expect.hasInfix "fail" s.postMountCommands) "postMountCommands must call stage 1's fail: ${s.postMountCommands}";

  checks-reference = expect.noFailures "reference" (checksOf withRollback { }).failed;

  checks-luks-same-name =
    expect.assertionFails "same LUKS name" (checksOf reference {
      initrdLuksDevices.cryptroot.device = "/dev/disk/by-uuid/0000";
    }).failed
      [
        "boot.initrd.ember.luks.devices.cryptroot and boot.initrd.luks.devices.cryptroot"
        "remove boot.initrd.luks.devices.cryptroot"
        "referenceLayout.unlock = false"
      ];

  checks-luks-same-device =
    expect.assertionFails "same LUKS device" (checksOf reference {
      initrdLuksDevices.root.device = "/dev/disk/by-label/luks";
    }).failed
      [
        "boot.initrd.luks.devices.root"
        "LABEL=luks"
      ];

  checks-stage2-only =
    expect.assertionFails "persisted path on a stage-2 filesystem" (checksOf (
      reference
      // {
        persist."/persist".directories = [ "/data/db" ];
      }
    ) {
      fileSystems = [
        {
          name = "/data";
          mountPoint = "/data";
          device = "/dev/sdb1";
          fsType = "ext4";
          options = [ "defaults" ];
          neededForBoot = false;
        }
      ];
    }).failed
      [
        "/data/db"
        "fileSystems.\"/data\".neededForBoot = true"
      ];

  checks-stage2-subvolume =
    expect.assertionFails "persisted path on a subvolume mounted in stage 2" (checksOf (
      reference
      // {
        btrfs.subvolumes."/home".neededForBoot = false;
        persist."/persist".directories = [ "/home/alice/.ssh" ];
      }
    ) { }).failed
      [
        "/home/alice/.ssh"
        "btrfs.subvolumes.\"/home\".neededForBoot = true"
      ];

  checks-duplicate =
    expect.assertionFails "duplicate path" (checksOf (
      reference
      // {
        persist."/persist".directories = [
          "/var/lib/systemd"
          "/var/lib/systemd/"
        ];
      }
    ) { }).failed
      [
        "/var/lib/systemd is persisted more than once"
      ];

  checks-persist-root-in-wiped-root =
    expect.assertionFails "persist root on the root subvolume" (checksOf (
      withRollback
      // {
        persist = {
          "/state".files = [ "/etc/machine-id" ];
        };
      }
    ) { }).failed
      [
        "persist root /state"
        "which ember wipes at every boot"
      ];

  checks-filesystems-disagree =
    expect.assertionFails "fileSystems disagree" (checksOf reference {
      fileSystems = [
        {
          name = "/home";
          mountPoint = "/home";
          device = "/dev/sda3";
          fsType = "ext4";
          options = [ "defaults" ];
          neededForBoot = false;
        }
      ];
    }).failed
      [
        "fileSystems.\"/home\" disagrees"
        "subvol=home"
      ];

  checks-rollback-needs-filesystem =
    expect.assertionFails "rollback without a filesystem identity" (checksOf (
      withRollback
      // {
        rollback = {
          enable = true;
          filesystem = null;
        };
      }
    ) { }).failed
      [ "rollback.filesystem is not set" ];

  checks-impermanence-overlap =
    expect.assertionFails "impermanence overlap" (checksOf reference {
      otherPersistence = [
        {
          option = "environment.persistence.\"/persist\"";
          path = "/var/lib/systemd";
        }
      ];
    }).failed
      [
        "/var/lib/systemd is persisted by both"
      ];

  checks-keyfile-warning =
    expect.check (
      builtins.any (expect.hasInfix "boot.initrd.secrets does not put a file there")
        (checksOf reference { secrets = [ ]; }).warnings
    ) "a keyFile missing from boot.initrd.secrets must warn";

  escape =
    expect.eq "escape /sysroot" (escape "/sysroot") "sysroot"
    ++ expect.eq "escape /" (escape "/") "-"
    ++ expect.eq "escape /sysroot/var/log/" (escape "/sysroot/var/log/") "sysroot-var-log"
    ++ expect.eq "escape by-uuid" (escape "/dev/disk/by-uuid/ab-12") "dev-disk-by\\x2duuid-ab\\x2d12"
    ++ expect.eq "escape leading dot" (escape "/.snapshots") "\\x2esnapshots"
    ++ expect.eq "device unit" (emberLib.paths.deviceUnit "LABEL=nixos") "dev-disk-by\\x2dlabel-nixos.device";

  disko-layout =
    expect.eq "ESP partition label" disko.content.partitions.boot.label layout.espLabel
    ++ expect.eq "ESP vfat label" disko.content.partitions.boot.content.extraArgs [
      "-n"
      "boot"
    ]
    ++ expect.eq "LUKS partition label" luks.label "luks"
    ++ expect.eq "LUKS name" luks.content.name "cryptroot"
    ++ expect.eq "disko must leave unlocking to ember" luks.content.initrdUnlock false
    ++ expect.contains "luksFormat arguments" luks.content.extraFormatArgs "luks2"
    ++ expect.eq "Btrfs label" btrfs.extraArgs [
      "-f"
      "-L"
      "nixos"
    ]
    ++ expect.eq "subvolumes" (builtins.mapAttrs (_: sv: sv.mountpoint) btrfs.subvolumes) {
      root = "/";
      home = "/home";
      nix = "/nix";
      persist = "/persist";
      log = "/var/log";
    }
    ++ expect.check (builtins.all (sv: sv.mountOptions == [
      "compress=zstd"
      "noatime"
    ]) (builtins.attrValues btrfs.subvolumes)) "every subvolume is mounted compress=zstd,noatime"
    ++ expect.check (expect.hasInfix "btrfs subvolume snapshot -r \"$top/root\" \"$top/root-blank\"" btrfs.postCreateHook) "the blank snapshot is created at format time: ${btrfs.postCreateHook}";
}
