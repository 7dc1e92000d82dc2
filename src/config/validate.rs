//! Consistency checks over a parsed config. Everything here runs before any
//! device is touched: a config that passes can be planned and executed; a
//! config that fails names the field at fault and why.

use std::collections::BTreeMap;
use std::fmt;

use super::abspath::AbsPath;
use super::persist::PersistItem;
use super::schema::{Config, Subvolume};

/// One problem, tied to the config field it is about (`luks[0].name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    pub field: String,
    pub message: String,
}

/// Subvolume paths compare by component: `root` contains `root/var` but not `rootfs`.
pub fn subvolume_contains(outer: &str, inner: &str) -> bool {
    let (outer, inner) = (outer.trim_matches('/'), inner.trim_matches('/'));
    inner == outer || inner.starts_with(&format!("{outer}/"))
}

impl fmt::Display for FieldIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What validation found: errors make the config unusable, warnings describe
/// a decision ember took on the user's behalf (and are logged at every boot).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<FieldIssue>,
    pub warnings: Vec<FieldIssue>,
    /// Problems that make a rollback unsafe. `ember check` and the builder
    /// treat them as errors; at boot they are the rollback's guards: the
    /// rollback is skipped (or the boot stopped, per `on_guard_failure`)
    /// and everything else goes on.
    pub rollback_errors: Vec<FieldIssue>,
}

impl Findings {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldIssue {
            field: field.into(),
            message: message.into(),
        });
    }
    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(FieldIssue {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// A mounted subvolume and the config field that declared it.
#[derive(Debug, Clone, Copy)]
pub struct MountRef<'a> {
    pub field_fs: usize,
    pub field_sub: usize,
    pub subvolume: &'a Subvolume,
}

impl MountRef<'_> {
    pub fn field(&self) -> String {
        format!("btrfs[{}].subvolumes[{}]", self.field_fs, self.field_sub)
    }
}

/// Every configured mount, in config order.
pub fn mounts(config: &Config) -> Vec<MountRef<'_>> {
    config
        .btrfs
        .iter()
        .enumerate()
        .flat_map(|(i, fs)| {
            fs.subvolumes
                .iter()
                .enumerate()
                .map(move |(j, s)| MountRef {
                    field_fs: i,
                    field_sub: j,
                    subvolume: s,
                })
        })
        .collect()
}

/// The mount that holds `path` in the new root: the deepest mount point at or above it.
pub fn owning_mount<'a>(config: &'a Config, path: &AbsPath) -> Option<MountRef<'a>> {
    mounts(config)
        .into_iter()
        .filter(|m| m.subvolume.mount_point.contains(path))
        .max_by_key(|m| m.subvolume.mount_point.depth())
}

/// What ember does with one persisted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistDisposition {
    /// Bind-mount it from the persist root.
    Bind,
    /// Leave it alone: it already lives on a subvolume that is never rolled
    /// back (`/var/log` mounted from its own subvolume), so a bind mount
    /// stacked on top would only hide that subvolume.
    OnPersistentSubvolume {
        mount_point: AbsPath,
        subvolume: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Directory => "directory",
        }
    }
}

/// One persisted path, fully decided: where, what, how, with which
/// attributes for whatever ember has to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistEntry {
    pub field: String,
    pub root: AbsPath,
    pub path: AbsPath,
    pub kind: EntryKind,
    pub disposition: PersistDisposition,
    pub method: super::Method,
    /// Owner and mode of the entry itself, when ember creates it.
    pub attr: super::Attr,
    /// The persist root's options followed by the entry's own.
    pub options: Vec<String>,
    /// Configured homes, for the parent-directory policy.
    pub homes: Vec<super::persist::Home>,
    /// Content for a file ember creates (`/etc/machine-id`: `uninitialized`).
    pub initial_content: &'static [u8],
}

/// systemd reads `uninitialized` in /etc/machine-id as "first boot": it
/// generates an id and `systemd-machine-id-commit.service` writes it through
/// the bind mount into the persist root. An empty file would not be committed.
pub const MACHINE_ID_FIRST_BOOT: &[u8] = b"uninitialized\n";

/// A path problem found while resolving entries (reported by `validate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    pub field: String,
    pub message: String,
}

