//! The boot executor: reads the resolved config, makes the plan, and runs it
//! step by step through `sys`, timing each phase. On failure it reports what
//! failed and where, then applies the failure policy; it never returns from
//! PID 1 (that would panic the kernel).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmdline::KernelCmdline;
use crate::config::GuardPolicy;
use crate::config::{self, ConfigError, FailurePolicy};
use crate::modules::{MANIFEST_PATH, ModuleManifest};
use crate::plan::{self, Discovered, Phase, Plan, SYSROOT, Step, Volume};
use crate::status::{self, BootRecord, PhaseTime, StepRecord, VolumeRecord};
use crate::sys::blockdev::{Devices, Missing};
use crate::sys::kmod::{self, KmodError};
use crate::sys::luks;
use crate::sys::mount::{self, MountError, Mounted};
use crate::sys::persist::{self, Outcome as PersistOutcome};
use crate::sys::rollback::{self as rollback_run, Outcome};
use crate::sys::switch_root::{self, SwitchRootError};
use crate::sys::{apifs, power};
use crate::unlock::AskMode;

/// Where the initrd builder puts the resolved config.
pub const CONFIG_PATHS: [&str; 2] = ["/etc/ember/config.json", "/etc/ember/config.toml"];

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot mount the API filesystem {target}: {source}")]
    ApiMount {
        target: String,
        source: std::io::Error,
    },
    #[error("no config found in the initrd (looked for {})", CONFIG_PATHS.join(", "))]
    NoConfig,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read the module manifest {MANIFEST_PATH}: {reason}")]
    Manifest { reason: String },
    #[error(transparent)]
    Modules(#[from] KmodError),
    #[error("{0}")]
    DeviceTimeout(Missing),
    #[error("{field}: device {device} vanished before it could be used")]
    DeviceGone { field: String, device: String },
    #[error(transparent)]
    Unlock(#[from] crate::unlock::UnlockError),
    #[error("{field}: cannot mount subvolume `{subvolume}` of {device} at {target}: {source}")]
    Mount {
        field: String,
        subvolume: String,
        device: String,
        target: String,
        source: Box<MountError>,
    },
    #[error(transparent)]
    SwitchRoot(#[from] SwitchRootError),
    #[error("{field}: {reason}; stopping (on_guard_failure = stop)")]
    RollbackStopped { field: String, reason: String },
}

/// Time spent per phase, for the one-line summary.
#[derive(Default)]
struct Timings {
    phases: BTreeMap<Phase, Duration>,
}

impl Timings {
    fn add(&mut self, phase: Phase, d: Duration) {
        *self.phases.entry(phase).or_default() += d;
    }

    fn summary(&self, total: Duration, kernel_at_start: Duration, refused: usize) -> String {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut parts: Vec<String> = [
            Phase::Modules,
            Phase::Devices,
            Phase::Unlock,
            Phase::Rollback,
            Phase::Mount,
            Phase::Persist,
        ]
        .iter()
        .map(|p| {
            let mut part = format!(
                "{} {}",
                p.name(),
                ms(self.phases.get(p).copied().unwrap_or_default())
            );
            // The key derivation is the part of an unlock that is slow by design.
            let (pbkdf, calls) = crate::sys::perf::pbkdf();
            if *p == Phase::Unlock && calls > 0 {
                part.push_str(&format!(" (pbkdf {})", ms(pbkdf)));
            }
            part
        })
        .collect();
        parts.push(format!("total {}", ms(total)));
        // Inside mount(2) and friends, in whatever phase: unavoidable work.
        let (in_mount, mount_calls) = crate::sys::perf::mount_syscalls();
        parts.push(format!(
            "in mount syscalls {} ({mount_calls} calls)",
            ms(in_mount)
        ));
        let mut line = format!(
            "boot summary: {} (started {} after kernel start)",
            parts.join(", "),
            ms(kernel_at_start)
        );
        line.push_str(&format!(
            "; peak RSS {} KiB without the PBKDF's memory, {} KiB with it",
            crate::sys::perf::peak_rss_outside_pbkdf_kib(),
            crate::sys::perf::peak_rss_kib()
        ));
        if refused > 0 {
            line.push_str(&format!("; {refused} persisted path(s) refused, see above"));
        }
        line
    }
}

/// Time since the kernel started (CLOCK_BOOTTIME), for the summary.
fn since_kernel_start() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn running_kernel() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// Finds the config the builder installed.
pub fn find_config() -> Option<PathBuf> {
    CONFIG_PATHS.iter().map(PathBuf::from).find(|p| p.exists())
}

fn read_manifest(path: &Path) -> Result<Option<ModuleManifest>, BootError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| BootError::Manifest {
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BootError::Manifest {
            reason: e.to_string(),
        }),
    }
}

