//! Putting persisted state into the new root. Both ends are resolved with
//! `beneath` (no symlink is ever followed; missing pieces are created with
//! the configured owner and mode), and a bind is made between the opened
//! descriptors (open_tree + move_mount), so nothing can be swapped between
//! the check and the mount. Existing files and directories are never
//! chown'ed or chmod'ed: only what ember creates gets attributes.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::mount::{MountFlags, MoveMountFlags, OpenTreeFlags, move_mount, open_tree};

use super::beneath::{self, Attr, BeneathError};
use crate::config::persist::parent_attr;
use crate::config::{AbsPath, EntryKind, Method, PersistEntry};

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
    #[error("target {target} exists and is not a symlink to {link}; not replacing it")]
    TargetOccupied { target: String, link: String },
    #[error("cannot create symlink {target}: {source}")]
    Symlink {
        target: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Bound,
    /// The target already shows the source (a second run changes nothing).
    AlreadyBound,
    Linked,
    AlreadyLinked,
}

fn open_dir_path(path: &str) -> Result<OwnedFd, PersistError> {
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

/// Attributes for a directory ember creates at `rel` (a path relative to
/// the new root or to the persist root, which mirror each other): the
/// entry's own for the entry, the parent policy for the rest.
fn dir_attr(entry: &PersistEntry, rel: &str) -> Attr {
    if rel == entry.path.as_str().trim_start_matches('/') {
        return entry.attr;
    }
    match AbsPath::parse(&format!("/{rel}")) {
        Ok(dir) => parent_attr(&dir, &entry.homes),
        Err(_) => Attr::ROOT_DIR,
    }
}

/// Opens (creating if missing) the persisted copy.
fn open_source(
    sysroot_fd: &OwnedFd,
    sysroot: &str,
    e: &PersistEntry,
) -> Result<OwnedFd, PersistError> {
    let persist = beneath::open_dir(sysroot_fd.as_fd(), sysroot, e.root.as_str(), None)
        .map_err(PersistError::Source)?;
    let shown = e.root.under(sysroot);
    let rel = e.path.as_str().trim_start_matches('/');
    let attrs = |r: &str| dir_attr(e, r);
    match e.kind {
        EntryKind::Directory => beneath::open_dir_with(persist.as_fd(), &shown, rel, Some(&attrs)),
        EntryKind::File => beneath::open_file_with(
            persist.as_fd(),
            &shown,
            rel,
            Some(&attrs),
            Some((e.attr, e.initial_content)),
        ),
    }
    .map_err(PersistError::Source)
}

/// Warns when a bind is about to hide something already in the new root.
fn report_shadowed(target: &OwnedFd, shown: &str, kind: EntryKind) {
    let proc_path = format!("/proc/self/fd/{}", target.as_raw_fd());
    let hidden = match kind {
        EntryKind::Directory => std::fs::read_dir(&proc_path)
            .map(|d| d.count())
            .unwrap_or(0) as u64,
        EntryKind::File => rustix::fs::fstat(target)
            .map(|s| s.st_size as u64)
            .unwrap_or(0),
    };
    if hidden > 0 {
        let what = match kind {
            EntryKind::Directory => format!("{hidden} entries"),
            EntryKind::File => format!("{hidden} bytes"),
        };
        log::warn!(
            "{shown} already holds {what} in the new root, which the bind mount hides (they are not lost; move them into the persist root to keep them)"
        );
    }
}

/// Applies the kernel flags among the options by remounting the new bind.
fn remount_flags(target_shown: &str, options: &[String]) -> rustix::io::Result<()> {
    let mut flags = MountFlags::empty();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MountFlags::RDONLY,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            _ => {}
        }
    }
    if flags.is_empty() {
        return Ok(());
    }
    super::perf::mount_syscall(|| {
        rustix::mount::mount_remount(target_shown, flags | MountFlags::BIND, "")
    })
}

