//! ember's configuration: the schema, how it is read (TOML for people, JSON
//! for generators such as the NixOS module), and how it is checked.

pub mod abspath;
pub mod device;
pub mod keys;
pub mod persist;
pub mod schema;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use abspath::AbsPath;
pub use device::DeviceSpec;
pub use keys::KeySpec;
pub use persist::{Attr, Method, PersistItem, PersistUser};
pub use schema::*;
pub use validate::{EntryKind, FieldIssue, Findings, PersistDisposition, PersistEntry};

/// Why a config could not be used. Every variant says which file and, where
/// there is one, which field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {field}: {message}")]
    Parse {
        origin: String,
        field: String,
        message: String,
    },
    #[error("config {origin} is inconsistent:\n{}", list(.issues))]
    Invalid {
        origin: String,
        issues: Vec<FieldIssue>,
    },
}

fn list(issues: &[FieldIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The two syntaxes ember reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Toml,
    Json,
}

impl Syntax {
    /// `.json` files are JSON; anything else is TOML.
    pub fn for_path(path: &Path) -> Syntax {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Syntax::Json,
            _ => Syntax::Toml,
        }
    }
}

/// A config that parsed and passed validation, with the warnings it raised.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: Config,
    pub warnings: Vec<FieldIssue>,
    /// Only from [`load_for_boot`]: rollback safety problems. The rollback
    /// guards refuse to run; the rest of the config is used.
    pub rollback_refusals: Vec<FieldIssue>,
}

/// Like [`load`], for the boot path: a config whose only problems concern
/// the rollback is still used, with the rollback refused by its guards
/// (an unwiped root beats an unbootable machine). The builder and `ember
/// check` never let such a config through; this covers initrds made by
/// other means.
pub fn load_for_boot(path: &Path) -> Result<Checked, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    let config = parse(&text, Syntax::for_path(path), &origin)?;
    let findings = validate::validate(&config);
    if !findings.errors.is_empty() {
        return Err(ConfigError::Invalid {
            origin,
            issues: findings.errors,
        });
    }
    Ok(Checked {
        config,
        warnings: findings.warnings,
        rollback_refusals: findings.rollback_errors,
    })
}

impl fmt::Display for Syntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Syntax::Toml => "TOML",
            Syntax::Json => "JSON",
        })
    }
}

/// Parses without validating; errors name the field path (`luks[0].keyfile`).
pub fn parse(text: &str, syntax: Syntax, origin: &str) -> Result<Config, ConfigError> {
    let parse_error = |field: String, message: String| ConfigError::Parse {
        origin: origin.to_string(),
        field: if field.is_empty() || field == "." {
            "(top level)".to_string()
        } else {
            field
        },
        message,
    };
    match syntax {
        Syntax::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let config: Config = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| parse_error(e.path().to_string(), e.inner().to_string()))?;
            de.end()
                .map_err(|e| parse_error(String::new(), e.to_string()))?;
            Ok(config)
        }
        Syntax::Toml => {
            let de = toml::de::Deserializer::parse(text)
                .map_err(|e| parse_error(String::new(), e.to_string().trim_end().to_string()))?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                parse_error(
                    e.path().to_string(),
                    e.inner().message().trim_end().to_string(),
                )
            })
        }
    }
}

/// Parses and validates text.
pub fn check_str(text: &str, syntax: Syntax, origin: &str) -> Result<Checked, ConfigError> {
    let config = parse(text, syntax, origin)?;
    let findings = validate::validate(&config);
    let mut errors = findings.errors;
    errors.extend(findings.rollback_errors);
    if !errors.is_empty() {
        return Err(ConfigError::Invalid {
            origin: origin.to_string(),
            issues: errors,
        });
    }
    Ok(Checked {
        config,
        warnings: findings.warnings,
        rollback_refusals: Vec::new(),
    })
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Checked, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    check_str(&text, Syntax::for_path(path), &path.display().to_string())
}

impl Config {
    /// Kernel modules this config needs at boot, before hardware-specific ones:
    /// dm-crypt and the default LUKS2 cipher (aes-xts-plain64) for LUKS,
    /// AF_ALG for libcryptsetup's keyslot decryption, btrfs for Btrfs.
    /// Named, not aliased: the `crypto-aes` alias also matches drivers for
    /// other hardware (padlock-aes) that can only fail to load.
    pub fn implied_kernel_modules(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if !self.luks.is_empty() {
            for m in [
                "dm_crypt",
                "crypto-xts",
                "crypto-aes",
                "af_alg",
                "algif_skcipher",
            ] {
                out.push(m.to_string());
            }
        }
        if !self.btrfs.is_empty() {
            out.push("btrfs".to_string());
        }
        // A keyfile on a USB key: FAT with the code page and the I/O
        // character sets kernels default to (Debian: ascii; others: utf8, iso8859-1).
        if self.has_key_device_files() {
            for m in [
                "vfat",
                "nls_cp437",
                "nls_ascii",
                "nls_utf8",
                "nls_iso8859_1",
            ] {
                out.push(m.to_string());
            }
        }
        for m in &self.kernel_modules {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
