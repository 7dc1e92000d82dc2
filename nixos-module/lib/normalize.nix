# `boot.initrd.ember` option values -> one normalised description of what
# ember does, with every default filled in and lists in a fixed order. Pure
# (builtins only): it accepts both the module's fully-defaulted option values
# and a host's raw `boot.initrd.ember` attribute set.
#
# With `referenceLayout.enable`, the reference layout's values
# (./reference-layout.nix) lie under the given ones, exactly as the module
# sets them with `mkDefault`.
let
  paths = import ./paths.nix;
  defaults = import ./defaults.nix;
  reference = import ./reference-layout.nix;
  inherit (builtins)
    attrNames
    filter
    head
    isAttrs
    isString
    mapAttrs
    ;

  # Like lib.recursiveUpdate: `rhs` wins, attribute sets merge.
  recursiveUpdate =
    lhs: rhs:
    lhs
    // mapAttrs (
      n: v: if isAttrs v && isAttrs (lhs.${n} or null) then recursiveUpdate lhs.${n} v else v
    ) rhs;

  # Persisted entries are paths or impermanence-style attribute sets
  # ({ directory = ...; user = ...; mode = ...; }).
  entry =
    ids: kind: e:
    let
      t = if isString e then { ${kind} = e; } else e;
    in
    {
      path = t.${kind};
      user = resolveId ids.uids (t.user or null);
      group = resolveId ids.gids (t.group or null);
      mode = t.mode or null;
      method = t.method or "bind";
      options = t.options or [ ];
    };

  # Owner names -> numeric ids (stage 1 has no /etc/passwd). A name with no
  # known id stays a string; ./checks.nix reports it.
  resolveId =
    table: id:
    if id == null || builtins.isInt id then
      id
    else if id == "root" then
      0
    else if (table.${id} or null) != null then
      table.${id}
    else
      id;
in
raw:
let
  preset =
    if raw.referenceLayout.enable or false then
      reference.options { unlock = raw.referenceLayout.unlock or true; }
    else
      { };
  o = recursiveUpdate preset raw;

  btrfs = o.btrfs or { };
  subvolumes = map (
    mp:
    let
      sv = defaults.subvolume // btrfs.subvolumes.${mp};
    in
    {
      mountPoint = paths.normalize mp;
      inherit (sv) subvolume options neededForBoot;
    }
  ) (attrNames (btrfs.subvolumes or { }));
  rootSubvolumes = filter (sv: sv.mountPoint == "/") subvolumes;
  rootSubvolume = if rootSubvolumes == [ ] then null else (head rootSubvolumes).subvolume;

  rollback = defaults.rollback // (o.rollback or { });

  # Ids of users and groups (./resolve-ids.nix): given by the module from
  # config.users, by hostOptions from a host file's users.users.
  ids = {
    uids = { };
    gids = { };
    homes = { };
    primaryGids = { };
  }
  // (o._resolve or { });
in
{
  init = o.init or defaults.init;
  deviceTimeout = o.deviceTimeout or defaults.deviceTimeout;
  onFailure = o.onFailure or defaults.onFailure;
  continueOnFailure = o.continueOnFailure or defaults.continueOnFailure;
  kernelModules = o.kernelModules or defaults.kernelModules;

  luks = map (
    name: defaults.luksDevice // o.luks.devices.${name} // { inherit name; }
  ) (attrNames (o.luks.devices or { }));

  btrfs = {
    device = btrfs.device or null;
    options = btrfs.options or defaults.btrfs.options;
    inherit subvolumes rootSubvolume;
  };

  rollback = rollback // {
    subvolume = if rollback.subvolume != null then rollback.subvolume else rootSubvolume;
  };

  persist = filter (r: r.enable) (
    map (
      name:
      let
        r = defaults.persistRoot // o.persist.${name};
      in
      {
        inherit name;
        inherit (r) enable;
        root = paths.normalize (r.persistentStoragePath or name);
        options = (if r.hideMounts or false then [ "x-gvfs-hide" ] else [ ]) ++ (r.options or [ ]);
        files = map (entry ids "file") r.files;
        directories = map (entry ids "directory") r.directories;
        users = mapAttrs (
          user: u:
          let
            pick = attr: table: if (u.${attr} or null) != null then u.${attr} else table.${user} or null;
          in
          {
            uid = resolveId ids.uids (pick "uid" ids.uids);
            gid = resolveId ids.gids (pick "gid" ids.primaryGids);
            home = pick "home" ids.homes;
            files = map (entry ids "file") (u.files or [ ]);
            directories = map (entry ids "directory") (u.directories or [ ]);
          }
        ) (r.users or { });
      }
    ) (attrNames (o.persist or { }))
  );
}
