//! Path resolution that cannot be tricked by what a previous boot left on
//! disk: every component is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` relative to a trusted directory, so a planted
//! symlink (`/persist/etc/machine-id -> /etc/shadow`) is refused instead of
//! followed, and nothing outside that directory is ever created or opened.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, fstat, mkdirat, openat2};
use rustix::io::Errno;

#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{path} is a symbolic link; refusing to follow it")]
    Symlink { path: String },
    #[error("{path} exists but is not a directory")]
    NotDirectory { path: String },
    #[error("{path} exists but is not a regular file")]
    NotFile { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

fn io_err(path: &str, e: Errno) -> BeneathError {
    BeneathError::Io {
        path: path.to_string(),
        source: e.into(),
    }
}

/// Opens one component below `dir` as an O_PATH descriptor, without following it.
fn open_component(
    dir: BorrowedFd<'_>,
    name: &str,
    shown: &str,
    directory: bool,
) -> Result<OwnedFd, BeneathError> {
    let mut flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if directory {
        flags |= OFlags::DIRECTORY;
    }
    match openat2(dir, name, flags, Mode::empty(), RESOLVE) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP) => Err(BeneathError::Symlink {
            path: shown.to_string(),
        }),
        Err(Errno::NOTDIR) => {
            // Tell a symlink apart from a plain non-directory.
            let probe = openat2(
                dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            );
            match probe.ok().and_then(|fd| fstat(&fd).ok()) {
                Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    Err(BeneathError::Symlink {
                        path: shown.to_string(),
                    })
                }
                _ => Err(BeneathError::NotDirectory {
                    path: shown.to_string(),
                }),
            }
        }
        Err(e) => Err(io_err(shown, e)),
    }
}

fn file_type(fd: &OwnedFd, shown: &str) -> Result<FileType, BeneathError> {
    fstat(fd)
        .map(|st| FileType::from_raw_mode(st.st_mode))
        .map_err(|e| io_err(shown, e))
}

/// Owner and mode for a directory or file ember creates.
pub use crate::config::Attr;

/// Decides the attributes of a missing directory from its path relative to
/// the starting directory (`home/alice`).
pub type DirAttrs<'a> = &'a dyn Fn(&str) -> Attr;

/// Sets owner and mode on something just created, through a real (not
/// O_PATH) descriptor opened without following links, so neither call can
/// be redirected. Explicit chmod: the umask must not decide.
fn set_attr(
    dir: BorrowedFd<'_>,
    name: &str,
    shown: &str,
    attr: Attr,
    directory: bool,
) -> Result<(), BeneathError> {
    let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if directory {
        flags |= OFlags::DIRECTORY;
    }
    let fd = openat2(dir, name, flags, Mode::empty(), RESOLVE).map_err(|e| io_err(shown, e))?;
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(attr.uid)),
        Some(rustix::fs::Gid::from_raw(attr.gid)),
    )
    .map_err(|e| io_err(shown, e))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(attr.mode)).map_err(|e| io_err(shown, e))
}

/// Like [`open_dir`], creating missing directories with the attributes
/// `attrs` gives for each (only those ember creates; existing ones are
/// never changed).
pub fn open_dir_with(
    root: BorrowedFd<'_>,
    shown: &str,
    relative: &str,
    attrs: Option<DirAttrs<'_>>,
) -> Result<OwnedFd, BeneathError> {
    let mut current: OwnedFd = rustix::io::dup(root).map_err(|e| io_err(shown, e))?;
    let mut path = shown.trim_end_matches('/').to_string();
    let mut rel = String::new();
    for name in relative.split('/').filter(|c| !c.is_empty()) {
        path = format!("{path}/{name}");
        rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let next = match open_component(current.as_fd(), name, &path, true) {
            Err(BeneathError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attrs.is_some() =>
            {
                let attr = attrs.map(|f| f(&rel)).unwrap_or(Attr::ROOT_DIR);
                match mkdirat(&current, name, Mode::from_raw_mode(attr.mode)) {
                    Ok(()) => set_attr(current.as_fd(), name, &path, attr, true)?,
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(&path, e)),
                }
                open_component(current.as_fd(), name, &path, true)?
            }
            other => other?,
        };
        if file_type(&next, &path)? != FileType::Directory {
            return Err(BeneathError::NotDirectory { path });
        }
        current = next;
    }
    Ok(current)
}

