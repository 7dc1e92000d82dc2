//! How a configuration names a block device: the fstab-style `LABEL=`, `UUID=`,
//! `PARTLABEL=`, `PARTUUID=` forms, or a plain `/dev/...` path.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A block device as the user names it. Resolved at boot against what the
/// kernel announces (uevents) and what libblkid reads from the superblocks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceSpec {
    /// Filesystem or LUKS label (`LABEL=luks`).
    Label(String),
    /// Filesystem or LUKS UUID (`UUID=...`), compared case-insensitively.
    Uuid(String),
    /// GPT partition name (`PARTLABEL=luks`).
    PartLabel(String),
    /// GPT partition UUID (`PARTUUID=...`), compared case-insensitively.
    PartUuid(String),
    /// A path under `/dev`, e.g. `/dev/vda2` or `/dev/mapper/cryptroot`.
    Path(String),
}

/// Why a device string was rejected; the caller adds the config field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceSpecError {
    #[error("empty device name")]
    Empty,
    #[error("`{0}=` needs a value after the `=`")]
    EmptyValue(&'static str),
    #[error(
        "`{0}` is not a device: use LABEL=, UUID=, PARTLABEL=, PARTUUID= or an absolute /dev/ path"
    )]
    Unrecognised(String),
    #[error("`{0}` must be a path under /dev/ without `..`")]
    BadPath(String),
    #[error("device name contains a NUL byte, which no device name or tag can hold")]
    Nul,
}

impl DeviceSpec {
    pub fn parse(text: &str) -> Result<Self, DeviceSpecError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DeviceSpecError::Empty);
        }
        // Paths go to open(2) and tags are compared with C strings from
        // libblkid: with a NUL, the device could never be found.
        if text.contains('\0') {
            return Err(DeviceSpecError::Nul);
        }
        for (prefix, make) in [
            ("LABEL=", DeviceSpec::Label as fn(String) -> DeviceSpec),
            ("UUID=", DeviceSpec::Uuid),
            ("PARTLABEL=", DeviceSpec::PartLabel),
            ("PARTUUID=", DeviceSpec::PartUuid),
        ] {
            if let Some(value) = text.strip_prefix(prefix) {
                if value.is_empty() {
                    return Err(DeviceSpecError::EmptyValue(&prefix[..prefix.len() - 1]));
                }
                return Ok(make(value.to_string()));
            }
        }
        if text.starts_with('/') {
            if !text.starts_with("/dev/") || text.split('/').any(|c| c == "..") {
                return Err(DeviceSpecError::BadPath(text.to_string()));
            }
            return Ok(DeviceSpec::Path(text.to_string()));
        }
        Err(DeviceSpecError::Unrecognised(text.to_string()))
    }

    /// The `/dev/disk/by-*` link udev would create for this spec, if any.
    pub fn by_link(&self) -> Option<String> {
        match self {
            DeviceSpec::Label(v) => Some(format!("/dev/disk/by-label/{}", udev_escape(v))),
            DeviceSpec::Uuid(v) => Some(format!("/dev/disk/by-uuid/{}", udev_escape(v))),
            DeviceSpec::PartLabel(v) => Some(format!("/dev/disk/by-partlabel/{}", udev_escape(v))),
            DeviceSpec::PartUuid(v) => Some(format!("/dev/disk/by-partuuid/{}", udev_escape(v))),
            DeviceSpec::Path(_) => None,
        }
    }

    /// The mapper name if this spec is a `/dev/mapper/NAME` path.
    pub fn mapper_name(&self) -> Option<&str> {
        match self {
            DeviceSpec::Path(p) => p.strip_prefix("/dev/mapper/"),
            _ => None,
        }
    }
}

/// Escapes a tag value the way udev/libblkid do for `/dev/disk/by-*` names:
/// bytes outside a safe set (and `/`, which would make a directory) become `\xNN`.
pub fn udev_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        let safe = b.is_ascii_alphanumeric() || b"#+-.:=@_".contains(&b);
        if safe {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Label(v) => write!(f, "LABEL={v}"),
            DeviceSpec::Uuid(v) => write!(f, "UUID={v}"),
            DeviceSpec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
            DeviceSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            DeviceSpec::Path(v) => write!(f, "{v}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DeviceSpec::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            DeviceSpec::parse("LABEL=luks"),
            Ok(DeviceSpec::Label("luks".into()))
        );
        assert_eq!(
            DeviceSpec::parse("UUID=abc"),
            Ok(DeviceSpec::Uuid("abc".into()))
        );
        assert_eq!(
            DeviceSpec::parse("PARTLABEL=disk-main-luks"),
            Ok(DeviceSpec::PartLabel("disk-main-luks".into()))
        );
        assert_eq!(
            DeviceSpec::parse("PARTUUID=1-2"),
            Ok(DeviceSpec::PartUuid("1-2".into()))
        );
        assert_eq!(
            DeviceSpec::parse("/dev/mapper/cryptroot"),
            Ok(DeviceSpec::Path("/dev/mapper/cryptroot".into()))
        );
    }

    #[test]
    fn rejects_nonsense() {
        assert_eq!(DeviceSpec::parse(""), Err(DeviceSpecError::Empty));
        assert_eq!(
            DeviceSpec::parse("LABEL="),
            Err(DeviceSpecError::EmptyValue("LABEL"))
        );
        assert!(matches!(
            DeviceSpec::parse("luks"),
            Err(DeviceSpecError::Unrecognised(_))
        ));
        assert!(matches!(
            DeviceSpec::parse("/etc/passwd"),
            Err(DeviceSpecError::BadPath(_))
        ));
        assert!(matches!(
            DeviceSpec::parse("/dev/../etc/passwd"),
            Err(DeviceSpecError::BadPath(_))
        ));
    }

    #[test]
    fn rejects_nul_found_by_fuzzing() {
        // cargo fuzz config_toml: `device = "/dev/\u0000c/rpytroot"` validated.
        assert_eq!(
            DeviceSpec::parse("/dev/\0c/rpytroot"),
            Err(DeviceSpecError::Nul)
        );
        assert_eq!(DeviceSpec::parse("LABEL=a\0b"), Err(DeviceSpecError::Nul));
    }

    #[test]
    fn escapes_like_udev() {
        assert_eq!(udev_escape("my disk/1"), "my\\x20disk\\x2f1");
        assert_eq!(
            DeviceSpec::Label("boot".into()).by_link().as_deref(),
            Some("/dev/disk/by-label/boot")
        );
        assert_eq!(
            DeviceSpec::parse("/dev/mapper/cryptroot")
                .ok()
                .as_ref()
                .and_then(DeviceSpec::mapper_name),
            Some("cryptroot")
        );
    }
}
