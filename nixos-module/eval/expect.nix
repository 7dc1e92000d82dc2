# Expectations shared by the pure evaluation (./pure-eval.nix, no nixpkgs)
# and the module evaluation (./module-eval.nix, nixpkgs' lib). Each check
# returns a list of failure messages; [ ] means it holds. Builtins only.
let
  inherit (builtins)
    any
    concatLists
    elem
    filter
    genList
    stringLength
    substring
    toJSON
    ;
in
rec {
  hasInfix =
    needle: hay:
    let
      n = stringLength needle;
    in
    any (i: substring i n hay == needle) (genList (i: i) (stringLength hay - n + 1));

  check = cond: msg: if cond then [ ] else [ msg ];
  eq = what: got: want: check (got == want) "${what}: expected ${toJSON want}, got ${toJSON got}";
  contains = what: list: x: check (elem x list) "${what} lacks ${toJSON x}: ${toJSON list}";
  excludes = what: list: x: check (!(elem x list)) "${what} must not contain ${toJSON x}: ${toJSON list}";

  # Some failed assertion mentions every string in `needles`.
  assertionFails =
    what: failed: needles:
    check (any (m: builtins.all (s: hasInfix s m) needles) failed)
      "${what}: expected a failed assertion mentioning ${toJSON needles}; failed assertions: ${toJSON failed}";
  noFailures = what: failed: check (failed == [ ]) "${what}: unexpected failed assertions: ${toJSON failed}";

  # `services` as boot.initrd.systemd.services (missing lists read as [ ]).
  # opts: unlock, rollback, persist (bools: which units must exist),
  #       stops (list of steps that must be requiredBy), failureAction (or null)
  units =
    what: services: opts:
    let
      s = name: services.${name} or { };
      l = name: attr: (s name).${attr} or [ ];
      common =
        name:
        let
          u = s name;
        in
        check (services ? ${name}) "${what}: ${name} is missing (units: ${toJSON (builtins.attrNames services)})"
        ++ eq "${what}: ${name} DefaultDependencies" (u.unitConfig.DefaultDependencies or null) "no"
        ++ eq "${what}: ${name} Type" (u.serviceConfig.Type or null) "oneshot"
        ++ eq "${what}: ${name} RemainAfterExit" (u.serviceConfig.RemainAfterExit or null) true
        ++ eq "${what}: ${name} Conflicts" (u.conflicts or [ ]) [ ]
        ++ check (!(u.unitConfig ? Conflicts)) "${what}: ${name} has Conflicts= in unitConfig"
        ++ eq "${what}: ${name} FailureAction" (u.unitConfig.FailureAction or null) (
          if name == "ember-unlock" || elem (builtins.substring 6 20 name) opts.stops then
            opts.failureAction
          else
            null
        )
        # No unit is ordered both before and after the same unit.
        ++ check (
          filter (x: elem x (l name "after")) (l name "before") == [ ]
        ) "${what}: ${name} is ordered both before and after ${toJSON (filter (x: elem x (l name "after")) (l name "before"))}";
      hooked =
        name: step: target:
        if elem step opts.stops then
          contains "${what}: ${name}.requiredBy" (l name "requiredBy") target
          ++ excludes "${what}: ${name}.wantedBy" (l name "wantedBy") target
        else
          contains "${what}: ${name}.wantedBy" (l name "wantedBy") target
          ++ excludes "${what}: ${name}.requiredBy" (l name "requiredBy") target;
      exec = name: args: check (hasInfix "/bin/ember ${args}" ((s name).serviceConfig.ExecStart or "")) "${what}: ${name} ExecStart ${toJSON ((s name).serviceConfig.ExecStart or null)} does not run `ember ${args}`";
    in
    (
      if opts.unlock then
        common "ember-unlock"
        ++ exec "ember-unlock" "unlock"
        ++ contains "${what}: ember-unlock.after" (l "ember-unlock" "after") "cryptsetup-pre.target"
        ++ contains "${what}: ember-unlock.before" (l "ember-unlock" "before") "cryptsetup.target"
        ++ contains "${what}: ember-unlock.before" (l "ember-unlock" "before") "sysroot.mount"
        ++ contains "${what}: ember-unlock.requiredBy" (l "ember-unlock" "requiredBy") "sysroot.mount"
      else
        check (!(services ? ember-unlock)) "${what}: ember-unlock must not exist"
    )
    ++ (
      if opts.rollback then
        common "ember-rollback"
        ++ exec "ember-rollback" "rollback"
        ++ contains "${what}: ember-rollback.after" (l "ember-rollback" "after") "dev-mapper-cryptroot.device"
        ++ contains "${what}: ember-rollback.requires" (l "ember-rollback" "requires") "dev-mapper-cryptroot.device"
        ++ contains "${what}: ember-rollback.after" (l "ember-rollback" "after") "cryptsetup.target"
        ++ contains "${what}: ember-rollback.after" (l "ember-rollback" "after") "systemd-hibernate-resume.service"
        ++ contains "${what}: ember-rollback.before" (l "ember-rollback" "before") "sysroot.mount"
        ++ contains "${what}: ember-rollback.before" (l "ember-rollback" "before") "sysroot-nix.mount"
        ++ (
          if opts.unlock then
            contains "${what}: ember-rollback.after" (l "ember-rollback" "after") "ember-unlock.service"
          else
            [ ]
        )
        ++ hooked "ember-rollback" "rollback" "sysroot.mount"
      else
        check (!(services ? ember-rollback)) "${what}: ember-rollback must not exist"
    )
    ++ (
      if opts.persist then
        common "ember-persist"
        ++ exec "ember-persist" "persist --sysroot /sysroot"
        ++ contains "${what}: ember-persist.after" (l "ember-persist" "after") "initrd-fs.target"
        ++ contains "${what}: ember-persist.before" (l "ember-persist" "before") "initrd-nixos-activation.service"
        ++ contains "${what}: ember-persist.before" (l "ember-persist" "before") "initrd.target"
        ++ contains "${what}: ember-persist RequiresMountsFor" (
          (s "ember-persist").unitConfig.RequiresMountsFor or [ ]
        ) "/sysroot/persist"
        ++ (
          if opts.rollback then
            contains "${what}: ember-persist.after" (l "ember-persist" "after") "ember-rollback.service"
          else
            [ ]
        )
        ++ hooked "ember-persist" "persist" "initrd.target"
      else
        check (!(services ? ember-persist)) "${what}: ember-persist must not exist"
    );

  # Throws with every failure, or returns the names of the passed scenarios.
  report =
    results:
    let
      failures = concatLists (builtins.attrValues results);
    in
    if failures == [ ] then
      builtins.attrNames results
    else
      throw "\n${builtins.concatStringsSep "\n" (map (f: "FAIL ${f}") failures)}\n";
}
