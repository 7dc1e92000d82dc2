# `boot.initrd.ember` option values -> ember's configuration, as the JSON
# value of `Config` in src/config/schema.rs (field names and shapes exactly as
# serde reads them; ember rejects unknown fields). Pure: builtins only.
#
#   nix-instantiate --eval --strict --json -E \
#     'import ./nixos-module/lib/to-config.nix (import ./nixos-module/eval/reference.nix)'
#
# Each section of the schema has one function below, so a field that changes
# on the Rust side changes in one place here.
let
  normalize = import ./normalize.nix;

  optional = cond: attrs: if cond then attrs else { };

  luks =
    d:
    {
      inherit (d) name device;
      passphrase_tries = d.passphraseTries;
      allow_discards = d.allowDiscards;
    }
    // optional (d.keyFile != null) { keyfile = d.keyFile; }
    // optional (d.keys != [ ]) { inherit (d) keys; }
    // optional (d.passphraseTimeout != null) { passphrase_timeout_secs = d.passphraseTimeout; };

  subvolume = sv: {
    inherit (sv) subvolume options;
    mount_point = sv.mountPoint;
  };

  # btrfs[].rollback (src/config/schema.rs `Rollback`). The schema refuses a
  # blank snapshot with `empty` and keep_* outside `archive`, so each field is
  # written only where it applies.
  rollback =
    rb:
    {
      inherit (rb) subvolume strategy;
      on_guard_failure = rb.onGuardFailure;
    }
    // optional (rb.strategy != "empty" && rb.blankSnapshot != null) {
      blank_snapshot = rb.blankSnapshot;
    }
    // optional (rb.filesystem != null) { inherit (rb) filesystem; }
    // optional (rb.strategy == "archive") (
      {
        archive_dir = rb.archiveDir;
      }
      // optional (rb.keepDays != null) { keep_days = rb.keepDays; }
      // optional (rb.keepCount != null) { keep_count = rb.keepCount; }
    );

  btrfs =
    n:
    {
      inherit (n.btrfs) device options;
      subvolumes = map subvolume n.btrfs.subvolumes;
    }
    // optional n.rollback.enable { rollback = rollback n.rollback; };

  # A persisted entry: the bare path unless it has attributes (ember reads
  # both; the bare form keeps configs as short as the TOML ones).
  item =
    e:
    if e.user == null && e.group == null && e.mode == null && e.method == "bind" && e.options == [ ] then
      e.path
    else
      {
        inherit (e) path;
      }
      // optional (e.user != null) { inherit (e) user; }
      // optional (e.group != null) { inherit (e) group; }
      // optional (e.mode != null) { inherit (e) mode; }
      // optional (e.method != "bind") { inherit (e) method; }
      // optional (e.options != [ ]) { inherit (e) options; };

  # persist[].users.<name> (src/config/persist.rs `PersistUser`).
  user = u: {
    inherit (u) uid gid;
    files = map item u.files;
    directories = map item u.directories;
  }
  // optional (u.home != null) { inherit (u) home; };

  persist =
    r:
    {
      inherit (r) root;
      files = map item r.files;
      directories = map item r.directories;
    }
    // optional (r.options != [ ]) { inherit (r) options; }
    // optional (r.users != { }) { users = builtins.mapAttrs (_: user) r.users; };

  render = n: {
    inherit (n) init;
    device_timeout_secs = n.deviceTimeout;
    on_failure = n.onFailure;
    kernel_modules = n.kernelModules;
    luks = map luks n.luks;
    btrfs = [ (btrfs n) ];
    persist = map persist n.persist;
  };
in
options: render (normalize options)
