# The whole NixOS module, evaluated with nixpkgs' `lib.evalModules` against
# stand-ins for the options it depends on (./stubs.nix) and a stand-in `pkgs`
# (nothing is built). Checks option types and merging, the reference-layout
# defaults, the generated systemd units and their ordering, the scripted
# stage-1 hooks, fileSystems, and the assertions; and that the module and the
# pure translation (lib/to-config.nix) produce the same config for the
# reference layout and every example host.
#
#   nix-instantiate --eval --strict --json nixos-module/eval/module-eval.nix \
#     --argstr nixpkgsLib /path/to/nixpkgs.lib    # a checkout with lib/
#
# (tests/nix_eval.rs runs it when EMBER_NIXPKGS_LIB is set.) Prints the names
# of the scenarios that passed, or fails listing every failed expectation.
{ nixpkgsLib }:
let
  lib = import (nixpkgsLib + "/lib");
  emberLib = import ../lib;
  expect = import ./expect.nix;
  reference = import ./reference.nix;

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  pkgs = {
    formats.json = _: {
      generate = name: value: fakeDrv name // { inherit value; };
    };
    runCommand = name: _env: script: fakeDrv name // { inherit script; };
    stdenv = {
      hostPlatform = { };
      buildPlatform.canExecute = _: true;
    };
    pkgsStatic.callPackage = _: _: throw "module-eval: the package is a stand-in; nothing is built";
  };
  package = fakeDrv "ember-0.1.0";

  eval =
    {
      modules,
      check ? true,
    }:
    (lib.evalModules {
      modules = [
        ./stubs.nix
        ../.
        {
          _module.args.pkgs = pkgs;
          _module.check = check;
          boot.initrd.ember.package = package;
        }
      ]
      ++ modules;
    }).config;

  failed = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  services = config: config.boot.initrd.systemd.services;

  ref = extra: {
    boot.initrd.ember = lib.mkMerge [
      reference
      extra
    ];
  };
  withRollback = ref { rollback.enable = true; };
  allSteps = [
    "rollback"
    "persist"
  ];

  systemdRef = eval { modules = [ withRollback ]; };
  scripted = eval {
    modules = [
      withRollback
      { boot.initrd.systemd.enable = false; }
    ];
  };

  # An impermanence-shaped option, to check that overlaps are caught.
  impermanenceStub =
    { lib, ... }:
    {
      options.environment.persistence = lib.mkOption {
        type = lib.types.attrsOf (lib.types.attrsOf lib.types.anything);
        default = { };
      };
    };

  hosts = {
    perseus = ../../examples/hosts/perseus.nix;
    archon = ../../examples/hosts/archon.nix;
    cadmus = ../../examples/hosts/cadmus.nix;
  };
  secretsFor = {
    boot.initrd.secrets."/etc/ember/keys/cryptroot.key" = "/root/cryptroot.key";
  };
