//! Handing over to the real init: check that it exists in the new root,
//! move the API filesystems, free the initramfs, make the new root `/`, exec.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::AsFd;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, fstat, openat2};
use rustix::mount::mount_move;

use super::beneath;
use crate::config::AbsPath;

#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    #[error("init {init} is missing from the new root {new_root}: {reason}")]
    InitMissing {
        init: String,
        new_root: String,
        reason: String,
    },
    #[error("init {init} in the new root is not an executable file")]
    InitNotExecutable { init: String },
    #[error("switch root: cannot prepare {path}: {reason}")]
    Prepare { path: String, reason: String },
    #[error("switch root: cannot move {from} to {to}: {source}")]
    Move {
        from: String,
        to: String,
        source: std::io::Error,
    },
    #[error("switch root: {step}: {source}")]
    Syscall {
        step: &'static str,
        source: std::io::Error,
    },
}

const API_DIRS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];

/// Checks that `init` resolves, inside the new root (absolute symlinks such
/// as NixOS's `/nix/var/nix/profiles/system/init` are resolved against it),
/// to an executable file. Done before anything irreversible.
pub fn check_init(new_root: &str, init: &AbsPath) -> Result<(), SwitchRootError> {
    let root = rustix::fs::open(
        new_root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SwitchRootError::Prepare {
        path: new_root.to_string(),
        reason: e.to_string(),
    })?;
    let fd = openat2(
        &root,
        init.as_str().trim_start_matches('/'),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
    .map_err(|e| SwitchRootError::InitMissing {
        init: init.to_string(),
        new_root: new_root.to_string(),
        reason: std::io::Error::from(e).to_string(),
    })?;
    let st = fstat(&fd).map_err(|e| SwitchRootError::InitMissing {
        init: init.to_string(),
        new_root: new_root.to_string(),
        reason: e.to_string(),
    })?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_mode & 0o111 == 0 {
        return Err(SwitchRootError::InitNotExecutable {
            init: init.to_string(),
        });
    }
    Ok(())
}

/// Whether `/` is the initramfs (ramfs or tmpfs): only then is it safe,
/// and useful, to delete its contents.
fn root_is_initramfs() -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    rustix::fs::statfs("/").is_ok_and(|s| {
        let t = s.f_type;
        t == RAMFS_MAGIC || t == TMPFS_MAGIC
    })
}

/// Frees the initramfs's memory: removes everything on the root device,
/// never crossing into another mount (the new root, the API filesystems).
fn delete_tree(dir: &std::path::Path, root_dev: u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != root_dev {
            continue;
        }
        if meta.is_dir() {
            delete_tree(&path, root_dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Performs the switch and execs `init`. Only returns on failure.
pub fn switch_root(
    new_root: &str,
    init: &AbsPath,
    args: &[String],
) -> Result<Infallible, SwitchRootError> {
    check_init(new_root, init)?;
    let root_fd = rustix::fs::open(
        new_root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SwitchRootError::Prepare {
        path: new_root.to_string(),
        reason: e.to_string(),
    })?;
    for dir in API_DIRS {
        beneath::open_dir(root_fd.as_fd(), new_root, dir, Some(0o755)).map_err(|e| {
            SwitchRootError::Prepare {
                path: format!("{new_root}{dir}"),
                reason: e.to_string(),
            }
        })?;
    }
    for dir in API_DIRS {
        let to = format!("{new_root}{dir}");
        if let Err(e) = mount_move(dir, &to) {
            // Not mounted (e.g. /run in a test initrd) is fine; anything else is not.
            if e != rustix::io::Errno::INVAL {
                return Err(SwitchRootError::Move {
                    from: dir.to_string(),
                    to,
                    source: e.into(),
                });
            }
        }
    }
    let syscall = |step: &'static str| {
        move |e: rustix::io::Errno| SwitchRootError::Syscall {
            step,
            source: e.into(),
        }
    };
    rustix::process::chdir(new_root).map_err(syscall("chdir to the new root"))?;
    if root_is_initramfs() {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata("/") {
            delete_tree(std::path::Path::new("/"), meta.dev());
        }
    }
    mount_move(".", "/").map_err(syscall("move the new root to /"))?;
    rustix::process::chroot(".").map_err(syscall("chroot"))?;
    rustix::process::chdir("/").map_err(syscall("chdir /"))?;

    let program = CString::new(init.as_str()).map_err(|_| SwitchRootError::InitNotExecutable {
        init: init.to_string(),
    })?;
    let mut argv: Vec<CString> = vec![program.clone()];
    argv.extend(args.iter().filter_map(|a| CString::new(a.as_str()).ok()));
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // SAFETY: program and argv are NUL-terminated strings kept alive across the call;
    // argv is NULL-terminated. execv only returns on failure.
    unsafe {
        libc::execv(program.as_ptr(), argv_ptrs.as_ptr());
    }
    Err(SwitchRootError::Syscall {
        step: "exec init",
        source: std::io::Error::last_os_error(),
    })
}
