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
    let state = Mutex::new(Progress::default());
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
                            let ready = manifest.modules.iter().find(|m| {
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
