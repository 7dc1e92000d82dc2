//! The persistence part of the schema (impermanence-style entries: a path,
//! or a table with owner, mode, method and options; per-user entries
//! relative to the user's home) and its resolution into fully decided
//! entries: absolute path, ownership and mode for what gets created, the
//! parent-directory policy, and whether to bind at all.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::abspath::{AbsPath, AbsPathError};

/// A user or group id. Names are resolved at build time (the NixOS module
/// knows `users.users.<name>.uid`); in stage 1 there is no /etc/passwd to
/// ask. `"root"` is accepted as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id(pub u32);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a numeric id or \"root\" (names are resolved at build time)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                u32::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom(format!("id {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                u32::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom(format!("id {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                match v {
                    "root" => Ok(Id(0)),
                    _ => v.parse::<u32>().map(Id).map_err(|_| {
                        E::custom(format!(
                            "`{v}`: give the numeric id (names other than root are not known in stage 1; the NixOS module resolves them)"
                        ))
                    }),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Permission bits, written `"0700"` (a string of octal digits) or as a
/// number (TOML `0o700`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mode such as \"0755\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Mode, E> {
                if v > 0o7777 {
                    return Err(E::custom(format!("mode {v:o} has bits above 07777")));
                }
                Ok(Mode(v as u32))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a mode cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mode, E> {
                let bits = u32::from_str_radix(v, 8)
                    .map_err(|_| E::custom(format!("`{v}` is not an octal mode like \"0755\"")))?;
                self.visit_u64(u64::from(bits))
            }
        }
        d.deserialize_any(V)
    }
}

/// How a persisted path appears in the new root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// A bind mount of the persisted copy (works for everything).
    #[default]
    Bind,
    /// A symlink to the persisted copy (cheaper; some programs replace
    /// symlinks with files, so prefer bind unless you know).
    Symlink,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Bind => "bind",
            Method::Symlink => "symlink",
        }
    }
}

/// The table form of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemTable {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub method: Method,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An entry: a bare path, or a table with attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistItem(pub ItemTable);

impl PersistItem {
    pub fn path(path: &str) -> Self {
        PersistItem(ItemTable {
            path: path.to_string(),
            user: None,
            group: None,
            mode: None,
            method: Method::Bind,
            options: Vec::new(),
        })
    }
}

impl Serialize for PersistItem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = &self.0;
        if t.user.is_none()
            && t.group.is_none()
            && t.mode.is_none()
            && t.method == Method::Bind
            && t.options.is_empty()
        {
            s.serialize_str(&t.path)
        } else {
            t.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PersistItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A hand-written visitor, not `#[serde(untagged)]`: the table form
        // keeps its precise errors (`unknown field `mdoe``).
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PersistItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path, or a table with `path` and optional user, group, mode, method, options")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PersistItem, E> {
                Ok(PersistItem::path(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PersistItem, A::Error> {
                ItemTable::deserialize(de::value::MapAccessDeserializer::new(map)).map(PersistItem)
            }
        }
        d.deserialize_any(V)
    }
}

/// Per-user entries, relative to the user's home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistUser {
    pub uid: Id,
    pub gid: Id,
    /// Default `/home/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<AbsPath>,
    #[serde(default)]
    pub files: Vec<PersistItem>,
    #[serde(default)]
    pub directories: Vec<PersistItem>,
}

impl PersistUser {
    pub fn home_of(&self, name: &str) -> AbsPath {
        self.home
            .clone()
            .unwrap_or_else(|| AbsPath::root().join(&format!("home/{name}")))
    }
}

/// Owner and mode for something ember creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Attr {
    pub const ROOT_DIR: Attr = Attr {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };
}

/// A home directory whose chain gets its user's ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub path: AbsPath,
    pub uid: u32,
    pub gid: u32,
}

/// The attributes a missing parent directory `dir` gets: root:root 0755,
/// except inside a configured user's home (owned by the user, 0755) and the
/// home itself (owned by the user, 0700).
pub fn parent_attr(dir: &AbsPath, homes: &[Home]) -> Attr {
    if let Some(h) = homes.iter().find(|h| h.path == *dir) {
        return Attr {
            uid: h.uid,
            gid: h.gid,
            mode: 0o700,
        };
    }
    if let Some(h) = homes.iter().find(|h| h.path.contains(dir)) {
        return Attr {
            uid: h.uid,
            gid: h.gid,
            mode: 0o755,
        };
    }
    Attr::ROOT_DIR
}

