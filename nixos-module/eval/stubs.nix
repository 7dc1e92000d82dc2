# Stand-ins for the NixOS options the ember module reads or defines, with the
# names, types and defaults nixpkgs gives them (nixos/modules/system/boot/
# stage-1.nix, systemd/initrd.nix, luksroot.nix, tasks/filesystems.nix,
# misc/assertions.nix), so that `lib.evalModules` can evaluate the module
# without all of NixOS. `_module.check` stays on in the scenarios: a
# definition of an option that is not declared here fails the evaluation, so
# a misspelt option path in the module is caught.
#
# Two of nixpkgs' own assertions are reproduced because the module must not
# trip them: systemd stage 1 refuses the scripted hooks, and a configuration
# needs a root filesystem.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  lines = mkOption {
    type = types.lines;
    default = "";
  };
  strings = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  unitList = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = strings;

    fileSystems = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              mountPoint = mkOption {
                type = types.str;
                default = name;
              };
              device = mkOption {
                type = types.nullOr types.str;
                default = null;
              };
              fsType = mkOption {
                type = types.str;
                default = "auto";
              };
              options = mkOption {
                type = types.nonEmptyListOf types.str;
                default = [ "defaults" ];
              };
              neededForBoot = mkOption {
                type = types.bool;
                default = false;
              };
            };
          }
        )
      );
    };

    # nixos/modules/config/users-groups.nix (the parts that give ids)
    users.users = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule (
          { name, config, ... }:
          {
            options = {
              uid = mkOption {
                type = types.nullOr types.int;
                default = null;
              };
              isNormalUser = mkOption {
                type = types.bool;
                default = false;
              };
              group = mkOption {
                type = types.str;
                default = "";
              };
              home = mkOption {
                type = types.str;
                default = "/var/empty";
              };
            };
            config = lib.mkIf config.isNormalUser {
              group = lib.mkDefault "users";
              home = lib.mkDefault "/home/${name}";
            };
          }
        )
      );
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options.gid = mkOption {
            type = types.nullOr types.int;
            default = null;
          };
        }
      );
    };

    boot.initrd = {
      kernelModules = strings;
      availableKernelModules = strings;
      supportedFilesystems = mkOption {
        type = types.attrsOf types.bool;
        default = { };
      };
      secrets = mkOption {
        type = types.attrsOf (types.nullOr types.path);
        default = { };
      };

      luks = {
        forceLuksSupportInInitrd = mkOption {
          type = types.bool;
          default = false;
        };
        devices = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule {
              freeformType = types.attrsOf types.anything;
              options.device = mkOption { type = types.str; };
            }
          );
        };
      };

      # scripted stage 1
      postDeviceCommands = lines;
      postResumeCommands = lines;
      postMountCommands = lines;
      extraUtilsCommands = lines;
      extraUtilsCommandsTest = lines;
      extraFiles = mkOption {
        default = { };
        type = types.attrsOf (types.submodule { options.source = mkOption { type = types.package; }; });
      };

      # systemd stage 1
      systemd = {
        # The default since NixOS 26.05.
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        emergencyAccess = mkOption {
          type = types.either types.bool (types.nullOr types.str);
          default = false;
        };
        contents = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule {
              options.source = mkOption { type = types.path; };
            }
          );
        };
        storePaths = mkOption {
          type = types.listOf (types.either types.str types.path);
          default = [ ];
        };
        extraBin = mkOption {
          type = types.attrsOf types.path;
          default = { };
        };
        services = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule {
              options = {
                description = mkOption {
                  type = types.str;
                  default = "";
                };
                after = unitList;
                before = unitList;
                requires = unitList;
                wants = unitList;
                requiredBy = unitList;
                wantedBy = unitList;
                conflicts = unitList;
                unitConfig = mkOption {
                  type = types.attrsOf types.anything;
                  default = { };
                };
                serviceConfig = mkOption {
                  type = types.attrsOf types.anything;
                  default = { };
                };
              };
            }
          );
        };
      };
    };
  };

  config.assertions = [
    {
      assertion = lib.any (fs: fs.mountPoint == "/") (lib.attrValues config.fileSystems);
      message = "The ‘fileSystems’ option does not specify your root file system.";
    }
  ]
  ++ map
    (name: {
      assertion = !config.boot.initrd.systemd.enable || config.boot.initrd.${name} == "";
      message = "systemd stage 1 does not support 'boot.initrd.${name}'.";
    })
    [
      "postDeviceCommands"
      "postResumeCommands"
      "postMountCommands"
      "extraUtilsCommands"
      "extraUtilsCommandsTest"
    ];
}