/// One list of entries: its field name, kind, items, and (for per-user
/// lists) the home and the user's ids.
type EntryList<'a> = (
    String,
    EntryKind,
    &'a Vec<PersistItem>,
    Option<(AbsPath, u32, u32)>,
);

/// Every persisted entry, in config order, with its disposition decided,
/// and the entries whose path could not be resolved.
pub fn persist_entries_checked(config: &Config) -> (Vec<PersistEntry>, Vec<EntryError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, root) in config.persist.iter().enumerate() {
        let homes = super::persist::homes(&root.users);
        let mut lists: Vec<EntryList<'_>> = vec![
            (
                format!("persist[{i}].files"),
                EntryKind::File,
                &root.files,
                None,
            ),
            (
                format!("persist[{i}].directories"),
                EntryKind::Directory,
                &root.directories,
                None,
            ),
        ];
        for (name, user) in &root.users {
            let home = user.home_of(name);
            let who = Some((home, user.uid.0, user.gid.0));
            lists.push((
                format!("persist[{i}].users.{name}.files"),
                EntryKind::File,
                &user.files,
                who.clone(),
            ));
            lists.push((
                format!("persist[{i}].users.{name}.directories"),
                EntryKind::Directory,
                &user.directories,
                who,
            ));
        }
        for (list, kind, items, who) in lists {
            for (j, item) in items.iter().enumerate() {
                let field = format!("{list}[{j}]");
                let t = &item.0;
                let path = match super::persist::resolve_path(&t.path, who.as_ref().map(|w| &w.0)) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(EntryError {
                            field,
                            message: e.to_string(),
                        });
                        continue;
                    }
                };
                let disposition = match owning_mount(config, &path) {
                    Some(m) if !m.subvolume.mount_point.is_root() => {
                        PersistDisposition::OnPersistentSubvolume {
                            mount_point: m.subvolume.mount_point.clone(),
                            subvolume: m.subvolume.subvol_path().to_string(),
                        }
                    }
                    _ => PersistDisposition::Bind,
                };
                let (default_uid, default_gid) = who.as_ref().map(|w| (w.1, w.2)).unwrap_or((0, 0));
                let default_mode = match kind {
                    EntryKind::File => 0o644,
                    EntryKind::Directory => 0o755,
                };
                let attr = super::Attr {
                    uid: t.user.map(|u| u.0).unwrap_or(default_uid),
                    gid: t.group.map(|g| g.0).unwrap_or(default_gid),
                    mode: t.mode.map(|m| m.0).unwrap_or(default_mode),
                };
                let mut options = root.options.clone();
                options.extend(t.options.iter().cloned());
                let initial_content: &'static [u8] =
                    if kind == EntryKind::File && path.as_str() == "/etc/machine-id" {
                        MACHINE_ID_FIRST_BOOT
                    } else {
                        b""
                    };
                out.push(PersistEntry {
                    field,
                    root: root.root.clone(),
                    path,
                    kind,
                    disposition,
                    method: t.method,
                    attr,
                    options,
                    homes: homes.clone(),
                    initial_content,
                });
            }
        }
    }
    (out, errors)
}

/// Every resolvable persisted entry (see [`persist_entries_checked`]).
pub fn persist_entries(config: &Config) -> Vec<PersistEntry> {
    persist_entries_checked(config).0
}

/// Options a persist bind accepts: flags applied by remounting the bind,
/// and `x-*` userspace options recorded for libmount (`/run/mount/utab`).
pub const BIND_FLAG_OPTIONS: [&str; 6] = ["ro", "rw", "nosuid", "nodev", "noexec", "noatime"];

fn valid_mapper_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.+".contains(&b))
}

fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_subvolume_path(findings: &mut Findings, field: String, subvolume: &str) {
    let trimmed = subvolume.trim_matches('/');
    if trimmed.is_empty() {
        findings.error(
            field,
            "is empty; name the subvolume (mounting the top level of the filesystem is not supported)",
        );
    } else if trimmed.contains('\0') || trimmed.contains(',') {
        findings.error(
            field,
            format!("`{subvolume}` contains `,` or NUL, which mount options cannot carry"),
        );
    } else if trimmed
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        findings.error(
            field,
            format!("`{subvolume}` must be a normalised path without `.` or `..`"),
        );
    }
}

