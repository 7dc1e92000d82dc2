//! Btrfs subvolume operations for the rollback, through libbtrfsutil (the
//! library btrfs-progs itself uses; never by running `btrfs`). Also the
//! private mount of the filesystem's top level the rollback works in.

use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::rollback::{Action, Entry};

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

#[repr(C)]
struct SubvolumeInfo {
    id: u64,
    parent_id: u64,
    dir_id: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    generation: u64,
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: Timespec,
    otime: Timespec,
    stime: Timespec,
    rtime: Timespec,
}

const DELETE_SUBVOLUME_RECURSIVE: c_int = 1;

#[link(name = "btrfsutil")]
unsafe extern "C" {
    fn btrfs_util_strerror(err: c_int) -> *const c_char;
    fn btrfs_util_sync(path: *const c_char) -> c_int;
    fn btrfs_util_subvolume_info(path: *const c_char, id: u64, info: *mut SubvolumeInfo) -> c_int;
    fn btrfs_util_get_subvolume_read_only(path: *const c_char, ret: *mut bool) -> c_int;
    fn btrfs_util_create_subvolume(
        path: *const c_char,
        flags: c_int,
        unused: *mut u64,
        qgroup: *mut u8,
    ) -> c_int;
    fn btrfs_util_create_snapshot(
        source: *const c_char,
        path: *const c_char,
        flags: c_int,
        unused: *mut u64,
        qgroup: *mut u8,
    ) -> c_int;
    fn btrfs_util_delete_subvolume(path: *const c_char, flags: c_int) -> c_int;
}

/// A libbtrfsutil failure: its own description plus errno, with the path.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {message} ({errno})")]
pub struct BtrfsError {
    pub what: &'static str,
    pub path: String,
    pub message: String,
    pub errno: io::Error,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(rc: c_int, what: &'static str, path: &Path) -> Result<(), BtrfsError> {
    if rc == 0 {
        return Ok(());
    }
    let errno = io::Error::last_os_error();
    // SAFETY: btrfs_util_strerror returns a static string (or NULL for unknown codes).
    let message = unsafe {
        let p = btrfs_util_strerror(rc);
        if p.is_null() {
            format!("error {rc}")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(BtrfsError {
        what,
        path: path.display().to_string(),
        message,
        errno,
    })
}

fn with_c<T>(
    path: &Path,
    what: &'static str,
    f: impl FnOnce(&CStr) -> Result<T, BtrfsError>,
) -> Result<T, BtrfsError> {
    let c = cstring(path).map_err(|errno| BtrfsError {
        what,
        path: path.display().to_string(),
        message: "invalid path".into(),
        errno,
    })?;
    f(&c)
}

/// Commits the current transaction: everything before is durable.
pub fn sync(path: &Path) -> Result<(), BtrfsError> {
    // SAFETY: valid NUL-terminated path.
    with_c(path, "sync", |c| {
        check(unsafe { btrfs_util_sync(c.as_ptr()) }, "sync", path)
    })
}

/// Seconds since the epoch of the subvolume's last change (root item ctime).
pub fn changed_at(path: &Path) -> Result<i64, BtrfsError> {
    with_c(path, "inspect subvolume", |c| {
        // SAFETY: zeroed POD struct, filled by the library.
        let mut info: SubvolumeInfo = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and out-pointer.
        check(
            unsafe { btrfs_util_subvolume_info(c.as_ptr(), 0, &mut info) },
            "inspect subvolume",
            path,
        )?;
        Ok(info.ctime.tv_sec)
    })
}

/// Whether `path` is missing, a plain entry, or a subvolume (and read-only).
/// Never follows a symlink: a link is "not a subvolume".
pub fn entry(path: &Path) -> Result<Entry, BtrfsError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Entry::Missing),
        Err(errno) => {
            return Err(BtrfsError {
                what: "inspect",
                path: path.display().to_string(),
                message: "cannot stat".into(),
                errno,
            });
        }
    };
    // A subvolume's root directory is always inode 256 (BTRFS_FIRST_FREE_OBJECTID).
    if !meta.is_dir() || meta.ino() != 256 {
        return Ok(Entry::NotSubvolume);
    }
    with_c(path, "inspect subvolume", |c| {
        let mut ro = false;
        // SAFETY: valid path and out-pointer.
        check(
            unsafe { btrfs_util_get_subvolume_read_only(c.as_ptr(), &mut ro) },
            "inspect subvolume",
            path,
        )?;
        Ok(Entry::Subvolume { read_only: ro })
    })
}

