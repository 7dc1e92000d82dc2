//! Shared harness for ember's VM integration tests (std only).
//!
//! Each scenario test file does `mod common;` and then typically:
//!
//! ```ignore
//! let a = common::assets();                       // kernel + reference disk (cached)
//! let disk = common::overlay(&a.base_disk, "my-test");
//! let mut vm = common::Vm::boot(common::VmSpec {
//!     kernel: a.kernel.clone(), initrd, disks: vec![disk],
//!     append: format!("init={} checker.phase=1", a.checker_init()),
//!     ..common::VmSpec::new("my-test")
//! });
//! vm.wait_exit(common::secs(120)).unwrap();
//! common::assert_checks_passed(&vm.transcript());
//! ```
//!
//! Everything under the cache (`$EMBER_CACHE`, default `~/.cache/ember`) is
//! produced by `scripts/fetch-kernel` and `scripts/provision-disk`; per-test
//! artifacts (overlays, initramfs images, serial logs) go to
//! `<target>/vm-tests/`.
#![allow(dead_code)]

pub mod disk_shell;
pub mod ember;
pub mod initramfs;
pub mod vm;

pub use initramfs::Initramfs;
pub use vm::{Vm, VmSpec};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Paths and facts about the cached kernel and reference disk.
#[derive(Clone, Debug)]
pub struct Assets {
    /// The kernel to boot: `$EMBER_CACHE/kernel/<version>/vmlinux`, the
    /// uncompressed ELF that QEMU starts through the PVH entry point (~2.5 s
    /// faster per boot under TCG than the bzImage, which decompresses itself),
    /// or `vmlinuz` if there is no vmlinux or `EMBER_VM_BZIMAGE=1` is set.
    pub kernel: PathBuf,
    /// `$EMBER_CACHE/kernel/<version>/vmlinuz` (the bzImage as Debian ships it).
    pub kernel_bzimage: PathBuf,
    pub kernel_version: String,
    /// The unpacked `lib/modules/<version>` tree (with modules.dep etc.).
    pub modules_dir: PathBuf,
    /// A root such that `<modules_root>/lib/modules/<version>` is `modules_dir`
    /// (what `modprobe -d` / `depmod -b` want).
    pub modules_root: PathBuf,
    /// `$EMBER_CACHE/vm/reference.qcow2`; never boot it directly, use [`overlay`].
    pub base_disk: PathBuf,
    /// 64-byte LUKS keyfile (keyslot 0).
    pub keyfile: PathBuf,
    /// LUKS passphrase (keyslot 1).
    pub passphrase: String,
    /// Everything in `reference.env` (PASSPHRASE, LUKS_UUID, BTRFS_UUID,
    /// BOOT_UUID, CHECKER_INIT, KERNEL_VERSION, ...).
    pub env: BTreeMap<String, String>,
}

impl Assets {
    /// A value from reference.env; panics if missing.
    pub fn env(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("reference.env has no {key}: {:?}", self.env))
    }
    /// `/nix/store/1111...-ember-checker/bin/init`, the checker inside the disk.
    pub fn checker_init(&self) -> &str {
        self.env("CHECKER_INIT")
    }
    pub fn luks_uuid(&self) -> &str {
        self.env("LUKS_UUID")
    }
    pub fn btrfs_uuid(&self) -> &str {
        self.env("BTRFS_UUID")
    }
    pub fn boot_uuid(&self) -> &str {
        self.env("BOOT_UUID")
    }
}

/// The repository root (this crate's manifest dir).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<target>/vm-tests`, created on demand. Honors `CARGO_TARGET_DIR`.
pub fn work_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target"));
    let dir = target.join("vm-tests");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// `$EMBER_CACHE` or `~/.cache/ember`.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("EMBER_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME").expect("HOME not set (or set EMBER_CACHE)");
    PathBuf::from(home).join(".cache/ember")
}

