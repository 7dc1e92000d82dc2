//! Module-name and alias normalisation, and the alias lookup table.
//!
//! The kernel treats `-` and `_` in module names as the same character, and
//! kmod compares aliases after turning `-` into `_` everywhere except inside
//! `[...]` ranges (so `crypto-aes` finds `alias crypto_aes ...` and the
//! other way round, while `[0-9]` stays a range). Both sides of every
//! comparison go through these functions.

use std::collections::{BTreeSet, HashMap};

use crate::glob;

/// Canonical module name: dashes become underscores. A trailing `.ko...`
/// is dropped, as kmod's `modname_normalize` stops at the first dot.
pub fn module_name(name: &str) -> String {
    let stem = name.split('.').next().unwrap_or(name);
    stem.replace('-', "_")
}

/// Canonical alias or alias pattern (kmod's `alias_normalize`).
pub fn alias(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_range = false;
    for c in s.chars() {
        match c {
            '[' => in_range = true,
            ']' => in_range = false,
            '-' if !in_range => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// `alias <pattern> <module>` lines, split by whether the pattern is a glob:
/// plain names are a hash lookup, the globs (~20k, nearly all device ids)
/// are scanned linearly, which is quick enough for the few lookups a build
/// makes.
#[derive(Debug, Default)]
pub struct AliasTable {
    exact: HashMap<String, BTreeSet<String>>,
    patterns: Vec<(String, String)>,
}

impl AliasTable {
    pub fn insert(&mut self, pattern: &str, module: &str) {
        let pattern = alias(pattern);
        let module = module_name(module);
        if glob::is_pattern(&pattern) {
            self.patterns.push((pattern, module));
        } else {
            self.exact.entry(pattern).or_default().insert(module);
        }
    }

    /// The `cpu:` alias patterns of `module` (CPU-feature drivers such as
    /// aesni_intel or padlock_aes declare them), sorted.
    pub fn cpu_patterns_of(&self, module: &str) -> Vec<String> {
        let module = module_name(module);
        let mut out: Vec<String> = self
            .patterns
            .iter()
            .filter(|(p, m)| *m == module && p.starts_with("cpu:"))
            .map(|(p, _)| p.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every module any alias line maps `query` to, sorted and deduplicated
    /// (kmod loads all of them, e.g. both `crc32c_intel` and
    /// `crc32c_generic` for `crypto-crc32c`).
    pub fn lookup(&self, query: &str) -> BTreeSet<String> {
        let query = alias(query);
        let mut found = self.exact.get(&query).cloned().unwrap_or_default();
        for (pattern, module) in &self.patterns {
            if glob::matches(pattern, &query) {
                found.insert(module.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_use_underscores() {
        assert_eq!(module_name("dm-crypt"), "dm_crypt");
        assert_eq!(module_name("dm_crypt"), "dm_crypt");
        assert_eq!(module_name("dm-crypt.ko.xz"), "dm_crypt");
    }

    #[test]
    fn alias_normalisation_keeps_ranges() {
        assert_eq!(alias("crypto-aes"), "crypto_aes");
        assert_eq!(alias("usb:v1-2d0[0-2]*"), "usb:v1_2d0[0-2]*");
    }

    #[test]
    fn lookup_merges_exact_and_pattern_matches() {
        let mut t = AliasTable::default();
        t.insert("crypto-crc32c", "crc32c-intel");
        t.insert("crypto-crc32c", "crc32c_generic");
        t.insert("crypto-crc*", "crc_any");
        t.insert("pci:v00001AF4d*", "virtio_pci");
        let got: Vec<_> = t.lookup("crypto_crc32c").into_iter().collect();
        assert_eq!(got, ["crc32c_generic", "crc32c_intel", "crc_any"]);
        assert!(t.lookup("pci:v00001AF4d00001001").contains("virtio_pci"));
        assert!(t.lookup("nothing").is_empty());
    }
}
