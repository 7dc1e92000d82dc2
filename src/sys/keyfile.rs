//! Reading key material: a keyfile in the initrd, a keyfile on another
//! device's filesystem (mounted read-only, `nodev,nosuid,noexec`, just long
//! enough to read it), or bytes of the raw device. Everything lands in a
//! `Secret`; errors describe what went wrong, never what was read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};
use rustix::mount::{MountFlags, UnmountFlags, mount, unmount};

use super::secret::Secret;
use crate::config::AbsPath;
use crate::config::keys::MAX_KEY_BYTES;

/// Where key devices are mounted while their keyfile is read.
const MOUNT_BASE: &str = "/run/ember/keydev";

/// An I/O error as people read it: `No such file or directory`, without
/// Rust's ` (os error 2)`.
pub fn os_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

fn read_from(mut file: File, what: &str, offset: u64, size: Option<u64>) -> Result<Secret, String> {
    let meta = file.metadata().map_err(|e| os_text(&e))?;
    let ft = meta.file_type();
    let available = if ft.is_file() {
        Some(meta.len())
    } else if ft.is_block_device() {
        let end = file.seek(SeekFrom::End(0)).map_err(|e| os_text(&e))?;
        Some(end)
    } else if ft.is_dir() {
        return Err(format!("{what} is a directory"));
    } else {
        None
    };
    let want = match (size, available) {
        (Some(s), Some(len)) if offset.saturating_add(s) > len => {
            return Err(format!(
                "{what} has {len} bytes, fewer than offset {offset} + size {s}"
            ));
        }
        (Some(s), _) => s,
        (None, Some(len)) if len <= offset => {
            return Err(if len == 0 {
                format!("{what} is empty")
            } else {
                format!("{what} has {len} bytes, nothing after offset {offset}")
            });
        }
        (None, Some(len)) if len - offset > MAX_KEY_BYTES => {
            return Err(format!(
                "{what} is larger than {MAX_KEY_BYTES} bytes (give `size`)"
            ));
        }
        (None, Some(len)) => len - offset,
        (None, None) => MAX_KEY_BYTES,
    };
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| format!("cannot seek to offset {offset}: {}", os_text(&e)))?;
    }
    let mut secret = Secret::with_capacity(want as usize);
    secret
        .fill_from(&mut (&mut file).take(want))
        .map_err(|e| os_text(&e))?;
    if size.is_some() && (secret.len() as u64) < want {
        return Err(format!(
            "{what} ended after {} of the {want} bytes to read",
            secret.len()
        ));
    }
    if secret.is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(secret)
}

/// A keyfile in the initrd (or any path the running system can open).
pub fn read_file(path: &Path, offset: u64, size: Option<u64>) -> Result<Secret, String> {
    let file = File::open(path).map_err(|e| os_text(&e))?;
    read_from(file, "the keyfile", offset, size)
}

/// Unmounts and removes the temporary mount point however reading ends.
struct Mounted {
    dir: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = super::perf::mount_syscall(|| unmount(&self.dir, UnmountFlags::empty())) {
            log::debug!("unmount {}: {e}; detaching", self.dir.display());
            let _ = unmount(&self.dir, UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A key on another device: `path` on its filesystem (type `fstype`, as
/// probed), or the raw device when `path` is `None`.
pub fn read_on_device(
    devnode: &str,
    fstype: Option<&str>,
    path: Option<&AbsPath>,
    offset: u64,
    size: Option<u64>,
) -> Result<Secret, String> {
    let Some(path) = path else {
        let file =
            File::open(devnode).map_err(|e| format!("cannot open {devnode}: {}", os_text(&e)))?;
        return read_from(file, devnode, offset, size);
    };
    let Some(fstype) = fstype else {
        return Err(format!(
            "{devnode} has no filesystem ember recognises (blkid found no TYPE)"
        ));
    };
    std::fs::create_dir_all(MOUNT_BASE)
        .map_err(|e| format!("cannot create {MOUNT_BASE}: {}", os_text(&e)))?;
    let dir = PathBuf::from(MOUNT_BASE).join(devnode.trim_start_matches("/dev/").replace('/', "_"));
    let _ = std::fs::create_dir(&dir);
    super::perf::mount_syscall(|| {
        mount(
            devnode,
            &dir,
            fstype,
            MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
            None,
        )
    })
    .map_err(|e| {
        let _ = std::fs::remove_dir(&dir);
        format!(
            "cannot mount {devnode} ({fstype}) read-only: {}{}",
            os_text(&std::io::Error::from(e)),
            if e == rustix::io::Errno::NODEV {
                format!(
                    " (the {fstype} driver is not in the initrd: add its module to kernel_modules)"
                )
            } else {
                String::new()
            }
        )
    })?;
    let mounted = Mounted { dir };
    let root: OwnedFd = rustix::fs::open(
        &mounted.dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| os_text(&e.into()))?;
    let fd = openat2(
        &root,
        path.as_str().trim_start_matches('/'),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )
    .map_err(|e| format!("{path} on {devnode}: {}", os_text(&std::io::Error::from(e))))?;
    let secret = read_from(File::from(fd), "the keyfile", offset, size)?;
    drop(mounted);
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ember-key-{name}-{}", std::process::id()));
        std::fs::write(&p, bytes).expect("write");
        p
    }

    #[test]
    fn whole_file_offset_and_size() {
        let p = scratch("a", b"0123456789");
        assert_eq!(
            read_file(&p, 0, None).expect("read").expose(),
            b"0123456789"
        );
        assert_eq!(read_file(&p, 3, None).expect("read").expose(), b"3456789");
        assert_eq!(read_file(&p, 2, Some(4)).expect("read").expose(), b"2345");
        let e = read_file(&p, 8, Some(4)).err().expect("too short");
        assert_eq!(e, "the keyfile has 10 bytes, fewer than offset 8 + size 4");
        let e = read_file(&p, 10, None).err().expect("nothing left");
        assert!(e.contains("nothing after offset 10"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn empty_missing_and_directories() {
        let p = scratch("empty", b"");
        assert_eq!(
            read_file(&p, 0, None).err().as_deref(),
            Some("the keyfile is empty")
        );
        let _ = std::fs::remove_file(&p);
        let e = read_file(Path::new("/nonexistent/ember.key"), 0, None)
            .err()
            .expect("missing");
        assert!(e.contains("No such file or directory"), "{e}");
        let e = read_file(&std::env::temp_dir(), 0, None)
            .err()
            .expect("dir");
        assert!(e.contains("directory"), "{e}");
    }
}
