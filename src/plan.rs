//! The plan: a pure function from config + kernel command line + what was
//! discovered to the ordered list of steps the executor performs. `ember
//! check` and `--dry-run` print exactly what boot would execute.

use std::fmt;

use crate::cmdline::{KernelCmdline, RollbackSwitch};
use crate::config::validate::{self, MountRef};
use crate::config::{
    AbsPath, Config, DeviceSpec, EntryKind, FailurePolicy, FieldIssue, GuardPolicy, Method,
    PersistDisposition, PersistEntry, Rollback, RollbackStrategy,
};

/// Where the new root is assembled inside the initrd.
pub const SYSROOT: &str = "/sysroot";

/// A device the plan waits for, and the config field that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub spec: DeviceSpec,
    pub field: String,
}

pub use crate::volumes::{KeySource, SlotHint, Volume};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Mount /proc, /sys, /dev (devtmpfs) and /run in the initrd.
    MountApiFilesystems,
    /// Load the kernel modules the initrd builder resolved.
    LoadModules { modules: Vec<String> },
    /// Wait, event-driven, until every device is present.
    WaitForDevices {
        devices: Vec<Wanted>,
        timeout_secs: u32,
    },
    /// Open a LUKS2 volume as /dev/mapper/<name>, trying its key sources in order.
    Unlock(Box<Volume>),
    /// If a hibernation image is on this device, resume from it; if that
    /// does not happen, no rollback may run this boot.
    Resume { spec: String },
    /// Roll a subvolume back (crash-safe; see rollback.rs).
    Rollback {
        field: String,
        device: DeviceSpec,
        rollback: Rollback,
        /// The options this filesystem's first subvolume mount uses. The
        /// rollback's top-level mount is the filesystem's first mount and
        /// stays until that subvolume mount is made, so Btrfs's
        /// filesystem-wide options (`compress=`, `space_cache=`, ...) must
        /// be the ones the subvolumes ask for.
        fs_options: Vec<String>,
        dry_run: bool,
        pause_after: Option<usize>,
    },
    /// A rollback whose guards already failed on the config itself.
    RollbackRefused {
        field: String,
        reasons: Vec<String>,
        policy: GuardPolicy,
    },
    /// Mount one Btrfs subvolume under /sysroot.
    MountSubvolume {
        field: String,
        device: DeviceSpec,
        subvolume: String,
        mount_point: AbsPath,
        options: Vec<String>,
    },
    /// Put a persisted file or directory in place (bind mount or symlink).
    Persist(Box<PersistEntry>),
    /// Move the API filesystems, make /sysroot the root, exec init.
    SwitchRoot { init: AbsPath },
}

/// Facts found at run time that shape the plan.
#[derive(Debug, Default, Clone)]
pub struct Discovered {
    /// Kernel modules to load, in dependency order, as the builder resolved them.
    pub modules: Vec<String>,
    /// Rollback problems found while loading the config at boot
    /// (`config::load_for_boot`): those rollbacks are refused.
    pub rollback_refusals: Vec<FieldIssue>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Decisions worth telling the user about (printed by `check`, logged at boot).
    pub warnings: Vec<String>,
    pub on_failure: FailurePolicy,
}

/// Mounts in the order they must happen: `/` first, then parents before children.
fn mount_order(config: &Config) -> Vec<MountRef<'_>> {
    let mut mounts = validate::mounts(config);
    mounts.sort_by_key(|m| m.subvolume.mount_point.depth());
    mounts
}

fn merged_options(fs_options: &[String], sub_options: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for o in fs_options.iter().chain(sub_options) {
        if !out.contains(o) {
            out.push(o.clone());
        }
    }
    out
}

