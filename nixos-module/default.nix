# The ember NixOS module: `imports = [ <ember>/nixos-module ];` (or the
# flake's `nixosModules.default`), then set `boot.initrd.ember`.
#
# Everything that can be computed without nixpkgs lives in ./lib (pure,
# builtins only, tested by tests/nix_eval.rs); this file only wires it into
# NixOS:
#
#   options      ./options.nix (typed, described; defaults in ./lib/defaults.nix)
#   config file  ./lib/to-config.nix -> pkgs.formats.json, checked by `ember check`
#   units        ./lib/units.nix (systemd stage 1) or the scripted stage-1 hooks
#   fileSystems  from boot.initrd.ember.btrfs, at mkDefault priority
#   assertions   ./lib/checks.nix
#
# docs/nixos.md explains the design and how to adopt it.
{
  config,
  lib,
  options,
  ...
}:
let
  cfg = config.boot.initrd.ember;
  emberLib = import ./lib;

  # The reference layout is already part of `cfg` (as mkDefault definitions
  # below); the pure functions must not apply it a second time.
  n = emberLib.normalize (emberLib.moduleInput config);

  systemdStage1 = config.boot.initrd.systemd.enable;
  exe = "${cfg.package}/bin/ember";
  units = emberLib.units { inherit n exe; };
  unlocks = n.luks != [ ];

  persistedElsewhere =
    let
      entries =
        option: root:
        map (e: {
          option = "${option}.${builtins.toJSON root.name}";
          path = if builtins.isString e then e else e.directory or e.file;
        }) ((root.directories or [ ]) ++ (root.files or [ ]));
      impermanence = lib.optionals (lib.hasAttrByPath [ "environment" "persistence" ] options) (
        lib.concatLists (
          lib.mapAttrsToList (
            name: root: lib.optionals (root.enable or true) (entries "environment.persistence" (root // { inherit name; }))
          ) config.environment.persistence
        )
      );
      preservation = lib.optionals (lib.hasAttrByPath [ "preservation" "preserveAt" ] options) (
        lib.optionals (config.preservation.enable or false) (
          lib.concatLists (
            lib.mapAttrsToList (
              name: root: entries "preservation.preserveAt" (root // { inherit name; })
            ) config.preservation.preserveAt
          )
        )
      );
    in
    impermanence ++ preservation;

  checks = emberLib.checks {
    inherit n;
    fileSystems = lib.mapAttrsToList (name: fs: {
      inherit name;
      inherit (fs)
        mountPoint
        device
        fsType
        options
        neededForBoot
        ;
    }) config.fileSystems;
    initrdLuksDevices = config.boot.initrd.luks.devices;
    secrets = builtins.attrNames config.boot.initrd.secrets;
    otherPersistence = persistedElsewhere;
  };
in
{
  imports = [ ./options.nix ];

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      (lib.mkIf cfg.referenceLayout.enable {
        boot.initrd.ember = lib.mapAttrsRecursive (_: lib.mkDefault) (
          emberLib.referenceLayout.options { inherit (cfg.referenceLayout) unlock; }
        );
      })

      {
        inherit (checks) assertions warnings;

        # What ember's options describe, unless fileSystems are written
        # elsewhere (disko, hardware-configuration.nix); the assertions then
        # check that both agree.
        fileSystems = lib.mapAttrs (_: fs: {
          device = lib.mkDefault fs.device;
          fsType = lib.mkDefault fs.fsType;
          options = lib.mkDefault fs.options;
          neededForBoot = lib.mkIf fs.neededForBoot true;
        }) cfg.fileSystems;

        boot.initrd.supportedFilesystems.btrfs = true;
        boot.initrd.kernelModules =
          cfg.kernelModules
          ++ lib.optionals unlocks [
            "dm_mod"
            "dm_crypt"
          ];
        # dm-crypt, the crypto modules, device-mapper's udev rules (so that
        # /dev/mapper/<name> gets its systemd device unit) and the cryptsetup
        # targets, without a boot.initrd.luks.devices entry.
        boot.initrd.luks.forceLuksSupportInInitrd = lib.mkIf unlocks true;
      }

      (lib.mkIf systemdStage1 {
        boot.initrd.systemd = {
          contents."/etc/ember/config.json".source = cfg.configFile;
          storePaths = [ exe ];
          # `ember status` in the emergency shell.
          extraBin.ember = exe;
          inherit (units) services;
        };
      })

      (lib.mkIf (!systemdStage1) {
        boot.initrd = {
          extraUtilsCommands = ''
            copy_bin_and_libs ${exe}
          '';
          extraUtilsCommandsTest = ''
            $out/bin/ember version
          '';
          extraFiles."/etc/ember/config.json".source = cfg.configFile;
          inherit (units.scripted) postDeviceCommands postMountCommands;
          # Before anything else that touches the root after resume.
          postResumeCommands = lib.mkBefore units.scripted.postResumeCommands;
        };
      })
    ]
  );
}
