//! The API filesystems an init must provide before anything else works.

use std::io;

use rustix::mount::{MountFlags, mount};

pub struct ApiMount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: Option<&'static std::ffi::CStr>,
}

pub const API_MOUNTS: [ApiMount; 4] = [
    ApiMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MountFlags::NOSUID
            .union(MountFlags::NODEV)
            .union(MountFlags::NOEXEC),
        data: None,
    },
    ApiMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MountFlags::NOSUID
            .union(MountFlags::NODEV)
            .union(MountFlags::NOEXEC),
        data: None,
    },
    ApiMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MountFlags::NOSUID,
        data: Some(c"mode=0755"),
    },
    ApiMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: Some(c"mode=0755"),
    },
];

/// Mounts each API filesystem unless something is already mounted there
/// (the kernel may have mounted devtmpfs itself with CONFIG_DEVTMPFS_MOUNT).
pub fn mount_all() -> Result<(), (String, io::Error)> {
    for m in &API_MOUNTS {
        std::fs::create_dir_all(m.target).map_err(|e| (m.target.to_string(), e))?;
        if is_mount_point(m.target) {
            continue;
        }
        super::perf::mount_syscall(|| mount(m.source, m.target, m.fstype, m.flags, m.data))
            .map_err(|e| (m.target.to_string(), e.into()))?;
    }
    Ok(())
}

/// Whether `path` is the root of a mount (not following a final symlink).
pub fn is_mount_point(path: &str) -> bool {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    // The kernel says whether the path is the root of a mount (Linux 5.8).
    // Comparing device numbers with the parent is only the fallback: on
    // Btrfs a nested subvolume has a device number of its own without
    // being mounted, and a mount point that is one would be taken for a
    // finished mount.
    if let Ok(st) = statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) && st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
    {
        return st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
    }
    use std::os::unix::fs::MetadataExt;
    let parent = std::path::Path::new(path)
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_mount_point;

    #[test]
    fn mount_roots_and_plain_directories() {
        assert!(is_mount_point("/proc"));
        assert!(!is_mount_point("/proc/self"));
        let dir = std::env::temp_dir().join(format!("ember-mp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert!(!is_mount_point(dir.to_str().expect("utf-8")));
        let _ = std::fs::remove_dir(&dir);
        assert!(!is_mount_point("/nonexistent/ember"));
    }
}
