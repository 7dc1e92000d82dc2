//! Parsers for the text indexes depmod writes into a module tree:
//! modules.dep, modules.alias, modules.softdep, modules.builtin and
//! modules.builtin.modinfo. (The `.bin` variants hold the same data in a
//! trie format; the text files are simpler and always shipped alongside.)

use std::collections::BTreeSet;
use std::path::{Component, Path};

use super::KmodError;
use super::names::{self, AliasTable};
use crate::decompress::Compression;

/// One line of modules.dep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    pub name: String,
    /// Relative to the tree, as written by depmod, compression suffix kept.
    pub rel_path: String,
    /// Canonical names of every module this one needs loaded first. depmod
    /// already writes the full transitive list.
    pub deps: Vec<String>,
}

/// One `softdep` line; several lines for the same module all apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftDep {
    /// Normalised module name, possibly a glob (modprobe.d allows that).
    pub module: String,
    pub pre: Vec<String>,
    pub post: Vec<String>,
}

fn parse_error(file: &Path, line: usize, message: impl Into<String>) -> KmodError {
    KmodError::Parse {
        file: file.to_owned(),
        line,
        message: message.into(),
    }
}

/// Numbered lines that are neither blank nor comments.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Checks a module path from an index and returns its compression. The path
/// ends up inside the initramfs, so it must stay below the tree.
pub fn check_module_path(file: &Path, line: usize, rel: &str) -> Result<Compression, KmodError> {
    let p = Path::new(rel);
    if p.is_absolute() {
        return Err(parse_error(
            file,
            line,
            format!("absolute module path {rel:?} (only depmod's relative paths are supported)"),
        ));
    }
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(parse_error(
            file,
            line,
            format!("module path {rel:?} leaves the tree"),
        ));
    }
    Compression::MODULE_SUFFIXES
        .iter()
        .find(|(suffix, _)| rel.ends_with(suffix))
        .map(|&(_, c)| c)
        .ok_or_else(|| {
            parse_error(
                file,
                line,
                format!("{rel:?} does not end in .ko, .ko.gz, .ko.xz or .ko.zst"),
            )
        })
}

/// Canonical module name of a module path (`kernel/drivers/md/dm-crypt.ko`
/// is `dm_crypt`).
pub fn name_of_path(rel: &str) -> String {
    names::module_name(rel.rsplit('/').next().unwrap_or(rel))
}

pub fn parse_dep(file: &Path, text: &str) -> Result<Vec<DepEntry>, KmodError> {
    let mut out = Vec::new();
    for (line, content) in content_lines(text) {
        let (module, deps) = content
            .split_once(':')
            .ok_or_else(|| parse_error(file, line, "expected `<module path>: <deps...>`"))?;
        let rel_path = module.trim();
        check_module_path(file, line, rel_path)?;
        let deps = deps
            .split_whitespace()
            .map(|dep| check_module_path(file, line, dep).map(|_| name_of_path(dep)))
            .collect::<Result<_, _>>()?;
        out.push(DepEntry {
            name: name_of_path(rel_path),
            rel_path: rel_path.to_owned(),
            deps,
        });
    }
    Ok(out)
}

pub fn parse_alias(file: &Path, text: &str, table: &mut AliasTable) -> Result<(), KmodError> {
    for (line, content) in content_lines(text) {
        match content.split_whitespace().collect::<Vec<_>>()[..] {
            ["alias", pattern, module] => table.insert(pattern, module),
            _ => {
                return Err(parse_error(
                    file,
                    line,
                    "expected `alias <pattern> <module>`",
                ));
            }
        }
    }
    Ok(())
}

