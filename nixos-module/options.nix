# Option declarations of `boot.initrd.ember`. Defaults come from
# ./lib/defaults.nix, which the pure translation (./lib/normalize.nix) uses
# too. What each option becomes in ember's config is in ./lib/to-config.nix;
# the fields are documented in docs/config.md.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) literalExpression mkEnableOption mkOption types;
  defaults = import ./lib/defaults.nix;
  emberLib = import ./lib;
  cfg = config.boot.initrd.ember;

  device =
    types.strMatching "(LABEL|UUID|PARTLABEL|PARTUUID)=.+|/dev/.+"
    // {
      description = "device (`LABEL=…`, `UUID=…`, `PARTLABEL=…`, `PARTUUID=…` or a `/dev/…` path)";
    };
  absolutePath = types.strMatching "/.*" // {
    description = "absolute path";
  };
  subvolumePath = types.strMatching "/?[^/.][^/]*(/[^/.][^/]*)*/?" // {
    description = "Btrfs subvolume path (`root`, `@home`, `nested/root`)";
  };
  seconds = types.ints.between 1 3600;

  luksDevice =
    { name, ... }:
    {
      options = {
        device = mkOption {
          type = device;
          example = "LABEL=luks";
          description = ''
            The LUKS2 device, opened as `/dev/mapper/${name}`. The LUKS2
            header's own label and UUID count as `LABEL=`/`UUID=`.
          '';
        };
        keyFile = mkOption {
          type = types.nullOr absolutePath;
          default = defaults.luksDevice.keyFile;
          example = "/etc/ember/keys/cryptroot.key";
          description = ''
            A keyfile inside the initrd; its whole content is the key. Put it
            there with {option}`boot.initrd.secrets` (never through the Nix
            store). Without one ember asks for a passphrase on the console.
          '';
        };
        keys = mkOption {
          type = types.listOf (types.either (types.enum [ "passphrase" ]) (types.attrsOf types.anything));
          default = defaults.luksDevice.keys;
          example = [
            { keyfile = "/key.bin"; device = "LABEL=usbkey"; offset = 0; size = 4096; timeout_secs = 5; }
            "passphrase"
          ];
          description = ''
            Key sources tried in order (instead of {option}`keyFile`): a keyfile
            in the initrd (`{ keyfile = "/etc/ember/keys/x.key"; }`), a keyfile on
            another device mounted read-only (`device`, `offset`, `size`,
            `timeout_secs`), raw bytes of a device (`device`, `size`), or
            `"passphrase"`. `keyslot = N;` or `token = N;` on an entry makes
            ember try that keyslot first. Passed to ember as its `keys` field
            (docs/config.md).
          '';
        };
        passphraseTries = mkOption {
          type = types.ints.between 1 100;
          default = defaults.luksDevice.passphraseTries;
          description = "Passphrases accepted before the failure policy applies.";
        };
        passphraseTimeout = mkOption {
          type = types.nullOr seconds;
          default = defaults.luksDevice.passphraseTimeout;
          description = "Give up on a passphrase prompt after this many seconds (null: wait).";
        };
        allowDiscards = mkOption {
          type = types.bool;
          default = defaults.luksDevice.allowDiscards;
          description = "Pass discard (TRIM) requests through dm-crypt.";
        };
      };
    };

  subvolume =
    { name, ... }:
    {
      options = {
        subvolume = mkOption {
          type = subvolumePath;
          example = "root";
          description = "Path of the subvolume inside the filesystem, mounted at `${name}`.";
        };
        options = mkOption {
          type = types.listOf types.str;
          default = defaults.subvolume.options;
          example = [ "nodev" ];
          description = "Mount options for this subvolume only, after the filesystem's.";
        };
        neededForBoot = mkOption {
          type = types.bool;
          default = defaults.subvolume.neededForBoot;
          description = ''
            Mount it in stage 1 (`fileSystems.<path>.neededForBoot`), as ember
            does when it is the initrd's /init. Persisted paths and persist
            roots must lie on filesystems mounted in stage 1; switching this off
            for a subvolume that holds one fails an assertion.
          '';
        };
      };
    };

  id = types.either types.ints.unsigned types.str // {
    description = "numeric id or name";
  };

  # An entry: a path, or impermanence's attribute set form.
  persistEntry =
    kind: pathType:
    types.coercedTo pathType (p: { ${kind} = p; }) (
      types.submodule {
        options = {
          ${kind} = mkOption {
            type = pathType;
            description = "The persisted ${kind}.";
          };
          user = mkOption {
            type = types.nullOr id;
            default = null;
            example = "alice";
            description = ''
              Owner of what ember creates (the persisted copy and the target),
              if missing. A name is resolved to its `users.users.<name>.uid` at
              build time (stage 1 has no /etc/passwd). Default: root, or the
              user for per-user entries.
            '';
          };
          group = mkOption {
            type = types.nullOr id;
            default = null;
            description = "Group of what ember creates; a name is resolved like `user`.";
          };
          mode = mkOption {
            type = types.nullOr (types.strMatching "0?[0-7]{3,4}");
            default = null;
            example = "0700";
            description = "Mode of what ember creates. Default: 0755 for directories, 0644 for files.";
          };
          method = mkOption {
            type = types.enum [
              "bind"
              "symlink"
            ];
            default = "bind";
            description = "A bind mount of the persisted copy, or a symlink to it.";
          };
          options = mkOption {
            type = types.listOf types.str;
            default = [ ];
            example = [ "nosuid" ];
            description = "Mount options of this bind (after the root's).";
          };
        };
      }
    );
  relativePath = types.strMatching "[^/].*" // {
    description = "path relative to the home";
  };

  persistUser =
    { name, ... }:
    {
      options = {
        uid = mkOption {
          type = types.nullOr types.ints.unsigned;
          default = null;
          defaultText = literalExpression "config.users.users.${name}.uid";
          description = "The user's uid (owner of what ember creates in the home).";
        };
        gid = mkOption {
          type = types.nullOr types.ints.unsigned;
          default = null;
          defaultText = literalExpression "the gid of config.users.users.${name}.group";
          description = "The user's primary gid.";
        };
        home = mkOption {
          type = types.nullOr absolutePath;
          default = null;
          defaultText = literalExpression "config.users.users.${name}.home, else /home/${name}";
          description = "The home the entries are relative to.";
        };
        files = mkOption {
          type = types.listOf (persistEntry "file" relativePath);
          default = [ ];
          example = [ ".bash_history" ];
          description = "Files, relative to the home.";
        };
        directories = mkOption {
          type = types.listOf (persistEntry "directory" relativePath);
          default = [ ];
          example = [
            "Documents"
            {
              directory = ".ssh";
              mode = "0700";
            }
          ];
          description = "Directories, relative to the home; missing parents inside the home are the user's.";
        };
      };
    };

  persistRoot =
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = defaults.persistRoot.enable;
          description = "Whether to bind this root's paths.";
        };
        persistentStoragePath = mkOption {
          type = absolutePath;
          default = name;
          defaultText = literalExpression "<name>";
          description = ''
            Where the persistent copies live in the new root. It must be the
            mount point of one of {option}`boot.initrd.ember.btrfs.subvolumes`
            (or below one), never on the root subvolume.
          '';
        };
        hideMounts = mkOption {
          type = types.bool;
          default = false;
          description = "Hide the binds from file managers (the `x-gvfs-hide` mount option).";
        };
        options = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "nosuid" ];
          description = "Mount options of every bind from this root.";
        };
        users = mkOption {
          type = types.attrsOf (types.submodule persistUser);
          default = { };
          example = literalExpression ''
            { alice.directories = [ "Documents" { directory = ".ssh"; mode = "0700"; } ]; }
          '';
          description = "Per-user entries, relative to each user's home (impermanence's `users`).";
        };
        files = mkOption {
          type = types.listOf (persistEntry "file" absolutePath);
          default = defaults.persistRoot.files;
          example = [
            "/etc/machine-id"
            { file = "/etc/ssh/ssh_host_ed25519_key"; }
          ];
          description = ''
            Files bind-mounted from `<root><path>` onto `<path>`. A missing
            source is created empty (0644, root); a missing target is created as
            an empty file.
          '';
        };
        directories = mkOption {
          type = types.listOf (persistEntry "directory" absolutePath);
          default = defaults.persistRoot.directories;
          example = [
            "/var/lib/nixos"
            "/var/lib/systemd"
            { directory = "/var/lib/bluetooth"; }
          ];
          description = ''
            Directories bind-mounted from `<root><path>` onto `<path>`, created
            (0755, root) where missing. Both ends are resolved without following
            symbolic links: a symlink planted in the persist root is refused.
          '';
        };
      };
    };
