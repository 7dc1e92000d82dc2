//! Planning a root rollback: a pure function from the rollback config and
//! what is on the filesystem now to the ordered, crash-safe list of actions
//! (or a refusal saying which guard failed). The order is the state machine
//! documented in docs/design/rollback.md: at every instant the filesystem
//! holds either the old root or the new one under the configured name, or
//! exactly one of them under a temporary name that the next run recognises.

use std::fmt;

use crate::config::{DeviceSpec, Rollback, RollbackStrategy};

/// Suffixes of the temporary names, next to the target in its parent directory.
pub const NEW_SUFFIX: &str = ".ember-new";
pub const OLD_SUFFIX: &str = ".ember-old";

/// A subvolume path seen from the top level, as far as planning needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Missing,
    /// Exists but is a plain directory or file, not a subvolume.
    NotSubvolume,
    Subvolume {
        read_only: bool,
    },
}

/// What is on the filesystem, read just before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub fs_uuid: Option<String>,
    pub fs_label: Option<String>,
    pub target: Entry,
    pub new_tmp: Entry,
    pub old_tmp: Entry,
    /// The blank snapshot, if the config names one.
    pub blank: Entry,
    /// Seconds since the epoch of the target's last change (its root item's ctime).
    pub target_changed: Option<i64>,
    /// Names directly in `archive_dir` (None when it does not exist).
    pub archived: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deletes a subvolume and every subvolume nested in it.
    Delete {
        path: String,
        why: String,
    },
    Snapshot {
        source: String,
        dest: String,
    },
    CreateEmpty {
        dest: String,
    },
    CreateDir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
}

impl Action {
    /// Whether this action must be committed before the next one runs.
    ///
    /// Every action but a deletion is: the crash-safe order relies on each
    /// step being on disk before the next. A deletion need not be: Btrfs
    /// commits transactions in order, so a later step's commit carries it,
    /// and losing a trailing one to a crash leaves a state the next boot's
    /// plan already repairs (an `.ember-old` to delete, an expired archive
    /// entry to prune). Not committing the last deletion matters for boot
    /// time: a commit wakes btrfs-cleaner, which would then drop the old
    /// root's files while the boot goes on, on the same CPUs; without it the
    /// space is reclaimed at the filesystem's next periodic commit, in
    /// stage 2.
    pub fn needs_commit(&self) -> bool {
        !matches!(self, Action::Delete { .. })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Delete { path, why } => write!(
                f,
                "delete subvolume {path} and everything nested in it ({why})"
            ),
            Action::Snapshot { source, dest } => write!(f, "snapshot {source} as writable {dest}"),
            Action::CreateEmpty { dest } => write!(f, "create empty subvolume {dest}"),
            Action::CreateDir { path } => write!(f, "create directory {path}"),
            Action::Rename { from, to } => write!(f, "rename {from} to {to}"),
        }
    }
}

/// Why nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the filesystem is {found}, not the configured {expected}")]
    WrongFilesystem { expected: String, found: String },
    #[error("subvolume `{0}` does not exist")]
    TargetMissing(String),
    #[error("`{0}` exists but is not a subvolume")]
    TargetNotSubvolume(String),
    #[error("blank snapshot `{0}` does not exist")]
    BlankMissing(String),
    #[error("blank snapshot `{0}` is not a subvolume")]
    BlankNotSubvolume(String),
    #[error(
        "blank snapshot `{0}` is writable; it must be read-only (btrfs property set -ts {0} ro true) so it cannot have changed"
    )]
    BlankWritable(String),
    #[error("`{0}` exists and is not a directory")]
    ArchiveDirNotDirectory(String),
}

pub fn new_tmp(target: &str) -> String {
    format!("{}{NEW_SUFFIX}", target.trim_matches('/'))
}

pub fn old_tmp(target: &str) -> String {
    format!("{}{OLD_SUFFIX}", target.trim_matches('/'))
}

