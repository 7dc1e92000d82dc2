//! Opening one LUKS volume with the key source its config names: a keyfile
//! in the initrd, or a passphrase typed at the console (no echo, N tries).
//! Key material only ever lives in `Secret` buffers.

use crate::config::DeviceSpec;
use crate::plan::KeySource;
use crate::sys::console;
use crate::sys::luks::{self, LuksError};
use crate::sys::secret::Secret;

/// Largest keyfile accepted (cryptsetup's default limit).
const MAX_KEYFILE: u64 = 8 * 1024 * 1024;

/// One volume to open, with the config field it came from.
pub struct Volume<'a> {
    pub field: &'a str,
    pub device: &'a DeviceSpec,
    /// The device node the spec resolved to.
    pub path: &'a str,
    pub name: &'a str,
    pub key: &'a KeySource,
    pub allow_discards: bool,
}

/// Why a volume stayed closed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error("{field}: {source}")]
    Luks { field: String, source: LuksError },
    #[error("{field}: cannot read keyfile {path}: {reason}")]
    Keyfile {
        field: String,
        path: String,
        reason: String,
    },
    #[error("{field}: {device} was not unlocked: {tries} wrong passphrase(s)")]
    PassphraseExhausted {
        field: String,
        device: String,
        tries: u32,
    },
    #[error("{field}: cannot ask for the passphrase of {name}: {reason}")]
    NoTerminal {
        field: String,
        name: String,
        reason: String,
    },
}

fn read_keyfile(path: &str) -> Result<Secret, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size == 0 {
        return Err("the keyfile is empty".into());
    }
    if size > MAX_KEYFILE {
        return Err(format!("the keyfile is larger than {MAX_KEYFILE} bytes"));
    }
    let mut secret = Secret::with_capacity(size as usize);
    secret.fill_from(&mut file).map_err(|e| e.to_string())?;
    Ok(secret)
}

pub fn open_volume(v: &Volume<'_>) -> Result<(), UnlockError> {
    let (field, device, path, name, allow_discards) =
        (v.field, v.device, v.path, v.name, v.allow_discards);
    let luks_err = |source| UnlockError::Luks {
        field: field.to_string(),
        source,
    };
    match v.key {
        KeySource::Keyfile(keyfile) => {
            let secret = read_keyfile(keyfile.as_str()).map_err(|reason| UnlockError::Keyfile {
                field: field.to_string(),
                path: keyfile.to_string(),
                reason,
            })?;
            luks::open(path, name, secret.expose(), allow_discards).map_err(luks_err)
        }
        KeySource::Passphrase { tries } => {
            let no_tty = |reason: String| UnlockError::NoTerminal {
                field: field.to_string(),
                name: name.to_string(),
                reason,
            };
            let mut tty = console::open_terminal().map_err(|e| no_tty(e.to_string()))?;
            for attempt in 1..=*tries {
                let prompt = format!("Passphrase for {name} ({device} on {path}): ");
                let secret = match console::read_passphrase(&mut tty, &prompt) {
                    Ok(Some(s)) => s,
                    Ok(None) => return Err(no_tty("the console closed (end of input)".into())),
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                        log::warn!("{name}: {e} (attempt {attempt} of {tries})");
                        continue;
                    }
                    Err(e) => return Err(no_tty(e.to_string())),
                };
                match luks::open(path, name, secret.expose(), allow_discards) {
                    Ok(()) => return Ok(()),
                    Err(LuksError::WrongKey { .. }) => {
                        log::warn!("wrong passphrase for {name} (attempt {attempt} of {tries})");
                    }
                    Err(source) => return Err(luks_err(source)),
                }
            }
            Err(UnlockError::PassphraseExhausted {
                field: field.to_string(),
                device: device.to_string(),
                tries: *tries,
            })
        }
    }
}