/// State carried across steps of one attempt.
struct Executor {
    devices: Option<Devices>,
    timings: Timings,
    refused: usize,
    started: Instant,
    kernel_at_start: Duration,
    init_args: Vec<String>,
    manifest: Option<ModuleManifest>,
    /// Set when a hibernation image may be waiting: no rollback may run.
    rollback_blocked: Option<String>,
    /// Top-level mounts of rolled-back filesystems, kept until each
    /// filesystem's first subvolume is mounted (see `sys::rollback`).
    held_tops: Vec<(config::DeviceSpec, crate::sys::btrfs::TopLevel)>,
    /// Whether ember is the initrd's init (only then may it trigger a resume).
    as_init: bool,
    /// Where the new root is assembled (`/sysroot`; `/mnt-root` in NixOS's scripted stage 1).
    sysroot: String,
    /// `ember persist --dry-run`: report each entry's state, change nothing.
    persist_dry_run: bool,
    /// Where passphrases come from.
    ask: AskMode,
    /// The plan's volumes, so a typed passphrase can be tried on the later ones.
    volumes: Vec<Volume>,
    /// What this attempt did, for `ember status` (written to /run/ember).
    record: BootRecord,
}

impl Executor {
    /// Applies `on_guard_failure` to a rollback that did not happen.
    fn rollback_not_done(
        &self,
        field: &str,
        reason: String,
        policy: GuardPolicy,
    ) -> Result<(), BootError> {
        match policy {
            GuardPolicy::Continue => {
                log::error!("{field}: {reason}; booting the existing root without rollback");
                Ok(())
            }
            GuardPolicy::Stop => Err(BootError::RollbackStopped {
                field: field.to_string(),
                reason,
            }),
        }
    }

    fn resume(&mut self, spec: &str) {
        let path = match config::DeviceSpec::parse(spec) {
            Ok(d) => self.devices().resolve(&d),
            Err(_) => resume_by_number(spec),
        };
        let Some(path) = path else {
            self.rollback_blocked = Some(format!(
                "resume={spec} is on the kernel command line but that device is not present, so a hibernation image cannot be ruled out"
            ));
            return;
        };
        match crate::sys::resume::image_present(&path) {
            Ok(false) => log::info!("no hibernation image on {path}"),
            Ok(true) => {
                if self.as_init {
                    log::info!("hibernation image on {path}: resuming");
                    if let Err(e) = crate::sys::resume::request_resume(&path) {
                        log::error!("resume from {path} failed: {e}");
                    }
                }
                // Still here: the image was not resumed (or systemd will do it).
                self.rollback_blocked = Some(format!(
                    "a hibernation image is on {path} (resume={spec}); the resume must happen before the root may be touched"
                ));
            }
            Err(e) => {
                self.rollback_blocked = Some(format!(
                    "cannot read resume device {path} ({e}); a hibernation image cannot be ruled out"
                ));
            }
        }
    }

