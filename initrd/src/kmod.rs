//! Resolves the kernel modules the initramfs needs from an unpacked module
//! tree (`/lib/modules/<version>` or a copy of it), the way `modprobe`
//! would: names or aliases in, a dependency-closed, load-ordered list out.
//!
//! What is followed:
//! * hard dependencies from modules.dep (depmod already lists them
//!   transitively);
//! * `pre:` and `post:` soft dependencies from modules.softdep, of every
//!   included module, resolved like a `modprobe` argument. Unlike kmod,
//!   which uses only the first softdep line per module, all lines apply
//!   (Linux 6.1's btrfs declares four, one per line). A softdep naming
//!   nothing known is skipped with a warning;
//! * modules built into the kernel (modules.builtin) are never copied but
//!   listed in [`Resolution::builtin`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decompress::{Compression, DecodeError};

mod index;
mod names;
mod order;

use index::{DepEntry, SoftDep};
use names::AliasTable;
use order::Edge;

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}", file = file.display())]
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "cannot tell the kernel version of the module tree {dir}: no module carries a \
         vermagic and neither the directory nor its parent is named like a kernel release",
        dir = dir.display()
    )]
    UnknownKernelVersion { dir: PathBuf },
    #[error(
        "unknown kernel module {name:?}: not a module, alias or built-in of kernel \
         {kernel_version} (module tree {dir})",
        dir = dir.display()
    )]
    UnknownModule {
        name: String,
        kernel_version: String,
        dir: PathBuf,
    },
    #[error("module {module} depends on {dependency}, which modules.dep does not list")]
    MissingDependency { module: String, dependency: String },
    #[error("hard dependency cycle among modules: {}", modules.join(", "))]
    DependencyCycle { modules: Vec<String> },
    #[error("module {name} is not in the module tree {dir}", dir = dir.display())]
    NotInTree { name: String, dir: PathBuf },
    #[error("resolution is for kernel {resolution} but the module tree is for kernel {tree}")]
    VersionMismatch { resolution: String, tree: String },
    #[error("{path}: {source}", path = path.display())]
    Decompress {
        path: PathBuf,
        #[source]
        source: DecodeError,
    },
    #[error("{path} is not an ELF object (after decompression)", path = path.display())]
    NotElf { path: PathBuf },
}

/// A parsed module tree. Opening reads only the index files (and, to learn
/// the kernel version, the `.modinfo` of one module).
#[derive(Debug)]
pub struct ModuleTree {
    dir: PathBuf,
    kernel_version: String,
    /// Canonical name to its modules.dep line.
    modules: BTreeMap<String, DepEntry>,
    builtin: BTreeSet<String>,
    aliases: AliasTable,
    builtin_aliases: AliasTable,
    softdeps: Vec<SoftDep>,
}

/// The outcome of [`ModuleTree::resolve`]; serialisable so the builder can
/// ship it to the runtime loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub kernel_version: String,
    /// In load order: every module comes after all of its `deps`.
    pub modules: Vec<ResolvedModule>,
    /// Requested modules (or soft dependencies) compiled into the kernel:
    /// nothing to load, listed so the choice is visible.
    pub builtin: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedModule {
    /// Canonical name, with underscores (`dm_crypt`).
    pub name: String,
    /// Where the module lives inside the initramfs, always an uncompressed
    /// `.ko`: `lib/modules/<ver>/kernel/drivers/md/dm-crypt.ko`.
    pub path: String,
    /// Every module that must be loaded before this one: hard dependencies,
    /// `pre:` softdeps of this module and of its dependencies, and modules
    /// naming this one as a `post:` softdep — transitively closed, in load
    /// order, so a loader may start this module as soon as all of these
    /// are in.
    pub deps: Vec<String>,
    /// The module's `cpu:` aliases from modules.alias: a CPU-feature driver
    /// (aesni_intel, padlock_aes) that the loader skips when none matches
    /// the CPU's modalias, as udev would. Empty for every other module.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<String>,
    /// Only needed to mount filesystems, not to unlock volumes (see
    /// [`Resolution::mark_mount_only`]): the loader may still be loading it
    /// while the volumes unlock.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mount_only: bool,
}