fn check_mount_options(findings: &mut Findings, field: &str, options: &[String]) {
    for (k, opt) in options.iter().enumerate() {
        let field = format!("{field}.options[{k}]");
        if opt.is_empty() {
            findings.error(field, "is empty");
        } else if opt.contains(',') {
            findings.error(
                field,
                format!("`{opt}` holds several options; give one per list entry"),
            );
        } else if opt.contains('\0') {
            findings.error(
                field,
                format!(
                    "`{}` contains NUL, which mount options cannot carry",
                    opt.escape_debug()
                ),
            );
        } else if opt.starts_with("subvol=") || opt.starts_with("subvolid=") {
            findings.error(field, format!("`{opt}`: use the `subvolume` field instead"));
        }
    }
}

/// Checks everything that can be checked without touching the system.
pub fn validate(config: &Config) -> Findings {
    let mut f = Findings::default();

    if config.device_timeout_secs == 0 {
        f.error("device_timeout_secs", "must be at least 1 second");
    }
    for (i, m) in config.kernel_modules.iter().enumerate() {
        if !valid_module_name(m) {
            f.error(
                format!("kernel_modules[{i}]"),
                format!("`{m}` is not a kernel module name"),
            );
        }
    }

    let mut mapper_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, luks) in config.luks.iter().enumerate() {
        if !valid_mapper_name(&luks.name) {
            f.error(
                format!("luks[{i}].name"),
                format!(
                    "`{}` is not a valid device-mapper name (letters, digits, `_-.+`, at most 127)",
                    luks.name
                ),
            );
        } else if let Some(first) = mapper_names.insert(&luks.name, i) {
            f.error(
                format!("luks[{i}].name"),
                format!("`{}` is already used by luks[{first}]", luks.name),
            );
        }
        if luks.passphrase_tries == 0 || luks.passphrase_tries > 100 {
            f.error(
                format!("luks[{i}].passphrase_tries"),
                "must be between 1 and 100",
            );
        }
        if luks.device.mapper_name().is_some() {
            f.error(
                format!("luks[{i}].device"),
                "a LUKS volume inside another device-mapper device is not supported yet",
            );
        }
    }

    // Mount points: exactly one `/`, no duplicates, every mount below `/`.
    let all_mounts = mounts(config);
    let mut seen: BTreeMap<&AbsPath, String> = BTreeMap::new();
    let has_root = all_mounts.iter().any(|m| m.subvolume.mount_point.is_root());
    for (i, fs) in config.btrfs.iter().enumerate() {
        check_mount_options(&mut f, &format!("btrfs[{i}]"), &fs.options);
        if fs.subvolumes.is_empty() {
            f.error(
                format!("btrfs[{i}].subvolumes"),
                "lists no subvolume to mount",
            );
        }
    }
    for m in &all_mounts {
        let field = m.field();
        check_subvolume_path(&mut f, format!("{field}.subvolume"), &m.subvolume.subvolume);
        check_mount_options(&mut f, &field, &m.subvolume.options);
        let mp = &m.subvolume.mount_point;
        if let Some(first) = seen.insert(mp, field.clone()) {
            f.error(
                format!("{field}.mount_point"),
                format!("{mp} is already the mount point of {first}"),
            );
        }
        if !mp.is_root() && !has_root {
            f.error(
                format!("{field}.mount_point"),
                format!("{mp} has no mounted parent: no subvolume is mounted at `/`"),
            );
        }
    }
    if config.btrfs.is_empty() {
        f.error(
            "btrfs",
            "no filesystem configured: ember needs a subvolume to mount at `/`",
        );
    }

    super::keys::check(config, &mut f);
    check_persist(config, &mut f);
    check_rollback(config, &mut f);
    f
}

