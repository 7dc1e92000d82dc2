//! Absolute, normalised paths inside the new root (`/`, `/var/log`, ...).
//!
//! Every path a config names is checked here once, so the rest of ember can
//! rely on: starts with `/`, no `.`/`..`/empty components, no trailing slash,
//! no NUL. That is what makes "a persisted path outside the new root"
//! impossible to express past validation.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AbsPath(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbsPathError {
    #[error("`{0}` is not an absolute path (it must start with `/`)")]
    Relative(String),
    #[error("`{0}` contains `..`, which could lead outside the new root")]
    Parent(String),
    #[error("`{0}` contains an empty or `.` component; write it normalised")]
    NotNormal(String),
    #[error("path contains a NUL byte")]
    Nul,
}

impl AbsPath {
    pub fn root() -> Self {
        AbsPath("/".to_string())
    }

    pub fn parse(text: &str) -> Result<Self, AbsPathError> {
        if text.contains('\0') {
            return Err(AbsPathError::Nul);
        }
        if !text.starts_with('/') {
            return Err(AbsPathError::Relative(text.to_string()));
        }
        if text == "/" {
            return Ok(Self::root());
        }
        // A single trailing slash is a common, harmless habit: accept and drop it.
        let trimmed = text.strip_suffix('/').unwrap_or(text);
        for component in trimmed[1..].split('/') {
            match component {
                ".." => return Err(AbsPathError::Parent(text.to_string())),
                "" | "." => return Err(AbsPathError::NotNormal(text.to_string())),
                _ => {}
            }
        }
        Ok(AbsPath(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The components after the leading `/` (empty for `/`).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// True when `self` is `other` or a directory above it.
    pub fn contains(&self, other: &AbsPath) -> bool {
        self.is_root()
            || other.0 == self.0
            || (other.0.starts_with(&self.0) && other.0.as_bytes().get(self.0.len()) == Some(&b'/'))
    }

    /// The path relative to `base` (`/persist/etc` under `/persist` is `etc`),
    /// or `None` when `self` is not below or at `base`.
    pub fn relative_to(&self, base: &AbsPath) -> Option<String> {
        if !base.contains(self) {
            return None;
        }
        if base.is_root() {
            return Some(self.0[1..].to_string());
        }
        Some(self.0[base.0.len()..].trim_start_matches('/').to_string())
    }

    /// Appends a relative, already-normalised path.
    pub fn join(&self, relative: &str) -> AbsPath {
        let relative = relative.trim_matches('/');
        if relative.is_empty() {
            return self.clone();
        }
        if self.is_root() {
            AbsPath(format!("/{relative}"))
        } else {
            AbsPath(format!("{}/{relative}", self.0))
        }
    }

    /// This path as seen from the initrd, where the new root is mounted at `sysroot`.
    pub fn under(&self, sysroot: &str) -> String {
        if self.is_root() {
            sysroot.to_string()
        } else {
            format!("{sysroot}{}", self.0)
        }
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for AbsPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        AbsPath::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> AbsPath {
        AbsPath::parse(s).expect("valid test path")
    }

    #[test]
    fn normalises_and_rejects() {
        assert_eq!(p("/var/log/").as_str(), "/var/log");
        assert_eq!(p("/").depth(), 0);
        assert_eq!(p("/var/lib/systemd").depth(), 3);
        assert!(matches!(
            AbsPath::parse("etc/machine-id"),
            Err(AbsPathError::Relative(_))
        ));
        assert!(matches!(
            AbsPath::parse("/persist/../etc/shadow"),
            Err(AbsPathError::Parent(_))
        ));
        assert!(matches!(
            AbsPath::parse("/var//log"),
            Err(AbsPathError::NotNormal(_))
        ));
        assert!(matches!(
            AbsPath::parse("/var/./log"),
            Err(AbsPathError::NotNormal(_))
        ));
    }

    #[test]
    fn containment_is_by_component() {
        assert!(p("/").contains(&p("/home")));
        assert!(p("/var").contains(&p("/var/log")));
        assert!(p("/var/log").contains(&p("/var/log")));
        assert!(!p("/var/log").contains(&p("/var/logs")));
        assert!(!p("/var/log").contains(&p("/var")));
    }

    #[test]
    fn relative_join_under() {
        assert_eq!(
            p("/persist/etc").relative_to(&p("/persist")).as_deref(),
            Some("etc")
        );
        assert_eq!(p("/etc").relative_to(&p("/")).as_deref(), Some("etc"));
        assert_eq!(p("/etc").relative_to(&p("/persist")), None);
        assert_eq!(
            p("/persist").join("etc/machine-id").as_str(),
            "/persist/etc/machine-id"
        );
        assert_eq!(AbsPath::root().join("etc").as_str(), "/etc");
        assert_eq!(p("/home").under("/sysroot"), "/sysroot/home");
        assert_eq!(AbsPath::root().under("/sysroot"), "/sysroot");
    }
}