    fn rollback(
        &mut self,
        field: &str,
        device: &config::DeviceSpec,
        rb: &config::Rollback,
        fs_options: &[String],
        dry_run: bool,
        pause_after: Option<usize>,
    ) -> Result<(), BootError> {
        if let Some(reason) = self.rollback_blocked.clone() {
            return self.rollback_not_done(field, reason, rb.on_guard_failure);
        }
        let Some(path) = self.devices().resolve(device) else {
            return self.rollback_not_done(
                field,
                format!("device {device} is not present"),
                rb.on_guard_failure,
            );
        };
        let identity = match crate::sys::btrfs::identity(&path) {
            Ok(id) => (Some(id.uuid), id.label),
            Err(e) => {
                log::warn!("cannot read the Btrfs superblock of {path}: {e}");
                (None, None)
            }
        };
        match rollback_run::run(
            &path,
            device,
            rb,
            identity,
            fs_options,
            dry_run,
            pause_after,
        ) {
            Ok(Outcome::Done { actions, took, top }) => {
                self.held_tops.push((device.clone(), top));
                log::info!(
                    "rolled back subvolume {} of {device} in {}ms ({} steps)",
                    rb.subvolume.trim_matches('/'),
                    took.as_millis(),
                    actions.len()
                );
                Ok(())
            }
            Ok(Outcome::DryRun { actions }) => {
                log::info!(
                    "rollback dry run (ember.rollback=dry-run): would do {} steps:",
                    actions.len()
                );
                for (i, a) in actions.iter().enumerate() {
                    log::info!("  {}. {a}", i + 1);
                }
                Ok(())
            }
            Err(e) => self.rollback_not_done(field, format!("rollback {e}"), rb.on_guard_failure),
        }
    }

    fn new(as_init: bool, sysroot: &str, init_args: Vec<String>) -> Executor {
        Executor {
            devices: None,
            timings: Timings::default(),
            refused: 0,
            started: Instant::now(),
            kernel_at_start: since_kernel_start(),
            init_args,
            manifest: None,
            rollback_blocked: None,
            held_tops: Vec::new(),
            as_init,
            sysroot: sysroot.to_string(),
            persist_dry_run: false,
            ask: AskMode::Console,
            volumes: Vec::new(),
            record: BootRecord::default(),
        }
    }