/// Refuses paths whose parent directories include a symlink: the top level
/// is trusted, but an intermediate directory of a nested path might not be.
fn no_symlinks_between(top: &Path, relative: &str) -> Result<PathBuf, BtrfsError> {
    let mut p = top.to_path_buf();
    let parts: Vec<&str> = relative.split('/').filter(|c| !c.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        p.push(part);
        if i + 1 < parts.len()
            && let Ok(m) = std::fs::symlink_metadata(&p)
            && m.file_type().is_symlink()
        {
            return Err(BtrfsError {
                what: "refuse",
                path: p.display().to_string(),
                message: "is a symbolic link".into(),
                errno: io::Error::from_raw_os_error(libc::ELOOP),
            });
        }
    }
    Ok(p)
}

/// Performs one planned action below the top-level mount (the caller
/// commits it, see `Action::needs_commit`).
pub fn apply(top: &Path, action: &Action) -> Result<(), BtrfsError> {
    match action {
        Action::Delete { path, .. } => {
            let p = no_symlinks_between(top, path)?;
            // SAFETY: valid path; RECURSIVE deletes nested subvolumes first.
            with_c(&p, "delete subvolume", |c| {
                check(
                    unsafe { btrfs_util_delete_subvolume(c.as_ptr(), DELETE_SUBVOLUME_RECURSIVE) },
                    "delete subvolume",
                    &p,
                )
            })?;
        }
        Action::Snapshot { source, dest } => {
            let s = no_symlinks_between(top, source)?;
            let d = no_symlinks_between(top, dest)?;
            let cs = cstring(&s).map_err(|errno| BtrfsError {
                what: "snapshot",
                path: s.display().to_string(),
                message: "invalid path".into(),
                errno,
            })?;
            with_c(&d, "snapshot", |cd| {
                // SAFETY: valid paths; flags 0 = writable, non-recursive snapshot.
                check(
                    unsafe {
                        btrfs_util_create_snapshot(
                            cs.as_ptr(),
                            cd.as_ptr(),
                            0,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        )
                    },
                    "snapshot",
                    &d,
                )
            })?;
        }
        Action::CreateEmpty { dest } => {
            let d = no_symlinks_between(top, dest)?;
            with_c(&d, "create subvolume", |c| {
                // SAFETY: valid path.
                check(
                    unsafe {
                        btrfs_util_create_subvolume(
                            c.as_ptr(),
                            0,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        )
                    },
                    "create subvolume",
                    &d,
                )
            })?;
        }
        Action::CreateDir { path } => {
            let p = no_symlinks_between(top, path)?;
            std::fs::create_dir_all(&p).map_err(|errno| BtrfsError {
                what: "create directory",
                path: p.display().to_string(),
                message: "mkdir failed".into(),
                errno,
            })?;
        }
        Action::Rename { from, to } => {
            let f = no_symlinks_between(top, from)?;
            let t = no_symlinks_between(top, to)?;
            // rename(2) of a subvolume is one atomic directory-entry change.
            // RENAME_NOREPLACE: never overwrite whatever is at the destination.
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &f,
                rustix::fs::CWD,
                &t,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(|e| BtrfsError {
                what: "rename",
                path: format!("{} to {}", f.display(), t.display()),
                message: "rename failed".into(),
                errno: e.into(),
            })?;
        }
    }
    Ok(())
}

/// The filesystem's top level (subvolid=5), mounted privately for the
/// rollback and unmounted when dropped.
#[derive(Debug)]
pub struct TopLevel {
    path: PathBuf,
}

