//! `ember diff`: what the next boot's rollback will destroy.
//!
//! Pure logic only. [`crate::sys::btrfs_tree`] finds the inodes of the root
//! subvolume that changed since it was snapshotted from the blank (and the
//! subvolumes nested in it); this module drops what survives a rollback
//! (persisted paths, mount points of other filesystems), de-duplicates,
//! sorts and renders the result as text or JSON.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde::Serialize;

use crate::config::AbsPath;

/// How a path differs from the blank snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// The inode did not exist in the blank: it was created after the root
    /// was snapshotted (its Btrfs inode generation is newer than the root's
    /// creation transaction).
    Created,
    /// The inode comes from the blank and its content or metadata changed
    /// (an access-time update alone does not count), or it was renamed or
    /// hard-linked to this path.
    Modified,
    /// A subvolume nested in the root. The rollback deletes it with
    /// everything in it; its contents are not listed.
    Subvolume,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Modified => "modified",
            ChangeKind::Subvolume => "subvolume",
        }
    }
}

/// One path the next boot will destroy (or revert).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Absolute path inside the root, `/etc/foo`. Bytes of a name that are
    /// not UTF-8 appear as `\xNN`.
    pub path: String,
    pub kind: ChangeKind,
    /// A directory (always true for a subvolume). A modified directory had
    /// entries added, removed or renamed, or its own metadata changed.
    pub is_dir: bool,
}

impl Change {
    pub fn new(path: impl Into<String>, kind: ChangeKind, is_dir: bool) -> Self {
        Change {
            path: path.into(),
            kind,
            is_dir,
        }
    }
}

/// True when `path` is `base` or below it, component-wise (`/var/log` is not
/// below `/var/lo`).
fn at_or_below(path: &str, base: &str) -> bool {
    if base == "/" {
        return true;
    }
    path == base || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
}

/// Path order by components, so a directory comes right before its contents
/// (`/etc`, `/etc/a`, `/etc-old`; plain string order would put `/etc-old`
/// between `/etc` and `/etc/a`).
fn path_order(a: &str, b: &str) -> Ordering {
    let components = |p| str::split(p, '/').filter(|c: &&str| !c.is_empty());
    components(a).cmp(components(b))
}

/// What is left of `changes` once everything the rollback does not destroy
/// is taken out, in path order, one entry per path.
///
/// `kept` lists the paths that survive a rollback: the persisted files and
/// directories, and the mount points of other filesystems (other
/// subvolumes, tmpfs, binds; see `sys::btrfs_tree::mount_points_below`).
/// Dropped:
/// - every change at or below a kept path;
/// - a created or modified *directory* above a kept path (`/var/lib` when
///   `/var/lib/systemd` is persisted): it exists again after the next boot,
///   because it is in the blank or because ember recreates it to mount the
///   kept path; whatever else changed in it is listed on its own.
///
/// Subvolumes are only dropped when at or below a kept path. When one path
/// appears twice, the first kind in `Subvolume`, `Created`, `Modified` order wins.
pub fn filter_and_sort(changes: Vec<Change>, kept: &[AbsPath]) -> Vec<Change> {
    let kept: Vec<&str> = kept.iter().map(AbsPath::as_str).collect();
    let mut out: Vec<Change> = changes
        .into_iter()
        .filter(|c| {
            if kept.iter().any(|k| at_or_below(&c.path, k)) {
                return false;
            }
            let above_kept = c.is_dir && kept.iter().any(|k| at_or_below(k, &c.path));
            !(above_kept && c.kind != ChangeKind::Subvolume)
        })
        .collect();
    out.sort_by(|a, b| path_order(&a.path, &b.path).then_with(|| rank(a.kind).cmp(&rank(b.kind))));
    out.dedup_by(|later, first| later.path == first.path);
    out
}

fn rank(kind: ChangeKind) -> u8 {
    match kind {
        ChangeKind::Subvolume => 0,
        ChangeKind::Created => 1,
        ChangeKind::Modified => 2,
    }
}

/// A path for a terminal: one line per path whatever the name contains
/// (control characters as `\n`, `\t`, `\xNN`), and a trailing `/` on
/// directories.
fn shown(change: &Change) -> String {
    let mut out = String::with_capacity(change.path.len() + 1);
    for ch in change.path.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    if change.is_dir && !out.ends_with('/') {
        out.push('/');
    }
    out
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub created: usize,
    pub modified: usize,
    pub subvolumes: usize,
}

pub fn counts(changes: &[Change]) -> Counts {
    let mut counts = Counts::default();
    for c in changes {
        match c.kind {
            ChangeKind::Created => counts.created += 1,
            ChangeKind::Modified => counts.modified += 1,
            ChangeKind::Subvolume => counts.subvolumes += 1,
        }
    }
    counts
}