    /// Starts a new attempt's record.
    fn begin(&mut self, plan: &Plan, attempt: u32) {
        self.volumes = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Unlock(v) => Some((**v).clone()),
                _ => None,
            })
            .collect();
        self.record = BootRecord {
            ember_version: env!("CARGO_PKG_VERSION").to_string(),
            attempt,
            started_after_kernel_ms: self.kernel_at_start.as_millis() as u64,
            outcome: "running".into(),
            warnings: plan.warnings.clone(),
            ..BootRecord::default()
        };
    }

    /// Writes the record to `/run/ember/last-boot.json` (best effort).
    fn write_record(&mut self, outcome: &str, error: Option<String>, policy: Option<String>) {
        let r = &mut self.record;
        r.outcome = outcome.to_string();
        r.error = error;
        r.policy = policy;
        r.total_ms = self.started.elapsed().as_millis() as u64;
        r.persist_refused = self.refused;
        r.phases = Phase::ALL
            .iter()
            .filter_map(|p| {
                self.timings.phases.get(p).map(|d| PhaseTime {
                    phase: p.name().to_string(),
                    ms: d.as_millis() as u64,
                })
            })
            .collect();
        let path = Path::new(status::LAST_BOOT_PATH);
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&*r).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            log::debug!("cannot write {}: {e}", path.display());
        }
    }

    fn record_step(&mut self, step: &Step, took: Duration, ok: bool) {
        self.record.steps.push(StepRecord {
            step: step.to_string(),
            phase: step.phase().name().to_string(),
            ms: took.as_millis() as u64,
            ok,
        });
    }

    fn devices(&mut self) -> &mut Devices {
        // Only the initrd's init creates /dev/disk links (no udev there);
        // under systemd or in a running system udev owns them.
        let make_links = self.as_init;
        self.devices
            .get_or_insert_with(|| Devices::start(make_links))
    }

    fn run(&mut self, plan: &Plan) -> Result<(), BootError> {
        for step in &plan.steps {
            // Modules only needed to mount (Btrfs and its libraries) load in
            // the background while the volumes unlock; later steps wait here.
            if step.phase() > Phase::Unlock {
                let t = Instant::now();
                kmod::wait_background()?;
                self.timings.add(Phase::Modules, t.elapsed());
            }
            let t = Instant::now();
            let result = self.step(step);
            self.timings.add(step.phase(), t.elapsed());
            // The switch-root step records itself before handing over.
            match step {
                Step::SwitchRoot { .. } => {
                    if result.is_err() {
                        let text = step.to_string();
                        match self.record.steps.last_mut() {
                            Some(last) if last.step == text => last.ok = false,
                            _ => self.record_step(step, t.elapsed(), false),
                        }
                    }
                }
                _ => self.record_step(step, t.elapsed(), result.is_ok()),
            }
            result?;
        }
        Ok(())
    }

    fn step(&mut self, step: &Step) -> Result<(), BootError> {
        match step {
            Step::MountApiFilesystems => apifs::mount_all()
                .map_err(|(target, source)| BootError::ApiMount { target, source }),
            Step::LoadModules { modules } => {
                // Listen for devices first: the disks the modules bring up
                // are probed while the other modules load.
                self.devices();
                let Some(manifest) = &self.manifest else {
                    return Ok(());
                };
                let t = Instant::now();
                let n = kmod::load_all(manifest, &running_kernel(), 4)?;
                log::info!("loaded {n} kernel modules in {}ms", t.elapsed().as_millis());
                debug_assert_eq!(n, modules.len());
                Ok(())
            }
            Step::WaitForDevices {
                devices,
                timeout_secs,
            } => {
                let t = Instant::now();
                let found = self
                    .devices()
                    .wait_for(devices, Duration::from_secs(u64::from(*timeout_secs)))
                    .map_err(BootError::DeviceTimeout)?;
                for (w, path) in devices.iter().zip(&found) {
                    log::info!(
                        "found {} at {path} after {}ms",
                        w.spec,
                        t.elapsed().as_millis()
                    );
                }
                Ok(())
            }
            Step::Unlock(v) => self.unlock(v),
            Step::Resume { spec } => {
                self.resume(spec);
                Ok(())
            }
            Step::Rollback {
                field,
                device,
                rollback,
                fs_options,
                dry_run,
                pause_after,
            } => self.rollback(field, device, rollback, fs_options, *dry_run, *pause_after),
            Step::RollbackRefused {
                field,
                reasons,
                policy,
            } => self.rollback_not_done(
                field,
                format!("refused, nothing changed: {}", reasons.join("; ")),
                *policy,
            ),
            Step::MountSubvolume {
                field,
                device,
                subvolume,
                mount_point,
                options,
            } => {
                let path = self
                    .devices()
                    .resolve(device)
                    .ok_or_else(|| BootError::DeviceGone {
                        field: field.clone(),
                        device: device.to_string(),
                    })?;
                let target = mount_point.under(&self.sysroot);
                let mounted =
                    mount::mount_subvolume(&path, &self.sysroot, mount_point, subvolume, options);
                // The filesystem is now held by a mount of its own (or the
                // boot will not go on): its top-level mount can go.
                self.held_tops.retain(|(d, _)| d != device);
                match mounted {
                    Ok(Mounted::Now) => {
                        log::info!(
                            "mounted subvolume {subvolume} of {path} at {target} ({})",
                            options.join(",")
                        );
                        Ok(())
                    }
                    Ok(Mounted::Already) => {
                        log::info!("{target} is already mounted; leaving it");
                        Ok(())
                    }
                    Err(source) => Err(BootError::Mount {
                        field: field.clone(),
                        subvolume: subvolume.clone(),
                        device: path,
                        target,
                        source: Box::new(source),
                    }),
                }
            }
            Step::Persist(entry) => {
                let (field, target) = (&entry.field, &entry.path);
                let source = entry.root.join(entry.path.as_str());
                let kind = entry.kind.as_str();
                if self.persist_dry_run {
                    let state = persist::inspect(&self.sysroot, entry);
                    println!(
                        "{field}: {kind} {source} -> {target} ({}): {state}",
                        entry.method.as_str()
                    );
                    if matches!(state, persist::State::Refused(_)) {
                        self.refused += 1;
                    }
                    return Ok(());
                }
                match persist::apply(&self.sysroot, entry) {
                    Ok(PersistOutcome::Bound) => {
                        log::info!("persisted {kind} {target} from {source}")
                    }
                    Ok(PersistOutcome::Linked) => log::info!("linked {kind} {target} to {source}"),
                    Ok(PersistOutcome::AlreadyBound) => {
                        log::info!("{target} is already bound from {source}")
                    }
                    Ok(PersistOutcome::AlreadyLinked) => {
                        log::info!("{target} already links to {source}")
                    }
                    // One refused entry must not stop the boot: skip it, loudly.
                    Err(e) => {
                        self.refused += 1;
                        log::error!("{field}: not persisting {target}: {e}");
                    }
                }
                Ok(())
            }
            Step::SwitchRoot { init } => {
                // Let the device prober finish (every /dev/disk link made) and stop.
                self.devices = None;
                self.held_tops.clear();
                // switch_root() checks the init before anything irreversible.
                self.timings.add(Phase::SwitchRoot, Duration::ZERO);
                log::info!(
                    "{}",
                    self.timings.summary(
                        self.started.elapsed(),
                        self.kernel_at_start,
                        self.refused
                    )
                );
                if let Some(stages) = crate::sys::perf::crypt_stages_summary() {
                    log::info!("unlock stages (libcryptsetup): {stages}");
                }
                log::info!("switching root to {}, exec {init}", self.sysroot);
                self.record_step(step, Duration::ZERO, true);
                self.write_record("switching root", None, None);
                let err = match switch_root::switch_root(&self.sysroot, init, &self.init_args) {
                    Ok(never) => match never {},
                    Err(e) => e,
                };
                Err(err.into())
            }
        }
    }

    fn unlock(&mut self, v: &Volume) -> Result<(), BootError> {
        let t = Instant::now();
        let mut rec = VolumeRecord {
            name: v.name.clone(),
            device: v.device.to_string(),
            ..VolumeRecord::default()
        };
        if luks::is_active(&v.name) {
            match self.record.volumes.iter().find(|r| r.name == v.name) {
                Some(r) if r.opened_with.is_some() => log::info!(
                    "/dev/mapper/{} is open (the passphrase typed for {} fitted)",
                    v.name,
                    r.opened_with.as_deref().unwrap_or_default()
                ),
                _ => {
                    log::info!("/dev/mapper/{} is already open; leaving it", v.name);
                    rec.key = "already open".into();
                    self.record.volumes.push(rec);
                }
            }
            self.devices().scan();
            return Ok(());
        }
        let path = self
            .devices()
            .resolve(&v.device)
            .ok_or_else(|| BootError::DeviceGone {
                field: v.field.clone(),
                device: v.device.to_string(),
            })?;
        rec.path = path.clone();
        if let Some(holder) = luks::holder_of(&path) {
            log::warn!(
                "{}: {} ({path}) is already open as /dev/mapper/{holder}; not opening it again as {}",
                v.field,
                v.device,
                v.name
            );
            rec.key = format!("already open as {holder}");
            self.record.volumes.push(rec);
            return Ok(());
        }
        // Later volumes that take a passphrase: a typed one is tried on them too.
        let volumes = std::mem::take(&mut self.volumes);
        let later: Vec<(&Volume, String)> = volumes
            .iter()
            .skip_while(|o| o.name != v.name)
            .skip(1)
            .filter(|o| o.has_passphrase() && !luks::is_active(&o.name))
            .filter_map(|o| self.devices().resolve(&o.device).map(|p| (o, p)))
            .collect();
        let others: Vec<crate::unlock::Target<'_>> = later
            .iter()
            .map(|(o, p)| crate::unlock::Target {
                volume: o,
                path: p.clone(),
            })
            .collect();
        let make_links = self.as_init;
        let mut ctx = crate::unlock::Context {
            devices: self
                .devices
                .get_or_insert_with(|| Devices::start(make_links)),
            ask: &self.ask,
            manifest: self.manifest.as_ref(),
        };
        let target = crate::unlock::Target {
            volume: v,
            path: path.clone(),
        };
        let result = crate::unlock::open_volume(&mut ctx, &target, &others);
        drop(others);
        drop(later);
        self.volumes = volumes;
        let unlocked = result?;
        let o = unlocked.opened;
        let mut line = format!(
            "unlocked {} ({path}) as /dev/mapper/{} with {} in {}ms (keyslot {}",
            v.device,
            v.name,
            unlocked.key,
            t.elapsed().as_millis(),
            o.keyslot
        );
        if o.tried > 1 {
            line.push_str(&format!(", {} keyslots tried", o.tried));
            if !unlocked.hinted {
                let f = &unlocked.key_field;
                let advice = if f.starts_with("rd.luks") {
                    format!("rd.luks.options=key-slot={}", o.keyslot)
                } else if f.contains(".keys[") {
                    format!("`keyslot = {}` on {f}", o.keyslot)
                } else {
                    format!("a `keyslot = {}` hint in {}.keys", o.keyslot, v.field)
                };
                line.push_str(&format!("; {advice} would try it first"));
            }
        }
        line.push(')');
        log::info!("{line}");
        rec.key = unlocked.key.clone();
        rec.key_field = unlocked.key_field.clone();
        rec.keyslot = Some(o.keyslot);
        rec.keyslots_tried = o.tried;
        rec.ms = t.elapsed().as_millis() as u64;
        self.record.volumes.push(rec);
        for (name, other) in &unlocked.also_opened {
            let ov = self.volumes.iter().find(|x| x.name == *name);
            self.record.volumes.push(VolumeRecord {
                name: name.clone(),
                device: ov.map(|x| x.device.to_string()).unwrap_or_default(),
                path: ov
                    .and_then(|x| self.devices.as_ref()?.resolve(&x.device))
                    .unwrap_or_default(),
                key: unlocked.key.clone(),
                key_field: unlocked.key_field.clone(),
                keyslot: Some(other.keyslot),
                keyslots_tried: other.tried,
                ms: other.took.as_millis() as u64,
                opened_with: Some(v.name.clone()),
            });
        }
        // The new mapper device carries the filesystem: probe it now.
        self.devices().scan();
        Ok(())
    }
}