impl ModuleTree {
    /// Reads the indexes of the module tree at `dir` (the directory holding
    /// modules.dep). modules.dep is required; the other indexes are optional
    /// and treated as empty when absent.
    pub fn open(dir: &Path) -> Result<Self, KmodError> {
        let dep_file = dir.join("modules.dep");
        let dep_text = read_text(&dep_file)?.ok_or_else(|| KmodError::Read {
            path: dep_file.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let mut modules = BTreeMap::new();
        let mut first_module = None;
        for entry in index::parse_dep(&dep_file, &dep_text)? {
            first_module.get_or_insert_with(|| entry.rel_path.clone());
            // depmod writes one line per name; if a hand-made tree repeats
            // a name, the first line wins, as in kmod's index.
            modules.entry(entry.name.clone()).or_insert(entry);
        }

        let mut aliases = AliasTable::default();
        let alias_file = dir.join("modules.alias");
        if let Some(text) = read_text(&alias_file)? {
            index::parse_alias(&alias_file, &text, &mut aliases)?;
        }
        let softdep_file = dir.join("modules.softdep");
        let softdeps = match read_text(&softdep_file)? {
            Some(text) => index::parse_softdep(&softdep_file, &text)?,
            None => Vec::new(),
        };
        let builtin = read_text(&dir.join("modules.builtin"))?
            .map(|text| index::parse_builtin(&text))
            .unwrap_or_default();
        let mut builtin_aliases = AliasTable::default();
        if let Some(bytes) = read_bytes(&dir.join("modules.builtin.modinfo"))? {
            index::parse_builtin_modinfo(&bytes, &mut builtin_aliases);
        }

        let kernel_version = first_module
            .and_then(|rel| vermagic_release(&dir.join(rel)))
            .or_else(|| release_from_dir_names(dir))
            .ok_or_else(|| KmodError::UnknownKernelVersion {
                dir: dir.to_owned(),
            })?;

        Ok(ModuleTree {
            dir: dir.to_owned(),
            kernel_version,
            modules,
            builtin,
            aliases,
            builtin_aliases,
            softdeps,
        })
    }

    /// The kernel release (`uname -r`) the modules were built for.
    pub fn kernel_version(&self) -> &str {
        &self.kernel_version
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resolves `wanted` (module names with `-` or `_`, or aliases such as
    /// `crypto-xts` / `fs-btrfs`) to a load-ordered, dependency-closed set.
    pub fn resolve(&self, wanted: &[&str]) -> Result<Resolution, KmodError> {
        let mut included = BTreeSet::new();
        let mut builtin = BTreeSet::new();
        let mut queue = VecDeque::new();
        let mut hard = Vec::new();
        let mut soft = Vec::new();

        let mut include = |name: &str, queue: &mut VecDeque<String>| {
            if included.insert(name.to_owned()) {
                queue.push_back(name.to_owned());
            }
        };

        for &name in wanted {
            let found = self.lookup(name);
            if found.is_empty() {
                return Err(KmodError::UnknownModule {
                    name: name.to_owned(),
                    kernel_version: self.kernel_version.clone(),
                    dir: self.dir.clone(),
                });
            }
            builtin.extend(found.builtin);
            for m in &found.modules {
                include(m, &mut queue);
            }
        }

        while let Some(name) = queue.pop_front() {
            let Some(entry) = self.modules.get(&name) else {
                continue; // lookup only returns modules that are in the map
            };
            for dep in &entry.deps {
                if !self.modules.contains_key(dep) {
                    return Err(KmodError::MissingDependency {
                        module: name.clone(),
                        dependency: dep.clone(),
                    });
                }
                hard.push(Edge {
                    before: dep.clone(),
                    after: name.clone(),
                });
                include(dep, &mut queue);
            }
            for sd in self.softdeps_of(&name) {
                for (targets, is_pre) in [(&sd.pre, true), (&sd.post, false)] {
                    for target in targets {
                        let found = self.lookup(target);
                        if found.is_empty() {
                            log::warn!(
                                "{name}: soft dependency {target:?} is not a module, alias \
                                 or built-in of kernel {}; skipping it",
                                self.kernel_version
                            );
                        }
                        builtin.extend(found.builtin);
                        for m in found.modules {
                            include(&m, &mut queue);
                            let (before, after) = if is_pre {
                                (m, name.clone())
                            } else {
                                (name.clone(), m)
                            };
                            soft.push(Edge { before, after });
                        }
                    }
                }
            }
        }

        let modules = order::sort(&included, &hard, &soft)?
            .into_iter()
            .map(|o| ResolvedModule {
                path: self.initramfs_path(&o.name),
                cpu: self.aliases.cpu_patterns_of(&o.name),
                mount_only: false,
                name: o.name,
                deps: o.needs,
            })
            .collect();
        Ok(Resolution {
            kernel_version: self.kernel_version.clone(),
            modules,
            builtin: builtin.into_iter().collect(),
        })
    }

    /// Finds what a name stands for, in kmod's order: a module name, then
    /// modules.alias, then aliases of built-ins, then built-in names. The
    /// first source with any match wins; aliases may match several modules
    /// (kmod loads them all).
    fn lookup(&self, query: &str) -> Found {
        let name = names::module_name(query);
        if self.modules.contains_key(&name) {
            return Found {
                modules: vec![name],
                builtin: Vec::new(),
            };
        }
        let mut found = Found::default();
        for m in self.aliases.lookup(query) {
            if self.modules.contains_key(&m) {
                found.modules.push(m);
            } else if self.builtin.contains(&m) {
                found.builtin.push(m);
            } else {
                log::warn!("alias {query:?} names {m}, which is neither a module nor built in");
            }
        }
        if !found.is_empty() {
            return found;
        }
        found.builtin = self.builtin_aliases.lookup(query).into_iter().collect();
        if found.is_empty() && self.builtin.contains(&name) {
            found.builtin.push(name);
        }
        found
    }

    fn softdeps_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SoftDep> + 'a {
        self.softdeps
            .iter()
            .filter(move |sd| sd.module == name || crate::glob::matches(&sd.module, name))
    }

    /// `lib/modules/<ver>/<path in modules.dep without compression suffix>`.
    fn initramfs_path(&self, name: &str) -> String {
        let rel = self
            .modules
            .get(name)
            .map(|e| e.rel_path.as_str())
            .unwrap_or_default();
        let uncompressed = Compression::MODULE_SUFFIXES
            .iter()
            .find_map(|(suffix, _)| rel.strip_suffix(suffix))
            .unwrap_or(rel);
        format!("lib/modules/{}/{uncompressed}.ko", self.kernel_version)
    }
}

impl Resolution {
    /// Marks every module that `early` (the resolution of what is needed
    /// before the filesystems are mounted: disk, device-mapper and crypto
    /// modules) does not hold as mount-only.
    pub fn mark_mount_only(&mut self, early: &Resolution) {
        for m in &mut self.modules {
            m.mount_only = !early.modules.iter().any(|e| e.name == m.name);
        }
    }

    /// The uncompressed bytes of `m`, read from `tree`.
    pub fn module_bytes(
        &self,
        tree: &ModuleTree,
        m: &ResolvedModule,
    ) -> Result<Vec<u8>, KmodError> {
        if tree.kernel_version != self.kernel_version {
            return Err(KmodError::VersionMismatch {
                resolution: self.kernel_version.clone(),
                tree: tree.kernel_version.clone(),
            });
        }
        let entry = tree
            .modules
            .get(&m.name)
            .ok_or_else(|| KmodError::NotInTree {
                name: m.name.clone(),
                dir: tree.dir.clone(),
            })?;
        let path = tree.dir.join(&entry.rel_path);
        let bytes = read_module(&path)?;
        // A truncated download or a wrong decoder would otherwise only show
        // up at boot, as ENOEXEC from finit_module.
        if !bytes.starts_with(b"\x7fELF") {
            return Err(KmodError::NotElf { path });
        }
        Ok(bytes)
    }
}

#[derive(Debug, Default)]
struct Found {
    modules: Vec<String>,
    builtin: Vec<String>,
}

impl Found {
    fn is_empty(&self) -> bool {
        self.modules.is_empty() && self.builtin.is_empty()
    }
}

/// Reads and decompresses a module file according to its suffix.
fn read_module(path: &Path) -> Result<Vec<u8>, KmodError> {
    let raw = std::fs::read(path).map_err(|source| KmodError::Read {
        path: path.to_owned(),
        source,
    })?;
    let name = path.to_string_lossy();
    let compression = Compression::MODULE_SUFFIXES
        .iter()
        .find(|(suffix, _)| name.ends_with(suffix))
        .map_or(Compression::None, |&(_, c)| c);
    compression
        .decode(raw)
        .map_err(|source| KmodError::Decompress {
            path: path.to_owned(),
            source,
        })
}

/// The release in a module's `vermagic=` modinfo string, which is exactly
/// what `uname -r` reports on the matching kernel. `None` if the module
/// cannot be read or carries none (hand-made test trees).
fn vermagic_release(module: &Path) -> Option<String> {
    let bytes = read_module(module).ok()?;
    let key = b"vermagic=";
    let start = bytes.windows(key.len()).position(|w| w == key)? + key.len();
    let value = bytes[start..].split(|&b| b == 0).next()?;
    let release = std::str::from_utf8(value).ok()?.split_whitespace().next()?;
    Some(release.to_owned())
}

/// Falls back to the directory layout: `/lib/modules/<release>` or a cache
/// like `<release>/modules` (symlinks resolved, so `current/modules` works).
fn release_from_dir_names(dir: &Path) -> Option<String> {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    canonical
        .ancestors()
        .take(2)
        .filter_map(|p| p.file_name()?.to_str())
        .find(|name| looks_like_release(name))
        .map(str::to_owned)
}

fn looks_like_release(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_digit()) && name.contains('.')
}

/// `Ok(None)` when the file does not exist; other errors carry the path.
fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, KmodError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KmodError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_text(path: &Path) -> Result<Option<String>, KmodError> {
    read_bytes(path)?
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|e| KmodError::Read {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests;
