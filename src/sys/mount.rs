//! Mounting subvolumes: the option list a user writes (`noatime`,
//! `compress=zstd`) split into the flags the mount(2) call takes and the
//! data string the filesystem parses.

use rustix::mount::{MountFlags, mount};

/// Splits mount(8)-style options into flags and filesystem data.
pub fn split_options(options: &[String]) -> (MountFlags, Vec<String>) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" => flags.remove(MountFlags::RDONLY),
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "lazytime" => flags |= MountFlags::LAZYTIME,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            // Userspace-only options (fstab bookkeeping) never reach the kernel.
            "defaults" | "auto" | "noauto" | "nofail" | "suid" | "dev" | "exec" | "atime" => {}
            o if o.starts_with("x-") => {}
            o => data.push(o.to_string()),
        }
    }
    (flags, data)
}

/// The data string for one subvolume mount: `subvol=` first, then the rest.
pub fn subvolume_data(subvolume: &str, options: &[String]) -> (MountFlags, String) {
    let (flags, rest) = split_options(options);
    let mut data = vec![format!("subvol={subvolume}")];
    data.extend(rest);
    (flags, data.join(","))
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create the mount point: {0}")]
    MountPoint(#[from] super::beneath::BeneathError),
    #[error("{source}{hint}")]
    Mount {
        source: std::io::Error,
        hint: &'static str,
    },
}

/// Outcome of one subvolume mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    Now,
    /// Something is already mounted there (a second run, or done by hand).
    Already,
}

/// Mounts `subvolume` of `device` at `mount_point` inside `sysroot`. The mount
/// point is created (and entered) without following symlinks, because the
/// directories on the root subvolume were written by a previous boot.
pub fn mount_subvolume(
    device: &str,
    sysroot: &str,
    mount_point: &crate::config::AbsPath,
    subvolume: &str,
    options: &[String],
) -> Result<Mounted, MountError> {
    use std::os::fd::AsFd;
    let (flags, data) = subvolume_data(subvolume, options);
    let fail = |e: rustix::io::Errno| {
        let hint = match e {
            rustix::io::Errno::NOENT => " (does the subvolume exist on that filesystem?)",
            rustix::io::Errno::NODEV => " (is the btrfs module in the initrd?)",
            rustix::io::Errno::INVAL => " (is it a Btrfs filesystem, and are the options valid?)",
            _ => "",
        };
        MountError::Mount {
            source: e.into(),
            hint,
        }
    };
    // Keeps the mount point's descriptor open until the mount is done.
    let mut _held: Option<std::os::fd::OwnedFd> = None;
    let target = if mount_point.is_root() {
        std::fs::create_dir_all(sysroot).map_err(|e| MountError::Mount {
            source: e,
            hint: "",
        })?;
        if super::apifs::is_mount_point(sysroot) {
            return Ok(Mounted::Already);
        }
        sysroot.to_string()
    } else {
        let root = rustix::fs::open(
            sysroot,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(fail)?;
        let dir =
            super::beneath::open_dir(root.as_fd(), sysroot, mount_point.as_str(), Some(0o755))?;
        let shown = mount_point.under(sysroot);
        if super::apifs::is_mount_point(&shown) {
            return Ok(Mounted::Already);
        }
        // Mount onto the descriptor we resolved, not onto a path that could change.
        let target = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir));
        _held = Some(dir);
        target
    };
    let data = std::ffi::CString::new(data).map_err(|_| fail(rustix::io::Errno::INVAL))?;
    super::perf::mount_syscall(|| {
        mount(
            device,
            target.as_str(),
            "btrfs",
            flags,
            Some(data.as_c_str()),
        )
    })
    .map_err(fail)?;
    Ok(Mounted::Now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_separated() {
        let opts: Vec<String> = [
            "compress=zstd",
            "noatime",
            "x-gvfs-hide",
            "ro",
            "space_cache=v2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data) = subvolume_data("root", &opts);
        assert_eq!(data, "subvol=root,compress=zstd,space_cache=v2");
        assert!(flags.contains(MountFlags::NOATIME | MountFlags::RDONLY));
    }
}
