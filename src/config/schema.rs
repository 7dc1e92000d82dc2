//! The configuration ember reads: what to unlock, what to mount, what to
//! persist, what to execute. The Rust types are the schema; Nix and humans
//! both write to it (JSON or TOML). Unknown fields are errors, so a typo never
//! silently turns a setting off.

use serde::{Deserialize, Serialize};

use super::abspath::AbsPath;
use super::device::DeviceSpec;

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuksDevice {
    /// The device-mapper name: the volume opens as `/dev/mapper/<name>`.
    pub name: String,
    /// The LUKS2 device: `LABEL=`, `UUID=`, `PARTLABEL=`, `PARTUUID=` or `/dev/...`.
    pub device: DeviceSpec,
    /// A keyfile inside the initrd. Without one, ember asks for a passphrase
    /// on the console.
    #[serde(default)]
    pub keyfile: Option<AbsPath>,
    /// How many passphrases to accept before the failure policy applies.
    #[serde(default = "default_tries")]
    pub passphrase_tries: u32,
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
    /// Files bind-mounted from `<root><path>` to `<path>`.
    #[serde(default)]
    pub files: Vec<AbsPath>,
    /// Directories bind-mounted from `<root><path>` to `<path>`.
    #[serde(default)]
    pub directories: Vec<AbsPath>,
}

impl Subvolume {
    /// The subvolume path without leading/trailing slashes, as `subvol=` takes it.
    pub fn subvol_path(&self) -> &str {
        self.subvolume.trim_matches('/')
    }
}
