//! Opening one LUKS volume with its key sources, in the order configured:
//! keyfiles in the initrd or on another device, then a passphrase typed at
//! the console or answered through systemd's password agents. A typed
//! passphrase is also tried on every other volume still waiting for one, so
//! one passphrase opens every volume it fits before anyone is asked again.
//! Key material only ever lives in `Secret` buffers.

use std::path::PathBuf;
use std::time::Duration;

use crate::modules::ModuleManifest;
use crate::plan::Wanted;
use crate::sys::ask_password::{self, Question, Reply};
use crate::sys::blockdev::Devices;
use crate::sys::console;
use crate::sys::keyfile;
use crate::sys::luks::{self, LuksError, Opened};
use crate::sys::secret::Secret;
use crate::volumes::{KeySource, SlotHint, Volume};

/// Where passphrases come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskMode {
    /// The controlling terminal, else /dev/console (the initrd's /init, a rescue shell).
    Console,
    /// systemd's password agents, through this directory (`/run/systemd/ask-password`).
    Agent(PathBuf),
}

impl AskMode {
    /// `ember unlock` without `--ask-password`: a terminal if there is one
    /// (someone typed the command), else the agents if systemd runs them
    /// (ember started as a stage-1 service), else the console.
    pub fn detect() -> AskMode {
        let dir = PathBuf::from(ask_password::ASK_DIR);
        if std::fs::File::open("/dev/tty").is_err() && dir.is_dir() {
            AskMode::Agent(dir)
        } else {
            AskMode::Console
        }
    }

    fn name(&self) -> &'static str {
        match self {
            AskMode::Console => "console",
            AskMode::Agent(_) => "password agent",
        }
    }
}

/// A volume and the device node its spec resolved to.
pub struct Target<'a> {
    pub volume: &'a Volume,
    pub path: String,
}

/// What opening a volume needs besides the volume itself.
pub struct Context<'a> {
    pub devices: &'a mut Devices,
    pub ask: &'a AskMode,
    pub manifest: Option<&'a ModuleManifest>,
}

/// How a volume was opened (for the log and the boot record).
#[derive(Debug, Clone)]
pub struct Unlocked {
    /// The key source that fitted (`keyfile /etc/...`, `a passphrase (console)`).
    pub key: String,
    /// Its config field (`luks[0].keys[1]`).
    pub key_field: String,
    pub hinted: bool,
    pub opened: Opened,
    /// Other volumes the same typed passphrase opened: (name, how).
    pub also_opened: Vec<(String, Opened)>,
}

/// Why a volume stayed closed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error("{field}: {source}")]
    Luks {
        field: String,
        source: Box<LuksError>,
    },
    #[error("{field}: {device} was not unlocked: {}", failures.join("; "))]
    NoKey {
        field: String,
        device: String,
        /// One entry per key source that was tried, in order.
        failures: Vec<String>,
    },
}

/// One key source that did not deliver: why, for the final message.
fn failure(multi: bool, key: &KeySource, why: String) -> String {
    if multi {
        format!("{}: {why}", key.field())
    } else {
        why
    }
}

