//! Loading kernel modules with finit_module(2), independent ones in
//! parallel: a module starts as soon as everything it depends on is in.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};

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
    errors: Vec<KmodError>,
}

/// What the worker threads share: the modules in the order to try them,
/// and how far loading got.
struct Shared {
    modules: Vec<ManifestModule>,
    state: Mutex<Progress>,
    changed: Condvar,
    load: fn(&ManifestModule) -> Result<(), KmodError>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finished(&self, p: &Progress) -> bool {
        p.done.len() + p.failed.len() == self.modules.len()
    }

    /// Takes the first module whose dependencies are all in (or failed:
    /// then it fails too, without being tried). `None` when all are done.
    fn next(&self) -> Option<&ManifestModule> {
        let mut p = self.lock();
        loop {
            if self.finished(&p) {
                return None;
            }
            // Mount-only modules wait until the early ones are all in: on a
            // machine with few CPUs they would otherwise slow down what the
            // unlock waits for (raid6_pq benchmarks with preemption off).
            let early_done = self.modules.iter().all(|m| {
                m.mount_only || p.done.contains(&m.name) || p.failed.contains_key(&m.name)
            });
            let ready = self.modules.iter().find(|m| {
                !p.started.contains(&m.name)
                    && (early_done || !m.mount_only)
                    && m.deps
                        .iter()
                        .all(|d| p.done.contains(d) || p.failed.contains_key(d))
            });
            if let Some(m) = ready {
                p.started.insert(m.name.clone());
                if let Some(dep) = m.deps.iter().find(|d| p.failed.contains_key(*d)) {
                    let dep = dep.clone();
                    p.failed.insert(m.name.clone(), dep.clone());
                    p.errors.push(KmodError::Skipped {
                        name: m.name.clone(),
                        dep,
                    });
                    self.changed.notify_all();
                    continue;
                }
                return Some(m);
            }
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn work(&self) {
        while let Some(m) = self.next() {
            let result = (self.load)(m);
            log::debug!(
                "module {}: {}",
                m.name,
                if result.is_ok() { "loaded" } else { "failed" }
            );
            let mut p = self.lock();
            match result {
                Ok(()) => {
                    p.done.insert(m.name.clone());
                }
                Err(e) => {
                    p.failed.insert(m.name.clone(), String::new());
                    p.errors.push(e);
                }
            }
            drop(p);
            self.changed.notify_all();
        }
    }

    /// Waits until every module `wanted` accepts is loaded or failed.
    fn wait_until_done(&self, wanted: impl Fn(&ManifestModule) -> bool) {
        let mut p = self.lock();
        while self
            .modules
            .iter()
            .filter(|m| wanted(m))
            .any(|m| !p.done.contains(&m.name) && !p.failed.contains_key(&m.name))
        {
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The first error, naming the root cause rather than the modules
    /// skipped because of it.
    fn first_error(&self) -> Option<KmodError> {
        let mut p = self.lock();
        let mut errors = std::mem::take(&mut p.errors);
        errors.sort_by_key(|e| matches!(e, KmodError::Skipped { .. }));
        errors.into_iter().next()
    }
}

/// Modules still loading after [`load_all`] returned: those only needed
/// to mount filesystems.
struct Background {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

static BACKGROUND: Mutex<Option<Background>> = Mutex::new(None);

/// Starts `workers` threads loading `manifest` (CPU-feature drivers for
/// other CPUs skipped) with `load`.
fn start(
    manifest: &ModuleManifest,
    workers: usize,
    load: fn(&ManifestModule) -> Result<(), KmodError>,
) -> (Arc<Shared>, Vec<std::thread::JoinHandle<()>>) {
    let cpu = std::fs::read_to_string(CPU_MODALIAS).ok();
    let mut progress = Progress::default();
    for m in &manifest.modules {
        if !for_this_cpu(m, cpu.as_deref()) {
            log::debug!("module {}: not for this CPU, skipped", m.name);
            progress.started.insert(m.name.clone());
            progress.done.insert(m.name.clone());
        }
    }
    // Ready modules are tried in this order: those needed before the
    // volumes unlock first, by rank; the manifest order within.
    let mut modules = manifest.modules.clone();
    modules.sort_by_key(|m| (m.mount_only, rank(m)));
    let total = modules.len();
    let shared = Arc::new(Shared {
        modules,
        state: Mutex::new(progress),
        changed: Condvar::new(),
        load,
    });
    let mut handles = Vec::new();
    for i in 0..workers.max(1).min(total.max(1)) {
        let s = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name(format!("ember-kmod-{i}"))
            .spawn(move || s.work())
        {
            Ok(h) => handles.push(h),
            Err(e) => log::warn!("cannot start a module loader thread: {e}"),
        }
    }
    if handles.is_empty() {
        // No thread at all: load everything here.
        shared.work();
    }
    (shared, handles)
}

/// Loads the modules of the manifest, independent ones in parallel, those
/// needed before the volumes unlock first. On a machine with more than one
/// CPU it returns once those are in, and the modules only needed to mount
/// filesystems (`mount_only`: Btrfs and its libraries; on real hardware
/// mostly raid6_pq's algorithm benchmark) go on loading in the background
/// while the key derivation runs; [`wait_background`] waits for them. Returns the number of modules, or the
/// first error once the early modules are done (a failed module also fails
/// everything that depends on it; the rest still load).
pub fn load_all(
    manifest: &ModuleManifest,
    running_kernel: &str,
    workers: usize,
) -> Result<usize, KmodError> {
    // A previous attempt's (after a rescue shell): finished by now.
    let _ = wait_background();
    if manifest.kernel_version != running_kernel {
        return Err(KmodError::WrongKernel {
            built: manifest.kernel_version.clone(),
            running: running_kernel.to_string(),
        });
    }
    manifest.check().map_err(KmodError::Manifest)?;
    let background = load_early(manifest, workers, load_one)?;
    // With one CPU, loading in the background would only take the time from
    // the key derivation (and blur what each phase costs): finish here.
    if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        *BACKGROUND.lock().unwrap_or_else(|e| e.into_inner()) = Some(background);
    } else {
        background.finish()?;
    }
    Ok(manifest.modules.len())
}

/// Starts loading and returns once the modules needed before unlocking are
/// in, with the loading still going on.
fn load_early(
    manifest: &ModuleManifest,
    workers: usize,
    load: fn(&ManifestModule) -> Result<(), KmodError>,
) -> Result<Background, KmodError> {
    let (shared, handles) = start(manifest, workers, load);
    shared.wait_until_done(|m| !m.mount_only);
    let background = Background {
        shared: Arc::clone(&shared),
        workers: handles,
    };
    if let Some(e) = shared.first_error() {
        // Something failed: no point in going on; let the rest finish.
        for h in background.workers {
            let _ = h.join();
        }
        return Err(e);
    }
    if !shared.finished(&shared.lock()) {
        log::debug!("loading the modules only needed to mount in the background");
    }
    Ok(background)
}

impl Background {
    fn finish(self) -> Result<(), KmodError> {
        for h in self.workers {
            let _ = h.join();
        }
        match self.shared.first_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Waits for the modules [`load_all`] left loading in the background;
/// returns the first error among them. Nothing to wait for: `Ok`.
pub fn wait_background() -> Result<(), KmodError> {
    let bg = BACKGROUND.lock().unwrap_or_else(|e| e.into_inner()).take();
    bg.map_or(Ok(()), Background::finish)
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
            mount_only: false,
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

    fn manifest(modules: Vec<ManifestModule>) -> ModuleManifest {
        ModuleManifest {
            kernel_version: "6.1.0-test".into(),
            modules,
            builtin: Vec::new(),
        }
    }

    fn m(name: &str, deps: &[&str], mount_only: bool) -> ManifestModule {
        ManifestModule {
            name: name.into(),
            path: format!("lib/modules/6.1.0-test/kernel/x/{name}.ko"),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            cpu: Vec::new(),
            mount_only,
        }
    }

    /// A stand-in for finit_module: slow for the mount-only modules, and
    /// failing for any module named `broken*`.
    fn fake_load(m: &ManifestModule) -> Result<(), KmodError> {
        if m.mount_only {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if m.name.starts_with("broken") {
            return Err(KmodError::Load {
                name: m.name.clone(),
                path: m.path.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENOEXEC),
            });
        }
        Ok(())
    }

    #[test]
    fn returns_when_the_early_modules_are_in_and_finishes_in_the_background() {
        let man = manifest(vec![
            m("dm_mod", &[], false),
            m("dm_crypt", &["dm_mod"], false),
            m("raid6_pq", &[], true),
            m("btrfs", &["raid6_pq"], true),
        ]);
        let t = std::time::Instant::now();
        let bg = load_early(&man, 4, fake_load).unwrap();
        {
            let p = bg.shared.lock();
            assert!(p.done.contains("dm_mod") && p.done.contains("dm_crypt"));
            assert!(
                !p.done.contains("btrfs"),
                "btrfs waited for: {:?}",
                t.elapsed()
            );
        }
        // The mount-only modules started only after the early ones.
        assert!(t.elapsed() < std::time::Duration::from_millis(200));
        bg.finish().unwrap();
        assert!(t.elapsed() >= std::time::Duration::from_millis(400));
    }

    #[test]
    fn an_early_failure_is_reported_at_once_with_its_root_cause() {
        let man = manifest(vec![
            m("broken_mod", &[], false),
            m("dm_crypt", &["broken_mod"], false),
            m("btrfs", &[], true),
        ]);
        let err = load_early(&man, 2, fake_load).err().expect("fails");
        assert!(
            matches!(err, KmodError::Load { ref name, .. } if name == "broken_mod"),
            "{err}"
        );
    }

    #[test]
    fn a_late_failure_is_reported_when_waited_for() {
        let man = manifest(vec![
            m("dm_mod", &[], false),
            m("broken_btrfs", &[], true),
            m("btrfs", &["broken_btrfs"], true),
        ]);
        let bg = load_early(&man, 2, fake_load).unwrap();
        let err = bg.finish().expect_err("fails");
        assert!(
            matches!(err, KmodError::Load { ref name, .. } if name == "broken_btrfs"),
            "{err}"
        );
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
