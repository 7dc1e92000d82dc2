//! Loading kernel modules with finit_module(2), independent ones in
//! parallel: a module starts as soon as everything it depends on is in.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Condvar, Mutex};

use crate::modules::{ManifestModule, ModuleManifest};

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error(
        "the initrd was built for kernel {built}, but this is kernel {running}: rebuild the initrd for this kernel"
    )]
    WrongKernel { built: String, running: String },
    #[error("invalid module manifest: {0}")]
    Manifest(String),
    #[error("cannot load kernel module {name} ({path}): {source}")]
    Load {
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error("kernel module {name} not loaded because {dep} failed")]
    Skipped { name: String, dep: String },
}

fn finit_module(file: &File) -> std::io::Result<()> {
    // SAFETY: finit_module with a valid fd, an empty NUL-terminated parameter string and no flags.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    // Already loaded (or built in): that is what we wanted.
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    // The module is for hardware this machine lacks (aesni_intel on a CPU
    // without AES-NI): the generic implementation built into the kernel serves.
    if err.raw_os_error() == Some(libc::ENODEV) {
        log::debug!("module not needed on this hardware (no such device)");
        return Ok(());
    }
    Err(err)
}

/// The CPU's modalias (`cpu:type:x86,ven...:feature:,0000,...`), which the
/// `cpu:` aliases of CPU-feature drivers are matched against.
const CPU_MODALIAS: &str = "/sys/devices/system/cpu/modalias";

/// Whether a module meant only for some CPUs (it has `cpu:` aliases, like
/// aesni_intel or padlock_aes) is for this one. udev would load such a module
/// only on a matching CPU; loading it elsewhere just fails with ENODEV after
/// the kernel has read, verified and linked it. Unknown CPU: load it.
fn for_this_cpu(m: &ManifestModule, cpu: Option<&str>) -> bool {
    match cpu {
        Some(cpu) if !m.cpu.is_empty() => m.cpu.iter().any(|pattern| glob_match(pattern, cpu)),
        _ => true,
    }
}

/// fnmatch(3) without flags, for the `*`, `?` and `[...]` of kernel aliases.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it now covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match class_match(p, pi, t[ti]) {
                Class::Match(next) => Some(next),
                Class::NoMatch => None,
                // No closing bracket: a literal `[`, as fnmatch(3) has it.
                Class::Unterminated => (t[ti] == b'[').then_some(pi + 1),
            },
            Some(&c) if c == t[ti] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

enum Class {
    /// Matched; the pattern continues at this index.
    Match(usize),
    NoMatch,
    Unterminated,
}

/// Matches `c` against the `[...]` class starting at `p[at]`.
fn class_match(p: &[u8], at: usize, c: u8) -> Class {
    let mut i = at + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&b) = p.get(i) {
        if b == b']' && !first {
            return if matched != negate {
                Class::Match(i + 1)
            } else {
                Class::NoMatch
            };
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&e| e != b']') {
            matched |= (b..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= b == c;
            i += 1;
        }
    }
    Class::Unterminated
}

/// Loading order among modules that are ready: device drivers first (the
/// disks they bring up are probed while the rest load), then crypto (needed
/// to unlock), then everything else (filesystems and their libraries, needed
/// only to mount).
fn rank(m: &ManifestModule) -> u8 {
    if m.path.contains("/kernel/drivers/") {
        0
    } else if m.path.contains("/crypto/") {
        1
    } else {
        2
    }
}