/// Like [`open_file`], creating missing parents per `parents` and a missing
/// file with `file`'s attributes and initial content.
pub fn open_file_with(
    root: BorrowedFd<'_>,
    shown: &str,
    relative: &str,
    parents: Option<DirAttrs<'_>>,
    file: Option<(Attr, &[u8])>,
) -> Result<OwnedFd, BeneathError> {
    let relative = relative.trim_matches('/');
    let (parent, name) = relative.rsplit_once('/').unwrap_or(("", relative));
    let dir = open_dir_with(root, shown, parent, parents)?;
    let path = format!("{}/{relative}", shown.trim_end_matches('/'));
    let fd = match open_component(dir.as_fd(), name, &path, false) {
        Err(BeneathError::Io { source, .. })
            if source.kind() == io::ErrorKind::NotFound && file.is_some() =>
        {
            let (attr, content) = file.unwrap_or((
                Attr {
                    uid: 0,
                    gid: 0,
                    mode: 0o644,
                },
                b"",
            ));
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match openat2(&dir, name, flags, Mode::from_raw_mode(attr.mode), RESOLVE) {
                Ok(created) => {
                    let mut w = std::fs::File::from(created);
                    std::io::Write::write_all(&mut w, content).map_err(|source| {
                        BeneathError::Io {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    set_attr(dir.as_fd(), name, &path, attr, false)?;
                }
                Err(Errno::EXIST) => {}
                Err(e) => return Err(io_err(&path, e)),
            }
            open_component(dir.as_fd(), name, &path, false)?
        }
        other => other?,
    };
    match file_type(&fd, &path)? {
        FileType::RegularFile => Ok(fd),
        FileType::Symlink => Err(BeneathError::Symlink { path }),
        _ => Err(BeneathError::NotFile { path }),
    }
}

/// What is at `name` in `dir`, without following it.
pub fn peek(dir: BorrowedFd<'_>, name: &str) -> Result<Option<(FileType, u64)>, Errno> {
    match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((
            FileType::from_raw_mode(st.st_mode),
            st.st_size as u64,
        ))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Attributes for plain creation: owned by whoever runs ember, `mode`.
fn own(mode: u32) -> Attr {
    Attr {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        mode,
    }
}

/// Opens (creating with `mode` if asked) the directory `relative` below
/// `root`. `shown` prefixes paths in messages (e.g. `/sysroot/persist`).
pub fn open_dir(
    root: BorrowedFd<'_>,
    shown: &str,
    relative: &str,
    create: Option<u32>,
) -> Result<OwnedFd, BeneathError> {
    match create {
        Some(mode) => open_dir_with(root, shown, relative, Some(&|_: &str| own(mode))),
        None => open_dir_with(root, shown, relative, None),
    }
}

/// Opens (creating an empty file with `mode` if asked) the regular file
/// `relative` below `root`, creating missing parent directories (0755).
pub fn open_file(
    root: BorrowedFd<'_>,
    shown: &str,
    relative: &str,
    create: Option<u32>,
) -> Result<OwnedFd, BeneathError> {
    match create {
        Some(mode) => open_file_with(
            root,
            shown,
            relative,
            Some(&|_: &str| own(0o755)),
            Some((own(mode), b"")),
        ),
        None => open_file_with(root, shown, relative, None, None),
    }
}

/// The `(device, inode)` pair identifying what a descriptor refers to.
pub fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-beneath-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn root_fd(dir: &std::path::Path) -> OwnedFd {
        rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open root")
    }

    #[test]
    fn creates_missing_directories_and_files() {
        let dir = tempdir("create");
        let root = root_fd(&dir);
        open_dir(root.as_fd(), "/r", "var/lib/systemd", Some(0o755)).expect("created");
        assert!(dir.join("var/lib/systemd").is_dir());
        open_file(root.as_fd(), "/r", "etc/machine-id", Some(0o644)).expect("created");
        assert!(dir.join("etc/machine-id").is_file());
        // Idempotent.
        open_file(root.as_fd(), "/r", "etc/machine-id", Some(0o644)).expect("opened again");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_symlinks_anywhere_on_the_path() {
        let dir = tempdir("symlink");
        let outside = tempdir("outside");
        std::fs::write(outside.join("shadow"), "secret").expect("write");
        symlink(outside.join("shadow"), dir.join("machine-id")).expect("symlink");
        symlink(&outside, dir.join("etc")).expect("symlink");
        let root = root_fd(&dir);
        let err =
            open_file(root.as_fd(), "/persist", "machine-id", Some(0o644)).expect_err("refused");
        assert!(
            matches!(err, BeneathError::Symlink { ref path } if path == "/persist/machine-id"),
            "{err}"
        );
        let err =
            open_file(root.as_fd(), "/persist", "etc/new-file", Some(0o644)).expect_err("refused");
        assert!(
            matches!(err, BeneathError::Symlink { ref path } if path == "/persist/etc"),
            "{err}"
        );
        assert!(
            !outside.join("new-file").exists(),
            "nothing created outside"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("shadow")).expect("read"),
            "secret"
        );
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&outside);
    }

    #[test]
    fn refuses_wrong_types() {
        let dir = tempdir("types");
        std::fs::create_dir_all(dir.join("etc/machine-id")).expect("dir");
        std::fs::write(dir.join("var"), "").expect("file");
        let root = root_fd(&dir);
        assert!(matches!(
            open_file(root.as_fd(), "/r", "etc/machine-id", Some(0o644)),
            Err(BeneathError::NotFile { .. })
        ));
        assert!(matches!(
            open_dir(root.as_fd(), "/r", "var/lib", Some(0o755)),
            Err(BeneathError::NotDirectory { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod attr_tests {
    use super::*;

    #[test]
    fn created_entries_get_their_attributes_existing_ones_keep_theirs() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("ember-attr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("existing")).expect("dir");
        std::fs::set_permissions(dir.join("existing"), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        let root = rustix::fs::open(
            &dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open");
        // Only root may give files away; as another user keep our own ids.
        let (uid, gid) = if rustix::process::geteuid().is_root() {
            (1000, 100)
        } else {
            (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            )
        };
        let attrs = |rel: &str| match rel {
            "existing/home" => Attr {
                uid,
                gid,
                mode: 0o700,
            },
            _ => Attr {
                uid: 0,
                gid: 0,
                mode: 0o750,
            },
        };
        open_file_with(
            root.as_fd(),
            "/r",
            "existing/home/secret",
            Some(&attrs),
            Some((
                Attr {
                    uid,
                    gid,
                    mode: 0o600,
                },
                b"uninitialized\n",
            )),
        )
        .expect("created");
        let meta = |p: &str| std::fs::metadata(dir.join(p)).expect("stat");
        assert_eq!(
            meta("existing").mode() & 0o7777,
            0o711,
            "existing directories are not changed"
        );
        assert_eq!(meta("existing/home").mode() & 0o7777, 0o700);
        assert_eq!(
            (meta("existing/home").uid(), meta("existing/home").gid()),
            (uid, gid)
        );
        assert_eq!(meta("existing/home/secret").mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::read(dir.join("existing/home/secret")).expect("read"),
            b"uninitialized\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