in
{
  options.boot.initrd.ember = {
    enable = mkEnableOption ''
      ember in stage 1: unlock LUKS2 devices, roll back the root subvolume and
      bind persisted paths from /persist, as systemd stage-1 services (or hooks
      of the scripted stage 1). See docs/nixos.md in the ember repository'';

    package = mkOption {
      type = types.package;
      default = pkgs.pkgsStatic.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.pkgsStatic.callPackage <ember>/nixos-module/package.nix { }";
      description = "The ember package; its `bin/ember` must be statically linked.";
    };

    referenceLayout = {
      enable = mkEnableOption ''
        the reference layout's settings (as defaults you can override): unlock
        `LABEL=luks` as `cryptroot` (with discards), Btrfs subvolumes `root`,
        `home`, `nix`, `persist` and `log` on `/dev/mapper/cryptroot` mounted
        at /, /home, /nix, /persist and /var/log with `compress=zstd,noatime`,
        and rollback from the blank snapshot `root-blank` of the filesystem
        `LABEL=nixos` (when {option}`boot.initrd.ember.rollback.enable` is
        set). It is the layout `ember.lib.diskoLayout` formats'';
      unlock = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether the reference layout's LUKS device is unlocked by ember. Set
          to false to keep `boot.initrd.luks.devices.cryptroot` and
          systemd-cryptsetup (TPM2, FIDO2, ...); ember then only rolls back and
          persists.
        '';
      };
    };

    deviceTimeout = mkOption {
      type = seconds;
      default = defaults.deviceTimeout;
      description = "How long ember waits for each configured device, in seconds.";
    };

    onFailure = mkOption {
      type = types.enum [
        "rescue"
        "retry"
        "halt"
        "reboot"
        "poweroff"
      ];
      default = defaults.onFailure;
      description = ''
        What happens when a step that stops the boot fails (every step but
        those in {option}`boot.initrd.ember.continueOnFailure`). `rescue`:
        systemd's emergency target (a shell only with
        {option}`boot.initrd.systemd.emergencyAccess`); the scripted stage 1's
        `fail` prompt. `retry`: the step is run again 3 more times, 5 s
        apart (`Restart=on-failure`), then as `rescue`. `halt`, `reboot`,
        `poweroff`: the unit's `FailureAction=`. ember's message is in the journal and on the console
        either way.
      '';
    };

    continueOnFailure = mkOption {
      type = types.listOf (
        types.enum [
          "rollback"
          "persist"
        ]
      );
      default = defaults.continueOnFailure;
      example = [ "rollback" ];
      description = ''
        Steps whose failure is logged but does not stop the boot (their units
        are `wantedBy` rather than `requiredBy` the unit they feed). A failed
        rollback then boots the previous root; a failed persist boots without
        the persisted state. Unlocking always stops the boot: there is no root
        without it.
      '';
    };

    kernelModules = mkOption {
      type = types.listOf types.str;
      default = defaults.kernelModules;
      example = [ "nvme" ];
      description = ''
        Kernel modules the hardware needs in stage 1 (disk controller, ...),
        loaded explicitly (added to {option}`boot.initrd.kernelModules`).
        dm-crypt and Btrfs support are added by the module.
      '';
    };

    luks.devices = mkOption {
      type = types.attrsOf (types.submodule luksDevice);
      default = { };
      example = literalExpression ''
        { cryptroot = { device = "LABEL=luks"; allowDiscards = true; }; }
      '';
      description = ''
        LUKS2 devices ember unlocks, by device-mapper name, in name order.
        A device listed here must not also be in
        {option}`boot.initrd.luks.devices` (systemd-cryptsetup). Leave this
        empty to let systemd-cryptsetup unlock everything (TPM2, FIDO2, ...);
        ember then only rolls back and persists.
      '';
    };

    btrfs = {
      device = mkOption {
        type = types.nullOr device;
        default = null;
        example = "/dev/mapper/cryptroot";
        description = "The device holding the Btrfs filesystem (required; an assertion says so).";
      };
      options = mkOption {
        type = types.listOf types.str;
        default = defaults.btrfs.options;
        example = [
          "compress=zstd"
          "noatime"
        ];
        description = ''
          Mount options of every subvolume, one per entry. `subvol=` is set
          from each subvolume.
        '';
      };
      subvolumes = mkOption {
        type = types.attrsOf (types.submodule subvolume);
        default = { };
        example = literalExpression ''
          {
            "/".subvolume = "root";
            "/nix".subvolume = "nix";
            "/persist".subvolume = "persist";
          }
        '';
        description = ''
          The subvolumes, by mount point; one of them at `/`. The module
          defines the matching {option}`fileSystems` entries (at
          `mkDefault` priority, so entries written elsewhere, e.g. by disko,
          win; an assertion then checks that they agree on device, type and
          subvolume).
        '';
      };
    };

    rollback = {
      enable = mkEnableOption ''
        rolling the root subvolume back at every boot ("erase your
        darlings"), in stage 1 before the root is mounted and after
        hibernation resume'';
      subvolume = mkOption {
        type = types.nullOr subvolumePath;
        default = defaults.rollback.subvolume;
        defaultText = literalExpression "the subvolume mounted at /";
        description = "The subvolume to replace.";
      };
      strategy = mkOption {
        type = types.enum [
          "blank"
          "empty"
          "archive"
        ];
        default = defaults.rollback.strategy;
        description = ''
          `blank`: replace it with a writable snapshot of
          {option}`boot.initrd.ember.rollback.blankSnapshot`. `empty`: with a
          new, empty subvolume. `archive`: move the old root to
          {option}`boot.initrd.ember.rollback.archiveDir` first (named after its
          last change), replace it (from the blank snapshot if set, else empty)
          and prune old archives.
        '';
      };
      blankSnapshot = mkOption {
        type = types.nullOr subvolumePath;
        default = defaults.rollback.blankSnapshot;
        description = ''
          The read-only snapshot of the empty root, from the top level
          (`ember.lib.diskoLayout` creates `root-blank` when it formats).
          Ignored by `empty`.
        '';
      };
      filesystem = mkOption {
        type = types.nullOr (types.strMatching "(LABEL|UUID)=.+");
        default = defaults.rollback.filesystem;
        example = "LABEL=nixos";
        description = ''
          The Btrfs filesystem's own `LABEL=` or `UUID=`: ember refuses to
          roll back any other. Required unless
          {option}`boot.initrd.ember.btrfs.device` already has that form.
        '';
      };
      archiveDir = mkOption {
        type = subvolumePath;
        default = defaults.rollback.archiveDir;
        description = "`archive`: where old roots go, from the top level.";
      };
      keepDays = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = defaults.rollback.keepDays;
        example = 30;
        description = "`archive`: delete archived roots older than this.";
      };
      keepCount = mkOption {
        type = types.nullOr types.ints.positive;
        default = defaults.rollback.keepCount;
        example = 10;
        description = "`archive`: keep at most this many archived roots.";
      };
      onGuardFailure = mkOption {
        type = types.enum [
          "continue"
          "stop"
        ];
        default = defaults.rollback.onGuardFailure;
        description = ''
          When a safety check refuses the rollback (unknown filesystem, missing
          blank snapshot, ...): boot on the unwiped root (`continue`) or apply
          the failure policy (`stop`).
        '';
      };
    };

    persist = mkOption {
      type = types.attrsOf (types.submodule persistRoot);
      default = { };
      example = literalExpression ''
        {
          "/persist" = {
            files = [ "/etc/machine-id" ];
            directories = [ "/var/lib/nixos" "/var/lib/systemd" "/var/log" ];
          };
        }
      '';
      description = ''
        Persisted paths, by persist root: the shape of impermanence's
        `environment.persistence` (`files`, `directories`, per-entry `user`,
        `group`, `mode`, `method`, `users.<name>`, `hideMounts`). ember binds
        them in stage 1, before NixOS's activation, so /etc/machine-id is in
        place when systemd starts.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
      defaultText = literalExpression "pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform";
      description = ''
        Run `ember check` on the generated config when building it, so that
        an invalid config fails the build with ember's message (as
        `ember-initrd` refuses one). Needs to run the package on the build
        machine.
      '';
    };

    settings = mkOption {
      type = types.attrsOf types.anything;
      readOnly = true;
      default = emberLib.toConfig (emberLib.moduleInput config);
      defaultText = literalExpression "generated from the options above";
      description = ''
        The generated ember configuration (the JSON of ember's `Config`),
        stored in the initrd as `/etc/ember/config.json`. The reference
        layout's values are already part of the options (as defaults), so it
        is not applied a second time here.
      '';
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default =
        let
          raw = (pkgs.formats.json { }).generate "ember-config.json" cfg.settings;
        in
        if cfg.checkConfig then
          pkgs.runCommand "ember-config.json" { nativeBuildInputs = [ cfg.package ]; } ''
            ember check ${raw} >&2
            cp ${raw} $out
          ''
        else
          raw;
      defaultText = literalExpression "the checked JSON file of `settings`";
      description = "The generated config file.";
    };

    fileSystems = mkOption {
      type = types.attrsOf (types.attrsOf types.anything);
      readOnly = true;
      default = lib.listToAttrs (
        map (
          sv:
          lib.nameValuePair sv.mountPoint {
            inherit (sv) neededForBoot;
            device = cfg.btrfs.device;
            fsType = "btrfs";
            options = [ "subvol=${sv.subvolume}" ] ++ cfg.btrfs.options ++ sv.options;
          }
        ) (emberLib.normalize (emberLib.moduleInput config)).btrfs.subvolumes
      );
      defaultText = literalExpression "generated from boot.initrd.ember.btrfs";
      description = ''
        The `fileSystems` entries ember's subvolumes imply; the module
        defines them (at `mkDefault` priority). Tests that replace
        `fileSystems` wholesale (`virtualisation.fileSystems`) can reuse it.
      '';
    };
  };
}