/// Builds the plan. Assumes a validated config (see `config::check_str`).
pub fn plan(config: &Config, cmdline: &KernelCmdline, discovered: &Discovered) -> Plan {
    let mut steps = vec![Step::MountApiFilesystems];
    let mut warnings: Vec<String> = validate::validate(config)
        .warnings
        .iter()
        .map(|w| w.to_string())
        .collect();
    warnings.extend(
        cmdline
            .ignored
            .iter()
            .map(|i| format!("kernel command line: ignored {i}")),
    );

    if !discovered.modules.is_empty() {
        steps.push(Step::LoadModules {
            modules: discovered.modules.clone(),
        });
    }
    let timeout_secs = cmdline
        .device_timeout_secs
        .unwrap_or(config.device_timeout_secs);

    // The config's volumes with rd.luks.* applied (the command line wins).
    let (volumes, luks_warnings) = crate::volumes::volumes(config, &cmdline.luks);
    warnings.extend(luks_warnings);
    let luks_devices: Vec<Wanted> = volumes
        .iter()
        .map(|v| Wanted {
            spec: v.device.clone(),
            field: if v.field.starts_with("luks[") {
                format!("{}.device", v.field)
            } else {
                v.field.clone()
            },
        })
        .collect();
    if !luks_devices.is_empty() {
        steps.push(Step::WaitForDevices {
            devices: luks_devices,
            timeout_secs,
        });
    }
    for v in &volumes {
        steps.push(Step::Unlock(Box::new(v.clone())));
    }

    // Filesystem devices that no unlock step produces must be waited for too
    // (a plain partition, or a label inside an unlocked volume).
    let opened: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    let fs_devices: Vec<Wanted> = config
        .btrfs
        .iter()
        .enumerate()
        .filter(|(_, fs)| !fs.device.mapper_name().is_some_and(|n| opened.contains(&n)))
        .map(|(i, fs)| Wanted {
            spec: fs.device.clone(),
            field: format!("btrfs[{i}].device"),
        })
        .collect();
    if !fs_devices.is_empty() {
        steps.push(Step::WaitForDevices {
            devices: fs_devices,
            timeout_secs,
        });
    }

    if let Some(spec) = &cmdline.resume {
        steps.push(Step::Resume { spec: spec.clone() });
    }
    let mounts = mount_order(config);
    for (i, fs) in config.btrfs.iter().enumerate() {
        let Some(rb) = &fs.rollback else { continue };
        let field = format!("btrfs[{i}].rollback");
        let reasons: Vec<String> = discovered
            .rollback_refusals
            .iter()
            .filter(|r| r.field.starts_with(&field))
            .map(|r| r.to_string())
            .collect();
        if cmdline.rollback == RollbackSwitch::Off {
            warnings.push(format!(
                "{field}: skipped for this boot (ember.rollback=0 on the kernel command line)"
            ));
        } else if !reasons.is_empty() {
            steps.push(Step::RollbackRefused {
                field,
                reasons,
                policy: rb.on_guard_failure,
            });
        } else {
            steps.push(Step::Rollback {
                field,
                device: fs.device.clone(),
                rollback: rb.clone(),
                fs_options: mounts
                    .iter()
                    .find(|m| m.field_fs == i)
                    .map(|m| merged_options(&fs.options, &m.subvolume.options))
                    .unwrap_or_else(|| fs.options.clone()),
                dry_run: cmdline.rollback == RollbackSwitch::DryRun,
                pause_after: cmdline.rollback_pause_after,
            });
        }
    }

    for m in mounts {
        let fs = &config.btrfs[m.field_fs];
        steps.push(Step::MountSubvolume {
            field: m.field(),
            device: fs.device.clone(),
            subvolume: m.subvolume.subvol_path().to_string(),
            mount_point: m.subvolume.mount_point.clone(),
            options: merged_options(&fs.options, &m.subvolume.options),
        });
    }

    let mut binds: Vec<_> = validate::persist_entries(config)
        .into_iter()
        .filter(|e| e.disposition == PersistDisposition::Bind)
        .collect();
    binds.sort_by_key(|e| e.path.depth());
    for e in binds {
        steps.push(Step::Persist(Box::new(e)));
    }

    steps.push(Step::SwitchRoot {
        init: cmdline.init.clone().unwrap_or_else(|| config.init.clone()),
    });
    Plan {
        steps,
        warnings,
        on_failure: cmdline.on_failure.unwrap_or(config.on_failure),
    }
}

