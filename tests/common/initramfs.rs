//! Builds small test initramfs images: files are staged in a directory under
//! `<target>/vm-tests/` and archived with `cpio -H newc` (uncompressed: the
//! kernel unpacks that fastest, and under TCG decompression is costly).
//!
//! The kernel's built-in default initramfs already provides `/dev/console`, so
//! the staged tree needs no device nodes.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Assets;

pub struct Initramfs {
    name: String,
    root: PathBuf,
}

impl Initramfs {
    /// Starts an empty tree at `<target>/vm-tests/<name>.initramfs.d`
    /// (cleared first).
    pub fn new(name: &str) -> Initramfs {
        let root = super::work_dir().join(format!("{name}.initramfs.d"));
        if root.exists() {
            std::fs::remove_dir_all(&root).unwrap_or_else(|e| panic!("rm {}: {e}", root.display()));
        }
        std::fs::create_dir_all(&root).unwrap();
        Initramfs {
            name: name.to_string(),
            root,
        }
    }

    fn dest(&self, dest: &str) -> PathBuf {
        let p = self.root.join(dest.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        p
    }

    /// Creates a directory (and parents).
    pub fn dir(&mut self, dest: &str) -> &mut Self {
        std::fs::create_dir_all(self.root.join(dest.trim_start_matches('/'))).unwrap();
        self
    }

    /// Writes `contents` to `dest` with `mode`.
    pub fn bytes(&mut self, dest: &str, contents: &[u8], mode: u32) -> &mut Self {
        let p = self.dest(dest);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// Copies host file `src` (following symlinks) to `dest` with `mode`.
    pub fn file(&mut self, dest: &str, src: &Path, mode: u32) -> &mut Self {
        let contents = std::fs::read(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        self.bytes(dest, &contents, mode)
    }

    /// A symlink `dest -> target`.
    pub fn symlink(&mut self, dest: &str, target: &str) -> &mut Self {
        let p = self.dest(dest);
        let _ = std::fs::remove_file(&p);
        symlink(target, &p).unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
        self
    }

    /// Debian's static busybox as `/bin/busybox`, plus `/bin/sh`.
    pub fn busybox(&mut self) -> &mut Self {
        self.file("/bin/busybox", Path::new("/bin/busybox"), 0o755);
        self.symlink("/bin/sh", "busybox")
    }

    /// `/init` as a busybox shell script (`#!/bin/busybox sh` is prepended
    /// unless `script` has its own shebang). Implies [`Initramfs::busybox`].
    pub fn init_script(&mut self, script: &str) -> &mut Self {
        self.busybox();
        let body = if script.starts_with("#!") {
            script.to_string()
        } else {
            format!("#!/bin/busybox sh\n{script}")
        };
        self.bytes("/init", body.as_bytes(), 0o755)
    }

    /// Copies a dynamically linked host binary to `dest` together with every
    /// shared library `ldd` resolves (kept at their host paths) and libgcc_s
    /// (which glibc dlopen()s for thread cancellation).
    pub fn binary_with_libs(&mut self, src: &Path, dest: &str) -> &mut Self {
        self.file(dest, src, 0o755);
        let out = Command::new("ldd").arg(src).output().expect("run ldd");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut libs: Vec<String> = text
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(str::to_string)
            .collect();
        libs.push("/lib/x86_64-linux-gnu/libgcc_s.so.1".into());
        for lib in libs {
            let p = Path::new(&lib);
            if p.exists() && !self.root.join(lib.trim_start_matches('/')).exists() {
                self.file(&lib, p, 0o755);
            }
        }
        self
    }

    /// Copies the named kernel modules and their dependencies (see
    /// [`super::module_deps`]) to `/lib/modules/<version>/...` and writes
    /// `/modules.list` with their in-initramfs paths in load order, one per
    /// line (`while read m; do insmod $m; done </modules.list`).
    /// Returns that list.
    pub fn modules(&mut self, a: &Assets, names: &[&str]) -> Vec<String> {
        let mut list = Vec::new();
        for ko in super::module_deps(a, names) {
            let rel = ko.strip_prefix(&a.modules_root).unwrap_or_else(|_| {
                panic!("{} not under {}", ko.display(), a.modules_root.display())
            });
            let dest = format!("/{}", rel.display());
            self.file(&dest, &ko, 0o644);
            list.push(dest);
        }
        let mut text = list.join("\n");
        text.push('\n');
        self.bytes("/modules.list", text.as_bytes(), 0o644);
        list
    }

    /// The staging directory (to add things by hand).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Archives the tree to `<target>/vm-tests/<name>.cpio` (owner root) and
    /// returns its path.
    pub fn build(&self) -> PathBuf {
        let out = super::work_dir().join(format!("{}.cpio", self.name));
        let script =
            "find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet";
        let file =
            std::fs::File::create(&out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
        let status = Command::new("sh")
            .args(["-c", script])
            .current_dir(&self.root)
            .stdout(Stdio::from(file))
            .status()
            .expect("run cpio (install cpio)");
        assert!(status.success(), "cpio failed for {}", self.root.display());
        out
    }
}
