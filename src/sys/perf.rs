//! Measurement points for the boot summary that the phase timers cannot
//! see: the time libcryptsetup spends in key derivation (the one part of an
//! unlock that is slow by design), the time spent inside mount-family
//! system calls (the other work ember cannot avoid), and ember's memory
//! high-water mark.
//!
//! The PBKDF time comes from a link-time wrapper: the static build links with
//! `-Wl,--wrap=crypt_pbkdf` (see build.rs), so every call libcryptsetup makes
//! to its crypto backend's `crypt_pbkdf` (the keyslot's Argon2/PBKDF2 and the
//! digest's PBKDF2) goes through [`__wrap_crypt_pbkdf`], which times it. Dynamic
//! builds have no wrapper and report no PBKDF time.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

static PBKDF_NANOS: AtomicU64 = AtomicU64::new(0);
static MOUNT_NANOS: AtomicU64 = AtomicU64::new(0);
static MOUNT_CALLS: AtomicU32 = AtomicU32::new(0);
static PBKDF_CALLS: AtomicU32 = AtomicU32::new(0);
/// `ru_maxrss` (KiB) when the first key derivation started; 0 = none yet.
static MAXRSS_BEFORE_PBKDF: AtomicU64 = AtomicU64::new(0);

/// Total time spent in key derivation so far, and how many derivations ran.
pub fn pbkdf() -> (Duration, u32) {
    (
        Duration::from_nanos(PBKDF_NANOS.load(Ordering::Relaxed)),
        PBKDF_CALLS.load(Ordering::Relaxed),
    )
}

/// Runs one mount-family system call (mount, umount, open_tree,
/// move_mount, a remount) and adds its time to [`mount_syscalls`]. Only the
/// call itself is inside: resolving paths and creating mount points are
/// ember's own work.
pub fn mount_syscall<T>(call: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = call();
    MOUNT_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    MOUNT_CALLS.fetch_add(1, Ordering::Relaxed);
    out
}

/// Total time inside mount-family system calls so far, and how many.
pub fn mount_syscalls() -> (Duration, u32) {
    (
        Duration::from_nanos(MOUNT_NANOS.load(Ordering::Relaxed)),
        MOUNT_CALLS.load(Ordering::Relaxed),
    )
}

/// The process's resident-set high-water mark in KiB (`getrusage`).
pub fn peak_rss_kib() -> u64 {
    // SAFETY: zeroed rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    ru.ru_maxrss.max(0) as u64
}

/// The resident set right now in KiB (`/proc/self/statm`), 0 if unknown.
pub fn current_rss_kib() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page / 1024
}

/// The peak resident set without the key derivation's own memory (Argon2's
/// memory cost is allocated, filled and unmapped inside one PBKDF call): the
/// high-water mark before the first derivation, or the resident set now if
/// that is larger. Before any derivation it is simply the peak.
pub fn peak_rss_outside_pbkdf_kib() -> u64 {
    match MAXRSS_BEFORE_PBKDF.load(Ordering::Relaxed) {
        0 => peak_rss_kib(),
        before => before.max(current_rss_kib()),
    }
}

#[cfg(feature = "static")]
unsafe extern "C" {
    /// libcryptsetup's real `crypt_pbkdf` (crypto backend), renamed by `--wrap`.
    fn __real_crypt_pbkdf(
        kdf: *const libc::c_char,
        hash: *const libc::c_char,
        password: *const libc::c_char,
        password_length: libc::size_t,
        salt: *const libc::c_char,
        salt_length: libc::size_t,
        key: *mut libc::c_char,
        key_length: libc::size_t,
        iterations: u32,
        memory: u32,
        parallel: u32,
    ) -> libc::c_int;
}

/// Times libcryptsetup's key derivations (same signature as
/// `crypt_pbkdf` in cryptsetup's `lib/crypto_backend/crypto_backend.h`).
///
/// # Safety
/// Called by libcryptsetup with the arguments it would pass to `crypt_pbkdf`;
/// they are handed on unchanged.
#[cfg(feature = "static")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_crypt_pbkdf(
    kdf: *const libc::c_char,
    hash: *const libc::c_char,
    password: *const libc::c_char,
    password_length: libc::size_t,
    salt: *const libc::c_char,
    salt_length: libc::size_t,
    key: *mut libc::c_char,
    key_length: libc::size_t,
    iterations: u32,
    memory: u32,
    parallel: u32,
) -> libc::c_int {
    if MAXRSS_BEFORE_PBKDF.load(Ordering::Relaxed) == 0 {
        MAXRSS_BEFORE_PBKDF.store(peak_rss_kib().max(1), Ordering::Relaxed);
    }
    let start = std::time::Instant::now();
    // SAFETY: the caller's arguments, unchanged, to the function they were meant for.
    let rc = unsafe {
        __real_crypt_pbkdf(
            kdf,
            hash,
            password,
            password_length,
            salt,
            salt_length,
            key,
            key_length,
            iterations,
            memory,
            parallel,
        )
    };
    PBKDF_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    PBKDF_CALLS.fetch_add(1, Ordering::Relaxed);
    rc
}

