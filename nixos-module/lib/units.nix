# What ember runs in stage 1, and when: systemd stage-1 services (in the shape
# of `boot.initrd.systemd.services`) and, for the scripted stage 1, the shell
# for its hooks. Pure (builtins only), so the ordering is tested without
# nixpkgs; the module only assigns the result.
#
#   n    normalised options (./normalize.nix)
#   exe  the ember executable inside the initrd
#
# Ordering (systemd stage 1; every unit DefaultDependencies=no, oneshot,
# RemainAfterExit, and no Conflicts=, so nothing can stop one mid-run):
#
#   ember-unlock    after cryptsetup-pre.target, systemd-modules-load and
#                   systemd-udevd; before cryptsetup.target and sysroot.mount.
#   ember-rollback  after the Btrfs device unit (and ember-unlock,
#                   cryptsetup.target), after hibernation resume
#                   (systemd-hibernate-resume.service, local-fs-pre.target);
#                   before sysroot.mount and every other mount of ember's
#                   subvolumes under /sysroot.
#   ember-persist   after initrd-fs.target (every stage-1 mount under /sysroot,
#                   RequiresMountsFor= the persist roots); before initrd.target
#                   and initrd-nixos-activation.service.
#
# Mounting stays with systemd: sysroot.mount and friends come from
# `fileSystems` (which the module fills from the same options), so systemd's
# own dependency tracking (RequiresMountsFor=, initrd-fs.target, stage 2's
# fstab) sees every mount. `ember mount` is not used in NixOS.
#
# Failure policy: a step that stops the boot is `requiredBy` the unit it
# feeds (unlock and rollback: sysroot.mount; persist: initrd.target), so its
# failure fails that unit and systemd's initrd targets start emergency.target
# (OnFailure=); `onFailure = halt|reboot|poweroff` adds FailureAction=. A step
# listed in `continueOnFailure` is only `wantedBy`: its failure is logged and
# the boot goes on.
{ n, exe }:
let
  paths = import ./paths.nix;
  inherit (builtins)
    any
    concatStringsSep
    elem
    filter
    map
    ;

  optional = cond: x: if cond then [ x ] else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };

  hasUnlock = n.luks != [ ];
  hasRollback = n.rollback.enable;
  hasPersist = n.persist != [ ];
  # A device asks for a passphrase unless it has only keyfile sources.
  asksPassphrase =
    d:
    if d.keys != [ ] then
      any (k: k == "passphrase" || (builtins.isAttrs k && (k.passphrase or false))) d.keys
    else
      d.keyFile == null;
  passphrase = any asksPassphrase n.luks;

  stops = step: !(elem step n.continueOnFailure);

  failureAction =
    {
      rescue = null;
      retry = null;
      halt = "halt";
      reboot = "reboot";
      poweroff = "poweroff";
    }
    .${n.onFailure};

  # requiredBy (stop the boot) or wantedBy (log and go on).
  hook = step: units: if stops step then { requiredBy = units; } else { wantedBy = units; };

  service =
    {
      step,
      description,
      args,
      unitConfig ? { },
      serviceConfig ? { },
    }:
    {
      inherit description;
      unitConfig = {
        DefaultDependencies = "no";
      }
      // optionalAttrs (stops step && failureAction != null) { FailureAction = failureAction; }
      # retry: 3 more runs 5 s apart, then the unit fails like `rescue`.
      // optionalAttrs (stops step && n.onFailure == "retry") {
        StartLimitBurst = 4;
        StartLimitIntervalSec = 60;
      }
      // unitConfig;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${exe} ${args}";
      }
      // optionalAttrs (stops step && n.onFailure == "retry") {
        Restart = "on-failure";
        RestartSec = "5s";
      }
      // serviceConfig;
    };

  # Mount units of ember's subvolumes that stage 1 mounts (sysroot.mount first).
  sysrootMounts = map (sv: paths.mountUnit (paths.under "/sysroot" sv.mountPoint)) (
    filter (sv: sv.neededForBoot || sv.mountPoint == "/") n.btrfs.subvolumes
  );

  unlock =
    service {
      step = "unlock";
      description = "ember: unlock LUKS devices";
      args = "unlock";
      serviceConfig = {
        # A person may be typing a passphrase.
        TimeoutStartSec = "infinity";
      }
      // optionalAttrs passphrase {
        # Exclusive use of the console while asking (ember opens /dev/tty).
        StandardInput = "tty";
        StandardOutput = "tty";
        TTYPath = "/dev/console";
        TTYReset = true;
      };
    }
    // {
      after = [
        "cryptsetup-pre.target"
        "systemd-modules-load.service"
        "systemd-udevd.service"
      ];
      before = [
        "cryptsetup.target"
        "sysroot.mount"
      ];
      # Never optional: without it there is no root.
      requiredBy = [
        "cryptsetup.target"
        "sysroot.mount"
      ];
    };

  rootDevice = paths.deviceUnit n.btrfs.device;

  rollback =
    service {
      step = "rollback";
      description = "ember: roll back the root subvolume";
      args = "rollback";
    }
    // {
      requires = [ rootDevice ];
      after = [
        rootDevice
        "cryptsetup.target"
        # Never touch a filesystem a hibernated kernel may resume into.
        "systemd-hibernate-resume.service"
        "local-fs-pre.target"
      ]
      ++ optional hasUnlock "ember-unlock.service";
      before = paths.unique ([ "sysroot.mount" ] ++ sysrootMounts ++ [ "initrd-root-fs.target" ]);
    }
    // hook "rollback" [ "sysroot.mount" ];

  persist =
    service {
      step = "persist";
      description = "ember: bind persisted paths into /sysroot";
      args = "persist --sysroot /sysroot";
      unitConfig.RequiresMountsFor = map (r: paths.under "/sysroot" r.root) n.persist;
    }
    // {
      after = [ "initrd-fs.target" ] ++ optional hasRollback "ember-rollback.service";
      before = [
        "initrd.target"
        "initrd-nixos-activation.service"
      ];
    }
    // hook "persist" [ "initrd.target" ];

  # Scripted stage 1: `fail` is stage-1-init.sh's own prompt (shell, reboot,
  # ignore; boot.panic_on_fail).
  onError =
    step:
    if !(stops step) then
      "echo \"ember: ${step} failed; continuing the boot\""
    else
      {
        rescue = "fail";
        retry = "fail";
        halt = "echo \"ember: ${step} failed; halting\"; halt -f";
        reboot = "echo \"ember: ${step} failed; rebooting in 10 s\"; sleep 10; reboot -f";
        poweroff = "echo \"ember: ${step} failed; powering off\"; poweroff -f";
      }
      .${n.onFailure};
  # retry: 3 more attempts 5 s apart before the failure prompt.
  run =
    step: args:
    if stops step && n.onFailure == "retry" then
      "ember ${args} || { for i in 1 2 3; do sleep 5; ember ${args} && break; done; } || { ${onError step}; }\n"
    else
      "ember ${args} || { ${onError step}; }\n";
in
{
  services =
    optionalAttrs hasUnlock { ember-unlock = unlock; }
    // optionalAttrs hasRollback { ember-rollback = rollback; }
    // optionalAttrs hasPersist { ember-persist = persist; };

  # Scripted stage 1: unlock once devices exist (before resume, which may
  # need them), roll back after resume and before mounting, bind after
  # stage 1 has mounted everything at /mnt-root.
  scripted = {
    postDeviceCommands = concatStringsSep "" (optional hasUnlock (run "unlock" "unlock"));
    postResumeCommands = concatStringsSep "" (optional hasRollback (run "rollback" "rollback"));
    postMountCommands = concatStringsSep "" (
      optional hasPersist (run "persist" "persist --sysroot /mnt-root")
    );
  };
}
