//! Opening LUKS2 volumes through libcryptsetup. libdevmapper (built without
//! udev sync) creates the /dev/mapper node itself.
//!
//! One key is tried against the keyslots in the order `volumes::keyslot_order`
//! gives (hint first, token-bound keyslots last), one keyslot at a time: each
//! try is a full key derivation, so a good order saves seconds.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use libcryptsetup_rs::consts::flags::CryptActivate;
use libcryptsetup_rs::consts::vals::{EncryptionFormat, KeyslotInfo, KeyslotPriority};
use libcryptsetup_rs::{CryptDevice, CryptInit, LibcryptErr};

use crate::cmdline::ActivationFlag;
use crate::modules::ModuleManifest;
use crate::volumes::{self, SlotHint, SlotInfo, SlotPriority};

/// Why a volume did not open. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error(
        "{device} has no LUKS header (is it the right device, or was the header overwritten?): {reason}"
    )]
    NotLuks { device: String, reason: String },
    #[error(
        "the LUKS2 header of {device} is damaged ({reason}); nothing was written to it. With a header backup: cryptsetup luksHeaderRestore {device} --header-backup-file FILE"
    )]
    HeaderDamaged { device: String, reason: String },
    #[error("the key does not open any keyslot of {device}")]
    WrongKey { device: String },
    #[error("cannot activate {device} as /dev/mapper/{name}: {reason}{hint}")]
    Activate {
        device: String,
        name: String,
        reason: String,
        hint: String,
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
    active_dm_node(name).is_some()
}

/// The kernel name (`dm-0`) of the active device-mapper device `name`.
pub fn active_dm_node(name: &str) -> Option<String> {
    std::fs::read_dir("/sys/class/block")
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_to_string(e.path().join("dm/name")).is_ok_and(|n| n.trim() == name))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// The device-mapper name of whatever already holds `device` open
/// (`/dev/vda2` opened as `cryptroot`), from sysfs `holders/`.
pub fn holder_of(device: &str) -> Option<String> {
    let real = std::fs::canonicalize(device).ok()?;
    let kname = real.file_name()?.to_string_lossy().into_owned();
    std::fs::read_dir(format!("/sys/class/block/{kname}/holders"))
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let n = std::fs::read_to_string(e.path().join("dm/name")).ok()?;
            Some(n.trim().to_string())
        })
}

/// Activation flags for a volume.
pub fn flags(allow_discards: bool, extra: &[ActivationFlag]) -> CryptActivate {
    let mut f = CryptActivate::empty();
    if allow_discards {
        f |= CryptActivate::ALLOW_DISCARDS;
    }
    for x in extra {
        f |= match x {
            ActivationFlag::ReadOnly => CryptActivate::READONLY,
            ActivationFlag::NoReadWorkqueue => CryptActivate::NO_READ_WORKQUEUE,
            ActivationFlag::NoWriteWorkqueue => CryptActivate::NO_WRITE_WORKQUEUE,
            ActivationFlag::SameCpuCrypt => CryptActivate::SAME_CPU_CRYPT,
            ActivationFlag::SubmitFromCryptCpus => CryptActivate::SUBMIT_FROM_CRYPT_CPUS,
        };
    }
    f
}

/// A LUKS2 volume whose header was read, ready for keys.
pub struct Volume {
    dev: CryptDevice,
    device: String,
    slots: Vec<SlotInfo>,
}

/// How a key fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub keyslot: u32,
    /// Keyslots tried (key derivations run), the fitting one included.
    pub tried: usize,
    pub took: Duration,
}

/// Looks for the LUKS magic at the start of the device (primary header
/// `LUKS\xba\xbe`, LUKS2 secondary `SKUL\xba\xbe`).
fn has_luks_magic(device: &str) -> bool {
    let mut b = [0u8; 6];
    std::fs::File::open(device)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
        && (b == *b"LUKS\xba\xbe" || b == *b"SKUL\xba\xbe")
}

impl Volume {
    /// Reads the LUKS2 header of `device`. Nothing is written.
    pub fn load(device: &str) -> Result<Volume, LuksError> {
        let mut dev = CryptInit::init(Path::new(device)).map_err(|e| LuksError::Open {
            device: device.to_string(),
            reason: io_reason(&e),
        })?;
        if let Err(e) = dev
            .context_handle()
            .load::<()>(Some(EncryptionFormat::Luks2), None)
        {
            let reason = io_reason(&e);
            return Err(if has_luks_magic(device) {
                LuksError::HeaderDamaged {
                    device: device.to_string(),
                    reason,
                }
            } else {
                LuksError::NotLuks {
                    device: device.to_string(),
                    reason,
                }
            });
        }
        let slots = read_slots(&mut dev);
        Ok(Volume {
            dev,
            device: device.to_string(),
            slots,
        })
    }