/// The identity the filesystem must have: `rollback.filesystem`, else the
/// filesystem device when it is named by UUID or label.
pub fn expected_identity<'a>(rb: &'a Rollback, device: &'a DeviceSpec) -> Option<&'a DeviceSpec> {
    match (&rb.filesystem, device) {
        (Some(spec), _) => Some(spec),
        (None, DeviceSpec::Uuid(_) | DeviceSpec::Label(_)) => Some(device),
        _ => None,
    }
}

fn check_identity(expected: Option<&DeviceSpec>, observed: &Observed) -> Result<(), Refusal> {
    let found = || {
        format!(
            "UUID={} LABEL={}",
            observed.fs_uuid.as_deref().unwrap_or("?"),
            observed.fs_label.as_deref().unwrap_or("?")
        )
    };
    let ok = match expected {
        Some(DeviceSpec::Uuid(u)) => observed
            .fs_uuid
            .as_deref()
            .is_some_and(|f| f.eq_ignore_ascii_case(u)),
        Some(DeviceSpec::Label(l)) => observed.fs_label.as_deref() == Some(l.as_str()),
        // Validation requires an identity; refuse rather than guess.
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal::WrongFilesystem {
            expected: expected
                .map(|e| e.to_string())
                .unwrap_or_else(|| "(none configured)".into()),
            found: found(),
        })
    }
}