fn check_rollback(config: &Config, f: &mut Findings) {
    for (i, fs) in config.btrfs.iter().enumerate() {
        let Some(rb) = &fs.rollback else { continue };
        let field = format!("btrfs[{i}].rollback");
        let mut error = |sub: &str, message: String| {
            f.rollback_errors.push(FieldIssue {
                field: format!("{field}{sub}"),
                message,
            })
        };
        let target = rb.subvolume.trim_matches('/');
        if !fs.subvolumes.iter().any(|s| s.subvol_path() == target) {
            error(
                ".subvolume",
                format!(
                    "`{}` is not one of this filesystem's subvolumes; ember only rolls back a subvolume it mounts",
                    rb.subvolume
                ),
            );
        }
        if target.is_empty()
            || target
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            error(
                ".subvolume",
                format!("`{}` must be a normalised subvolume path", rb.subvolume),
            );
        }
        // Everything inside the rolled-back subvolume is deleted with it.
        for (j, s) in fs.subvolumes.iter().enumerate() {
            if s.subvol_path() != target && subvolume_contains(target, s.subvol_path()) {
                error(
                    ".subvolume",
                    format!(
                        "btrfs[{i}].subvolumes[{j}] (`{}`) lies inside `{target}` and would be deleted with it",
                        s.subvol_path()
                    ),
                );
            }
        }
        for (j, root) in config.persist.iter().enumerate() {
            if let Some(m) = owning_mount(config, &root.root)
                && m.field_fs == i
                && subvolume_contains(target, m.subvolume.subvol_path())
            {
                error(
                    ".subvolume",
                    format!(
                        "persist[{j}].root {} lives on subvolume `{}`, which is `{target}` or inside it: rolling back would destroy the persisted state",
                        root.root,
                        m.subvolume.subvol_path()
                    ),
                );
            }
        }
        match (&rb.strategy, &rb.blank_snapshot) {
            (super::RollbackStrategy::Blank, None) => {
                error(".blank_snapshot", "the `blank` strategy needs a read-only blank snapshot to start from".into())
            }
            (super::RollbackStrategy::Empty, Some(_)) => error(
                ".blank_snapshot",
                "the `empty` strategy does not use a blank snapshot; use `blank` or remove this field".into(),
            ),
            _ => {}
        }
        if let Some(blank) = &rb.blank_snapshot {
            let blank = blank.trim_matches('/');
            if blank.is_empty()
                || subvolume_contains(target, blank)
                || subvolume_contains(blank, target)
            {
                error(
                    ".blank_snapshot",
                    format!(
                        "`{blank}` must be a separate subvolume, neither `{target}` nor inside or above it"
                    ),
                );
            } else if blank
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            {
                error(
                    ".blank_snapshot",
                    format!("`{blank}` must be a normalised subvolume path without `.` or `..`"),
                );
            } else if blank.contains('\0') {
                error(
                    ".blank_snapshot",
                    format!(
                        "`{}` contains NUL, which a path cannot hold",
                        blank.escape_debug()
                    ),
                );
            }
        }
        if rb.strategy == super::RollbackStrategy::Archive {
            let dir = rb.archive_dir.trim_matches('/');
            if dir.is_empty()
                || subvolume_contains(target, dir)
                || dir.split('/').any(|c| c == "." || c == "..")
            {
                error(
                    ".archive_dir",
                    format!(
                        "`{}` must be a normalised path outside `{target}`",
                        rb.archive_dir
                    ),
                );
            } else if dir.contains('\0') {
                error(
                    ".archive_dir",
                    format!(
                        "`{}` contains NUL, which a path cannot hold",
                        dir.escape_debug()
                    ),
                );
            }
            if rb.keep_count == Some(0) {
                error(
                    ".keep_count",
                    "must keep at least 1 archived root (or leave it unset)".into(),
                );
            }
        } else if rb.keep_days.is_some() || rb.keep_count.is_some() {
            error(
                ".keep_days",
                "keep_days/keep_count only apply to the `archive` strategy".into(),
            );
        }
        let identified = matches!(
            fs.device,
            super::DeviceSpec::Uuid(_) | super::DeviceSpec::Label(_)
        );
        match &rb.filesystem {
            None if !identified => error(
                ".filesystem",
                "name the filesystem (`UUID=...` or `LABEL=...` of the Btrfs filesystem) so ember can never roll back the wrong one".into(),
            ),
            Some(super::DeviceSpec::Uuid(_) | super::DeviceSpec::Label(_)) | None => {}
            Some(other) => error(".filesystem", format!("`{other}` must be `UUID=...` or `LABEL=...`")),
        }
    }
}

