//! Binding persisted state into the new root. Both ends are resolved with
//! `beneath` (no symlink is ever followed) and the bind is made between the
//! opened descriptors (open_tree + move_mount), so nothing can be swapped
//! between the check and the mount.

use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};

use super::beneath::{self, BeneathError};
use crate::config::{AbsPath, EntryKind};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("source refused: {0}")]
    Source(BeneathError),
    #[error("target refused: {0}")]
    Target(BeneathError),
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot bind {source_path} onto {target}: {source}")]
    Bind {
        source_path: String,
        target: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    Bound,
    /// The target already shows the source (a second run changes nothing).
    AlreadyBound,
}

fn open_dir_path(path: &str) -> Result<std::os::fd::OwnedFd, PersistError> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| PersistError::Open {
        path: path.to_string(),
        source: e.into(),
    })
}

/// Binds `<sysroot><root>/<path>` onto `<sysroot><path>`, creating missing
/// sources in the persist root and missing targets in the new root.
pub fn bind(
    sysroot: &str,
    root: &AbsPath,
    path: &AbsPath,
    kind: EntryKind,
) -> Result<BindOutcome, PersistError> {
    let new_root = open_dir_path(sysroot)?;
    let persist_shown = root.under(sysroot);
    let persist = beneath::open_dir(new_root.as_fd(), sysroot, root.as_str(), None)
        .map_err(PersistError::Source)?;
    let relative = path.as_str().trim_start_matches('/');
    let (source, target) = match kind {
        EntryKind::Directory => (
            beneath::open_dir(persist.as_fd(), &persist_shown, relative, Some(0o755))
                .map_err(PersistError::Source)?,
            beneath::open_dir(new_root.as_fd(), sysroot, relative, Some(0o755))
                .map_err(PersistError::Target)?,
        ),
        EntryKind::File => (
            beneath::open_file(persist.as_fd(), &persist_shown, relative, Some(0o644))
                .map_err(PersistError::Source)?,
            beneath::open_file(new_root.as_fd(), sysroot, relative, Some(0o644))
                .map_err(PersistError::Target)?,
        ),
    };
    let source_shown = format!("{persist_shown}{path}");
    let target_shown = path.under(sysroot);
    if beneath::identity(&source).ok() == beneath::identity(&target).ok() {
        return Ok(BindOutcome::AlreadyBound);
    }
    let bind_err = |e: rustix::io::Errno| PersistError::Bind {
        source_path: source_shown.clone(),
        target: target_shown.clone(),
        source: e.into(),
    };
    let tree = open_tree(
        &source,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(bind_err)?;
    move_mount(
        &tree,
        "",
        &target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(bind_err)?;
    Ok(BindOutcome::Bound)
}