    pub fn slots(&self) -> &[SlotInfo] {
        &self.slots
    }

    /// The data cipher (`aes`, `xts-plain64`).
    pub fn cipher(&mut self) -> (String, String) {
        let mut s = self.dev.status_handle();
        (
            s.get_cipher().unwrap_or_default(),
            s.get_cipher_mode().unwrap_or_default(),
        )
    }

    /// Tries `key` on the keyslots in ember's order and, if one fits,
    /// activates the volume as `name` (`None`: only check the key, no
    /// device-mapper device; works on an image file without root).
    pub fn open(
        &mut self,
        name: Option<&str>,
        key: &[u8],
        flags: &CryptActivate,
        hint: SlotHint,
        manifest: Option<&ModuleManifest>,
    ) -> Result<Opened, LuksError> {
        let start = Instant::now();
        let order = volumes::keyslot_order(&self.slots, hint);
        // No readable keyslot metadata: let libcryptsetup try them all.
        let attempts: Vec<Option<u32>> = if order.is_empty() {
            vec![None]
        } else {
            order.into_iter().map(Some).collect()
        };
        for (done, slot) in attempts.into_iter().enumerate() {
            let tried = done + 1;
            match self.dev.activate_handle().activate_by_passphrase(
                name,
                slot,
                key,
                CryptActivate::from_bits_retain(flags.bits()),
            ) {
                Ok(n) => {
                    return Ok(Opened {
                        keyslot: n,
                        tried,
                        took: start.elapsed(),
                    });
                }
                Err(e) if matches!(errno_of(&e), Some(libc::EPERM)) => continue,
                Err(e) => return Err(self.activation_error(name, &e, manifest)),
            }
        }
        Err(LuksError::WrongKey {
            device: self.device.clone(),
        })
    }

    fn activation_error(
        &mut self,
        name: Option<&str>,
        e: &LibcryptErr,
        manifest: Option<&ModuleManifest>,
    ) -> LuksError {
        let errno = errno_of(e);
        let (cipher, mode) = self.cipher();
        let hint = match errno {
            Some(libc::EBUSY) | Some(libc::EEXIST) => {
                "; the device or the mapper name is already in use".to_string()
            }
            Some(libc::ENOMEM) => "; not enough memory for the keyslot's key derivation".into(),
            _ => match missing_kernel_support(&cipher, &mode, manifest) {
                Some(m) => format!("; {m}"),
                None if matches!(
                    errno,
                    Some(libc::ENOENT) | Some(libc::ENOTSUP) | Some(libc::EINVAL)
                ) =>
                {
                    format!("; the kernel may lack dm-crypt or the volume's cipher {cipher}-{mode}")
                }
                None => String::new(),
            },
        };
        LuksError::Activate {
            device: self.device.clone(),
            name: name.unwrap_or("(key check only)").to_string(),
            reason: io_reason(e),
            hint,
        }
    }
}

/// Reads keyslot status, priority and token assignments from the header.
fn read_slots(dev: &mut CryptDevice) -> Vec<SlotInfo> {
    const MAX: u32 = crate::config::keys::MAX_KEYSLOT + 1;
    let mut slots = Vec::new();
    for slot in 0..MAX {
        match dev.keyslot_handle().status(slot) {
            Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast) => {}
            _ => continue,
        }
        let priority = match dev.keyslot_handle().get_priority(slot) {
            Ok(KeyslotPriority::Ignore) => SlotPriority::Ignore,
            Ok(KeyslotPriority::Prefer) => SlotPriority::Prefer,
            _ => SlotPriority::Normal,
        };
        slots.push(SlotInfo {
            slot,
            priority,
            tokens: Vec::new(),
        });
    }
    for token in 0..MAX {
        use libcryptsetup_rs::CryptTokenInfo;
        match dev.token_handle().status(token) {
            Ok(CryptTokenInfo::Inactive | CryptTokenInfo::Invalid) | Err(_) => continue,
            Ok(_) => {}
        }
        for s in &mut slots {
            if dev
                .token_handle()
                .is_assigned(token, s.slot)
                .unwrap_or(false)
            {
                s.tokens.push(token);
            }
        }
    }
    slots
}