in
expect.report (
  {
    systemd-units =
      expect.noFailures "reference + rollback" (failed systemdRef)
      ++ expect.units "module, reference + rollback" (services systemdRef) {
        unlock = true;
        rollback = true;
        persist = true;
        stops = allSteps;
        failureAction = null;
      }
      ++ expect.eq "config file in the initrd" (builtins.attrNames systemdRef.boot.initrd.systemd.contents) [
        "/etc/ember/config.json"
      ]
      ++ expect.contains "storePaths" systemdRef.boot.initrd.systemd.storePaths "${package}/bin/ember"
      ++ expect.eq "scripted hooks stay empty in systemd stage 1" [
        systemdRef.boot.initrd.postDeviceCommands
        systemdRef.boot.initrd.postResumeCommands
        systemdRef.boot.initrd.postMountCommands
        systemdRef.boot.initrd.extraUtilsCommands
      ] [ "" "" "" "" ]
      ++ expect.eq "forceLuksSupportInInitrd" systemdRef.boot.initrd.luks.forceLuksSupportInInitrd true
      ++ expect.contains "initrd kernelModules" systemdRef.boot.initrd.kernelModules "dm_crypt"
      ++ expect.contains "initrd kernelModules" systemdRef.boot.initrd.kernelModules "virtio_blk"
      ++ expect.eq "btrfs in stage 1" (systemdRef.boot.initrd.supportedFilesystems.btrfs or false) true;

    file-systems =
      let
        fs = systemdRef.fileSystems;
      in
      expect.eq "fileSystems" (builtins.attrNames fs) [
        "/"
        "/home"
        "/nix"
        "/persist"
        "/var/log"
      ]
      ++ expect.eq "fileSystems./persist" {
        inherit (fs."/persist") device fsType options neededForBoot;
      } {
        device = "/dev/mapper/cryptroot";
        fsType = "btrfs";
        options = [
          "subvol=persist"
          "compress=zstd"
          "noatime"
        ];
        neededForBoot = true;
      };

    # The module's generated config is the pure function's.
    settings-match-pure =
      expect.eq "settings (reference + rollback)" systemdRef.boot.initrd.ember.settings (
        emberLib.toConfig (reference // { rollback.enable = true; })
      )
      ++ expect.check (expect.hasInfix "ember check" systemdRef.boot.initrd.ember.configFile.script) "the config file is checked with `ember check` at build time";

    scripted-stage-1 =
      expect.noFailures "scripted" (failed scripted)
      ++ expect.eq "no systemd units in scripted stage 1" (services scripted) { }
      ++ expect.check (lib.hasInfix "ember rollback ||" scripted.boot.initrd.postResumeCommands) "postResumeCommands: ${scripted.boot.initrd.postResumeCommands}"
      ++ expect.check (lib.hasInfix "ember persist --sysroot /mnt-root ||" scripted.boot.initrd.postMountCommands) "postMountCommands: ${scripted.boot.initrd.postMountCommands}"
      ++ expect.check (lib.hasInfix "ember unlock ||" scripted.boot.initrd.postDeviceCommands) "postDeviceCommands: ${scripted.boot.initrd.postDeviceCommands}"
      ++ expect.check (lib.hasInfix "copy_bin_and_libs ${package}/bin/ember" scripted.boot.initrd.extraUtilsCommands) "extraUtilsCommands: ${scripted.boot.initrd.extraUtilsCommands}"
      ++ expect.eq "config file in the scripted initrd" (builtins.attrNames scripted.boot.initrd.extraFiles) [
        "/etc/ember/config.json"
      ];

    continue-on-failure =
      let
        c = eval {
          modules = [
            withRollback
            {
              boot.initrd.ember = {
                continueOnFailure = allSteps;
                onFailure = "reboot";
              };
            }
          ];
        };
      in
      expect.noFailures "continueOnFailure" (failed c)
      ++ expect.units "module, continueOnFailure" (services c) {
        unlock = true;
        rollback = true;
        persist = true;
        stops = [ ];
        failureAction = "reboot";
      };

    luks-conflict =
      let
        c = eval {
          modules = [
            withRollback
            { boot.initrd.luks.devices.cryptroot.device = "/dev/disk/by-label/luks"; }
          ];
        };
      in
      expect.assertionFails "ember and systemd-cryptsetup both unlock cryptroot" (failed c) [
        "boot.initrd.ember.luks.devices.cryptroot and boot.initrd.luks.devices.cryptroot both unlock LABEL=luks"
        "remove boot.initrd.luks.devices.cryptroot"
        "boot.initrd.ember.referenceLayout.unlock = false"
      ];

    keep-systemd-cryptsetup =
      let
        c = eval {
          modules = [
            (ref {
              referenceLayout.unlock = false;
              luks.devices = lib.mkForce { };
              rollback.enable = true;
            })
            {
              boot.initrd.luks.devices.cryptroot = {
                device = "/dev/disk/by-partlabel/luks";
                crypttabExtraOpts = [ "tpm2-device=auto" ];
              };
            }
          ];
        };
      in
      expect.noFailures "systemd-cryptsetup unlocks, ember rolls back and persists" (failed c)
      ++ expect.units "module, systemd-cryptsetup" (services c) {
        unlock = false;
        rollback = true;
        persist = true;
        stops = allSteps;
        failureAction = null;
      }
      ++ expect.eq "ember leaves forceLuksSupportInInitrd alone" c.boot.initrd.luks.forceLuksSupportInInitrd false
      ++ expect.eq "no LUKS in ember's config" c.boot.initrd.ember.settings.luks [ ];

    stage2-filesystem =
      let
        c = eval {
          modules = [
            (ref { persist."/persist".directories = [ "/data/db" ]; })
            {
              fileSystems."/data" = {
                device = "/dev/sdb1";
                fsType = "ext4";
              };
            }
          ];
        };
      in
      expect.assertionFails "persisted path on a stage-2 filesystem" (failed c) [
        "/data/db lies on fileSystems.\"/data\""
        "fileSystems.\"/data\".neededForBoot = true"
      ];

    duplicate-path =
      expect.assertionFails "duplicate persisted path" (failed (eval {
        modules = [ (ref { persist."/persist".files = [ "/etc/machine-id" ]; }) ];
      })) [ "/etc/machine-id is persisted more than once" ];

    persist-root-in-wiped-root =
      expect.assertionFails "persist root in the wiped root" (failed (eval {
        modules = [ (ref { persist."/state".directories = [ "/var/lib/foo" ]; rollback.enable = true; }) ];
      })) [
        "the persist root /state lies on subvolume `root`"
        "which ember wipes at every boot"
      ];

    # Another fileSystems definition (disko, hardware-configuration.nix) wins
    # over the module's mkDefault ones and must agree.
    filesystems-elsewhere =
      let
        agreeing = eval {
          modules = [
            withRollback
            {
              fileSystems."/home" = {
                device = "/dev/mapper/cryptroot";
                fsType = "btrfs";
                options = [
                  "compress=zstd"
                  "subvol=/home"
                ];
              };
            }
          ];
        };
        disagreeing = eval {
          modules = [
            withRollback
            {
              fileSystems."/home" = {
                device = "/dev/disk/by-label/home";
                fsType = "ext4";
              };
            }
          ];
        };
      in
      expect.noFailures "fileSystems./home written elsewhere, agreeing" (failed agreeing)
      ++ expect.eq "the other definition wins" agreeing.fileSystems."/home".options [
        "compress=zstd"
        "subvol=/home"
      ]
      ++ expect.eq "neededForBoot still set" agreeing.fileSystems."/home".neededForBoot true
      ++ expect.assertionFails "fileSystems./home disagreeing" (failed disagreeing) [
        "fileSystems.\"/home\" disagrees with boot.initrd.ember.btrfs.subvolumes.\"/home\""
      ];

    impermanence-overlap =
      expect.assertionFails "impermanence persists the same path" (failed (eval {
        modules = [
          impermanenceStub
          withRollback
          {
            environment.persistence."/persist".directories = [ { directory = "/var/lib/systemd"; } ];
          }
        ];
      })) [ "/var/lib/systemd is persisted by both boot.initrd.ember.persist and environment.persistence" ];

    reference-layout-overridable =
      let
        c = eval {
          modules = [
            (ref {
              btrfs.options = [ "compress=zstd:1" ];
              luks.devices.cryptroot.allowDiscards = false;
            })
          ];
        };
      in
      expect.noFailures "overridden reference layout" (failed c)
      ++ expect.eq "btrfs.options overridden" (builtins.head c.boot.initrd.ember.settings.btrfs).options [
        "compress=zstd:1"
      ]
      ++ expect.eq "allowDiscards overridden" (builtins.head c.boot.initrd.ember.settings.luks).allow_discards false
      ++ expect.eq "device kept from the reference layout" (builtins.head c.boot.initrd.ember.settings.luks).device "LABEL=luks";

    # Owner names resolve through config.users; per-user entries get the
    # user's ids and home; the result is the pure function's.
    persist-users =
      let
        personal = import ./persist-users.nix;
        c = eval {
          modules = [
            {
              boot.initrd.ember = personal.ember;
              inherit (personal) users;
              boot.initrd.secrets."/etc/ember/keys/cryptroot.key" = "/root/key";
            }
          ];
        };
        unresolved = eval {
          modules = [
            {
              boot.initrd.ember = lib.mkMerge [
                personal.ember
                { persist."/persist".users.bob.files = [ ".profile" ]; }
              ];
              inherit (personal) users;
            }
            { users.users.bob.isNormalUser = true; }
          ];
        };
      in
      expect.noFailures "persisted entries with owners" (failed c)
      ++ expect.eq "module settings = pure, with config.users' ids" c.boot.initrd.ember.settings (
        emberLib.toConfig (personal.ember // { _resolve = emberLib.resolveIds personal.users; })
      )
      ++ expect.eq "alice's ids from config.users" (
        builtins.head c.boot.initrd.ember.settings.persist
      ).users.alice.uid 1000
      ++ expect.assertionFails "a user without a fixed uid" (failed unresolved) [
        "no uid/gid known for `bob`"
        "users.users.bob.uid"
      ];

    option-types =
      let
        bad = builtins.tryEval (
          builtins.deepSeq
            (eval { modules = [ (ref { luks.devices.cryptroot.device = "sda2"; }) ]; }).boot.initrd.ember.settings
            true
        );
      in
      expect.eq "a device that is not LABEL=/UUID=/.../dev/... is refused by the option type" bad.success false;
  }
  // lib.mapAttrs' (
    name: host:
    let
      c = eval {
        # Hosts set NixOS options the stand-ins do not declare (boot.loader,
        # networking, ...): only the ones declared here are evaluated.
        modules = [
          host
          secretsFor
        ];
        check = false;
      };
    in
    lib.nameValuePair "host-${name}" (
      expect.noFailures "host ${name}" (failed c)
      ++ expect.eq "host ${name}: module settings = to-config.nix of the host's options" c.boot.initrd.ember.settings (
        emberLib.toConfig (emberLib.hostOptions (import host))
      )
      ++ (
        if c.boot.initrd.systemd.enable then
          expect.units "host ${name}" (services c) {
            unlock = c.boot.initrd.ember.settings.luks != [ ];
            rollback = true;
            persist = true;
            stops = lib.subtractLists c.boot.initrd.ember.continueOnFailure allSteps;
            failureAction =
              {
                rescue = null;
                reboot = "reboot";
                halt = "halt";
                poweroff = "poweroff";
              }
              .${c.boot.initrd.ember.onFailure};
          }
        else
          expect.check (lib.hasInfix "ember rollback" c.boot.initrd.postResumeCommands) "host ${name}: scripted stage 1 without the rollback hook"
      )
    )
  ) hosts
)