/// Formats a time as an archive name: `2026-11-27_03-45-12` (UTC), which
/// sorts chronologically and needs no quoting in a shell.
pub fn archive_name(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}_{:02}-{:02}-{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an archive name back to seconds; `None` for anything ember did
/// not create (those are never pruned). A `.N` suffix (collision) is allowed.
pub fn parse_archive_name(name: &str) -> Option<i64> {
    let base = match name.split_once('.') {
        Some((b, n)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => b,
        Some(_) => return None,
        None => name,
    };
    let b = base.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'_'
        || b[13] != b'-'
        || b[16] != b'-'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| base.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    (archive_name(secs) == base).then_some(secs)
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Which archived roots to delete: beyond the newest `keep_count`, or older
/// than `keep_days` before `reference` (the newest archive's time).
pub fn prune(
    archived: &[(String, i64)],
    keep_days: Option<u32>,
    keep_count: Option<u32>,
) -> Vec<String> {
    let mut sorted: Vec<&(String, i64)> = archived.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let reference = sorted.first().map(|e| e.1).unwrap_or(0);
    let mut doomed = Vec::new();
    for (i, (name, time)) in sorted.iter().map(|e| (&e.0, e.1)).enumerate() {
        let too_many = keep_count.is_some_and(|n| i >= n as usize);
        let too_old = keep_days.is_some_and(|d| reference - time > i64::from(d) * 86_400);
        if too_many || too_old {
            doomed.push(name.clone());
        }
    }
    doomed.sort();
    doomed
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_matches('/'))
}

/// The actions that roll back `rb.subvolume`, or the guard that refused.
pub fn plan(
    rb: &Rollback,
    device: &DeviceSpec,
    observed: &Observed,
) -> Result<Vec<Action>, Refusal> {
    check_identity(expected_identity(rb, device), observed)?;
    let target = rb.subvolume.trim_matches('/').to_string();
    let new = new_tmp(&target);
    let old = old_tmp(&target);
    let blank = rb
        .blank_snapshot
        .as_deref()
        .map(|b| b.trim_matches('/').to_string());
    let mut actions = Vec::new();

    // Recovery first: a previous run cut off between its two renames.
    let mut target_state = observed.target;
    let mut old_state = observed.old_tmp;
    let mut new_state = observed.new_tmp;
    if target_state == Entry::Missing {
        if matches!(new_state, Entry::Subvolume { .. }) {
            // The old root is already aside (old_tmp or the archive) and the
            // new one is complete: finish by moving it in. Nothing else to
            // do: that root has never been booted.
            actions.push(Action::Rename {
                from: new.clone(),
                to: target.clone(),
            });
            if matches!(old_state, Entry::Subvolume { .. }) {
                actions.push(Action::Delete {
                    path: old.clone(),
                    why: "the root replaced by an interrupted rollback".into(),
                });
            }
            return Ok(actions);
        }
        if matches!(old_state, Entry::Subvolume { .. }) {
            // Not a state ember's own order produces, but recoverable:
            // put the old root back, then roll back normally.
            actions.push(Action::Rename {
                from: old.clone(),
                to: target.clone(),
            });
            target_state = Entry::Subvolume { read_only: false };
            old_state = Entry::Missing;
        } else {
            return Err(Refusal::TargetMissing(target));
        }
    }
    if target_state == Entry::NotSubvolume {
        return Err(Refusal::TargetNotSubvolume(target));
    }
    let uses_blank = match rb.strategy {
        RollbackStrategy::Blank => true,
        RollbackStrategy::Empty => false,
        RollbackStrategy::Archive => blank.is_some(),
    };
    if uses_blank {
        let name = blank.clone().unwrap_or_default();
        match observed.blank {
            Entry::Missing => return Err(Refusal::BlankMissing(name)),
            Entry::NotSubvolume => return Err(Refusal::BlankNotSubvolume(name)),
            Entry::Subvolume { read_only: false } => return Err(Refusal::BlankWritable(name)),
            Entry::Subvolume { read_only: true } => {}
        }
    }
    if rb.strategy == RollbackStrategy::Archive && observed.archived.is_none() {
        // archive_dir itself may exist as a non-directory: the executor
        // reports that when creating it fails.
    }

    // Leftovers of an interrupted run that never replaced the root.
    if new_state != Entry::Missing {
        actions.push(Action::Delete {
            path: new.clone(),
            why: "left over by an interrupted rollback".into(),
        });
        new_state = Entry::Missing;
    }
    if old_state != Entry::Missing {
        actions.push(Action::Delete {
            path: old.clone(),
            why: "left over by an interrupted rollback".into(),
        });
    }
    let _ = new_state;

    match (&blank, uses_blank) {
        (Some(b), true) => actions.push(Action::Snapshot {
            source: b.clone(),
            dest: new.clone(),
        }),
        _ => actions.push(Action::CreateEmpty { dest: new.clone() }),
    }

    if rb.strategy == RollbackStrategy::Archive {
        let dir = rb.archive_dir.trim_matches('/').to_string();
        let existing = observed.archived.clone();
        if existing.is_none() {
            actions.push(Action::CreateDir { path: dir.clone() });
        }
        let existing = existing.unwrap_or_default();
        let time = observed.target_changed.unwrap_or(0);
        let base = archive_name(time);
        let mut name = base.clone();
        let mut n = 1;
        while existing.contains(&name) {
            name = format!("{base}.{n}");
            n += 1;
        }
        actions.push(Action::Rename {
            from: target.clone(),
            to: join(&dir, &name),
        });
        actions.push(Action::Rename {
            from: new.clone(),
            to: target.clone(),
        });
        let mut archived: Vec<(String, i64)> = existing
            .iter()
            .filter_map(|e| parse_archive_name(e).map(|t| (e.clone(), t)))
            .collect();
        archived.push((name, time));
        for doomed in prune(&archived, rb.keep_days, rb.keep_count) {
            actions.push(Action::Delete {
                path: join(&dir, &doomed),
                why: "pruned archived root".into(),
            });
        }
    } else {
        actions.push(Action::Rename {
            from: target.clone(),
            to: old.clone(),
        });
        actions.push(Action::Rename {
            from: new.clone(),
            to: target.clone(),
        });
        actions.push(Action::Delete {
            path: old,
            why: "the old root".into(),
        });
    }
    Ok(actions)
}

#[cfg(test)]
mod tests;
