//! Assembling the initramfs: ember as /init, the resolved config, the module
//! manifest and modules, keyfiles, and optionally busybox for a rescue shell.
//! Every decision that can be made here is made here, so boot only executes.

use std::path::{Path, PathBuf};

use ember::config::{self, Checked};
use ember::modules::{ManifestModule, ModuleManifest};
use ember_initrd::cpio::Archive;
use ember_initrd::kmod::{ModuleTree, Resolution};

/// Applets linked to busybox for the rescue shell.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ash", "ls", "cat", "cp", "mv", "rm", "mkdir", "rmdir", "ln", "mount", "umount", "dmesg",
    "ps", "kill", "grep", "sed", "less", "vi", "echo", "printf", "test", "[", "stat", "find",
    "hexdump", "df", "du", "sync", "reboot", "poweroff", "halt", "blkid", "sleep", "uname", "head",
    "tail", "wc", "chmod", "chown", "touch",
];

#[derive(Debug)]
pub struct Inputs {
    pub config: PathBuf,
    pub ember: PathBuf,
    pub modules_dir: Option<PathBuf>,
    pub extra_modules: Vec<String>,
    /// (source on the host, destination in the initrd)
    pub keyfiles: Vec<(PathBuf, String)>,
    pub busybox: Option<PathBuf>,
    pub files: Vec<(PathBuf, String, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Kmod(#[from] ember_initrd::kmod::KmodError),
    #[error("{0}")]
    Cpio(#[from] ember_initrd::cpio::CpioError),
    #[error("{field}: keyfile {path} is not provided; pass --keyfile HOST_PATH:{path}")]
    MissingKeyfile { field: String, path: String },
    #[error("--keyfile {path}: no luks entry of the config uses it")]
    UnusedKeyfile { path: String },
    #[error("{0} is not an absolute path inside the initrd")]
    BadDestination(String),
    #[error("{path}: {reason}")]
    Ember { path: String, reason: String },
}

pub struct Built {
    pub archive: Archive,
    pub checked: Checked,
    pub resolution: Option<Resolution>,
    pub module_bytes: u64,
    pub ember_bytes: u64,
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn dest(path: &str) -> Result<String, BuildError> {
    let parsed =
        config::AbsPath::parse(path).map_err(|_| BuildError::BadDestination(path.to_string()))?;
    if parsed.is_root() {
        return Err(BuildError::BadDestination(path.to_string()));
    }
    Ok(parsed.as_str().trim_start_matches('/').to_string())
}

/// A static binary is what runs as /init: refuse anything the kernel would
/// fail to execute with a dynamic loader that is not in the initrd.
fn check_static(bytes: &[u8], path: &Path) -> Result<(), BuildError> {
    let fail = |reason: &str| BuildError::Ember {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    if bytes.len() < 64 || &bytes[0..4] != b"\x7fELF" {
        return Err(fail("not an ELF executable"));
    }
    // Look for a PT_INTERP program header (type 3) in the 64-bit header table.
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap_or([0; 2]));
    let phoff = u64_at(32) as usize;
    let phentsize = u16_at(54) as usize;
    let phnum = u16_at(56) as usize;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > bytes.len() {
            break;
        }
        if u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or([0; 4])) == 3 {
            return Err(fail(
                "dynamically linked (has an interpreter); build it with scripts/build-static",
            ));
        }
    }
    Ok(())
}

/// The resolution in the format the boot-time loader reads. ember owns that
/// schema (`ember::modules`); writing its type, not a look-alike, makes any
/// drift between builder and loader a compile error.
fn manifest_of(res: &Resolution) -> ModuleManifest {
    ModuleManifest {
        kernel_version: res.kernel_version.clone(),
        modules: res
            .modules
            .iter()
            .map(|m| ManifestModule {
                name: m.name.clone(),
                path: m.path.clone(),
                deps: m.deps.clone(),
                cpu: m.cpu.clone(),
                mount_only: m.mount_only,
            })
            .collect(),
        builtin: res.builtin.clone(),
    }
}

pub fn build(inputs: &Inputs) -> Result<Built, BuildError> {
    let checked = config::load(&inputs.config)?;
    let mut archive = Archive::new();
    for (dir, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("sysroot", 0o755),
        ("tmp", 0o1777),
        ("etc/ember", 0o755),
        ("bin", 0o755),
    ] {
        archive.add_dir(dir, mode)?;
    }
    // The kernel opens /dev/console for init before devtmpfs exists.
    archive.add_char_device("dev/console", 0o600, 5, 1)?;
    archive.add_char_device("dev/null", 0o666, 1, 3)?;
    archive.add_char_device("dev/kmsg", 0o644, 1, 11)?;

    let ember = read(&inputs.ember)?;
    check_static(&ember, &inputs.ember)?;
    let ember_bytes = ember.len() as u64;
    archive.add_file("init", 0o755, ember)?;
    archive.add_symlink("bin/ember", "/init")?;

    // The config as ember will read it: validated, normalised, JSON.
    let json = serde_json::to_vec_pretty(&checked.config).map_err(|e| BuildError::Ember {
        path: inputs.config.display().to_string(),
        reason: e.to_string(),
    })?;
    archive.add_file("etc/ember/config.json", 0o644, json)?;

    // Keyfiles: every configured one must be supplied, and only those.
    let wanted_keyfiles = checked.config.initrd_keyfiles();
    for (field, path) in &wanted_keyfiles {
        if !inputs.keyfiles.iter().any(|(_, d)| d == path.as_str()) {
            return Err(BuildError::MissingKeyfile {
                field: field.clone(),
                path: path.to_string(),
            });
        }
    }
    for (src, dst) in &inputs.keyfiles {
        if !wanted_keyfiles.iter().any(|(_, k)| k.as_str() == dst) {
            return Err(BuildError::UnusedKeyfile { path: dst.clone() });
        }
        archive.add_file(&dest(dst)?, 0o400, read(src)?)?;
    }

    let mut resolution = None;
    let mut module_bytes = 0;
    if let Some(dir) = &inputs.modules_dir {
        let tree = ModuleTree::open(dir)?;
        let mut wanted = checked.config.implied_kernel_modules();
        for m in &inputs.extra_modules {
            if !wanted.contains(m) {
                wanted.push(m.clone());
            }
        }
        let wanted_refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let mut res = tree.resolve(&wanted_refs)?;
        // Btrfs and what only it pulls in are needed to mount, not to unlock:
        // the loader lets them load while the key derivation runs.
        let early: Vec<&str> = wanted_refs
            .iter()
            .copied()
            .filter(|m| *m != "btrfs")
            .collect();
        if early.len() < wanted_refs.len() {
            res.mark_mount_only(&tree.resolve(&early)?);
        }
        for m in &res.modules {
            let bytes = res.module_bytes(&tree, m)?;
            module_bytes += bytes.len() as u64;
            archive.add_file(&m.path, 0o644, bytes)?;
        }
        let manifest =
            serde_json::to_vec_pretty(&manifest_of(&res)).map_err(|e| BuildError::Ember {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        archive.add_file("etc/ember/modules.json", 0o644, manifest)?;
        resolution = Some(res);
    }

    if let Some(busybox) = &inputs.busybox {
        archive.add_file("bin/busybox", 0o755, read(busybox)?)?;
        for applet in BUSYBOX_APPLETS {
            archive.add_symlink(&format!("bin/{applet}"), "busybox")?;
        }
    }
    for (src, dst, mode) in &inputs.files {
        archive.add_file(&dest(dst)?, *mode, read(src)?)?;
    }
    Ok(Built {
        archive,
        checked,
        resolution,
        module_bytes,
        ember_bytes,
    })
}
