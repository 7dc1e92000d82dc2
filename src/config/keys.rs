//! Key sources of a LUKS volume (`luks[].keys`): keyfiles in the initrd or on
//! another device, and the typed passphrase, tried in the order given. The
//! older `keyfile` field is shorthand for a one-entry list.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::abspath::AbsPath;
use super::device::DeviceSpec;
use super::schema::{Config, LuksDevice};
use super::validate::{FieldIssue, Findings};

/// LUKS2 has 32 keyslots and at most 32 tokens.
pub const MAX_KEYSLOT: u32 = 31;
/// Largest key accepted from a file or device (cryptsetup's default limit).
pub const MAX_KEY_BYTES: u64 = 8 * 1024 * 1024;
/// How long a key device is waited for when `timeout_secs` is not given.
pub const DEFAULT_KEY_DEVICE_TIMEOUT: u32 = 10;

/// One key source. In TOML: `"passphrase"`, `{ passphrase = true, keyslot = 1 }`,
/// `{ keyfile = "/etc/ember/keys/root.key" }`, or a keyfile on another device
/// `{ keyfile = "/root.key", device = "LABEL=usbkey", offset = 0, size = 4096 }`
/// (without `keyfile`: the key is read from the raw device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeySpec {
    /// A keyfile: a path in the initrd, or on `device`'s filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<AbsPath>,
    /// The device holding the keyfile, mounted read-only while it is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
    /// Bytes to skip at the start of the keyfile (or raw device).
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Bytes to read; default the whole file. Required for a raw device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// How long to wait for `device` before trying the next source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// A passphrase asked for on the console (or through systemd's password agents).
    #[serde(skip_serializing_if = "is_false")]
    pub passphrase: bool,
    /// Try this keyslot first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyslot: Option<u32>,
    /// Try the keyslots this LUKS2 token is assigned to first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<u32>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// The table form, as serde derives it (unknown fields are errors).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyTable {
    #[serde(default)]
    keyfile: Option<AbsPath>,
    #[serde(default)]
    device: Option<DeviceSpec>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    timeout_secs: Option<u32>,
    #[serde(default)]
    passphrase: bool,
    #[serde(default)]
    keyslot: Option<u32>,
    #[serde(default)]
    token: Option<u32>,
}

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeySpec, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeySpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"passphrase\" or a table such as { keyfile = \"/path\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeySpec, E> {
                match v {
                    "passphrase" => Ok(KeySpec::passphrase()),
                    other => Err(E::custom(format!(
                        "unknown key source `{other}`: expected \"passphrase\" or a table such as {{ keyfile = \"/path\" }}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<KeySpec, A::Error> {
                let t = KeyTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(KeySpec {
                    keyfile: t.keyfile,
                    device: t.device,
                    offset: t.offset,
                    size: t.size,
                    timeout_secs: t.timeout_secs,
                    passphrase: t.passphrase,
                    keyslot: t.keyslot,
                    token: t.token,
                })
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

impl KeySpec {
    pub fn passphrase() -> KeySpec {
        KeySpec {
            passphrase: true,
            ..KeySpec::default()
        }
    }

    pub fn keyfile(path: AbsPath) -> KeySpec {
        KeySpec {
            keyfile: Some(path),
            ..KeySpec::default()
        }
    }

    /// A keyfile that must be inside the initrd (no `device`).
    pub fn initrd_keyfile(&self) -> Option<&AbsPath> {
        match (&self.keyfile, &self.device, self.passphrase) {
            (Some(p), None, false) => Some(p),
            _ => None,
        }
    }
}

impl LuksDevice {
    /// The key sources in the order they are tried: `keys` if given, else
    /// `keyfile`, else a typed passphrase.
    pub fn key_specs(&self) -> Vec<KeySpec> {
        if !self.keys.is_empty() {
            return self.keys.clone();
        }
        match &self.keyfile {
            Some(p) => vec![KeySpec::keyfile(p.clone())],
            None => vec![KeySpec::passphrase()],
        }
    }

    /// The config field a key source came from (`luks[0].keys[1]` or `luks[0].keyfile`).
    pub fn key_field(&self, volume: usize, key: usize) -> String {
        if !self.keys.is_empty() {
            format!("luks[{volume}].keys[{key}]")
        } else if self.keyfile.is_some() {
            format!("luks[{volume}].keyfile")
        } else {
            format!("luks[{volume}]")
        }
    }
}

impl Config {
    /// Keyfiles the initrd must carry, with the field that names each.
    pub fn initrd_keyfiles(&self) -> Vec<(String, &AbsPath)> {
        let mut out = Vec::new();
        for (i, l) in self.luks.iter().enumerate() {
            if !l.keys.is_empty() {
                for (k, key) in l.keys.iter().enumerate() {
                    if let Some(p) = key.initrd_keyfile() {
                        out.push((format!("luks[{i}].keys[{k}].keyfile"), p));
                    }
                }
            } else if let Some(p) = &l.keyfile {
                out.push((format!("luks[{i}].keyfile"), p));
            }
        }
        out
    }

    /// Whether a key is read from a filesystem on another device (the
    /// initrd then needs the FAT driver, the usual format of a USB key).
    pub fn has_key_device_files(&self) -> bool {
        self.luks
            .iter()
            .flat_map(|l| &l.keys)
            .any(|k| k.device.is_some() && k.keyfile.is_some())
    }
}

/// Checks `luks[i].keyfile`/`keys`/`passphrase_timeout_secs`.
pub(super) fn check(config: &Config, f: &mut Findings) {
    let mut error = |field: String, message: String| {
        f.errors.push(FieldIssue { field, message });
    };
    for (i, l) in config.luks.iter().enumerate() {
        if l.keyfile.is_some() && !l.keys.is_empty() {
            error(
                format!("luks[{i}].keyfile"),
                "give either `keyfile` or `keys`, not both (add the keyfile to `keys`)".into(),
            );
        }
        if l.passphrase_timeout_secs == Some(0) {
            error(
                format!("luks[{i}].passphrase_timeout_secs"),
                "must be at least 1 second (leave it unset to wait forever)".into(),
            );
        }
        let mut passphrase_at: Option<usize> = None;
        for (k, key) in l.keys.iter().enumerate() {
            let field = format!("luks[{i}].keys[{k}]");
            if key.passphrase {
                if let Some(first) = passphrase_at {
                    error(
                        field.clone(),
                        format!("the passphrase is already keys[{first}]"),
                    );
                }
                passphrase_at.get_or_insert(k);
                let extra: Vec<&str> = [
                    ("keyfile", key.keyfile.is_some()),
                    ("device", key.device.is_some()),
                    ("offset", key.offset != 0),
                    ("size", key.size.is_some()),
                    ("timeout_secs", key.timeout_secs.is_some()),
                ]
                .iter()
                .filter(|(_, set)| *set)
                .map(|(n, _)| *n)
                .collect();
                if !extra.is_empty() {
                    error(
                        field.clone(),
                        format!(
                            "a passphrase entry takes only `keyslot` or `token`, not {}",
                            extra.join(", ")
                        ),
                    );
                }
            } else if key.keyfile.is_none() && key.device.is_none() {
                error(
                    field.clone(),
                    "names no key: give `keyfile` (and `device` if it is on another device), or `passphrase = true`".into(),
                );
            } else if key.keyfile.is_none() && key.size.is_none() {
                error(
                    format!("{field}.size"),
                    "is required to read a key from the raw device (no `keyfile`)".into(),
                );
            }
            if let Some(size) = key.size
                && (size == 0 || size > MAX_KEY_BYTES)
            {
                error(
                    format!("{field}.size"),
                    format!("must be between 1 and {MAX_KEY_BYTES} bytes"),
                );
            }
            if key.offset > u64::MAX / 2 {
                error(format!("{field}.offset"), "is out of range".into());
            }
            match key.timeout_secs {
                Some(_) if key.device.is_none() && !key.passphrase => error(
                    format!("{field}.timeout_secs"),
                    "only applies to a key on another `device`".into(),
                ),
                Some(0) => error(
                    format!("{field}.timeout_secs"),
                    "must be at least 1 second".into(),
                ),
                _ => {}
            }
            if key.keyslot.is_some() && key.token.is_some() {
                error(
                    format!("{field}.token"),
                    "give either `keyslot` or `token` as the hint, not both".into(),
                );
            }
            if let Some(s) = key.keyslot
                && s > MAX_KEYSLOT
            {
                error(
                    format!("{field}.keyslot"),
                    format!("{s} is not a LUKS2 keyslot (0-{MAX_KEYSLOT})"),
                );
            }
            if let Some(t) = key.token
                && t > MAX_KEYSLOT
            {
                error(
                    format!("{field}.token"),
                    format!("{t} is not a LUKS2 token (0-{MAX_KEYSLOT})"),
                );
            }
            if let Some(d) = &key.device
                && d.mapper_name() == Some(l.name.as_str())
            {
                error(
                    format!("{field}.device"),
                    format!("is the volume being unlocked ({d})"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ConfigError, Syntax, check_str, parse};

    const REFERENCE: &str = include_str!("../../examples/reference.toml");

    fn with_keys(keys: &str) -> String {
        REFERENCE.replace(
            "keyfile = \"/etc/ember/keys/cryptroot.key\"",
            &format!("keys = {keys}"),
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match check_str(text, Syntax::Toml, "t") {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { issues, .. }) => {
                issues.iter().map(|i| i.to_string()).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn mixed_list_parses_and_round_trips_through_json() {
        let text = with_keys(
            r#"[{ keyfile = "/etc/ember/keys/cryptroot.key", keyslot = 0 }, { keyfile = "/k.bin", device = "LABEL=usbkey", offset = 16, size = 64 }, "passphrase"]"#,
        );
        let c = check_str(&text, Syntax::Toml, "t").expect("valid").config;
        let keys = &c.luks[0].keys;
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].keyslot, Some(0));
        assert_eq!(keys[1].offset, 16);
        assert!(keys[2].passphrase);
        assert_eq!(
            c.initrd_keyfiles()
                .iter()
                .map(|(f, p)| format!("{f}={p}"))
                .collect::<Vec<_>>(),
            vec!["luks[0].keys[0].keyfile=/etc/ember/keys/cryptroot.key"]
        );
        assert!(c.has_key_device_files());
        assert!(
            c.implied_kernel_modules().contains(&"vfat".to_string()),
            "a keyfile on a USB key needs FAT"
        );
        // What the builder writes into the initrd reads back the same.
        let json = serde_json::to_string(&c).expect("serialises");
        assert!(
            json.contains(r#""keys":[{"keyfile":"/etc/ember/keys/cryptroot.key","keyslot":0},"#)
        );
        let back = parse(&json, Syntax::Json, "j").expect("parses");
        assert_eq!(back, c);
    }

    #[test]
    fn legacy_keyfile_and_no_key_still_work() {
        let c = check_str(REFERENCE, Syntax::Toml, "t")
            .expect("valid")
            .config;
        assert_eq!(
            c.luks[0].key_specs(),
            vec![super::KeySpec::keyfile(
                c.luks[0].keyfile.clone().expect("keyfile")
            )]
        );
        assert!(!c.has_key_device_files());
        let text = REFERENCE.replace("keyfile = \"/etc/ember/keys/cryptroot.key\"\n", "");
        let c = check_str(&text, Syntax::Toml, "t").expect("valid").config;
        assert_eq!(c.luks[0].key_specs(), vec![super::KeySpec::passphrase()]);
        assert!(c.initrd_keyfiles().is_empty());
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = errors(&with_keys(r#"[{ keyfile = "/k", ofset = 1 }]"#));
        assert!(
            e[0].contains("luks[0].keys[0].ofset: unknown field `ofset`"),
            "{e:?}"
        );
        let e = errors(&with_keys(r#"["passfrase"]"#));
        assert!(e[0].contains("luks[0].keys[0]"), "{e:?}");
        assert!(e[0].contains("unknown key source `passfrase`"), "{e:?}");
        let e = errors(&with_keys(r#"[{ keyfile = "relative" }]"#));
        assert!(e[0].contains("luks[0].keys[0].keyfile"), "{e:?}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let text = REFERENCE.replace(
            "keyfile = \"/etc/ember/keys/cryptroot.key\"",
            r#"keyfile = "/etc/ember/keys/cryptroot.key"
passphrase_timeout_secs = 0
keys = [
  { passphrase = true, keyfile = "/x" },
  "passphrase",
  {},
  { device = "LABEL=usb" },
  { keyfile = "/k", size = 0, timeout_secs = 5 },
  { keyfile = "/k", keyslot = 32 },
  { keyfile = "/k", keyslot = 1, token = 2 },
  { keyfile = "/k", device = "/dev/mapper/cryptroot" },
]"#,
        );
        let e = errors(&text);
        let expect = [
            "luks[0].keyfile: give either `keyfile` or `keys`",
            "luks[0].passphrase_timeout_secs: must be at least 1 second",
            "luks[0].keys[0]: a passphrase entry takes only `keyslot` or `token`, not keyfile",
            "luks[0].keys[1]: the passphrase is already keys[0]",
            "luks[0].keys[2]: names no key",
            "luks[0].keys[3].size: is required to read a key from the raw device",
            "luks[0].keys[4].size: must be between 1 and 8388608 bytes",
            "luks[0].keys[4].timeout_secs: only applies to a key on another `device`",
            "luks[0].keys[5].keyslot: 32 is not a LUKS2 keyslot (0-31)",
            "luks[0].keys[6].token: give either `keyslot` or `token`",
            "luks[0].keys[7].device: is the volume being unlocked",
        ];
        for x in expect {
            assert!(
                e.iter().any(|l| l.starts_with(x)),
                "missing {x:?} in {e:#?}"
            );
        }
        assert_eq!(e.len(), expect.len(), "{e:#?}");
    }
}