/// Resolves an entry's path string: absolute for top-level entries,
/// relative to the home for per-user entries.
pub fn resolve_path(raw: &str, home: Option<&AbsPath>) -> Result<AbsPath, AbsPathError> {
    match home {
        None => AbsPath::parse(raw),
        Some(home) => {
            let rel = raw.trim_start_matches("~/");
            if rel.starts_with('/') {
                return Err(AbsPathError::NotNormal(format!(
                    "{raw} (per-user paths are relative to the home)"
                )));
            }
            let joined = AbsPath::parse(&format!("/{rel}"))?;
            Ok(home.join(joined.as_str()))
        }
    }
}

/// The configured homes, for the parent policy.
pub fn homes(users: &BTreeMap<String, PersistUser>) -> Vec<Home> {
    users
        .iter()
        .map(|(name, u)| Home {
            path: u.home_of(name),
            uid: u.uid.0,
            gid: u.gid.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> AbsPath {
        AbsPath::parse(s).expect("valid")
    }

    #[test]
    fn parent_policy() {
        let homes = vec![Home {
            path: p("/home/alice"),
            uid: 1000,
            gid: 100,
        }];
        assert_eq!(parent_attr(&p("/home"), &homes), Attr::ROOT_DIR);
        assert_eq!(
            parent_attr(&p("/home/alice"), &homes),
            Attr {
                uid: 1000,
                gid: 100,
                mode: 0o700
            }
        );
        assert_eq!(
            parent_attr(&p("/home/alice/.local"), &homes),
            Attr {
                uid: 1000,
                gid: 100,
                mode: 0o755
            }
        );
        assert_eq!(parent_attr(&p("/var/lib"), &homes), Attr::ROOT_DIR);
    }

    #[test]
    fn user_paths_are_relative_to_home() {
        let home = p("/home/alice");
        assert_eq!(
            resolve_path(".ssh", Some(&home)).expect("ok").as_str(),
            "/home/alice/.ssh"
        );
        assert_eq!(
            resolve_path("~/.ssh", Some(&home)).expect("ok").as_str(),
            "/home/alice/.ssh"
        );
        assert!(resolve_path("/etc/shadow", Some(&home)).is_err());
        assert!(resolve_path("../bob", Some(&home)).is_err());
        assert!(resolve_path("etc", None).is_err());
    }

    #[test]
    fn items_parse_as_path_or_table() {
        let t: BTreeMap<String, Vec<PersistItem>> = toml::from_str(
            "x = [\"/etc/machine-id\", { path = \"/var/lib/private\", mode = \"0700\", user = 0, group = \"root\", method = \"symlink\" }]",
        )
        .expect("parses");
        let items = &t["x"];
        assert_eq!(items[0], PersistItem::path("/etc/machine-id"));
        assert_eq!(items[1].0.mode, Some(Mode(0o700)));
        assert_eq!(items[1].0.method, Method::Symlink);
        let err = toml::from_str::<BTreeMap<String, Vec<PersistItem>>>(
            "x = [{ path = \"/a\", mdoe = \"0700\" }]",
        )
        .expect_err("typo rejected")
        .to_string();
        assert!(err.contains("unknown field `mdoe`"), "{err}");
        let err = toml::from_str::<BTreeMap<String, Vec<PersistItem>>>(
            "x = [{ path = \"/a\", user = \"alice\" }]",
        )
        .expect_err("names refused")
        .to_string();
        assert!(err.contains("numeric id"), "{err}");
        let err = toml::from_str::<BTreeMap<String, Vec<PersistItem>>>(
            "x = [{ path = \"/a\", mode = \"0999\" }]",
        )
        .expect_err("bad mode")
        .to_string();
        assert!(err.contains("octal"), "{err}");
    }

    #[test]
    fn items_round_trip_through_json() {
        let items = vec![
            PersistItem::path("/etc/machine-id"),
            PersistItem(ItemTable {
                path: "/x".into(),
                user: Some(Id(5)),
                group: None,
                mode: Some(Mode(0o600)),
                method: Method::Bind,
                options: vec!["x-gvfs-hide".into()],
            }),
        ];
        let json = serde_json::to_string(&items).expect("serialises");
        let back: Vec<PersistItem> = serde_json::from_str(&json).expect("parses");
        assert_eq!(items, back);
    }
}
