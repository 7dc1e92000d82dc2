# ember without flakes:
#
#   let ember = import (fetchTarball "https://.../ember/archive/main.tar.gz") { inherit pkgs; };
#   in {
#     imports = [ ember.nixosModules.default (ember.lib.diskoLayout { device = "/dev/nvme0n1"; }) ];
#     boot.initrd.ember = { enable = true; referenceLayout.enable = true; };
#   }
#
# `lib` and `nixosModules` need no nixpkgs; `ember` (the static package) does.
{
  pkgs ? import <nixpkgs> { },
}:
let
  emberLib = import ./nixos-module/lib;
in
{
  ember = pkgs.pkgsStatic.callPackage ./nixos-module/package.nix { };

  nixosModules.default = ./nixos-module;

  lib = {
    diskoLayout = import ./nixos-module/disko-lib.nix;
    inherit (emberLib) toConfig;
  };
}