fn check_persist(config: &Config, f: &mut Findings) {
    let mut roots: BTreeMap<&AbsPath, usize> = BTreeMap::new();
    for (i, root) in config.persist.iter().enumerate() {
        let field = format!("persist[{i}].root");
        if let Some(first) = roots.insert(&root.root, i) {
            f.error(
                &field,
                format!("{} is already persist[{first}].root", root.root),
            );
        }
        match owning_mount(config, &root.root) {
            Some(m) if !m.subvolume.mount_point.is_root() => {}
            Some(_) => f.error(
                &field,
                format!(
                    "{} is on the root subvolume; a persist root must be (or lie on) a subvolume of its own, or it is lost with the root",
                    root.root
                ),
            ),
            None => {} // no `/` at all: already reported on the mounts
        }
    }

    for (i, root) in config.persist.iter().enumerate() {
        for (name, user) in &root.users {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !valid {
                f.error(
                    format!("persist[{i}].users.{name}"),
                    "is not a valid user name",
                );
            }
            if user.uid.0 == 0 {
                f.warn(
                    format!("persist[{i}].users.{name}.uid"),
                    "is 0 (root): the home's files will be owned by root",
                );
            }
        }
    }
    let (entries, entry_errors) = persist_entries_checked(config);
    for e in entry_errors {
        f.error(e.field, e.message);
    }
    let mut seen: BTreeMap<&AbsPath, &str> = BTreeMap::new();
    for e in &entries {
        if e.path.is_root() {
            f.error(&e.field, "cannot persist `/` itself");
            continue;
        }
        if let Some(first) = seen.insert(&e.path, &e.field) {
            f.error(
                &e.field,
                format!("{} is already persisted by {first}", e.path),
            );
        }
        for root in &config.persist {
            if root.root.contains(&e.path) || e.path.contains(&root.root) {
                f.error(
                    &e.field,
                    format!("{} overlaps the persist root {}", e.path, root.root),
                );
            }
        }
        for m in mounts(config) {
            let mp = &m.subvolume.mount_point;
            if !mp.is_root() && e.path.contains(mp) && e.path != *mp {
                f.error(
                    &e.field,
                    format!(
                        "{} contains the mount point {mp} ({}); a bind mount over it would hide that subvolume",
                        e.path,
                        m.field()
                    ),
                );
            }
        }
        if let PersistDisposition::OnPersistentSubvolume {
            mount_point,
            subvolume,
        } = &e.disposition
        {
            f.warn(
                &e.field,
                format!(
                    "{} already lives on subvolume `{subvolume}` (mounted at {mount_point}), which is never rolled back; keeping that mount and not binding {} over it",
                    e.path,
                    e.root.join(e.path.as_str())
                ),
            );
        }
    }
    for e in &entries {
        for (k, opt) in e.options.iter().enumerate() {
            // Flags and x-* options are each one item: x-* ones are written
            // comma-separated to /run/mount/utab.
            if opt.contains(',') || opt.contains('\0') {
                f.error(
                    format!("{}.options[{k}]", e.field),
                    format!(
                        "`{}` holds a `,` or NUL; give one option per list entry",
                        opt.escape_debug()
                    ),
                );
            } else if !(opt.starts_with("x-") || BIND_FLAG_OPTIONS.contains(&opt.as_str())) {
                f.error(
                    format!("{}.options[{k}]", e.field),
                    format!(
                        "`{opt}`: a persist bind takes only {} and x-* options",
                        BIND_FLAG_OPTIONS.join(", ")
                    ),
                );
            }
        }
        if e.method == super::Method::Symlink && !e.options.iter().all(|o| o.starts_with("x-")) {
            f.error(
                &e.field,
                "a symlink takes no mount options (only x-* ones, which are ignored)",
            );
        }
    }
    // A file cannot have anything below it.
    for e in entries
        .iter()
        .filter(|e| e.kind == super::validate::EntryKind::File)
    {
        for other in &entries {
            if other.path != e.path && e.path.contains(&other.path) {
                f.error(
                    &other.field,
                    format!(
                        "{} is below {}, which is persisted as a file ({})",
                        other.path, e.path, e.field
                    ),
                );
            }
        }
    }
}
