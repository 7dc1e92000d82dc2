//! Measurement points for the boot summary that the phase timers cannot
//! see: the time libcryptsetup spends in key derivation (the one part of an
//! unlock that is slow by design) and in its other unlock stages, the time
//! spent inside mount-family system calls (the other work ember cannot
//! avoid), and ember's memory high-water mark.
//!
//! libcryptsetup is timed by link-time wrappers: the static build links with
//! `-Wl,--wrap=<function>` for each function of [`CryptStage`] (see
//! build.rs), so every call to it goes through `__wrap_<function>` here,
//! which times the real one. Dynamic builds have no wrappers and report
//! nothing for them.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The time spent in one kind of call, and how many calls there were.
struct Tally {
    nanos: AtomicU64,
    calls: AtomicU32,
}

impl Tally {
    const fn new() -> Tally {
        Tally {
            nanos: AtomicU64::new(0),
            calls: AtomicU32::new(0),
        }
    }

    fn add(&self, took: Duration) {
        self.nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> (Duration, u32) {
        (
            Duration::from_nanos(self.nanos.load(Ordering::Relaxed)),
            self.calls.load(Ordering::Relaxed),
        )
    }
}

static MOUNT: Tally = Tally::new();
/// `ru_maxrss` (KiB) when the first key derivation started; 0 = none yet.
static MAXRSS_BEFORE_PBKDF: AtomicU64 = AtomicU64::new(0);

/// Runs one mount-family system call (mount, umount, open_tree,
/// move_mount, a remount) and adds its time to [`mount_syscalls`]. Only the
/// call itself is inside: resolving paths and creating mount points are
/// ember's own work.
pub fn mount_syscall<T>(call: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = call();
    MOUNT.add(start.elapsed());
    out
}

/// Total time inside mount-family system calls so far, and how many.
pub fn mount_syscalls() -> (Duration, u32) {
    MOUNT.get()
}

/// Total time spent in key derivation so far, and how many derivations ran.
pub fn pbkdf() -> (Duration, u32) {
    STAGES[CryptStage::Pbkdf as usize].get()
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

/// What libcryptsetup does during an unlock, each timed by the wrapper of
/// the library function named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptStage {
    /// `crypt_pbkdf`: every key derivation (the keyslot's Argon2/PBKDF2 and
    /// the digest's PBKDF2), inside the stages below.
    Pbkdf,
    /// `crypt_load`: reading, checksumming and parsing both header copies.
    Load,
    /// `LUKS2_keyslot_open`: one keyslot, its key derivation included.
    Keyslot,
    /// `crypt_storage_init` + `crypt_storage_decrypt`: decrypting the
    /// keyslot area (through the kernel's AF_ALG interface).
    KeyslotDecrypt,
    /// `AF_merge`: merging the anti-forensic stripes into the volume key.
    AfMerge,
    /// `LUKS2_activate`: the kernel keyring and the dm-crypt device.
    Activate,
}

static STAGES: [Tally; 6] = [const { Tally::new() }; 6];

impl CryptStage {
    /// The stages the boot log lists (the PBKDF is in the summary itself).
    const LOGGED: [CryptStage; 5] = [
        CryptStage::Load,
        CryptStage::Keyslot,
        CryptStage::KeyslotDecrypt,
        CryptStage::AfMerge,
        CryptStage::Activate,
    ];

    fn name(self) -> &'static str {
        match self {
            CryptStage::Pbkdf => "pbkdf",
            CryptStage::Load => "header load",
            CryptStage::Keyslot => "keyslot",
            CryptStage::KeyslotDecrypt => "keyslot area decryption",
            CryptStage::AfMerge => "anti-forensic merge",
            CryptStage::Activate => "activation",
        }
    }
}

/// Called by every wrapper before the real function runs.
#[cfg(feature = "static")]
fn stage_starts(stage: CryptStage) {
    // The high-water mark before Argon2 allocates its memory.
    if stage == CryptStage::Pbkdf && MAXRSS_BEFORE_PBKDF.load(Ordering::Relaxed) == 0 {
        MAXRSS_BEFORE_PBKDF.store(peak_rss_kib().max(1), Ordering::Relaxed);
    }
}

/// Defines `__wrap_<name>`, which times `__real_<name>` (the library's
/// function, renamed by `-Wl,--wrap=<name>`) under a stage. The signature
/// must be the library's own (cryptsetup 2.6's headers; the static-deps
/// recipe pins that version).
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
            stage_starts($stage);
            let start = std::time::Instant::now();
            // SAFETY: the caller's arguments, unchanged, to the function they were meant for.
            let out = unsafe { $real($($arg),*) };
            STAGES[$stage as usize].add(start.elapsed());
            out
        }
    };
}

#[cfg(feature = "static")]
use libc::{c_char, c_int, c_uint, c_void, size_t};

timed_wrapper!(CryptStage::Pbkdf, __wrap_crypt_pbkdf, __real_crypt_pbkdf,
    (kdf: *const c_char, hash: *const c_char, password: *const c_char, password_length: size_t,
     salt: *const c_char, salt_length: size_t, key: *mut c_char, key_length: size_t,
     iterations: u32, memory: u32, parallel: u32) -> c_int);
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
timed_wrapper!(CryptStage::Activate, __wrap_LUKS2_activate, __real_LUKS2_activate,
    (cd: *mut c_void, name: *const c_char, vk: *mut c_void, flags: u32) -> c_int);

/// The libcryptsetup stages that took time, for the boot log; None when
/// this build has no wrappers (or nothing was unlocked).
pub fn crypt_stages_summary() -> Option<String> {
    let parts: Vec<String> = CryptStage::LOGGED
        .iter()
        .map(|s| (s.name(), STAGES[*s as usize].get().0))
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