/// Names the kernel module missing for dm-crypt with `cipher`-`mode`, if
/// one is: device-mapper, the dm-crypt target, the mode's template (`xts`),
/// the cipher (`aes`), or the AF_ALG socket interface through which
/// libcryptsetup decrypts LUKS2 keyslots (this build's crypto backend has
/// no ciphers of its own, and LUKS2 has no dm-crypt fallback for keyslots).
/// `None` when everything seems present.
pub fn missing_kernel_support(
    cipher: &str,
    mode: &str,
    manifest: Option<&ModuleManifest>,
) -> Option<String> {
    let proc_crypto = std::fs::read_to_string("/proc/crypto").unwrap_or_default();
    let kernel = KernelFacts {
        crypto_names: proc_crypto
            .lines()
            .filter_map(|l| l.strip_prefix("name"))
            .filter_map(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .collect(),
        device_mapper: Path::new("/dev/mapper/control").exists()
            || std::fs::read_to_string("/proc/misc").is_ok_and(|m| m.contains("device-mapper")),
        module_loaded: &|m: &str| Path::new("/sys/module").join(m).exists(),
        keyslot_cipher_via_af_alg: af_alg_has("skcipher", &af_alg_name(cipher, mode)),
    };
    missing_from(cipher, mode, manifest, &kernel)
}

/// What the running kernel has, as far as dm-crypt needs.
pub struct KernelFacts<'a> {
    /// `name` fields of /proc/crypto.
    pub crypto_names: Vec<String>,
    /// /dev/mapper/control or `device-mapper` in /proc/misc.
    pub device_mapper: bool,
    /// /sys/module/<name> exists.
    pub module_loaded: &'a dyn Fn(&str) -> bool,
    /// An AF_ALG socket binds to the cipher (`xts(aes)`) as a skcipher.
    pub keyslot_cipher_via_af_alg: bool,
}

/// The kernel crypto template of a dm-crypt mode: `xts-plain64` -> `xts`,
/// `cbc-essiv:sha256` -> `cbc`.
fn mode_template(mode: &str) -> &str {
    mode.split(['-', ':']).next().unwrap_or_default()
}

/// The kernel crypto API's name for `cipher`-`mode`: `xts(aes)`.
fn af_alg_name(cipher: &str, mode: &str) -> String {
    format!("{}({cipher})", mode_template(mode))
}

/// Whether the kernel's AF_ALG interface offers `name` of type `kind`
/// (what libcryptsetup asks for before it decrypts a keyslot area).
fn af_alg_has(kind: &str, name: &str) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: sockaddr_alg is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_alg = unsafe { std::mem::zeroed() };
    if kind.len() >= sa.salg_type.len() || name.len() >= sa.salg_name.len() {
        return false;
    }
    sa.salg_family = libc::AF_ALG as libc::sa_family_t;
    sa.salg_type[..kind.len()].copy_from_slice(kind.as_bytes());
    sa.salg_name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: valid descriptor, address and length.
    unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_alg).cast(),
            std::mem::size_of::<libc::sockaddr_alg>() as libc::socklen_t,
        ) == 0
    }
}

/// [`missing_kernel_support`] over given facts (pure).
pub fn missing_from(
    cipher: &str,
    mode: &str,
    manifest: Option<&ModuleManifest>,
    k: &KernelFacts<'_>,
) -> Option<String> {
    let loaded = |m: &str| {
        (k.module_loaded)(m)
            || manifest.is_some_and(|man| man.builtin.iter().any(|b| b.replace('-', "_") == m))
    };
    let why = |m: &str| match manifest {
        Some(man) if man.modules.iter().any(|x| x.name == m) => format!(
            "kernel module {m} is in the initrd but not loaded (see the module messages above)"
        ),
        Some(_) => format!(
            "kernel module {m} is not loaded and not in this initrd: add \"{m}\" to kernel_modules and rebuild the initrd"
        ),
        None => format!("kernel module {m} is not loaded"),
    };
    if !k.device_mapper && !loaded("dm_mod") {
        return Some(why("dm_mod"));
    }
    if !loaded("dm_crypt") {
        return Some(why("dm_crypt"));
    }
    let template = mode_template(mode);
    if !template.is_empty()
        && template != "ecb"
        && !loaded(template)
        && !k
            .crypto_names
            .iter()
            .any(|n| n.starts_with(&format!("{template}(")))
    {
        return Some(format!(
            "{} (mode {mode} of cipher {cipher})",
            why(template)
        ));
    }
    if !cipher.is_empty()
        && !k.crypto_names.iter().any(|n| n == cipher)
        && !loaded(cipher)
        && !loaded(&format!("{cipher}_generic"))
    {
        return Some(format!(
            "the kernel has no {cipher} cipher ({})",
            why(&format!("{cipher}_generic"))
        ));
    }
    if !k.keyslot_cipher_via_af_alg {
        let m = if loaded("af_alg") {
            "algif_skcipher"
        } else {
            "af_alg"
        };
        return Some(format!(
            "libcryptsetup cannot decrypt the keyslot through the kernel's AF_ALG interface ({})",
            why(m)
        ));
    }
    None
}