/// One line per path (`created   /var/cache/app/`), then a summary line.
pub fn render_text(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes {
        let _ = writeln!(out, "{:<9} {}", c.kind.as_str(), shown(c));
    }
    let n = counts(changes);
    if changes.is_empty() {
        out.push_str(
            "nothing to lose: the root matches the blank snapshot outside persisted paths\n",
        );
    } else {
        let _ = writeln!(
            out,
            "{} path{} the next boot will destroy: {} created, {} modified, {} subvolume{}",
            changes.len(),
            if changes.len() == 1 { "" } else { "s" },
            n.created,
            n.modified,
            n.subvolumes,
            if n.subvolumes == 1 { "" } else { "s" },
        );
    }
    out
}

/// `{"changes":[{"path":"/etc/foo","kind":"created","is_dir":false},...],
/// "counts":{"created":1,"modified":0,"subvolumes":0}}`, one line.
pub fn render_json(changes: &[Change]) -> String {
    #[derive(Serialize)]
    struct Report<'a> {
        changes: &'a [Change],
        counts: Counts,
    }
    serde_json::to_string(&Report {
        changes,
        counts: counts(changes),
    })
    .expect("a diff report always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(path: &str, kind: ChangeKind, is_dir: bool) -> Change {
        Change::new(path, kind, is_dir)
    }

    fn kept(paths: &[&str]) -> Vec<AbsPath> {
        paths.iter().map(|p| AbsPath::parse(p).unwrap()).collect()
    }

    use ChangeKind::{Created, Modified, Subvolume};

    #[test]
    fn drops_paths_at_or_below_kept_ones_by_component() {
        let changes = vec![
            c("/etc/machine-id", Created, false),
            c("/etc/machine-id.old", Created, false),
            c("/var/lib/systemd", Modified, true),
            c("/var/lib/systemd/timers/stamp", Created, false),
            c("/var/lib/systemdx", Created, true),
            c("/home/shadowed", Created, false),
        ];
        let out = filter_and_sort(
            changes,
            &kept(&["/etc/machine-id", "/var/lib/systemd", "/home"]),
        );
        assert_eq!(
            out,
            vec![
                c("/etc/machine-id.old", Created, false),
                c("/var/lib/systemdx", Created, true),
            ]
        );
    }

    #[test]
    fn drops_directories_above_kept_paths_but_not_files_or_subvolumes() {
        let changes = vec![
            c("/", Modified, true),
            c("/var", Modified, true),
            c("/var/lib", Created, true),
            c("/var/lib/other", Created, false),
            c("/srv", Modified, true),
            c("/data", Subvolume, true),
        ];
        let out = filter_and_sort(changes, &kept(&["/var/lib/systemd", "/data/keep"]));
        assert_eq!(
            out,
            vec![
                c("/data", Subvolume, true),
                c("/srv", Modified, true),
                c("/var/lib/other", Created, false),
            ]
        );
    }

    #[test]
    fn nothing_kept_keeps_everything_and_root_kept_drops_everything() {
        let changes = vec![c("/", Modified, true), c("/a", Created, false)];
        assert_eq!(filter_and_sort(changes.clone(), &[]).len(), 2);
        assert!(filter_and_sort(changes, &[AbsPath::root()]).is_empty());
    }

    #[test]
    fn sorts_by_component_and_deduplicates() {
        let changes = vec![
            c("/etc-old", Created, true),
            c("/etc/a", Modified, false),
            c("/etc", Modified, true),
            c("/etc/a", Created, false),
            c("/b", Subvolume, true),
            c("/b", Created, true),
            c("/etc/a b", Created, false),
        ];
        let out = filter_and_sort(changes, &[]);
        assert_eq!(
            out,
            vec![
                c("/b", Subvolume, true),
                c("/etc", Modified, true),
                c("/etc/a", Created, false),
                c("/etc/a b", Created, false),
                c("/etc-old", Created, true),
            ]
        );
    }

    #[test]
    fn text_marks_directories_and_escapes_control_characters() {
        let changes = vec![
            c("/", Modified, true),
            c("/srv/vm", Subvolume, true),
            c("/tmp/evil\nname\t\u{1b}", Created, false),
            c("/var/cache", Created, true),
        ];
        assert_eq!(
            render_text(&changes),
            "modified  /\n\
             subvolume /srv/vm/\n\
             created   /tmp/evil\\nname\\t\\x1b\n\
             created   /var/cache/\n\
             4 paths the next boot will destroy: 2 created, 1 modified, 1 subvolume\n"
        );
        assert_eq!(
            render_text(&[]),
            "nothing to lose: the root matches the blank snapshot outside persisted paths\n"
        );
    }

    #[test]
    fn json_is_one_object_with_changes_and_counts() {
        let changes = vec![
            c("/etc/new\"q", Created, false),
            c("/srv", Modified, true),
            c("/srv/vm", Subvolume, true),
        ];
        let json = render_json(&changes);
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "changes": [
                    {"path": "/etc/new\"q", "kind": "created", "is_dir": false},
                    {"path": "/srv", "kind": "modified", "is_dir": true},
                    {"path": "/srv/vm", "kind": "subvolume", "is_dir": true},
                ],
                "counts": {"created": 1, "modified": 1, "subvolumes": 1},
            })
        );
        assert_eq!(
            render_json(&[]),
            r#"{"changes":[],"counts":{"created":0,"modified":0,"subvolumes":0}}"#
        );
    }
}
