//! Library half of the ember initramfs builder.
//!
//! * [`cpio`] writes the archive the kernel unpacks into its rootfs.
//! * [`kmod`] decides which kernel modules go into it, and in what order the
//!   runtime loader may insert them.
//!
//! Everything here runs on the build host, never inside the initramfs, so it
//! may read files and allocate freely; what it must be is deterministic, so
//! the same inputs always give a byte-identical image.

pub mod cpio;
mod decompress;
mod glob;
pub mod kmod;

#[cfg(test)]
mod testutil;
