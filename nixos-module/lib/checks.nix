# The module's assertions and warnings, as a pure function (builtins only) of
# the normalised options and the few facts of the rest of the system they
# concern. ember's own validation (`ember check`, run on the generated config
# at build time) covers the config file; these catch what ember cannot see:
# conflicts with the rest of the NixOS configuration.
#
#   n                  normalised options (./normalize.nix)
#   fileSystems        [ { name mountPoint device fsType options neededForBoot } ]
#   initrdLuksDevices  { <name> = { device = ...; }; }  (boot.initrd.luks.devices)
#   secrets            paths inside the initrd that boot.initrd.secrets provides
#   otherPersistence   [ { option path } ]  paths persisted by impermanence or
#                      preservation, `option` naming where
{
  n,
  fileSystems,
  initrdLuksDevices ? { },
  secrets ? [ ],
  otherPersistence ? [ ],
}:
let
  paths = import ./paths.nix;
  inherit (builtins)
    any
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    head
    length
    map
    toJSON
    ;

  opt = "boot.initrd.ember";
  q = toJSON; # quote a string as Nix does

  assert' = assertion: message: { inherit assertion message; };
  find = pred: xs: head (filter pred xs ++ [ null ]);

  # What NixOS mounts in stage 1 (nixpkgs' utils.fsNeededForBoot).
  pathsNeededForBoot = [
    "/"
    "/etc"
    "/nix"
    "/nix/store"
    "/usr"
    "/var"
    "/var/lib"
    "/var/lib/nixos"
    "/var/log"
  ];
  neededForBoot = fs: fs.neededForBoot || elem fs.mountPoint pathsNeededForBoot;
  mountPoints = map (fs: paths.normalize fs.mountPoint) fileSystems;
  fsAt = mp: find (fs: paths.normalize fs.mountPoint == mp) fileSystems;

  subvolOf =
    fs:
    let
      s = filter (o: builtins.match "subvol=.*" o != null) (fs.options or [ ]);
    in
    if s == [ ] then null else paths.normalize (builtins.substring 7 (-1) (head s));

  svAt = mp: find (sv: sv.mountPoint == mp) n.btrfs.subvolumes;
  svMountPoints = map (sv: sv.mountPoint) n.btrfs.subvolumes;

  # --- LUKS: one owner per device ----------------------------------------------
  luksConflicts = filter (
    d:
    any (
      other:
      other == d.name || paths.sameDevice (initrdLuksDevices.${other}.device or null) d.device
    ) (attrNames initrdLuksDevices)
  ) n.luks;
  luksConflictMessage =
    d:
    let
      other = head (
        filter (
          o: o == d.name || paths.sameDevice (initrdLuksDevices.${o}.device or null) d.device
        ) (attrNames initrdLuksDevices)
      );
    in
    ''
      ${opt}.luks.devices.${d.name} and boot.initrd.luks.devices.${other} both unlock ${d.device} (as /dev/mapper/${d.name}); a device has one owner. Either
        - let ember unlock it: remove boot.initrd.luks.devices.${other} (disko: `initrdUnlock = false` on the luks content, as ember's diskoLayout does); or
        - keep systemd-cryptsetup (TPM2, FIDO2, ...): remove ${opt}.luks.devices.${d.name} (with the reference layout: ${opt}.referenceLayout.unlock = false); ember then only rolls back and persists.'';

  # --- fileSystems must describe what ember's options describe -----------------
  disagreeing = filter (
    sv:
    let
      fs = fsAt sv.mountPoint;
    in
    fs == null
    || !(paths.sameDevice fs.device n.btrfs.device)
    || fs.fsType != "btrfs"
    || subvolOf fs != paths.normalize sv.subvolume
  ) n.btrfs.subvolumes;
  disagreeMessage =
    sv:
    let
      fs = fsAt sv.mountPoint;
    in
    if fs == null then
      "fileSystems.${q sv.mountPoint} is missing; ${opt}.btrfs.subvolumes.${q sv.mountPoint} needs it (the module defines it unless something removed it)."
    else
      ''
        fileSystems.${q fs.name} disagrees with ${opt}.btrfs.subvolumes.${q sv.mountPoint}: ember expects device ${n.btrfs.device}, fsType btrfs, subvol=${sv.subvolume}; found device ${toString fs.device}, fsType ${toString fs.fsType}, options ${toJSON (fs.options or [ ])}.
        Remove that fileSystems entry (the module generates it from ${opt}.btrfs) or make it agree.'';

  # --- persisted paths ----------------------------------------------------------
  homeOf = user: u: if u.home != null then u.home else "/home/${user}";
  relative = p: if builtins.substring 0 2 p == "~/" then builtins.substring 2 (-1) p else p;
  entriesOf =
    r: kind: base: items:
    map (e: {
      inherit (r) name root;
      inherit kind;
      path = if base == null then e.path else "${base}/${relative e.path}";
      entry = e;
    }) items;
  persisted = concatLists (
    map (
      r:
      entriesOf r "files" null r.files
      ++ entriesOf r "directories" null r.directories
      ++ concatLists (
        map (
          user:
          let
            u = r.users.${user};
          in
          entriesOf r "users.${user}.files" (homeOf user u) u.files
          ++ entriesOf r "users.${user}.directories" (homeOf user u) u.directories
        ) (attrNames r.users)
      )
    ) n.persist
  );
  where = e: "${opt}.persist.${q e.name}.${e.kind}";

  # A path stage 1 binds must live on a filesystem stage 1 mounts, or the
  # later stage-2 mount hides the bind.
  stage2Only =
    p:
    let
      m = paths.owner mountPoints p;
    in
    if m == null then null else if neededForBoot (fsAt m) then null else fsAt m;
  stage2Message =
    what: p: fs:
    "${what} ${p} lies on fileSystems.${q fs.name}, which NixOS mounts only in stage 2: ember works in stage 1, and the later mount would hide it. Set fileSystems.${q fs.name}.neededForBoot = true (or, for an ember subvolume, ${opt}.btrfs.subvolumes.${q fs.mountPoint}.neededForBoot = true).";
  rootsStage2 = filter (r: stage2Only r.root != null) n.persist;
  pathsStage2 = filter (e: stage2Only e.path != null) persisted;

  allPaths = map (e: paths.normalize e.path) persisted;
  dupes = paths.duplicates allPaths;
  dupeMessage =
    p:
    "${p} is persisted more than once: in ${
      concatStringsSep " and " (map where (filter (e: paths.normalize e.path == p) persisted))
    }. List it once.";

  # The persist root must survive the boot: not on the root subvolume (or the
  # one rolled back).
  wiped = if n.rollback.enable then n.rollback.subvolume else null;
  rootOwner = r: svAt (paths.owner svMountPoints r.root);
  inWipedRoot = filter (
    r:
    let
      sv = rootOwner r;
    in
    sv == null || sv.mountPoint == "/" || (wiped != null && paths.isUnder wiped sv.subvolume)
  ) n.persist;
  wipedMessage =
    r:
    let
      sv = rootOwner r;
    in
    if sv == null then
      "${opt}.persist.${q r.name}: the persist root ${r.root} lies on none of ${opt}.btrfs.subvolumes; give it a subvolume of its own (btrfs.subvolumes.${q r.root}.subvolume = \"persist\")."
    else
      "${opt}.persist.${q r.name}: the persist root ${r.root} lies on subvolume `${sv.subvolume}` (mounted at ${sv.mountPoint}), ${
        if wiped != null && paths.isUnder wiped sv.subvolume then
          "which ember wipes at every boot"
        else
          "the root subvolume, which is what a rollback wipes (ember refuses a persist root there)"
      }: the persisted state would be lost with it. Give it a subvolume of its own (btrfs.subvolumes.${q r.root}.subvolume = \"persist\").";

  overlapOther = filter (o: elem (paths.normalize o.path) allPaths) otherPersistence;

  # Owners must be numbers by now (stage 1 has no /etc/passwd).
  unresolvedEntries = filter (
    e: builtins.isString e.entry.user || builtins.isString e.entry.group
  ) persisted;
  unresolvedUsers = concatLists (
    map (
      r:
      map (user: { inherit (r) name; inherit user; }) (
        filter (
          user: !(builtins.isInt r.users.${user}.uid) || !(builtins.isInt r.users.${user}.gid)
        ) (attrNames r.users)
      )
    ) n.persist
  );

  # --- rollback -----------------------------------------------------------------
  rb = n.rollback;
  # Subvolumes that must survive (a persist root on the root subvolume is
  # reported above, not here).
  keep = filter (
    sv: sv.mountPoint != "/" && (sv.mountPoint == "/nix" || any (r: rootOwner r == sv) n.persist)
  ) n.btrfs.subvolumes;
  rollbackDestroys = filter (sv: rb.subvolume != null && paths.isUnder rb.subvolume sv.subvolume) keep;

  # --- warnings -----------------------------------------------------------------
  mapper = if n.btrfs.device == null then null else paths.mapperName n.btrfs.device;
  nobodyUnlocks =
    mapper != null && !(any (d: d.name == mapper) n.luks) && !(initrdLuksDevices ? ${mapper});
  missingKeys = filter (d: d.keyFile != null && !(elem d.keyFile secrets)) n.luks;
in
{
  assertions = [
    (assert' (n.btrfs.device != null) "${opt}.btrfs.device is not set: name the device holding the Btrfs filesystem (e.g. \"/dev/mapper/cryptroot\"), or set ${opt}.referenceLayout.enable.")
    (assert' (n.btrfs.rootSubvolume != null) "${opt}.btrfs.subvolumes has no entry for \"/\": ember needs to know the root subvolume (e.g. btrfs.subvolumes.\"/\".subvolume = \"root\").")
    (assert' (
      !rb.enable || rb.filesystem != null || paths.identifiesFilesystem n.btrfs.device
    ) "${opt}.rollback.filesystem is not set: ember rolls back only a filesystem it can identify. Set it to the Btrfs filesystem's \"LABEL=...\" or \"UUID=...\" (the reference layout's is \"LABEL=nixos\").")
    (assert' (
      !rb.enable || rb.subvolume == null || any (sv: sv.subvolume == rb.subvolume) n.btrfs.subvolumes
    ) "${opt}.rollback.subvolume = ${q (toString rb.subvolume)} is not one of ${opt}.btrfs.subvolumes: ember only rolls back a subvolume it knows.")
    (assert' (!rb.enable || rb.strategy != "blank" || rb.blankSnapshot != null) "${opt}.rollback.strategy = \"blank\" needs ${opt}.rollback.blankSnapshot (the read-only snapshot of the empty root, created when the disk was formatted).")
  ]
  ++ map (d: assert' false (luksConflictMessage d)) luksConflicts
  ++ map (sv: assert' false (disagreeMessage sv)) (if n.btrfs.device == null then [ ] else disagreeing)
  ++ map (r: assert' false (stage2Message "${opt}.persist.${q r.name}: the persist root" r.root (stage2Only r.root))) rootsStage2
  ++ map (e: assert' false (stage2Message "${where e}:" e.path (stage2Only e.path))) pathsStage2
  ++ map (p: assert' false (dupeMessage p)) dupes
  ++ map (r: assert' false (wipedMessage r)) inWipedRoot
  ++ map (
    o:
    assert' false "${o.path} is persisted by both ${opt}.persist and ${o.option}: two bind mounts would stack on it. Keep one (see docs/nixos.md, \"Migrating from impermanence or preservation\")."
  ) overlapOther
  ++ map (
    e:
    assert' false "${where e}: ${e.path} is owned by ${toJSON e.entry.user}/${toJSON e.entry.group}, but stage 1 only knows numeric ids and no uid/gid is known for that name: give the number, or set users.users.<name>.uid / users.groups.<name>.gid."
  ) unresolvedEntries
  ++ map (
    x:
    assert' false "${opt}.persist.${q x.name}.users.${x.user}: no uid/gid known for `${x.user}`; set users.users.${x.user}.uid (and the gid of its group), or uid/gid here."
  ) unresolvedUsers
  ++ map (
    sv:
    assert' false "${opt}.rollback.subvolume = ${q rb.subvolume} would delete subvolume `${sv.subvolume}` (mounted at ${sv.mountPoint}), which must survive the boot. Roll back the root subvolume only."
  ) rollbackDestroys;

  warnings =
    (
      if nobodyUnlocks then
        [
          "${opt}.btrfs.device is ${n.btrfs.device}, but neither ${opt}.luks.devices nor boot.initrd.luks.devices opens `${mapper}`; stage 1 will wait for it in vain unless something else (LVM, ...) creates it."
        ]
      else
        [ ]
    )
    ++ map (
      d:
      "${opt}.luks.devices.${d.name}.keyFile = ${q d.keyFile}, but boot.initrd.secrets does not put a file there; add boot.initrd.secrets.${q d.keyFile} = \"/path/on/the/host\"; (or ember will find no key and the boot fails)."
    ) missingKeys;
}
