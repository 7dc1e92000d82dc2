//! The kernel module manifest the initrd builder writes (`/etc/ember/modules.json`):
//! which modules to load, where they are, and what each must wait for.
//! Resolution happened at build time; boot only reads this.

use serde::{Deserialize, Serialize};

pub const MANIFEST_PATH: &str = "/etc/ember/modules.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleManifest {
    /// `uname -r` of the kernel the modules were taken from.
    pub kernel_version: String,
    /// In dependency order: every module after all of its `deps`.
    pub modules: Vec<ManifestModule>,
    /// Requested modules that are built into the kernel (nothing to load).
    #[serde(default)]
    pub builtin: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestModule {
    pub name: String,
    /// Path inside the initramfs, relative to `/`.
    pub path: String,
    /// Modules that must be loaded first.
    pub deps: Vec<String>,
    /// The module's `cpu:` aliases (CPU-feature drivers such as aesni_intel):
    /// it is loaded only if one matches the CPU's modalias. Empty: always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<String>,
    /// Only needed to mount filesystems (Btrfs and what it pulls in): may
    /// still be loading while the volumes unlock.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mount_only: bool,
}

impl ModuleManifest {
    /// Checks the invariants the parallel loader relies on: unique names,
    /// every dependency listed earlier.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.modules {
            for d in &m.deps {
                if !seen.contains(d.as_str()) {
                    return Err(format!(
                        "module {} depends on {d}, which is not listed before it",
                        m.name
                    ));
                }
            }
            if !seen.insert(m.name.as_str()) {
                return Err(format!("module {} is listed twice", m.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, deps: &[&str]) -> ManifestModule {
        ManifestModule {
            name: name.into(),
            path: format!("lib/modules/6.1/{name}.ko"),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            cpu: Vec::new(),
            mount_only: false,
        }
    }

    #[test]
    fn order_is_checked() {
        let mut m = ModuleManifest {
            kernel_version: "6.1".into(),
            modules: vec![module("dm_mod", &[]), module("dm_crypt", &["dm_mod"])],
            builtin: vec![],
        };
        assert!(m.check().is_ok());
        m.modules.reverse();
        assert!(m.check().is_err());
    }
}