/// `resume=MAJOR:MINOR`: the device node for that number, via sysfs.
fn resume_by_number(spec: &str) -> Option<String> {
    let (major, minor) = spec.split_once(':')?;
    let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| format!("/dev/{n}"))
}

/// Loads config and manifest and makes the plan; mounts the API
/// filesystems first because the kernel command line lives in /proc.
/// The running kernel's command line (empty if /proc is not mounted).
pub fn running_cmdline() -> KernelCmdline {
    KernelCmdline::from_bytes(&std::fs::read("/proc/cmdline").unwrap_or_default())
}

fn prepare(exec: &mut Executor) -> Result<Plan, (BootError, FailurePolicy)> {
    let early_policy = FailurePolicy::Rescue;
    apifs::mount_all()
        .map_err(|(target, source)| (BootError::ApiMount { target, source }, early_policy))?;
    let cmdline = running_cmdline();
    if cmdline.debug {
        log::set_max_level(log::LevelFilter::Debug);
    }
    if exec.as_init {
        crate::sys::kmsg::set_quiet(cmdline.quiet);
    }
    let policy = cmdline.on_failure.unwrap_or(early_policy);
    let path = find_config().ok_or((BootError::NoConfig, policy))?;
    let checked = config::load_for_boot(&path).map_err(|e| (e.into(), policy))?;
    let policy = cmdline.on_failure.unwrap_or(checked.config.on_failure);
    exec.manifest = read_manifest(Path::new(MANIFEST_PATH)).map_err(|e| (e, policy))?;
    let discovered = Discovered {
        rollback_refusals: checked.rollback_refusals.clone(),
        modules: exec
            .manifest
            .as_ref()
            .map(|m| m.modules.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default(),
    };
    let plan = plan::plan(&checked.config, &cmdline, &discovered);
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    log::debug!("plan:\n{plan}");
    Ok(plan)
}

/// The initrd's /init. Never returns.
pub fn run_as_init(init_args: Vec<String>) -> ! {
    crate::sys::kmsg::KmsgLogger::install(log::LevelFilter::Info, true);
    luks::route_library_log();
    let mut exec = Executor::new(true, SYSROOT, init_args);
    log::info!("ember {} starting", env!("CARGO_PKG_VERSION"));
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let (error, policy) = match prepare(&mut exec) {
            Ok(plan) => {
                exec.begin(&plan, attempt);
                match exec.run(&plan) {
                    Ok(()) => (
                        BootError::SwitchRoot(SwitchRootError::Syscall {
                            step: "plan ended without switching root",
                            source: std::io::Error::other("no switch-root step"),
                        }),
                        plan.on_failure,
                    ),
                    Err(e) => (e, plan.on_failure),
                }
            }
            Err(pair) => pair,
        };
        log::error!("boot failed: {error}");
        // `retry` runs the boot again a few times, then falls back to rescue.
        let retry = policy == FailurePolicy::Retry && attempt <= FailurePolicy::RETRY_ROUNDS;
        let policy = match policy {
            FailurePolicy::Retry if !retry => {
                log::error!("the boot failed {attempt} times; giving up retrying");
                FailurePolicy::Rescue
            }
            p => p,
        };
        let then = match policy {
            FailurePolicy::Retry => format!(
                "retry in {}s (attempt {} of {})",
                FailurePolicy::RETRY_PAUSE_SECS,
                attempt + 1,
                FailurePolicy::RETRY_ROUNDS + 1
            ),
            FailurePolicy::Rescue if power::has_rescue_shell() => "rescue shell".into(),
            FailurePolicy::Rescue | FailurePolicy::Halt => "halt".into(),
            FailurePolicy::Reboot => "reboot".into(),
            FailurePolicy::Poweroff => "power off".into(),
        };
        exec.write_record("failed", Some(error.to_string()), Some(then));
        match policy {
            FailurePolicy::Retry => {
                log::error!(
                    "retrying the boot in {}s (attempt {} of {})",
                    FailurePolicy::RETRY_PAUSE_SECS,
                    attempt + 1,
                    FailurePolicy::RETRY_ROUNDS + 1
                );
                std::thread::sleep(Duration::from_secs(FailurePolicy::RETRY_PAUSE_SECS));
                exec.timings = Timings::default();
                exec.started = Instant::now();
                continue;
            }
            FailurePolicy::Rescue if power::has_rescue_shell() => {
                if power::run_rescue_shell() {
                    log::info!("retrying the boot");
                    exec.timings = Timings::default();
                    exec.started = Instant::now();
                    continue;
                }
                power::halt_forever()
            }
            FailurePolicy::Rescue | FailurePolicy::Halt => {
                if policy == FailurePolicy::Rescue {
                    log::error!("no rescue shell in this initrd ({})", power::RESCUE_SHELL);
                }
                power::halt_forever()
            }
            FailurePolicy::Reboot => {
                log::error!("rebooting in 10 seconds");
                std::thread::sleep(Duration::from_secs(10));
                power::reboot_now()
            }
            FailurePolicy::Poweroff => power::poweroff_now(),
        }
    }
}

