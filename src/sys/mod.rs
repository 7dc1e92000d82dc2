//! The thin layer that owns every system call ember makes. Nothing outside
//! `sys` touches the system; nothing inside decides what to do.

pub mod apifs;
pub mod ask_password;
pub mod beneath;
pub mod blockdev;
pub mod btrfs;
pub mod btrfs_tree;
pub mod console;
pub mod gpt;
pub mod keyfile;
pub mod kmod;
pub mod kmsg;
pub mod luks;
pub mod mount;
pub mod perf;
pub mod persist;
pub mod power;
pub mod resume;
pub mod rollback;
pub mod secret;
pub mod switch_root;
pub mod uevent;
