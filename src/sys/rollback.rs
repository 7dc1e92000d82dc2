//! Running a rollback: mount the top level privately, observe, plan (pure,
//! in `crate::rollback`), apply each action durably. Shared by the boot path
//! and `ember rollback`. The top-level mount is handed back to the caller:
//! the boot keeps it until the filesystem's first subvolume is mounted, so
//! the filesystem is opened once, not closed (a commit, and a stop of
//! btrfs-cleaner halfway through) and opened again.

use std::path::Path;
use std::time::{Duration, Instant};

use super::btrfs::{self, BtrfsError, TopLevel};
use crate::config::{DeviceSpec, Rollback, RollbackStrategy};
use crate::rollback::{self, Action, Entry, Observed, Refusal};

/// Where the top level is mounted while the rollback runs.
pub const TOP_MOUNT: &str = "/run/ember/btrfs-top";

#[derive(Debug)]
pub enum Outcome {
    Done {
        actions: Vec<Action>,
        took: Duration,
        /// Unmounted when dropped.
        top: TopLevel,
    },
    DryRun {
        actions: Vec<Action>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("refused, nothing changed: {0}")]
    Refused(#[from] Refusal),
    #[error("cannot mount the top level of {device} at {TOP_MOUNT}: {source}")]
    Mount {
        device: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Btrfs(#[from] BtrfsError),
}

fn observe(
    top: &TopLevel,
    rb: &Rollback,
    identity: (Option<String>, Option<String>),
) -> Result<Observed, BtrfsError> {
    let p = |rel: &str| top.path().join(rel.trim_matches('/'));
    let target = rb.subvolume.trim_matches('/');
    let target_entry = btrfs::entry(&p(target))?;
    let target_changed = match target_entry {
        Entry::Subvolume { .. } => Some(btrfs::changed_at(&p(target))?),
        _ => None,
    };
    Ok(Observed {
        fs_uuid: identity.0,
        fs_label: identity.1,
        target: target_entry,
        new_tmp: btrfs::entry(&p(&rollback::new_tmp(target)))?,
        old_tmp: btrfs::entry(&p(&rollback::old_tmp(target)))?,
        blank: match &rb.blank_snapshot {
            Some(b) => btrfs::entry(&p(b))?,
            None => Entry::Missing,
        },
        target_changed,
        archived: if rb.strategy == RollbackStrategy::Archive {
            top.list(rb.archive_dir.trim_matches('/'))
        } else {
            None
        },
    })
}

/// Rolls back per `rb` on the Btrfs filesystem at `device_path`, whose
/// identity (UUID, label) was read by the caller from its superblock.
/// `fs_options` are the filesystem's mount options (see `TopLevel::mount`).
pub fn run(
    device_path: &str,
    fs_device: &DeviceSpec,
    rb: &Rollback,
    identity: (Option<String>, Option<String>),
    fs_options: &[String],
    dry_run: bool,
    pause_after: Option<usize>,
) -> Result<Outcome, RollbackError> {
    let started = Instant::now();
    let top = TopLevel::mount(device_path, Path::new(TOP_MOUNT), fs_options).map_err(|source| {
        RollbackError::Mount {
            device: device_path.to_string(),
            source,
        }
    })?;
    let observed = observe(&top, rb, identity)?;
    log::debug!("rollback observed {observed:?}");
    let actions = rollback::plan(rb, fs_device, &observed)?;
    if dry_run {
        return Ok(Outcome::DryRun { actions });
    }
    for (i, action) in actions.iter().enumerate() {
        log::info!("rollback step {}/{}: {action}", i + 1, actions.len());
        btrfs::apply(top.path(), action)?;
        let pause = pause_after == Some(i + 1);
        // A pause stands for a power cut after this step is on disk.
        if action.needs_commit() || pause {
            btrfs::sync(top.path())?;
        }
        if pause {
            log::warn!(
                "rollback paused after step {} (ember.rollback_pause_after); cut the power now",
                i + 1
            );
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
    Ok(Outcome::Done {
        actions,
        took: started.elapsed(),
        top,
    })
}