/// libmount's escaping for utab fields.
fn mangle(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// Records `x-*` options in /run/mount/utab (it moves into the new root with
/// /run), where libmount — findmnt, gvfs, udisks — reads userspace options.
fn record_utab(target_in_sysroot: &str, final_target: &str, x_options: &[&String]) {
    if x_options.is_empty() {
        return;
    }
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // The last mount at that point is ours: take its fs root and source.
    let Some((root, source)) = mountinfo.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(4).copied() == Some(target_in_sysroot)).then(|| {
            (
                fields[3].to_string(),
                fields.get(sep + 2).copied().unwrap_or("none").to_string(),
            )
        })
    }) else {
        return;
    };
    let opts: Vec<&str> = x_options.iter().map(|s| s.as_str()).collect();
    let line = format!(
        "SRC={} TARGET={} ROOT={} OPTS={}\n",
        mangle(&source),
        mangle(final_target),
        root,
        mangle(&opts.join(","))
    );
    let _ = std::fs::create_dir_all("/run/mount");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/run/mount/utab")
    {
        let _ = std::io::Write::write_all(&mut f, line.as_bytes());
    }
}

/// Puts one persisted entry into the new root at `sysroot`.
pub fn apply(sysroot: &str, e: &PersistEntry) -> Result<Outcome, PersistError> {
    let new_root = open_dir_path(sysroot)?;
    let source = open_source(&new_root, sysroot, e)?;
    let rel = e.path.as_str().trim_start_matches('/');
    let attrs = |r: &str| dir_attr(e, r);
    let source_shown = format!("{}{}", e.root.under(sysroot), e.path);
    let target_shown = e.path.under(sysroot);

    if e.method == Method::Symlink {
        let (parent_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent = beneath::open_dir_with(new_root.as_fd(), sysroot, parent_rel, Some(&attrs))
            .map_err(PersistError::Target)?;
        let link = e.root.join(rel).to_string();
        return match beneath::peek(parent.as_fd(), name) {
            Ok(None) => {
                rustix::fs::symlinkat(link.as_str(), &parent, name).map_err(|err| {
                    PersistError::Symlink {
                        target: target_shown.clone(),
                        source: err.into(),
                    }
                })?;
                rustix::fs::chownat(
                    &parent,
                    name,
                    Some(rustix::fs::Uid::from_raw(e.attr.uid)),
                    Some(rustix::fs::Gid::from_raw(e.attr.gid)),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|err| PersistError::Symlink {
                    target: target_shown.clone(),
                    source: err.into(),
                })?;
                Ok(Outcome::Linked)
            }
            Ok(Some((FileType::Symlink, _)))
                if rustix::fs::readlinkat(&parent, name, Vec::new())
                    .is_ok_and(|t| t.as_bytes() == link.as_bytes()) =>
            {
                Ok(Outcome::AlreadyLinked)
            }
            Ok(Some(_)) => Err(PersistError::TargetOccupied {
                target: target_shown,
                link,
            }),
            Err(err) => Err(PersistError::Symlink {
                target: target_shown,
                source: err.into(),
            }),
        };
    }

    let target = match e.kind {
        EntryKind::Directory => {
            beneath::open_dir_with(new_root.as_fd(), sysroot, rel, Some(&attrs))
        }
        EntryKind::File => beneath::open_file_with(
            new_root.as_fd(),
            sysroot,
            rel,
            Some(&attrs),
            Some((e.attr, b"")),
        ),
    }
    .map_err(PersistError::Target)?;
    if beneath::identity(&source).ok() == beneath::identity(&target).ok() {
        return Ok(Outcome::AlreadyBound);
    }
    report_shadowed(&target, &target_shown, e.kind);
    let bind_err = |err: rustix::io::Errno| PersistError::Bind {
        source_path: source_shown.clone(),
        target: target_shown.clone(),
        source: err.into(),
    };
    let tree = super::perf::mount_syscall(|| {
        open_tree(
            &source,
            "",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH,
        )
    })
    .map_err(bind_err)?;
    super::perf::mount_syscall(|| {
        move_mount(
            &tree,
            "",
            &target,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map_err(bind_err)?;
    remount_flags(&target_shown, &e.options).map_err(bind_err)?;
    let x_options: Vec<&String> = e.options.iter().filter(|o| o.starts_with("x-")).collect();
    record_utab(&target_shown, e.path.as_str(), &x_options);
    Ok(Outcome::Bound)
}

/// An entry's state without changing anything (`ember persist --dry-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Bound,
    Linked,
    /// Would be put in place; says what would be created first.
    Pending {
        create_source: bool,
        create_target: bool,
    },
    Refused(String),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Bound => f.write_str("mounted"),
            State::Linked => f.write_str("linked"),
            State::Pending {
                create_source,
                create_target,
            } => {
                f.write_str("missing")?;
                match (create_source, create_target) {
                    (true, true) => f.write_str(" (source and target would be created)"),
                    (true, false) => f.write_str(" (source would be created)"),
                    (false, true) => f.write_str(" (target would be created)"),
                    (false, false) => Ok(()),
                }
            }
            State::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

fn probe(result: Result<OwnedFd, BeneathError>) -> Result<Option<OwnedFd>, String> {
    match result {
        Ok(fd) => Ok(Some(fd)),
        Err(BeneathError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

pub fn inspect(sysroot: &str, e: &PersistEntry) -> State {
    let Ok(new_root) = open_dir_path(sysroot) else {
        return State::Refused(format!("{sysroot} is not there (is the new root mounted?)"));
    };
    let persist = match probe(beneath::open_dir(
        new_root.as_fd(),
        sysroot,
        e.root.as_str(),
        None,
    )) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return State::Refused(format!(
                "persist root {} is not there",
                e.root.under(sysroot)
            ));
        }
        Err(why) => return State::Refused(why),
    };
    let rel = e.path.as_str().trim_start_matches('/');
    let shown = e.root.under(sysroot);
    let open = |root: &OwnedFd, shown: &str| match e.kind {
        EntryKind::Directory => beneath::open_dir(root.as_fd(), shown, rel, None),
        EntryKind::File => beneath::open_file(root.as_fd(), shown, rel, None),
    };
    let source = match probe(open(&persist, &shown)) {
        Ok(s) => s,
        Err(why) => return State::Refused(format!("source {why}")),
    };
    if e.method == Method::Symlink {
        let link = e.root.join(rel).to_string();
        let (parent_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        return match probe(beneath::open_dir(
            new_root.as_fd(),
            sysroot,
            parent_rel,
            None,
        )) {
            Ok(Some(parent)) => match beneath::peek(parent.as_fd(), name) {
                Ok(None) => State::Pending {
                    create_source: source.is_none(),
                    create_target: true,
                },
                Ok(Some((FileType::Symlink, _)))
                    if rustix::fs::readlinkat(&parent, name, Vec::new())
                        .is_ok_and(|t| t.as_bytes() == link.as_bytes()) =>
                {
                    State::Linked
                }
                Ok(Some(_)) => State::Refused(format!(
                    "target {} exists and is not a symlink to {link}",
                    e.path.under(sysroot)
                )),
                Err(err) => State::Refused(err.to_string()),
            },
            Ok(None) => State::Pending {
                create_source: source.is_none(),
                create_target: true,
            },
            Err(why) => State::Refused(format!("target {why}")),
        };
    }
    let target = match probe(open(&new_root, sysroot)) {
        Ok(t) => t,
        Err(why) => return State::Refused(format!("target {why}")),
    };
    match (&source, &target) {
        (Some(s), Some(t)) if beneath::identity(s).ok() == beneath::identity(t).ok() => {
            State::Bound
        }
        _ => State::Pending {
            create_source: source.is_none(),
            create_target: target.is_none(),
        },
    }
}
