{
  description = "ember: stage-1 storage agent for encrypted, impermanent NixOS machines";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # Only for the VM tests (`checks`) and the example hosts.
    disko = {
      url = "github:nix-community/disko";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      disko,
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      emberLib = import ./nixos-module/lib;

      # One VM scenario per file in nixos-module/tests (helpers live in
      # nixos-module/tests/lib).
      vmTests =
        pkgs:
        let
          dir = ./nixos-module/tests;
          files = lib.filterAttrs (name: type: type == "regular" && lib.hasSuffix ".nix" name) (
            builtins.readDir dir
          );
        in
        lib.mapAttrs' (
          file: _:
          lib.nameValuePair "vm-${lib.removeSuffix ".nix" file}" (
            import (dir + "/${file}") {
              inherit pkgs disko;
              emberModule = self.nixosModules.default;
            }
          )
        ) files;

      # The config to-config.nix makes for the reference layout and each
      # example host, checked by the package's own `ember check` (what
      # tests/nix_eval.rs does with the Debian-built binary).
      configChecks =
        pkgs:
        let
          ember = self.packages.${pkgs.stdenv.hostPlatform.system}.ember;
          configs = {
            reference = emberLib.toConfig (import ./nixos-module/eval/reference.nix);
          }
          // lib.mapAttrs (
            name: _: emberLib.toConfig (emberLib.hostOptions (import (./examples/hosts + "/${name}")))
          ) (builtins.readDir ./examples/hosts);
        in
        lib.mapAttrs' (
          name: config:
          lib.nameValuePair "config-${lib.removeSuffix ".nix" name}" (
            pkgs.runCommand "ember-check-${lib.removeSuffix ".nix" name}" { nativeBuildInputs = [ ember ]; } ''
              ember check ${pkgs.writeText "${lib.removeSuffix ".nix" name}.json" (builtins.toJSON config)} | tee $out
            ''
          )
        ) configs;

      host =
        name:
        lib.nixosSystem {
          modules = [
            disko.nixosModules.disko
            (./examples/hosts + "/${name}.nix")
            { nixpkgs.hostPlatform = "x86_64-linux"; }
          ];
        };
    in
    {
      packages = forAllSystems (pkgs: {
        ember = pkgs.pkgsStatic.callPackage ./nixos-module/package.nix { };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.ember;
      });

      nixosModules.default = ./nixos-module;
      nixosModules.ember = self.nixosModules.default;

      lib = {
        # { device, keyFile ? null, espSize ? "512M", luksFormatArgs ? [ ] } -> { disko.devices = ...; }
        diskoLayout = import ./nixos-module/disko-lib.nix;
        # boot.initrd.ember option values -> ember's config (pure)
        inherit (emberLib) toConfig;
      };

      checks = forAllSystems (
        pkgs:
        {
          ember = self.packages.${pkgs.stdenv.hostPlatform.system}.ember;
        }
        // configChecks pkgs
        // lib.optionalAttrs pkgs.stdenv.hostPlatform.isx86_64 (vmTests pkgs)
      );

      nixosConfigurations = lib.genAttrs [
        "perseus"
        "archon"
        "cadmus"
      ] host;
    };
}
