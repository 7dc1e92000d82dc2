//! The configuration ember reads: what to unlock, what to mount, what to
//! persist, what to execute. The Rust types are the schema; Nix and humans
//! both write to it (JSON or TOML). Unknown fields are errors, so a typo never
//! silently turns a setting off.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::abspath::AbsPath;
use super::device::DeviceSpec;
use super::keys::KeySpec;
use super::persist::{PersistItem, PersistUser};

fn default_init() -> AbsPath {
    AbsPath::parse("/sbin/init").expect("constant path is valid")
}
fn default_device_timeout() -> u32 {
    30
}
fn default_tries() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The real init, a path in the new root. The kernel command line's
    /// `init=` takes precedence (as with every initrd).
    #[serde(default = "default_init")]
    pub init: AbsPath,
    /// How long to wait for each configured device to appear, in seconds.
    #[serde(default = "default_device_timeout")]
    pub device_timeout_secs: u32,
    /// What to do when a step fails.
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// Kernel modules the hardware needs (disk controller, ...), on top of
    /// those the config implies (dm-crypt, btrfs, ...). Resolved at build time.
    #[serde(default)]
    pub kernel_modules: Vec<String>,
    /// LUKS2 volumes to unlock, in order.
    #[serde(default)]
    pub luks: Vec<LuksDevice>,
    /// Btrfs filesystems and the subvolumes to mount from them.
    #[serde(default)]
    pub btrfs: Vec<BtrfsFilesystem>,
    /// Persist roots and what to bind from them into the new root.
    #[serde(default)]
    pub persist: Vec<PersistRoot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Start a rescue shell if the initrd has one (`/bin/sh`), else halt.
    #[default]
    Rescue,
    /// Stop with the message on screen; nothing else happens.
    Halt,
    /// Reboot after printing the message (and a short pause to read it).
    Reboot,
    /// Power off after printing the message.
    Poweroff,
    /// Run the whole boot again (every step is idempotent) up to
    /// `RETRY_ROUNDS` more times, `RETRY_PAUSE_SECS` apart: a key or disk
    /// plugged in late. Then the rescue shell if present, else halt.
    Retry,
}

impl FailurePolicy {
    /// How many times `retry` runs the boot again.
    pub const RETRY_ROUNDS: u32 = 3;
    /// Seconds between two rounds of `retry`.
    pub const RETRY_PAUSE_SECS: u64 = 5;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuksDevice {
    /// The device-mapper name: the volume opens as `/dev/mapper/<name>`.
    pub name: String,
    /// The LUKS2 device: `LABEL=`, `UUID=`, `PARTLABEL=`, `PARTUUID=` or `/dev/...`.
    pub device: DeviceSpec,
    /// A keyfile inside the initrd. Without one (and without `keys`), ember
    /// asks for a passphrase on the console. Shorthand for `keys = [{ keyfile = ... }]`.
    #[serde(default)]
    pub keyfile: Option<AbsPath>,
    /// Key sources, tried in order: keyfiles in the initrd or on another
    /// device, `"passphrase"` (see `config::keys`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeySpec>,
    /// How many passphrases to accept before the failure policy applies.
    #[serde(default = "default_tries")]
    pub passphrase_tries: u32,
    /// Give up on the passphrase when none is entered within this many
    /// seconds (unset: wait forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_timeout_secs: Option<u32>,
    /// Pass TRIM/discard requests through dm-crypt (`allow-discards`).
    #[serde(default)]
    pub allow_discards: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BtrfsFilesystem {
    /// The device carrying the filesystem, usually `/dev/mapper/<luks name>`.
    pub device: DeviceSpec,
    /// Mount options for every subvolume of this filesystem (`compress=zstd`, `noatime`).
    #[serde(default)]
    pub options: Vec<String>,
    pub subvolumes: Vec<Subvolume>,
    /// Roll a subvolume (the root) back to a blank state at every boot.
    #[serde(default)]
    pub rollback: Option<Rollback>,
}

fn default_archive_dir() -> String {
    "old_roots".to_string()
}

/// "Erase your darlings": what to replace at every boot, with what, and how
/// careful to be. See docs/design/rollback.md for the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The subvolume to replace (one of this filesystem's `subvolumes`, usually `/`'s).
    pub subvolume: String,
    pub strategy: RollbackStrategy,
    /// A read-only snapshot (path from the top level) the new root starts
    /// from. Required by `blank`; `archive` uses it when set, else starts empty.
    #[serde(default)]
    pub blank_snapshot: Option<String>,
    /// The filesystem must be this one (`UUID=` or `LABEL=` of the Btrfs
    /// filesystem) or nothing is touched. Optional only when `device`
    /// already names the filesystem by `UUID=`/`LABEL=`.
    #[serde(default)]
    pub filesystem: Option<DeviceSpec>,
    /// `archive`: where old roots go, as a path from the top level.
    #[serde(default = "default_archive_dir")]
    pub archive_dir: String,
    /// `archive`: delete archived roots older than this many days (measured
    /// against the root being archived, not the initrd's clock).
    #[serde(default)]
    pub keep_days: Option<u32>,
    /// `archive`: keep at most this many archived roots.
    #[serde(default)]
    pub keep_count: Option<u32>,
    /// What to do when a safety check fails: boot on the unwiped root
    /// (`continue`, the default: an unwiped root beats an unbootable
    /// machine) or apply the failure policy (`stop`).
    #[serde(default)]
    pub on_guard_failure: GuardPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackStrategy {
    /// Replace with a writable snapshot of `blank_snapshot`.
    Blank,
    /// Replace with a new, empty subvolume.
    Empty,
    /// Move the old root to `archive_dir/<its last change time>`, then
    /// replace it (from `blank_snapshot` if set, else empty) and prune.
    Archive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardPolicy {
    #[default]
    Continue,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subvolume {
    /// The subvolume's path inside the filesystem (`root`, `@`, `@home`, `nested/root`).
    pub subvolume: String,
    /// Where it appears in the new root.
    pub mount_point: AbsPath,
    /// Extra options for this subvolume only.
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistRoot {
    /// Where the persistent copy lives in the new root (`/persist`); must be
    /// on a subvolume of its own, never on the root subvolume.
    pub root: AbsPath,
    /// Mount options for every bind from this root (`x-gvfs-hide`, `nosuid`, ...).
    #[serde(default)]
    pub options: Vec<String>,
    /// Files persisted from `<root><path>` to `<path>`: a path, or a table
    /// `{ path, user, group, mode, method, options }`.
    #[serde(default)]
    pub files: Vec<PersistItem>,
    /// Directories, likewise.
    #[serde(default)]
    pub directories: Vec<PersistItem>,
    /// Per-user entries, relative to each user's home.
    #[serde(default)]
    pub users: BTreeMap<String, PersistUser>,
}

impl Subvolume {
    /// The subvolume path without leading/trailing slashes, as `subvol=` takes it.
    pub fn subvol_path(&self) -> &str {
        self.subvolume.trim_matches('/')
    }
}