/// What a subcommand (`ember unlock`, `ember rollback`, ...) runs: the steps
/// of the boot plan in `phases`, outside of PID 1 (systemd stage 1, a rescue
/// shell). The kernel command line is honoured as at boot.
pub struct PhaseRun<'a> {
    pub phases: &'a [Phase],
    pub config: Option<&'a Path>,
    pub sysroot: &'a str,
    /// Overrides `ember.rollback=` (for `ember rollback --dry-run`).
    pub rollback_dry_run: bool,
    /// `ember persist --dry-run`.
    pub persist_dry_run: bool,
    /// Where `ember unlock` asks for passphrases.
    pub ask: AskMode,
}

/// Returns how many steps ran and how many persisted entries were refused.
pub fn run_phases(run: &PhaseRun<'_>) -> Result<(usize, usize), BootError> {
    let path = match run.config {
        Some(p) => p.to_path_buf(),
        None => find_config().ok_or(BootError::NoConfig)?,
    };
    let checked = config::load_for_boot(&path)?;
    let mut cmdline = running_cmdline();
    if run.rollback_dry_run {
        cmdline.rollback = crate::cmdline::RollbackSwitch::DryRun;
    }
    // Never pause a rollback outside the boot path.
    cmdline.rollback_pause_after = None;
    let discovered = Discovered {
        modules: Vec::new(),
        rollback_refusals: checked.rollback_refusals.clone(),
    };
    let plan = plan::plan(&checked.config, &cmdline, &discovered);
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    let mut exec = Executor::new(false, run.sysroot, Vec::new());
    exec.persist_dry_run = run.persist_dry_run;
    exec.ask = run.ask.clone();
    exec.manifest = read_manifest(Path::new(MANIFEST_PATH)).unwrap_or(None);
    exec.begin(&plan, 1);
    let mut ran = 0;
    for step in plan
        .steps
        .iter()
        .filter(|s| run.phases.contains(&s.phase()))
    {
        exec.step(step)?;
        ran += 1;
    }
    if exec.refused > 0 {
        log::error!("{} persisted path(s) refused, see above", exec.refused);
    }
    Ok((ran, exec.refused))
}