/// A timeout scaled by `EMBER_VM_TIMEOUT_SCALE` (float, default 1) for slow hosts.
pub fn secs(s: u64) -> Duration {
    let scale = std::env::var("EMBER_VM_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(s as f64 * scale)
}

/// Runs a script from `scripts/` and returns its trimmed stdout; panics with
/// its stderr (which includes the provisioning VM's serial log on failure).
fn run_script(name: &str) -> String {
    let path = repo_dir().join("scripts").join(name);
    let out = Command::new(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!(
            "{} failed ({}).\n--- stderr ---\n{stderr}\n--- stdout ---\n{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Parses a shell-sourceable `KEY=value` file as written by provision-disk
/// (values bare or quoted with `'...'`, `"..."` or bash `%q` backslashes).
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = if v.len() >= 2
            && ((v.starts_with('\'') && v.ends_with('\''))
                || (v.starts_with('"') && v.ends_with('"')))
        {
            v[1..v.len() - 1].to_string()
        } else {
            let mut s = String::new();
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        s.push(n);
                    }
                } else {
                    s.push(c);
                }
            }
            s
        };
        map.insert(k.trim().to_string(), v);
    }
    map
}

/// Fetches the kernel and provisions the reference disk (both cached and
/// idempotent; the first call in a process runs the scripts, later calls reuse
/// the result). Panics with the scripts' output if anything fails.
pub fn assets() -> Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(load_assets).clone()
}