/// Opens `target`; `others` are the volumes still to be opened later in
/// this boot: a typed passphrase is tried on those that take a passphrase.
pub fn open_volume(
    ctx: &mut Context<'_>,
    target: &Target<'_>,
    others: &[Target<'_>],
) -> Result<Unlocked, UnlockError> {
    let v = target.volume;
    let luks_err = |source| UnlockError::Luks {
        field: v.field.clone(),
        source: Box::new(source),
    };
    // The header first: a damaged one fails with no key asked for.
    let mut header = luks::Volume::load(&target.path).map_err(luks_err)?;
    let flags = luks::flags(v.allow_discards, &v.flags);
    let multi = v.keys.len() > 1;
    let mut failures = Vec::new();
    for (k, key) in v.keys.iter().enumerate() {
        // Said as it happens when another source follows; the final error lists all.
        let gave_up = |why: &str| {
            if k + 1 < v.keys.len() {
                log::warn!("{}: {why}; trying the next key source", key.field());
            }
        };
        match key {
            KeySource::Keyfile { hint, .. } => {
                let secret = match read_key(ctx, key) {
                    Ok(s) => s,
                    Err(why) => {
                        gave_up(&why);
                        failures.push(failure(multi, key, why));
                        continue;
                    }
                };
                match header.open(Some(&v.name), secret.expose(), &flags, *hint, ctx.manifest) {
                    Ok(opened) => {
                        return Ok(Unlocked {
                            key: key.to_string(),
                            key_field: key.field().to_string(),
                            hinted: *hint != SlotHint::None,
                            opened,
                            also_opened: Vec::new(),
                        });
                    }
                    Err(LuksError::WrongKey { device }) => {
                        let why = format!("{key} does not open any keyslot of {device}");
                        gave_up(&why);
                        failures.push(failure(multi, key, why));
                    }
                    Err(e) => return Err(luks_err(e)),
                }
            }
            KeySource::Passphrase {
                tries,
                timeout_secs,
                hint,
                ..
            } => {
                match passphrase(
                    ctx,
                    target,
                    &mut header,
                    others,
                    *tries,
                    timeout_secs.map(|s| Duration::from_secs(u64::from(s))),
                    *hint,
                ) {
                    Ok((opened, also_opened)) => {
                        return Ok(Unlocked {
                            key: format!("a passphrase ({})", ctx.ask.name()),
                            key_field: key.field().to_string(),
                            hinted: *hint != SlotHint::None,
                            opened,
                            also_opened,
                        });
                    }
                    Err(PassphraseError::Luks(e)) => return Err(luks_err(e)),
                    Err(PassphraseError::Gave(why)) => {
                        gave_up(&why);
                        failures.push(failure(multi, key, why));
                    }
                }
            }
        }
    }
    Err(UnlockError::NoKey {
        field: v.field.clone(),
        device: v.device.to_string(),
        failures,
    })
}

/// Reads a keyfile source: from the initrd, or from a device waited for
/// (up to its timeout) and mounted read-only.
fn read_key(ctx: &mut Context<'_>, key: &KeySource) -> Result<Secret, String> {
    let KeySource::Keyfile {
        field,
        path,
        device,
        offset,
        size,
        timeout_secs,
        ..
    } = key
    else {
        return Err("not a keyfile".into());
    };
    let Some(spec) = device else {
        let Some(path) = path else {
            return Err("no keyfile given".into());
        };
        return keyfile::read_file(std::path::Path::new(path.as_str()), *offset, *size)
            .map_err(|e| format!("cannot read keyfile {path}: {e}"));
    };
    let wanted = [Wanted {
        spec: spec.clone(),
        field: format!("{field}.device"),
    }];
    if ctx.devices.resolve(spec).is_none() {
        log::info!(
            target: crate::sys::kmsg::ATTENTION,
            "{field}: waiting up to {timeout_secs}s for key device {spec}"
        );
    }
    let found = ctx
        .devices
        .wait_for(&wanted, Duration::from_secs(u64::from(*timeout_secs)))
        .map_err(|_| format!("key device {spec} did not appear within {timeout_secs}s"))?;
    let node = found.first().cloned().unwrap_or_default();
    let fstype = ctx.devices.find(spec).and_then(|d| d.fstype.clone());
    keyfile::read_on_device(&node, fstype.as_deref(), path.as_ref(), *offset, *size)
        .map_err(|e| format!("cannot read {key} ({node}): {e}"))
}

enum PassphraseError {
    /// Stop: the volume cannot be opened with any key (damaged, no dm-crypt, ...).
    Luks(LuksError),
    /// This source gave up (tries exhausted, timeout, no terminal); the
    /// next source may still work.
    Gave(String),
}

/// Asks once: the candidate passphrases (none if the line was refused).
fn ask(
    ctx: &mut Context<'_>,
    tty: &mut Option<std::fs::File>,
    target: &Target<'_>,
    timeout: Option<Duration>,
) -> Result<Vec<Secret>, String> {
    let v = target.volume;
    match ctx.ask {
        AskMode::Console => {
            if tty.is_none() {
                *tty =
                    Some(console::open_terminal().map_err(|e| {
                        format!("cannot ask for the passphrase of {}: {e}", v.name)
                    })?);
            }
            let t = tty.as_mut().expect("terminal just opened");
            let prompt = format!(
                "Passphrase for {} ({} on {}): ",
                v.name, v.device, target.path
            );
            match console::read_passphrase(t, &prompt, timeout) {
                Ok(Some(s)) => Ok(vec![s]),
                Ok(None) => Err(format!(
                    "cannot ask for the passphrase of {}: the console closed (end of input)",
                    v.name
                )),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    log::warn!("{}: {e}", v.name);
                    Ok(Vec::new())
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(format!(
                    "no passphrase was entered within {}s",
                    timeout.unwrap_or_default().as_secs()
                )),
                Err(e) => Err(format!("cannot ask for the passphrase of {}: {e}", v.name)),
            }
        }
        AskMode::Agent(dir) => {
            let q = Question {
                message: format!(
                    "Please enter passphrase for disk {} ({} on {})",
                    v.name, v.device, target.path
                ),
                id: format!("cryptsetup:{}", target.path),
                icon: "drive-harddisk".into(),
                not_after_usec: timeout.map(ask_password::monotonic_usec_after).unwrap_or(0),
            };
            match ask_password::ask(dir, &q, timeout) {
                Ok(Reply::Passphrases(p)) => Ok(p),
                Ok(Reply::Cancelled) => Err("the passphrase prompt was cancelled".into()),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(format!(
                    "no passphrase was entered within {}s",
                    timeout.unwrap_or_default().as_secs()
                )),
                Err(e) => Err(format!(
                    "cannot ask the password agents ({}) for the passphrase of {}: {e}",
                    dir.display(),
                    v.name
                )),
            }
        }
    }
}

type Opens = (Opened, Vec<(String, Opened)>);

fn passphrase(
    ctx: &mut Context<'_>,
    target: &Target<'_>,
    header: &mut luks::Volume,
    others: &[Target<'_>],
    tries: u32,
    timeout: Option<Duration>,
    hint: SlotHint,
) -> Result<Opens, PassphraseError> {
    let v = target.volume;
    let flags = luks::flags(v.allow_discards, &v.flags);
    let mut tty = None;
    let mut also_opened: Vec<(String, Opened)> = Vec::new();
    for attempt in 1..=tries {
        let candidates = ask(ctx, &mut tty, target, timeout).map_err(PassphraseError::Gave)?;
        let mut opened = None;
        for secret in &candidates {
            match header.open(Some(&v.name), secret.expose(), &flags, hint, ctx.manifest) {
                Ok(o) => {
                    opened = Some(o);
                }
                Err(LuksError::WrongKey { .. }) => {}
                Err(e) => return Err(PassphraseError::Luks(e)),
            }
            // One typed passphrase opens every volume it fits.
            for other in others {
                if also_opened.iter().any(|(n, _)| *n == other.volume.name) {
                    continue;
                }
                if let Some(o) = try_other(ctx, other, secret) {
                    log::info!(
                        "the passphrase typed for {} also opened {} ({} on {}) as /dev/mapper/{} (keyslot {})",
                        v.name,
                        other.volume.name,
                        other.volume.device,
                        other.path,
                        other.volume.name,
                        o.keyslot
                    );
                    also_opened.push((other.volume.name.clone(), o));
                }
            }
            if opened.is_some() {
                break;
            }
        }
        if let Some(o) = opened {
            return Ok((o, also_opened));
        }
        if !candidates.is_empty() {
            log::warn!(
                "wrong passphrase for {} (attempt {attempt} of {tries})",
                v.name
            );
        }
    }
    Err(PassphraseError::Gave(format!(
        "{tries} wrong passphrase(s)"
    )))
}

/// Tries a typed passphrase on another volume that takes one and is not open yet.
fn try_other(ctx: &mut Context<'_>, other: &Target<'_>, secret: &Secret) -> Option<Opened> {
    let v = other.volume;
    let hint = v.keys.iter().find_map(|k| match k {
        KeySource::Passphrase { hint, .. } => Some(*hint),
        _ => None,
    })?;
    if luks::is_active(&v.name) || luks::holder_of(&other.path).is_some() {
        return None;
    }
    let mut header = match luks::Volume::load(&other.path) {
        Ok(h) => h,
        Err(e) => {
            log::debug!("{}: not trying the passphrase: {e}", v.field);
            return None;
        }
    };
    let flags = luks::flags(v.allow_discards, &v.flags);
    match header.open(Some(&v.name), secret.expose(), &flags, hint, ctx.manifest) {
        Ok(o) => Some(o),
        Err(LuksError::WrongKey { .. }) => None,
        Err(e) => {
            log::debug!("{}: {e}", v.field);
            None
        }
    }
}