impl TopLevel {
    /// Mounts the top level with the filesystem's own options (`options`,
    /// as the config writes them): when this is the filesystem's first
    /// mount, Btrfs takes its filesystem-wide options from it. It is always
    /// read-write, and never a place to run or open devices from.
    pub fn mount(device: &str, at: &Path, options: &[String]) -> io::Result<TopLevel> {
        std::fs::create_dir_all(at)?;
        let (flags, data) = top_level_data(options);
        let data =
            std::ffi::CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        super::perf::mount_syscall(|| {
            rustix::mount::mount(device, at, "btrfs", flags, Some(data.as_c_str()))
        })?;
        Ok(TopLevel {
            path: at.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names directly in `dir` (relative to the top), or None if it does not exist.
    pub fn list(&self, dir: &str) -> Option<Vec<String>> {
        let entries = std::fs::read_dir(self.path.join(dir)).ok()?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Some(names)
    }
}

impl Drop for TopLevel {
    fn drop(&mut self) {
        let _ = super::perf::mount_syscall(|| {
            rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH)
        });
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Flags and data for the top-level mount: the filesystem's options with
/// any subvolume selection replaced by the top level, read-write, and
/// nosuid/nodev/noexec/noatime (nothing is run from it, nothing should
/// change its files' times).
fn top_level_data(options: &[String]) -> (rustix::mount::MountFlags, String) {
    use rustix::mount::MountFlags;
    let (flags, rest) = super::mount::split_options(options);
    let flags = (flags - MountFlags::RDONLY)
        | MountFlags::NOATIME
        | MountFlags::NOSUID
        | MountFlags::NODEV
        | MountFlags::NOEXEC;
    let mut data = vec!["subvolid=5".to_string()];
    data.extend(
        rest.into_iter()
            .filter(|o| !o.starts_with("subvol=") && !o.starts_with("subvolid=")),
    );
    (flags, data.join(","))
}

/// A Btrfs filesystem's identity as its superblock states it: the
/// filesystem UUID and the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uuid: String,
    pub label: Option<String>,
}

/// The primary superblock's offset, and where its fields are (ctree.h).
const SUPER_OFFSET: u64 = 64 * 1024;
const SUPER_MAGIC: &[u8; 8] = b"_BHRfS_M";
const MAGIC_AT: usize = 0x40;
const FSID_AT: usize = 0x20;
const LABEL_AT: usize = 0x12b;
const LABEL_LEN: usize = 256;

/// Reads the identity from the primary superblock of `device`: one 4 KiB
/// read, where a general probe would try every filesystem type (each read
/// of an unlocked volume is decrypted). The kernel mounts the same
/// superblock, so the rollback guards check what will be mounted.
pub fn identity(device: &str) -> io::Result<Identity> {
    use std::os::unix::fs::FileExt;
    let mut block = vec![0u8; 4096];
    std::fs::File::open(device)?.read_exact_at(&mut block, SUPER_OFFSET)?;
    parse_identity(&block).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{device} holds no Btrfs superblock"),
        )
    })
}

fn parse_identity(block: &[u8]) -> Option<Identity> {
    if block.get(MAGIC_AT..MAGIC_AT + 8)? != SUPER_MAGIC {
        return None;
    }
    let id = block.get(FSID_AT..FSID_AT + 16)?;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let raw = block.get(LABEL_AT..LABEL_AT + LABEL_LEN)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let label = (end > 0).then(|| String::from_utf8_lossy(&raw[..end]).into_owned());
    Some(Identity { uuid, label })
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    fn superblock(label: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[MAGIC_AT..MAGIC_AT + 8].copy_from_slice(SUPER_MAGIC);
        let fsid = [
            0xda, 0x35, 0x8e, 0x2e, 0x80, 0x4b, 0x4c, 0xe1, 0x88, 0xe8, 0x9a, 0xd0, 0x56, 0x37,
            0xfc, 0x32,
        ];
        b[FSID_AT..FSID_AT + 16].copy_from_slice(&fsid);
        b[LABEL_AT..LABEL_AT + label.len()].copy_from_slice(label);
        b
    }

    #[test]
    fn reads_uuid_and_label_like_blkid() {
        let id = parse_identity(&superblock(b"nixos")).expect("btrfs");
        assert_eq!(id.uuid, "da358e2e-804b-4ce1-88e8-9ad05637fc32");
        assert_eq!(id.label.as_deref(), Some("nixos"));
        assert_eq!(parse_identity(&superblock(b"")).expect("btrfs").label, None);
    }

    #[test]
    fn anything_else_is_not_btrfs() {
        let mut b = superblock(b"nixos");
        b[MAGIC_AT] = b'x';
        assert_eq!(parse_identity(&b), None);
        assert_eq!(parse_identity(&[0u8; 100]), None);
    }

    #[test]
    fn top_level_is_read_write_and_never_a_subvolume() {
        use rustix::mount::MountFlags;
        let opts: Vec<String> = ["ro", "compress=zstd", "subvol=root", "noatime", "x-foo"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = top_level_data(&opts);
        assert_eq!(data, "subvolid=5,compress=zstd");
        assert!(!flags.contains(MountFlags::RDONLY));
        assert!(flags.contains(MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC));
    }
}