/// Parses softdep lines the way kmod does: words after `pre:` are loaded
/// before the module, words after `post:` after it, and words before either
/// keyword are ignored. (Linux 6.1's cifs declares `MODULE_SOFTDEP("gcm")`
/// without a keyword, which depmod copies through as `softdep cifs gcm`;
/// modprobe ignores those, and so do we.)
pub fn parse_softdep(file: &Path, text: &str) -> Result<Vec<SoftDep>, KmodError> {
    let mut out = Vec::new();
    for (line, content) in content_lines(text) {
        let mut words = content.split_whitespace();
        match words.next() {
            Some("softdep") => {}
            Some(other) => {
                // Newer depmods may add other commands; skipping them only
                // loses a hint, never a hard requirement.
                log::warn!(
                    "{}:{line}: ignoring unknown command {other:?}",
                    file.display()
                );
                continue;
            }
            None => continue,
        }
        let module = words
            .next()
            .ok_or_else(|| parse_error(file, line, "softdep without a module name"))?;
        let mut dep = SoftDep {
            module: names::alias(module),
            pre: Vec::new(),
            post: Vec::new(),
        };
        #[derive(PartialEq)]
        enum Mode {
            None,
            Pre,
            Post,
        }
        let mut mode = Mode::None;
        for word in words {
            match (word, &mode) {
                ("pre:", _) => mode = Mode::Pre,
                ("post:", _) => mode = Mode::Post,
                (_, Mode::Pre) => dep.pre.push(word.to_owned()),
                (_, Mode::Post) => dep.post.push(word.to_owned()),
                (_, Mode::None) => log::debug!(
                    "{}:{line}: ignoring {word:?}, which follows neither pre: nor post:",
                    file.display()
                ),
            }
        }
        out.push(dep);
    }
    Ok(out)
}

/// modules.builtin: one path per module compiled into the kernel image.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    content_lines(text).map(|(_, l)| name_of_path(l)).collect()
}

/// modules.builtin.modinfo: NUL-separated `module.key=value` strings, the
/// `.modinfo` sections of the built-in modules. Only the aliases matter
/// here (they let `crypto-sha256` resolve to a built-in implementation).
pub fn parse_builtin_modinfo(bytes: &[u8], table: &mut AliasTable) {
    for record in bytes.split(|&b| b == 0) {
        let Ok(record) = std::str::from_utf8(record) else {
            continue;
        };
        let Some((key, value)) = record.split_once('=') else {
            continue;
        };
        if let Some(module) = key.strip_suffix(".alias") {
            table.insert(value, module);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> &'static Path {
        Path::new("modules.test")
    }

    #[test]
    fn dep_lines() {
        let text =
            "# comment\n\nkernel/a/dm-crypt.ko: kernel/a/dm-mod.ko\nkernel/a/dm-mod.ko.xz:\n";
        let deps = parse_dep(f(), text).unwrap();
        assert_eq!(
            deps,
            [
                DepEntry {
                    name: "dm_crypt".into(),
                    rel_path: "kernel/a/dm-crypt.ko".into(),
                    deps: vec!["dm_mod".into()],
                },
                DepEntry {
                    name: "dm_mod".into(),
                    rel_path: "kernel/a/dm-mod.ko.xz".into(),
                    deps: vec![],
                },
            ]
        );
    }

    #[test]
    fn dep_errors_name_file_and_line() {
        for bad in [
            "kernel/a.ko\n",
            "/lib/modules/x/a.ko:\n",
            "../a.ko:\n",
            "kernel/a.o:\n",
            "kernel/a.ko: ../b.ko\n",
        ] {
            let err = parse_dep(f(), &format!("kernel/ok.ko:\n{bad}")).unwrap_err();
            assert!(
                matches!(&err, KmodError::Parse { line: 2, .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().starts_with("modules.test:2:"), "{err}");
        }
    }

    #[test]
    fn softdep_modes_like_kmod() {
        let text = "softdep cifs gcm\nsoftdep xts pre: ecb\nsoftdep m x pre: a b post: c pre: d\nweakdep q r\n";
        let got = parse_softdep(f(), text).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got[0].pre.is_empty() && got[0].post.is_empty());
        assert_eq!(got[1].pre, ["ecb"]);
        assert_eq!(got[2].pre, ["a", "b", "d"]);
        assert_eq!(got[2].post, ["c"]);
        assert!(parse_softdep(f(), "softdep\n").is_err());
    }

    #[test]
    fn alias_lines() {
        let mut t = AliasTable::default();
        parse_alias(f(), "# Aliases\nalias fs-btrfs btrfs\n", &mut t).unwrap();
        assert!(t.lookup("fs_btrfs").contains("btrfs"));
        assert!(parse_alias(f(), "alias x\n", &mut t).is_err());
    }

    #[test]
    fn builtin_files() {
        let b = parse_builtin("kernel/crypto/aes_generic.ko\nkernel/lib/crc-t10dif.ko\n");
        assert!(b.contains("aes_generic") && b.contains("crc_t10dif"));
        let mut t = AliasTable::default();
        parse_builtin_modinfo(
            b"sha256_generic.alias=crypto-sha256\0sha256_generic.license=GPL\0junk\0",
            &mut t,
        );
        assert!(t.lookup("crypto-sha256").contains("sha256_generic"));
    }
}