/// Stages of a LUKS2 unlock inside libcryptsetup, timed by link-time
/// wrappers like the PBKDF (static builds; see build.rs): they say where
/// the unlock's time goes besides the key derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptStage {
    /// `crypt_load`: reading, checksumming and parsing both header copies.
    Load,
    /// `LUKS2_keyslot_open`: one keyslot, its key derivation included.
    Keyslot,
    /// `crypt_storage_init` + `crypt_storage_decrypt`: decrypting the
    /// keyslot area (through the kernel's AF_ALG interface).
    KeyslotDecrypt,
    /// `AF_merge`: merging the anti-forensic stripes into the volume key.
    AfMerge,
    /// `LUKS2_digest_verify_by_segment`: checking the volume key (a PBKDF2).
    Digest,
    /// `LUKS2_activate`: the kernel keyring and the dm-crypt device.
    Activate,
}

const STAGES: usize = 6;
static STAGE_NANOS: [AtomicU64; STAGES] = [const { AtomicU64::new(0) }; STAGES];

impl CryptStage {
    pub const ALL: [CryptStage; STAGES] = [
        CryptStage::Load,
        CryptStage::Keyslot,
        CryptStage::KeyslotDecrypt,
        CryptStage::AfMerge,
        CryptStage::Digest,
        CryptStage::Activate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CryptStage::Load => "header load",
            CryptStage::Keyslot => "keyslot",
            CryptStage::KeyslotDecrypt => "keyslot area decryption",
            CryptStage::AfMerge => "anti-forensic merge",
            CryptStage::Digest => "digest check",
            CryptStage::Activate => "activation",
        }
    }
}

/// Time spent in `stage` so far (zero in builds without the wrappers).
pub fn crypt_stage(stage: CryptStage) -> Duration {
    Duration::from_nanos(STAGE_NANOS[stage as usize].load(Ordering::Relaxed))
}

#[cfg(feature = "static")]
fn add_stage(stage: CryptStage, took: Duration) {
    STAGE_NANOS[stage as usize].fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
}

/// Defines `__wrap_<name>`, which times `__real_<name>` (the library's
/// function, renamed by `-Wl,--wrap=<name>`) under a stage. The signature
/// must be the library's own (cryptsetup 2.6's headers).
macro_rules! timed_wrapper {
    ($stage:expr, $wrap:ident, $real:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(feature = "static")]
        unsafe extern "C" {
            fn $real($($arg: $ty),*) -> $ret;
        }

        /// Times the libcryptsetup function it wraps.
        ///
        /// # Safety
        /// Called by the linker-redirected callers with the arguments they
        /// would pass to the real function; they are handed on unchanged.
        #[cfg(feature = "static")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $wrap($($arg: $ty),*) -> $ret {
            let start = std::time::Instant::now();
            // SAFETY: the caller's arguments, unchanged, to the function they were meant for.
            let out = unsafe { $real($($arg),*) };
            add_stage($stage, start.elapsed());
            out
        }
    };
}

#[cfg(feature = "static")]
use libc::{c_char, c_int, c_uint, c_void, size_t};

timed_wrapper!(CryptStage::Load, __wrap_crypt_load, __real_crypt_load,
    (cd: *mut c_void, requested_type: *const c_char, params: *mut c_void) -> c_int);
timed_wrapper!(CryptStage::Keyslot, __wrap_LUKS2_keyslot_open, __real_LUKS2_keyslot_open,
    (cd: *mut c_void, keyslot: c_int, segment: c_int, password: *const c_char,
     password_len: size_t, vk: *mut *mut c_void) -> c_int);
timed_wrapper!(CryptStage::KeyslotDecrypt, __wrap_crypt_storage_init, __real_crypt_storage_init,
    (ctx: *mut *mut c_void, sector_size: size_t, cipher: *const c_char,
     cipher_mode: *const c_char, key: *const c_void, key_length: size_t, large_iv: bool) -> c_int);
timed_wrapper!(CryptStage::KeyslotDecrypt, __wrap_crypt_storage_decrypt, __real_crypt_storage_decrypt,
    (ctx: *mut c_void, iv_offset: u64, length: u64, buffer: *mut c_char) -> c_int);
timed_wrapper!(CryptStage::AfMerge, __wrap_AF_merge, __real_AF_merge,
    (src: *const c_char, dst: *mut c_char, blocksize: size_t, blocknumbers: c_uint,
     hash: *const c_char) -> c_int);
timed_wrapper!(CryptStage::Digest, __wrap_LUKS2_digest_verify_by_segment,
    __real_LUKS2_digest_verify_by_segment,
    (cd: *mut c_void, hdr: *mut c_void, segment: c_int, vk: *const c_void) -> c_int);
timed_wrapper!(CryptStage::Activate, __wrap_LUKS2_activate, __real_LUKS2_activate,
    (cd: *mut c_void, name: *const c_char, vk: *mut c_void, flags: u32) -> c_int);

/// The libcryptsetup stages that took time, for the boot log; None when
/// this build has no wrappers (or nothing was unlocked).
pub fn crypt_stages_summary() -> Option<String> {
    let parts: Vec<String> = CryptStage::ALL
        .iter()
        .map(|s| (s.name(), crypt_stage(*s)))
        .filter(|(_, d)| !d.is_zero())
        .map(|(n, d)| format!("{n} {:.1}ms", d.as_secs_f64() * 1000.0))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_syscalls_are_counted() {
        let (_, before) = mount_syscalls();
        assert_eq!(mount_syscall(|| 7), 7);
        assert!(mount_syscalls().1 > before);
    }

    #[test]
    fn rss_figures_are_plausible() {
        let peak = peak_rss_kib();
        assert!(peak > 0);
        assert!(current_rss_kib() > 0);
        // No derivation ran in this process: the figure is the plain peak.
        assert!(peak_rss_outside_pbkdf_kib() >= peak);
    }
}