fn io_reason(e: &LibcryptErr) -> String {
    match e {
        LibcryptErr::IOError(io) => super::keyfile::os_text(&io::Error::from_raw_os_error(
            io.raw_os_error().unwrap_or(0),
        )),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(modules: &[&str], builtin: &[&str]) -> ModuleManifest {
        // Through JSON, as the builder writes it (and whatever fields it grows).
        let modules: Vec<String> = modules
            .iter()
            .map(|m| format!(r#"{{"name":"{m}","path":"lib/modules/6.1/{m}.ko","deps":[]}}"#))
            .collect();
        let builtin: Vec<String> = builtin.iter().map(|b| format!("\"{b}\"")).collect();
        serde_json::from_str(&format!(
            r#"{{"kernel_version":"6.1","modules":[{}],"builtin":[{}]}}"#,
            modules.join(","),
            builtin.join(",")
        ))
        .expect("manifest")
    }

    fn facts<'a>(loaded: &'a dyn Fn(&str) -> bool, crypto: &[&str]) -> KernelFacts<'a> {
        KernelFacts {
            crypto_names: crypto.iter().map(|c| c.to_string()).collect(),
            device_mapper: loaded("dm_mod"),
            module_loaded: loaded,
            keyslot_cipher_via_af_alg: loaded("algif_skcipher"),
        }
    }

    #[test]
    fn names_the_missing_module() {
        let m = manifest(&["dm_mod", "dm_crypt", "xts"], &["aes"]);
        let none = |_: &str| false;
        let only_dm = |n: &str| n == "dm_mod";
        let dm_and_crypt = |n: &str| n == "dm_mod" || n == "dm_crypt";
        let dm_crypt_af_alg =
            |n: &str| ["dm_mod", "dm_crypt", "af_alg", "algif_skcipher"].contains(&n);
        let all = |n: &str| ["dm_mod", "dm_crypt", "xts", "af_alg", "algif_skcipher"].contains(&n);
        assert_eq!(
            missing_from("aes", "xts-plain64", Some(&m), &facts(&none, &[])).as_deref(),
            Some(
                "kernel module dm_mod is in the initrd but not loaded (see the module messages above)"
            )
        );
        let no_crypt = manifest(&["dm_mod"], &[]);
        assert_eq!(
            missing_from("aes", "xts-plain64", Some(&no_crypt), &facts(&only_dm, &[])).as_deref(),
            Some(
                "kernel module dm_crypt is not loaded and not in this initrd: add \"dm_crypt\" to kernel_modules and rebuild the initrd"
            )
        );
        assert_eq!(
            missing_from(
                "aes",
                "xts-plain64",
                Some(&m),
                &facts(&dm_and_crypt, &["aes"])
            )
            .as_deref(),
            Some(
                "kernel module xts is in the initrd but not loaded (see the module messages above) (mode xts-plain64 of cipher aes)"
            )
        );
        assert_eq!(
            missing_from(
                "aes",
                "xts-plain64",
                Some(&m),
                &facts(&dm_crypt_af_alg, &["xts(aes)"])
            ),
            None,
            "an instantiated template counts"
        );
        assert_eq!(
            missing_from("serpent", "xts-plain64", None, &facts(&all, &["aes"])).as_deref(),
            Some("the kernel has no serpent cipher (kernel module serpent_generic is not loaded)")
        );
        assert_eq!(
            missing_from("aes", "xts-plain64", Some(&m), &facts(&all, &[])),
            None,
            "aes is built in"
        );
    }

    #[test]
    fn names_the_missing_af_alg_interface() {
        // The host has no AF_ALG: what libcryptsetup's EOPNOTSUPP for a
        // LUKS2 keyslot means.
        let m = manifest(
            &["dm_mod", "dm_crypt", "xts", "af_alg", "algif_skcipher"],
            &["aes"],
        );
        let no_algif = |n: &str| ["dm_mod", "dm_crypt", "xts", "af_alg"].contains(&n);
        assert_eq!(
            missing_from("aes", "xts-plain64", Some(&m), &facts(&no_algif, &[])).as_deref(),
            Some(
                "libcryptsetup cannot decrypt the keyslot through the kernel's AF_ALG interface (kernel module algif_skcipher is in the initrd but not loaded (see the module messages above))"
            )
        );
        let no_af_alg = |n: &str| ["dm_mod", "dm_crypt", "xts"].contains(&n);
        let without = manifest(&["dm_mod", "dm_crypt", "xts"], &["aes"]);
        assert!(
            missing_from(
                "aes",
                "xts-plain64",
                Some(&without),
                &facts(&no_af_alg, &[])
            )
            .is_some_and(|m| m.contains("add \"af_alg\" to kernel_modules"))
        );
        assert_eq!(af_alg_name("aes", "xts-plain64"), "xts(aes)");
        assert_eq!(af_alg_name("aes", "cbc-essiv:sha256"), "cbc(aes)");
    }
}