impl Step {
    /// The phase this step's time is counted under in the boot summary.
    pub fn phase(&self) -> Phase {
        match self {
            Step::MountApiFilesystems => Phase::Setup,
            Step::LoadModules { .. } => Phase::Modules,
            Step::WaitForDevices { .. } => Phase::Devices,
            Step::Unlock { .. } => Phase::Unlock,
            Step::Resume { .. } | Step::Rollback { .. } | Step::RollbackRefused { .. } => {
                Phase::Rollback
            }
            Step::MountSubvolume { .. } => Phase::Mount,
            Step::Persist(_) => Phase::Persist,
            Step::SwitchRoot { .. } => Phase::SwitchRoot,
        }
    }
}

/// Phases the boot summary reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Setup,
    Modules,
    Devices,
    Unlock,
    Rollback,
    Mount,
    Persist,
    SwitchRoot,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Setup,
        Phase::Modules,
        Phase::Devices,
        Phase::Unlock,
        Phase::Rollback,
        Phase::Mount,
        Phase::Persist,
        Phase::SwitchRoot,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Modules => "modules",
            Phase::Devices => "devices",
            Phase::Unlock => "unlock",
            Phase::Rollback => "rollback",
            Phase::Mount => "mount",
            Phase::Persist => "persist",
            Phase::SwitchRoot => "switch-root",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::MountApiFilesystems => write!(f, "mount /proc, /sys, /dev, /run"),
            Step::LoadModules { modules } => {
                write!(
                    f,
                    "load {} kernel modules: {}",
                    modules.len(),
                    modules.join(" ")
                )
            }
            Step::WaitForDevices {
                devices,
                timeout_secs,
            } => {
                let names: Vec<String> = devices
                    .iter()
                    .map(|d| format!("{} ({})", d.spec, d.field))
                    .collect();
                write!(f, "wait up to {timeout_secs}s for {}", names.join(", "))
            }
            Step::Unlock(v) => {
                write!(
                    f,
                    "unlock {} as /dev/mapper/{} with {}",
                    v.device,
                    v.name,
                    crate::volumes::describe_keys(&v.keys)
                )?;
                if v.allow_discards {
                    write!(f, ", allowing discards")?;
                }
                for flag in &v.flags {
                    write!(f, ", {}", flag.name())?;
                }
                Ok(())
            }
            Step::Resume { spec } => write!(
                f,
                "if {spec} holds a hibernation image, resume from it (and never roll back this boot)"
            ),
            Step::Rollback {
                device,
                rollback,
                dry_run,
                ..
            } => {
                let target = rollback.subvolume.trim_matches('/');
                write!(f, "roll back subvolume {target} of {device}: ")?;
                match (rollback.strategy, &rollback.blank_snapshot) {
                    (RollbackStrategy::Blank, Some(b)) => {
                        write!(f, "replace it with a snapshot of {b}")?
                    }
                    (RollbackStrategy::Blank, None) | (RollbackStrategy::Empty, _) => {
                        write!(f, "replace it with an empty subvolume")?
                    }
                    (RollbackStrategy::Archive, blank) => {
                        write!(
                            f,
                            "move it to {}/<last change time>, then start from ",
                            rollback.archive_dir
                        )?;
                        match blank {
                            Some(b) => write!(f, "a snapshot of {b}")?,
                            None => write!(f, "an empty subvolume")?,
                        }
                        if let Some(n) = rollback.keep_count {
                            write!(f, ", keep {n}")?;
                        }
                        if let Some(d) = rollback.keep_days {
                            write!(f, ", keep {d} days")?;
                        }
                    }
                }
                if *dry_run {
                    write!(f, " (dry run: log only)")?;
                }
                Ok(())
            }
            Step::RollbackRefused {
                field,
                reasons,
                policy,
            } => {
                write!(f, "refuse {field}: {}", reasons.join("; "))?;
                match policy {
                    GuardPolicy::Continue => write!(f, " (boot continues without rollback)"),
                    GuardPolicy::Stop => write!(f, " (boot stops: on_guard_failure = stop)"),
                }
            }
            Step::MountSubvolume {
                device,
                subvolume,
                mount_point,
                options,
                ..
            } => {
                write!(
                    f,
                    "mount subvolume {subvolume} of {device} at {}",
                    mount_point.under(SYSROOT)
                )?;
                if !options.is_empty() {
                    write!(f, " ({})", options.join(","))?;
                }
                Ok(())
            }
            Step::Persist(e) => {
                let source = e.root.join(e.path.as_str()).under(SYSROOT);
                let target = e.path.under(SYSROOT);
                match e.method {
                    Method::Bind => write!(f, "bind {} {source} -> {target}", e.kind.as_str())?,
                    Method::Symlink => write!(
                        f,
                        "link {} {target} -> {}",
                        e.kind.as_str(),
                        e.root.join(e.path.as_str())
                    )?,
                }
                let mut notes = Vec::new();
                if !e.options.is_empty() {
                    notes.push(e.options.join(","));
                }
                let default_mode = match e.kind {
                    EntryKind::File => 0o644,
                    EntryKind::Directory => 0o755,
                };
                if e.attr.uid != 0 || e.attr.gid != 0 || e.attr.mode != default_mode {
                    notes.push(format!(
                        "created as {}:{} {:04o}",
                        e.attr.uid, e.attr.gid, e.attr.mode
                    ));
                }
                if !notes.is_empty() {
                    write!(f, " ({})", notes.join("; "))?;
                }
                Ok(())
            }
            Step::SwitchRoot { init } => write!(f, "switch root to {SYSROOT} and exec {init}"),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "{:>3}. {step}", i + 1)?;
        }
        let policy = match self.on_failure {
            FailurePolicy::Rescue => "rescue shell if present, else halt",
            FailurePolicy::Halt => "halt",
            FailurePolicy::Reboot => "reboot",
            FailurePolicy::Poweroff => "power off",
            FailurePolicy::Retry => {
                "retry the boot 3 times, 5s apart, then rescue shell if present, else halt"
            }
        };
        writeln!(f, "on failure: {policy}")?;
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Syntax, check_str};

    const REFERENCE: &str = include_str!("../examples/reference.toml");

    fn reference() -> Config {
        check_str(REFERENCE, Syntax::Toml, "r")
            .expect("valid")
            .config
    }

    fn discovered() -> Discovered {
        Discovered {
            modules: vec!["virtio_blk".into(), "dm_crypt".into(), "btrfs".into()],
            ..Default::default()
        }
    }

    fn with_rollback() -> Config {
        let mut c = reference();
        c.btrfs[0].rollback = Some(Rollback {
            subvolume: "root".into(),
            strategy: RollbackStrategy::Blank,
            blank_snapshot: Some("root-blank".into()),
            filesystem: Some(DeviceSpec::Label("nixos".into())),
            archive_dir: "old_roots".into(),
            keep_days: None,
            keep_count: None,
            on_guard_failure: GuardPolicy::Continue,
        });
        c
    }

    #[test]
    fn rollback_comes_after_unlock_and_resume_before_any_mount() {
        let cmd = KernelCmdline::parse("resume=UUID=1234");
        let p = plan(&with_rollback(), &cmd, &discovered());
        let pos =
            |pred: &dyn Fn(&Step) -> bool| p.steps.iter().position(pred).expect("step present");
        let unlock = pos(&|s| matches!(s, Step::Unlock { .. }));
        let resume = pos(&|s| matches!(s, Step::Resume { .. }));
        let rollback = pos(&|s| matches!(s, Step::Rollback { .. }));
        let mount = pos(&|s| matches!(s, Step::MountSubvolume { .. }));
        assert!(unlock < resume && resume < rollback && rollback < mount);
        // The top-level mount opens the filesystem with the options its
        // first subvolume mount (the root's) would have used.
        let (Step::Rollback { fs_options, .. }, Step::MountSubvolume { options, .. }) =
            (&p.steps[rollback], &p.steps[mount])
        else {
            unreachable!()
        };
        assert_eq!(fs_options, options);
        assert!(fs_options.iter().any(|o| o == "compress=zstd"));
        assert_eq!(
            p.steps[rollback].to_string(),
            "roll back subvolume root of /dev/mapper/cryptroot: replace it with a snapshot of root-blank"
        );
    }

    #[test]
    fn rollback_switches() {
        let p = plan(
            &with_rollback(),
            &KernelCmdline::parse("ember.rollback=0"),
            &discovered(),
        );
        assert!(!p.steps.iter().any(|s| matches!(s, Step::Rollback { .. })));
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("skipped for this boot"))
        );
        let p = plan(
            &with_rollback(),
            &KernelCmdline::parse("ember.rollback=dry-run"),
            &discovered(),
        );
        assert!(
            p.steps
                .iter()
                .any(|s| matches!(s, Step::Rollback { dry_run: true, .. }))
        );
        let mut d = discovered();
        d.rollback_refusals.push(FieldIssue {
            field: "btrfs[0].rollback.subvolume".into(),
            message: "persist inside".into(),
        });
        let p = plan(&with_rollback(), &KernelCmdline::default(), &d);
        assert!(
            p.steps
                .iter()
                .any(|s| matches!(s, Step::RollbackRefused { .. }))
        );
        assert!(!p.steps.iter().any(|s| matches!(s, Step::Rollback { .. })));
    }

    #[test]
    fn reference_plan_in_order() {
        let p = plan(&reference(), &KernelCmdline::default(), &discovered());
        let text: Vec<String> = p.steps.iter().map(|s| s.to_string()).collect();
        let expected = [
            "mount /proc, /sys, /dev, /run",
            "load 3 kernel modules: virtio_blk dm_crypt btrfs",
            "wait up to 30s for LABEL=luks (luks[0].device)",
            "unlock LABEL=luks as /dev/mapper/cryptroot with keyfile /etc/ember/keys/cryptroot.key, allowing discards",
            "mount subvolume root of /dev/mapper/cryptroot at /sysroot (compress=zstd,noatime)",
            "mount subvolume home of /dev/mapper/cryptroot at /sysroot/home (compress=zstd,noatime)",
            "mount subvolume nix of /dev/mapper/cryptroot at /sysroot/nix (compress=zstd,noatime)",
            "mount subvolume persist of /dev/mapper/cryptroot at /sysroot/persist (compress=zstd,noatime)",
            "mount subvolume log of /dev/mapper/cryptroot at /sysroot/var/log (compress=zstd,noatime)",
            "bind file /sysroot/persist/etc/machine-id -> /sysroot/etc/machine-id",
            "bind directory /sysroot/persist/var/lib/systemd -> /sysroot/var/lib/systemd",
            "switch root to /sysroot and exec /nix/store/11111111111111111111111111111111-ember-checker/bin/init",
        ];
        assert_eq!(text, expected);
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("/var/log already lives on subvolume `log`"));
    }

    #[test]
    fn var_log_is_never_bound_over_its_subvolume() {
        let p = plan(&reference(), &KernelCmdline::default(), &discovered());
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s, Step::Persist(e) if e.path.as_str() == "/var/log"))
        );
    }

    #[test]
    fn cmdline_overrides_config() {
        let cmd = KernelCmdline::parse(
            "init=/nix/store/x-nixos/init ember.timeout=7 ember.on_failure=poweroff ember.nope",
        );
        let p = plan(&reference(), &cmd, &Discovered::default());
        assert!(
            matches!(p.steps.last(), Some(Step::SwitchRoot { init }) if init.as_str() == "/nix/store/x-nixos/init")
        );
        assert!(p.steps.iter().any(|s| matches!(
            s,
            Step::WaitForDevices {
                timeout_secs: 7,
                ..
            }
        )));
        assert_eq!(p.on_failure, FailurePolicy::Poweroff);
        assert!(p.warnings.iter().any(|w| w.contains("ember.nope")));
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s, Step::LoadModules { .. }))
        );
    }

    #[test]
    fn passphrase_and_plain_filesystem_device() {
        let text = REFERENCE
            .replace(
                "keyfile = \"/etc/ember/keys/cryptroot.key\"\n",
                "passphrase_tries = 5\n",
            )
            .replace(
                "device = \"/dev/mapper/cryptroot\"",
                "device = \"LABEL=nixos\"",
            );
        let config = check_str(&text, Syntax::Toml, "t").expect("valid").config;
        let p = plan(&config, &KernelCmdline::default(), &Discovered::default());
        assert!(p.steps.iter().any(|s| matches!(
            s,
            Step::Unlock(v) if matches!(v.keys[..], [KeySource::Passphrase { tries: 5, .. }])
        )));
        // The label inside the unlocked volume is waited for after the unlock.
        let unlock = p
            .steps
            .iter()
            .position(|s| matches!(s, Step::Unlock { .. }));
        let wait_fs = p
            .steps
            .iter()
            .rposition(|s| matches!(s, Step::WaitForDevices { .. }));
        assert!(unlock < wait_fs);
    }

    #[test]
    fn mounts_parents_first_whatever_the_config_order() {
        let mut config = reference();
        let root = config.btrfs[0].subvolumes.remove(0);
        config.btrfs[0].subvolumes.push(root);
        let p = plan(&config, &KernelCmdline::default(), &Discovered::default());
        let first_mount = p
            .steps
            .iter()
            .find(|s| matches!(s, Step::MountSubvolume { .. }));
        assert!(
            matches!(first_mount, Some(Step::MountSubvolume { mount_point, .. }) if mount_point.is_root())
        );
    }

    #[test]
    fn rd_luks_options_shape_the_unlock_steps() {
        let p = plan(
            &reference(),
            &KernelCmdline::parse("rd.luks=0"),
            &Discovered::default(),
        );
        assert!(!p.steps.iter().any(|s| matches!(s, Step::Unlock(_))));
        assert!(
            p.steps.iter().any(|s| matches!(
                s,
                Step::WaitForDevices { devices, .. } if devices[0].field == "btrfs[0].device"
            )),
            "with nothing unlocked, the filesystem device is waited for (and named) instead"
        );
        assert!(p.warnings.iter().any(|w| w.contains("rd.luks=0")));

        let u = "0f0e0d0c-0b0a-0908-0706-050403020100";
        let p = plan(
            &reference(),
            &KernelCmdline::parse(&format!(
                "rd.luks.name={u}=cryptroot rd.luks.key=/k.bin:LABEL=usb rd.luks.options=tries=5,no-read-workqueue"
            )),
            &Discovered::default(),
        );
        let text: Vec<String> = p.steps.iter().map(|s| s.to_string()).collect();
        assert!(text.contains(&format!("wait up to 30s for UUID={u} (luks[0].device)")));
        assert!(
            text.contains(&format!(
                "unlock UUID={u} as /dev/mapper/cryptroot with keyfile /k.bin on LABEL=usb, waiting up to 10s for the device, then keyfile /etc/ember/keys/cryptroot.key, allowing discards, no-read-workqueue"
            )),
            "{text:#?}"
        );
    }
}
