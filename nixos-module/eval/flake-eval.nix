# The flake's outputs, evaluated with stand-in inputs (nixpkgs' lib, a fake
# package set, a fake disko whose makeDiskoTest returns its arguments):
# checks the wiring (output names, one check per VM scenario file and per
# example host, the VM tests' disk and ember settings) without building or
# fetching anything.
#
#   nix-instantiate --eval --strict --json nixos-module/eval/flake-eval.nix \
#     --argstr nixpkgsLib /path/to/nixpkgs.lib
{ nixpkgsLib }:
let
  lib = import (nixpkgsLib + "/lib");
  expect = import ./expect.nix;
  emberLib = import ../lib;

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  pkgsFor = system: {
    stdenv.hostPlatform = {
      inherit system;
      isx86_64 = system == "x86_64-linux";
    };
    pkgsStatic.callPackage = _: _: fakeDrv "ember-0.1.0";
    writeText = name: text: fakeDrv name // { inherit text; };
    runCommand = name: _env: script: fakeDrv name // { inherit script; };
  };
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor;
  };
  disko = {
    nixosModules.disko = { };
    lib.testLib.makeDiskoTest = args: { makeDiskoTestArgs = args; };
  };
  flake = import ../../flake.nix;
  outputs = flake.outputs {
    self = outputs;
    inherit nixpkgs disko;
  };
  x86 = outputs.checks.x86_64-linux;

  # The installed system of a VM scenario: its ember configuration with the
  # fileSystems disko generates from the layout (what disko's btrfs, luks and
  # filesystem types put in `fileSystems`: subvolume options ++ subvol=<name>
  # on /dev/mapper/<luks name>, the ESP by partlabel) and makeDiskoTest's
  # 9p /nix/store.
  installedSystem =
    test:
    let
      args = test.makeDiskoTestArgs;
      partitions = args.disko-config.disko.devices.disk.main.content.partitions;
      btrfs = partitions.luks.content.content;
    in
    (lib.evalModules {
      modules = [
        ./stubs.nix
        args.extraSystemConfig
        {
          _module.args.pkgs = pkgsFor "x86_64-linux" // {
            formats.json = _: {
              generate = name: value: fakeDrv name // { inherit value; };
            };
            stdenv = (pkgsFor "x86_64-linux").stdenv // {
              buildPlatform.canExecute = _: true;
            };
          };
          boot.initrd.ember.package = fakeDrv "ember-0.1.0";
          fileSystems =
            lib.mapAttrs' (
              name: sv:
              lib.nameValuePair sv.mountpoint {
                device = "/dev/mapper/${partitions.luks.content.name}";
                fsType = "btrfs";
                options = sv.mountOptions ++ [ "subvol=${name}" ];
              }
            ) btrfs.subvolumes
            // {
              "/boot" = {
                device = "/dev/disk/by-partlabel/${partitions.boot.label}";
                fsType = "vfat";
                options = partitions.boot.content.mountOptions;
              };
              "/nix/store" = lib.mkForce {
                device = "nix-store";
                fsType = "9p";
                neededForBoot = true;
                options = [ "trans=virtio" ];
              };
            };
        }
      ];
    }).config;
  vmSystems = lib.mapAttrs (_: installedSystem) (lib.filterAttrs (n: _: lib.hasPrefix "vm-" n) x86);
  unlockTest = x86.vm-unlock.makeDiskoTestArgs;
in
expect.report {
  outputs =
    expect.eq "flake outputs" (builtins.attrNames outputs) [
      "checks"
      "lib"
      "nixosConfigurations"
      "nixosModules"
      "packages"
    ]
    ++ expect.eq "packages" (builtins.attrNames outputs.packages.x86_64-linux) [
      "default"
      "ember"
    ]
    ++ expect.eq "nixosModules.default" outputs.nixosModules.default ../.
    ++ expect.eq "nixosConfigurations" (builtins.attrNames outputs.nixosConfigurations) [
      "archon"
      "cadmus"
      "perseus"
    ];

  checks =
    expect.eq "x86_64-linux checks" (builtins.attrNames x86) [
      "config-archon"
      "config-cadmus"
      "config-perseus"
      "config-reference"
      "ember"
      "vm-machine-id"
      "vm-reference-disko"
      "vm-rollback"
      "vm-subvolumes"
      "vm-unlock"
    ]
    ++ expect.eq "aarch64-linux has no VM tests" (builtins.attrNames outputs.checks.aarch64-linux) [
      "config-archon"
      "config-cadmus"
      "config-perseus"
      "config-reference"
      "ember"
    ]
    ++ expect.check (expect.hasInfix "ember check" x86.config-reference.script) "config checks run `ember check`";

  lib-outputs =
    expect.eq "lib.toConfig" (outputs.lib.toConfig (import ./reference.nix)) (
      emberLib.toConfig (import ./reference.nix)
    )
    ++ expect.eq "lib.diskoLayout" (outputs.lib.diskoLayout { device = "/dev/sdz"; }).disko.devices.disk.main.device "/dev/sdz";

  vm-installed-systems = lib.concatLists (
    lib.mapAttrsToList (
      name: c:
      expect.noFailures "${name}: installed system" (
        map (a: a.message) (lib.filter (a: !a.assertion) c.assertions)
      )
      ++ expect.units "${name}: installed system" c.boot.initrd.systemd.services {
        unlock = true;
        rollback = name == "vm-rollback";
        persist = true;
        stops = [
          "rollback"
          "persist"
        ];
        failureAction = null;
      }
      ++ expect.eq "${name}: disko's fileSystems./ wins" c.fileSystems."/".options [
        "compress=zstd"
        "noatime"
        "subvol=root"
      ]
      ++ expect.eq "${name}: /persist in stage 1" c.fileSystems."/persist".neededForBoot true
      ++ expect.eq "${name}: key in the initrd" (builtins.attrNames c.boot.initrd.secrets) [
        "/etc/ember/keys/cryptroot.key"
      ]
    ) vmSystems
  );

  vm-test-wiring =
    expect.eq "VM test name" unlockTest.name "ember-unlock"
    ++ expect.eq "VM test disk" unlockTest.disko-config.disko.devices.disk.main.device "/dev/vda"
    ++ expect.eq "VM test key" unlockTest.disko-config.disko.devices.disk.main.content.partitions.luks.content.settings.keyFile "/tmp/secret.key"
    ++ expect.check (expect.hasInfix "journal_order(\"Finished ember-unlock.service\", \"Mounted sysroot.mount\")" unlockTest.extraTestScript) "the unlock scenario checks the ordering"
    ++ expect.eq "rollback scenario enables rollback" (
      builtins.elem { rollback.enable = true; } (
        (x86.vm-rollback.makeDiskoTestArgs.extraSystemConfig {
          inherit lib;
          pkgs = pkgsFor "x86_64-linux";
        }).boot.initrd.ember.contents
      )
    ) true;
}