fn load_one(m: &ManifestModule) -> Result<(), KmodError> {
    let path = format!("/{}", m.path.trim_start_matches('/'));
    let err = |source| KmodError::Load {
        name: m.name.clone(),
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(err)?;
    finit_module(&file).map_err(err)
}

#[derive(Default)]
struct Progress {
    done: BTreeSet<String>,
    failed: BTreeMap<String, String>,
    started: BTreeSet<String>,
}

/// Loads every module of the manifest. Returns the first error (a failed
/// module also fails everything that depends on it; the rest still load).
pub fn load_all(
    manifest: &ModuleManifest,
    running_kernel: &str,
    workers: usize,
) -> Result<usize, KmodError> {
    if manifest.kernel_version != running_kernel {
        return Err(KmodError::WrongKernel {
            built: manifest.kernel_version.clone(),
            running: running_kernel.to_string(),
        });
    }
    manifest.check().map_err(KmodError::Manifest)?;
    let cpu = std::fs::read_to_string(CPU_MODALIAS).ok();
    let mut progress = Progress::default();
    for m in &manifest.modules {
        if !for_this_cpu(m, cpu.as_deref()) {
            log::debug!("module {}: not for this CPU, skipped", m.name);
            progress.started.insert(m.name.clone());
            progress.done.insert(m.name.clone());
        }
    }
    // Try ready modules in rank order, keeping the manifest order within a rank.
    let mut order: Vec<&ManifestModule> = manifest.modules.iter().collect();
    order.sort_by_key(|m| rank(m));
    let state = Mutex::new(progress);
    let changed = Condvar::new();
    let errors = Mutex::new(Vec::new());
    let total = manifest.modules.len();

    std::thread::scope(|scope| {
        for _ in 0..workers.max(1).min(total.max(1)) {
            scope.spawn(|| {
                loop {
                    // Pick the first module whose dependencies are all loaded.
                    let next = {
                        let Ok(mut p) = state.lock() else { return };
                        loop {
                            if p.done.len() + p.failed.len() == total {
                                return;
                            }
                            let ready = order.iter().copied().find(|m| {
                                !p.started.contains(&m.name)
                                    && m.deps
                                        .iter()
                                        .all(|d| p.done.contains(d) || p.failed.contains_key(d))
                            });
                            if let Some(m) = ready {
                                p.started.insert(m.name.clone());
                                if let Some(dep) = m.deps.iter().find(|d| p.failed.contains_key(*d))
                                {
                                    p.failed.insert(m.name.clone(), dep.clone());
                                    if let Ok(mut e) = errors.lock() {
                                        e.push(KmodError::Skipped {
                                            name: m.name.clone(),
                                            dep: dep.clone(),
                                        });
                                    }
                                    changed.notify_all();
                                    continue;
                                }
                                break m;
                            }
                            p = match changed.wait(p) {
                                Ok(p) => p,
                                Err(_) => return,
                            };
                        }
                    };
                    let result = load_one(next);
                    log::debug!(
                        "module {}: {}",
                        next.name,
                        if result.is_ok() { "loaded" } else { "failed" }
                    );
                    let Ok(mut p) = state.lock() else { return };
                    match result {
                        Ok(()) => {
                            p.done.insert(next.name.clone());
                        }
                        Err(e) => {
                            p.failed.insert(next.name.clone(), String::new());
                            if let Ok(mut errs) = errors.lock() {
                                errs.push(e);
                            }
                        }
                    }
                    changed.notify_all();
                }
            });
        }
    });
    let mut errors = errors.into_inner().unwrap_or_default();
    // Report the root cause, not the modules skipped because of it.
    errors.sort_by_key(|e| matches!(e, KmodError::Skipped { .. }));
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, path: &str, cpu: &[&str]) -> ManifestModule {
        ManifestModule {
            name: name.into(),
            path: path.into(),
            deps: Vec::new(),
            cpu: cpu.iter().map(|c| c.to_string()).collect(),
        }
    }

    const VIA: &str = "cpu:type:x86,ven0005fam0006mod000F:feature:,0000,00A6,00A7";
    const INTEL: &str = "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0089,0094,0099,009C";

    #[test]
    fn cpu_feature_modules_load_only_on_matching_cpus() {
        let padlock = module(
            "padlock_aes",
            "x/padlock-aes.ko",
            &["cpu:type:x86,ven*fam*mod*:feature:*00A6*"],
        );
        let aesni = module(
            "aesni_intel",
            "x/aesni-intel.ko",
            &["cpu:type:x86,ven*fam*mod*:feature:*0099*"],
        );
        let plain = module("dm_mod", "x/dm-mod.ko", &[]);
        assert!(!for_this_cpu(&padlock, Some(INTEL)));
        assert!(for_this_cpu(&padlock, Some(VIA)));
        assert!(for_this_cpu(&aesni, Some(INTEL)));
        assert!(!for_this_cpu(&aesni, Some(VIA)));
        assert!(for_this_cpu(&plain, Some(INTEL)));
        // Unknown CPU: load everything, as before.
        assert!(for_this_cpu(&padlock, None));
    }

    #[test]
    fn glob_is_fnmatch() {
        assert!(glob_match("a*b", "ab"));
        assert!(glob_match("a*b", "axxb"));
        assert!(!glob_match("a*b", "axxbc"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("v[0-9]x", "v7x"));
        assert!(!glob_match("v[!0-9]x", "v7x"));
        assert!(glob_match("*0099*", ",0000,0099,00A6"));
        assert!(!glob_match("*0099*", ",0000,0098,00A6"));
        assert!(glob_match("a[", "a["));
        assert!(glob_match("*[]]", "x]"));
    }

    #[test]
    fn drivers_then_crypto_then_the_rest() {
        let d = module(
            "virtio_blk",
            "lib/modules/6.1/kernel/drivers/block/virtio_blk.ko",
            &[],
        );
        let c = module("xts", "lib/modules/6.1/kernel/crypto/xts.ko", &[]);
        let a = module(
            "aesni_intel",
            "lib/modules/6.1/kernel/arch/x86/crypto/aesni-intel.ko",
            &[],
        );
        let f = module("btrfs", "lib/modules/6.1/kernel/fs/btrfs/btrfs.ko", &[]);
        assert!(rank(&d) < rank(&c));
        assert_eq!(rank(&c), rank(&a));
        assert!(rank(&a) < rank(&f));
    }
}
