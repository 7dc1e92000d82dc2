//! Opening LUKS2 volumes through libcryptsetup. libdevmapper (built without
//! udev sync) creates the /dev/mapper node itself.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::io;
use std::path::Path;

use libcryptsetup_rs::consts::flags::CryptActivate;
use libcryptsetup_rs::consts::vals::EncryptionFormat;
use libcryptsetup_rs::{CryptInit, LibcryptErr};

/// Why a volume did not open. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error("{device} is not a LUKS2 volume, or its header is damaged ({reason})")]
    NotLuks { device: String, reason: String },
    #[error("the key does not open any keyslot of {device}")]
    WrongKey { device: String },
    #[error("cannot activate {device} as /dev/mapper/{name}: {reason}{hint}")]
    Activate {
        device: String,
        name: String,
        reason: String,
        hint: &'static str,
    },
    #[error("cannot use {device}: {reason}")]
    Open { device: String, reason: String },
}

fn errno_of(e: &LibcryptErr) -> Option<i32> {
    match e {
        LibcryptErr::IOError(io) => io.raw_os_error(),
        _ => None,
    }
}

/// libcryptsetup's own messages go to the debug log: ember reports failures
/// itself, with context, and libcryptsetup never logs key material.
unsafe extern "C" fn forward_log(level: c_int, msg: *const c_char, _usr: *mut c_void) {
    if msg.is_null() {
        return;
    }
    // SAFETY: libcryptsetup passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    let text = text.trim_end();
    if level == libcryptsetup_rs_sys_level_error() {
        log::debug!("libcryptsetup error: {text}");
    } else {
        log::debug!("libcryptsetup: {text}");
    }
}

const fn libcryptsetup_rs_sys_level_error() -> c_int {
    1 // CRYPT_LOG_ERROR
}

/// Routes libcryptsetup's messages into ember's log (instead of stdout/stderr).
pub fn route_library_log() {
    libcryptsetup_rs::set_log_callback::<()>(Some(forward_log), None);
}

/// Whether /dev/mapper/<name> is already active (rescue shell reruns).
pub fn is_active(name: &str) -> bool {
    std::fs::read_dir("/sys/class/block")
        .map(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| {
                std::fs::read_to_string(e.path().join("dm/name")).is_ok_and(|n| n.trim() == name)
            })
        })
        .unwrap_or(false)
}

/// Opens `device` as /dev/mapper/<name> with `key` (passphrase or keyfile bytes).
pub fn open(device: &str, name: &str, key: &[u8], allow_discards: bool) -> Result<(), LuksError> {
    let mut dev = CryptInit::init(Path::new(device)).map_err(|e| LuksError::Open {
        device: device.to_string(),
        reason: e.to_string(),
    })?;
    dev.context_handle()
        .load::<()>(Some(EncryptionFormat::Luks2), None)
        .map_err(|e| LuksError::NotLuks {
            device: device.to_string(),
            reason: e.to_string(),
        })?;
    let flags = if allow_discards {
        CryptActivate::ALLOW_DISCARDS
    } else {
        CryptActivate::empty()
    };
    match dev
        .activate_handle()
        .activate_by_passphrase(Some(name), None, key, flags)
    {
        Ok(_) => Ok(()),
        Err(e) if errno_of(&e) == Some(libc::EPERM) => Err(LuksError::WrongKey {
            device: device.to_string(),
        }),
        Err(e) => {
            let hint = match errno_of(&e) {
                Some(libc::EBUSY) | Some(libc::EEXIST) => {
                    "; the device or the mapper name is already in use"
                }
                Some(libc::ENOENT) | Some(libc::ENOTSUP) | Some(libc::EINVAL) => {
                    "; the kernel may lack dm-crypt or the volume's cipher (check that dm_crypt, xts and aes modules are in the initrd)"
                }
                Some(libc::ENODEV) | Some(libc::ENXIO) => {
                    "; device-mapper is not available (is dm_mod loaded?)"
                }
                Some(libc::ENOMEM) => "; not enough memory for the keyslot's key derivation",
                _ => "",
            };
            Err(LuksError::Activate {
                device: device.to_string(),
                name: name.to_string(),
                reason: io_reason(&e),
                hint,
            })
        }
    }
}

fn io_reason(e: &LibcryptErr) -> String {
    match e {
        LibcryptErr::IOError(io) => {
            io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(0)).to_string()
        }
        other => other.to_string(),
    }
}