fn load_assets() -> Assets {
    let kernel_dir = PathBuf::from(run_script("fetch-kernel"));
    let env_path = PathBuf::from(run_script("provision-disk"));
    let text = std::fs::read_to_string(&env_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", env_path.display()));
    let env = parse_env(&text);
    let get = |k: &str| -> String {
        env.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{} lacks {k}", env_path.display()))
    };
    let kernel_version = get("KERNEL_VERSION");
    // provision-disk may have been built against a different kernel dir only if
    // the kernel changed between the two calls; trust reference.env's.
    let kernel_dir = env
        .get("KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or(kernel_dir);
    let vm_dir = env_path.parent().unwrap().to_path_buf();
    let vmlinux = kernel_dir.join("vmlinux");
    let bzimage = kernel_dir.join("vmlinuz");
    let force_bz = std::env::var("EMBER_VM_BZIMAGE").is_ok_and(|v| v == "1");
    let a = Assets {
        kernel: if vmlinux.is_file() && !force_bz {
            vmlinux
        } else {
            bzimage.clone()
        },
        kernel_bzimage: bzimage,
        modules_dir: kernel_dir.join("modules"),
        modules_root: kernel_dir.join("root"),
        base_disk: env
            .get("BASE_DISK")
            .map(PathBuf::from)
            .unwrap_or(vm_dir.join("reference.qcow2")),
        keyfile: env
            .get("KEYFILE")
            .map(PathBuf::from)
            .unwrap_or(vm_dir.join("reference.key")),
        passphrase: get("PASSPHRASE"),
        kernel_version,
        env,
    };
    for p in [&a.kernel, &a.modules_dir, &a.base_disk, &a.keyfile] {
        assert!(
            p.exists(),
            "asset missing after provisioning: {}",
            p.display()
        );
    }
    a
}

/// Kernel modules (with dependencies and softdeps, in load order) for `names`,
/// resolved with the host's `modprobe --show-depends` against the fetched
/// kernel. Built-in modules yield nothing. Returns absolute paths of `.ko` files.
pub fn module_deps(a: &Assets, names: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for name in names {
        let o = Command::new("modprobe")
            .arg("-d")
            .arg(&a.modules_root)
            .args(["-S", &a.kernel_version, "--show-depends", name])
            .output()
            .expect("run modprobe (install kmod)");
        assert!(
            o.status.success(),
            "modprobe --show-depends {name} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let mut w = line.split_whitespace();
            if let (Some("insmod"), Some(p)) = (w.next(), w.next()) {
                let p = PathBuf::from(p);
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// A fresh copy-on-write overlay of `base` at `<target>/vm-tests/<name>.qcow2`
/// (any previous one is deleted). The base itself is never written.
pub fn overlay(base: &Path, name: &str) -> PathBuf {
    let path = work_dir().join(format!("{name}.qcow2"));
    let _ = std::fs::remove_file(&path);
    let base = base
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&path)
        .output()
        .expect("run qemu-img (install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img create overlay {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Whether two disk images have identical guest-visible contents
/// (`qemu-img compare`; images of different size compare the extra as zeros).
/// Do not call while a VM still has one of them open (image locking).
pub fn disks_identical(a: &Path, b: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(a)
        .arg(b)
        .output()
        .expect("run qemu-img");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare {} {} failed: {}",
            a.display(),
            b.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The checker's results: `(name, passed, detail)` for every
/// `EMBER-CHECK ok <name>` / `EMBER-CHECK fail <name> <detail>` line.
/// Tolerates kernel messages or `\r` around the marker.
pub fn checks(transcript: &str) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    for line in transcript.lines() {
        let Some(i) = line.find("EMBER-CHECK ") else {
            continue;
        };
        let rest = line[i + "EMBER-CHECK ".len()..].trim_end_matches('\r');
        let (verdict, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let passed = match verdict {
            "ok" => true,
            "fail" => false,
            _ => continue,
        };
        let (name, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        out.push((name.trim().to_string(), passed, detail.trim().to_string()));
    }
    out
}

/// The id printed by the checker's phase 1 (`EMBER-CHECK id=<32 hex>`).
pub fn checker_id(transcript: &str) -> Option<String> {
    transcript.lines().find_map(|line| {
        let i = line.find("EMBER-CHECK id=")?;
        let id: String = line[i + "EMBER-CHECK id=".len()..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        (id.len() == 32).then_some(id)
    })
}

/// `(passed, failed)` from the checker's final `EMBER-CHECK done` line.
pub fn checker_done(transcript: &str) -> Option<(u32, u32)> {
    transcript.lines().find_map(|line| {
        let i = line.find("EMBER-CHECK done ")?;
        let mut passed = None;
        let mut failed = None;
        for w in line[i..].split_whitespace() {
            if let Some(v) = w.strip_prefix("passed=") {
                passed = v.parse().ok();
            } else if let Some(v) = w.strip_prefix("failed=") {
                failed = v.parse().ok();
            }
        }
        Some((passed?, failed?))
    })
}

/// Panics (with the failing checks and the transcript tail) unless the checker
/// ran to completion with zero failures and every name in `required` passed.
pub fn assert_checks_passed(transcript: &str, required: &[&str]) {
    let results = checks(transcript);
    let failed: Vec<_> = results.iter().filter(|(_, ok, _)| !ok).collect();
    let missing: Vec<_> = required
        .iter()
        .filter(|r| !results.iter().any(|(n, ok, _)| n == *r && *ok))
        .collect();
    let done = checker_done(transcript);
    if failed.is_empty() && missing.is_empty() && matches!(done, Some((_, 0))) {
        return;
    }
    panic!(
        "checker did not pass: failed={failed:#?} missing={missing:?} done={done:?}\n--- transcript tail ---\n{}",
        vm::tail(transcript, 80)
    );
}

/// The check names the checker emits in both phases.
pub const COMMON_CHECKS: &[&str] = &[
    "by-label-boot",
    "by-label-luks",
    "cryptroot-block",
    "cryptroot-btrfs",
    "mount-root",
    "mount-home",
    "mount-nix",
    "mount-persist",
    "mount-var-log",
    "bind-machine-id",
    "bind-var-lib-systemd",
    "var-log-not-stacked",
];
/// Extra checks of phase 1 / phase 2.
pub const PHASE1_CHECKS: &[&str] = &["id-written"];
pub const PHASE2_CHECKS: &[&str] = &["machine-id-persisted", "home-marker-survived"];
