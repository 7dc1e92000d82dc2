//! `rd.luks.*` (and `luks.*`) kernel options, with systemd-cryptsetup-generator's
//! syntax, parsed into typed values. How they combine with the config is
//! decided in `volumes.rs`.

use crate::config::{AbsPath, DeviceSpec};

/// Everything `rd.luks.*` said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LuksCmdline {
    /// `rd.luks=0`: unlock nothing.
    pub disabled: bool,
    /// `rd.luks.uuid=UUID` (repeatable), lowercase, without `luks-`.
    pub uuids: Vec<String>,
    /// `rd.luks.name=UUID=NAME` (repeatable).
    pub names: Vec<(String, String)>,
    /// `rd.luks.key=[UUID=]KEYFILE[:KEYDEV]` (repeatable).
    pub keys: Vec<CmdlineKey>,
    /// `rd.luks.options=[UUID=]OPTIONS` (repeatable).
    pub options: Vec<CmdlineOptions>,
}

impl LuksCmdline {
    /// Whether any volume was named (`rd.luks.uuid`/`rd.luks.name`): then,
    /// as with systemd, only the named volumes are unlocked.
    pub fn names_volumes(&self) -> bool {
        !self.uuids.is_empty() || !self.names.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineKey {
    /// The volume it is for; `None`: every volume.
    pub uuid: Option<String>,
    pub path: AbsPath,
    /// The device whose filesystem holds `path`; `None`: in the initrd.
    pub device: Option<DeviceSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineOptions {
    /// The volume they are for; `None`: every volume.
    pub uuid: Option<String>,
    pub options: LuksOptions,
}

/// The `rd.luks.options` ember understands (crypttab's names).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LuksOptions {
    /// `discard`
    pub discard: bool,
    /// `readonly`, `read-only`
    pub read_only: bool,
    /// `tries=N`: passphrase tries (`0`, unlimited in systemd, is taken as 100).
    pub tries: Option<u32>,
    /// `timeout=SECS`: passphrase timeout; `Some(0)`: wait forever.
    pub timeout_secs: Option<u32>,
    /// `key-slot=N`: try this keyslot first.
    pub keyslot: Option<u32>,
    /// `keyfile-offset=`, `keyfile-size=`, `keyfile-timeout=`: for `rd.luks.key`.
    pub keyfile_offset: Option<u64>,
    pub keyfile_size: Option<u64>,
    pub keyfile_timeout_secs: Option<u32>,
    /// dm-crypt performance flags.
    pub flags: Vec<ActivationFlag>,
}

/// Activation flags beyond `allow_discards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ActivationFlag {
    ReadOnly,
    NoReadWorkqueue,
    NoWriteWorkqueue,
    SameCpuCrypt,
    SubmitFromCryptCpus,
}

impl ActivationFlag {
    pub fn name(self) -> &'static str {
        match self {
            ActivationFlag::ReadOnly => "read-only",
            ActivationFlag::NoReadWorkqueue => "no-read-workqueue",
            ActivationFlag::NoWriteWorkqueue => "no-write-workqueue",
            ActivationFlag::SameCpuCrypt => "same-cpu-crypt",
            ActivationFlag::SubmitFromCryptCpus => "submit-from-crypt-cpus",
        }
    }
}

/// `8898...-...` (case-insensitive, optional `luks-` prefix) → lowercase UUID.
pub fn normalize_uuid(s: &str) -> Option<String> {
    let s = s.strip_prefix("luks-").unwrap_or(s);
    let s = s.strip_prefix("UUID=").unwrap_or(s);
    let hex = |c: char| c.is_ascii_hexdigit();
    let dashed = s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                hex(c)
            }
        });
    let bare = s.len() == 32 && s.chars().all(hex);
    if dashed {
        Some(s.to_ascii_lowercase())
    } else if bare {
        let s = s.to_ascii_lowercase();
        Some(format!(
            "{}-{}-{}-{}-{}",
            &s[0..8],
            &s[8..12],
            &s[12..16],
            &s[16..20],
            &s[20..32]
        ))
    } else {
        None
    }
}

/// `UUID=rest` with a UUID-looking prefix → `(Some(uuid), rest)`; otherwise `(None, value)`.
fn split_uuid_prefix(value: &str) -> (Option<String>, &str) {
    if let Some((head, rest)) = value.split_once('=')
        && let Some(uuid) = normalize_uuid(head)
    {
        return (Some(uuid), rest);
    }
    (None, value)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "0" | "no" | "false" | "off" => Some(false),
        "1" | "yes" | "true" | "on" => Some(true),
        _ => None,
    }
}

fn parse_options(text: &str, ignored: &mut Vec<String>) -> LuksOptions {
    let mut o = LuksOptions::default();
    for opt in text.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let mut bad = |why: &str| ignored.push(format!("rd.luks.options: `{opt}`: {why}"));
        match (k, v) {
            ("discard", None) => o.discard = true,
            ("readonly" | "read-only", None) => o.read_only = true,
            ("tries", Some(v)) => match super::decimal::<u32>(v) {
                Some(0) => o.tries = Some(100),
                Some(n) => o.tries = Some(n.min(100)),
                None => bad("not a number"),
            },
            ("timeout", Some(v)) => match parse_seconds(v) {
                Some(n) => o.timeout_secs = Some(n),
                None => bad("not a number of seconds"),
            },
            ("key-slot" | "keyslot", Some(v)) => match super::decimal::<u32>(v) {
                Some(n) if n <= crate::config::keys::MAX_KEYSLOT => o.keyslot = Some(n),
                _ => bad("not a LUKS2 keyslot (0-31)"),
            },
            ("keyfile-offset", Some(v)) => match super::decimal::<u64>(v) {
                Some(n) => o.keyfile_offset = Some(n),
                None => bad("not a number"),
            },
            ("keyfile-size", Some(v)) => match super::decimal::<u64>(v) {
                Some(n) if n > 0 && n <= crate::config::keys::MAX_KEY_BYTES => {
                    o.keyfile_size = Some(n)
                }
                _ => bad("not a size between 1 byte and 8 MiB"),
            },
            ("keyfile-timeout", Some(v)) => match parse_seconds(v) {
                Some(n) if n > 0 => o.keyfile_timeout_secs = Some(n),
                _ => bad("not a positive number of seconds"),
            },
            ("no-read-workqueue", None) => o.flags.push(ActivationFlag::NoReadWorkqueue),
            ("no-write-workqueue", None) => o.flags.push(ActivationFlag::NoWriteWorkqueue),
            ("same-cpu-crypt", None) => o.flags.push(ActivationFlag::SameCpuCrypt),
            ("submit-from-crypt-cpus", None) => o.flags.push(ActivationFlag::SubmitFromCryptCpus),
            // Meaningless in stage 1 or always true for ember: accepted silently.
            ("luks" | "x-initrd.attach" | "noauto" | "_netdev", None) => {}
            _ => bad("not supported by ember"),
        }
    }
    if o.read_only {
        o.flags.push(ActivationFlag::ReadOnly);
    }
    o.flags.sort();
    o.flags.dedup();
    o
}

/// `30`, `30s`, `2min` (systemd time spans, the common forms).
fn parse_seconds(v: &str) -> Option<u32> {
    if let Some(m) = v.strip_suffix("min") {
        return super::decimal::<u32>(m.trim())?.checked_mul(60);
    }
    super::decimal(v.strip_suffix('s').unwrap_or(v).trim())
}

impl LuksCmdline {
    /// Handles one `key[=value]` word if it is an `rd.luks` option; returns
    /// false for anything else. Problems go to `ignored`.
    pub fn parse_word(
        &mut self,
        key: &str,
        value: Option<&str>,
        ignored: &mut Vec<String>,
    ) -> bool {
        let Some(name) = key
            .strip_prefix("rd.")
            .unwrap_or(key)
            .strip_prefix("luks")
            .filter(|rest| rest.is_empty() || rest.starts_with('.'))
        else {
            return false;
        };
        let word = match value {
            Some(v) => format!("{key}={v}"),
            None => key.to_string(),
        };
        match (name, value) {
            ("", Some(v)) => match parse_bool(v) {
                Some(on) => self.disabled = !on,
                None => ignored.push(format!("{word}: expected 0 or 1")),
            },
            (".uuid", Some(v)) => match normalize_uuid(v) {
                Some(u) => {
                    if !self.uuids.contains(&u) {
                        self.uuids.push(u)
                    }
                }
                None => ignored.push(format!("{word}: not a UUID")),
            },
            (".name", Some(v)) => match v.split_once('=') {
                Some((u, n)) if normalize_uuid(u).is_some() && valid_name(n) => {
                    let u = normalize_uuid(u).unwrap_or_default();
                    self.names.retain(|(x, _)| *x != u);
                    self.names.push((u, n.to_string()));
                }
                _ => ignored.push(format!(
                    "{word}: expected UUID=NAME (NAME: letters, digits, `_-.+`)"
                )),
            },
            (".key", Some(v)) => {
                let (uuid, rest) = split_uuid_prefix(v);
                let (path, device) = match rest.split_once(':') {
                    Some((p, d)) => (p, Some(d)),
                    None => (rest, None),
                };
                let path = match AbsPath::parse(path) {
                    Ok(p) => p,
                    Err(e) => {
                        ignored.push(format!("{word}: keyfile: {e}"));
                        return true;
                    }
                };
                let device = match device.map(DeviceSpec::parse) {
                    None => None,
                    Some(Ok(d)) => Some(d),
                    Some(Err(e)) => {
                        ignored.push(format!("{word}: key device: {e}"));
                        return true;
                    }
                };
                self.keys.push(CmdlineKey { uuid, path, device });
            }
            (".options", Some(v)) => {
                let (uuid, rest) = split_uuid_prefix(v);
                let options = parse_options(rest, ignored);
                self.options.push(CmdlineOptions { uuid, options });
            }
            _ if name.is_empty() || key.starts_with("rd.") => {
                ignored.push(format!("{word}: not supported by ember"))
            }
            // `luks.crypttab=...` etc. without `rd.`: meant for the real system.
            _ => {}
        }
        true
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 127
        && n != "."
        && n != ".."
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.+".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "88986814-f388-442f-bde7-4f707059d440";

    fn parse(words: &[&str]) -> (LuksCmdline, Vec<String>) {
        let mut l = LuksCmdline::default();
        let mut ignored = Vec::new();
        for w in words {
            let (k, v) = match w.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (*w, None),
            };
            assert!(l.parse_word(k, v, &mut ignored), "{w} not taken");
        }
        (l, ignored)
    }

    #[test]
    fn uuids_normalise() {
        assert_eq!(normalize_uuid(&U.to_uppercase()).as_deref(), Some(U));
        assert_eq!(
            normalize_uuid(&format!("luks-{U}")).as_deref(),
            Some(U),
            "systemd's luks- prefix"
        );
        assert_eq!(
            normalize_uuid(&U.replace('-', "")).as_deref(),
            Some(U),
            "bare hex"
        );
        assert_eq!(normalize_uuid("LABEL=x"), None);
        assert_eq!(normalize_uuid("8898"), None);
    }

    #[test]
    fn switches_and_names() {
        let (l, ig) = parse(&[
            "rd.luks=0",
            &format!("rd.luks.uuid=luks-{U}"),
            &format!("rd.luks.name={U}=cryptroot"),
        ]);
        assert!(l.disabled);
        assert_eq!(l.uuids, vec![U.to_string()]);
        assert_eq!(l.names, vec![(U.to_string(), "cryptroot".to_string())]);
        assert!(ig.is_empty(), "{ig:?}");
        let (l, _) = parse(&["luks=no", "rd.luks=1"]);
        assert!(!l.disabled, "the last word wins");
    }

    #[test]
    fn keys_with_and_without_volume_and_device() {
        let (l, ig) = parse(&[
            "rd.luks.key=/etc/keys/all.key",
            &format!("rd.luks.key={U}=/root.key:LABEL=usbkey"),
        ]);
        assert!(ig.is_empty(), "{ig:?}");
        assert_eq!(l.keys[0].uuid, None);
        assert_eq!(l.keys[0].path.as_str(), "/etc/keys/all.key");
        assert_eq!(l.keys[0].device, None);
        assert_eq!(l.keys[1].uuid.as_deref(), Some(U));
        assert_eq!(l.keys[1].path.as_str(), "/root.key");
        assert_eq!(
            l.keys[1].device,
            Some(DeviceSpec::Label("usbkey".to_string()))
        );
    }

    #[test]
    fn options_typed_and_unknown_reported() {
        let (l, ig) = parse(&[
            "rd.luks.options=discard,tries=5,timeout=2min,key-slot=3,no-read-workqueue,readonly",
            &format!(
                "rd.luks.options={U}=keyfile-offset=16,keyfile-size=64,keyfile-timeout=5s,tries=0,bogus,luks"
            ),
        ]);
        let g = &l.options[0];
        assert_eq!(g.uuid, None);
        assert!(g.options.discard && g.options.read_only);
        assert_eq!(g.options.tries, Some(5));
        assert_eq!(g.options.timeout_secs, Some(120));
        assert_eq!(g.options.keyslot, Some(3));
        assert_eq!(
            g.options.flags,
            vec![ActivationFlag::ReadOnly, ActivationFlag::NoReadWorkqueue]
        );
        let v = &l.options[1];
        assert_eq!(v.uuid.as_deref(), Some(U));
        assert_eq!(v.options.keyfile_offset, Some(16));
        assert_eq!(v.options.keyfile_size, Some(64));
        assert_eq!(v.options.keyfile_timeout_secs, Some(5));
        assert_eq!(v.options.tries, Some(100), "tries=0 (unlimited) is capped");
        assert_eq!(ig.len(), 1, "{ig:?}");
        assert!(ig[0].contains("`bogus`: not supported by ember"), "{ig:?}");
    }

    #[test]
    fn bad_values_are_reported_not_dropped() {
        let (l, ig) = parse(&[
            "rd.luks.uuid=not-a-uuid",
            "rd.luks.name=cryptroot",
            "rd.luks.key=relative/key",
            "rd.luks=maybe",
            "rd.luks.crypttab=no",
            "rd.luks.options=key-slot=40",
        ]);
        assert!(l.uuids.is_empty() && l.names.is_empty() && l.keys.is_empty());
        assert_eq!(ig.len(), 6, "{ig:?}");
        let mut l = LuksCmdline::default();
        let mut ig = Vec::new();
        assert!(!l.parse_word("luksfoo", None, &mut ig));
        assert!(!l.parse_word("root", Some("x"), &mut ig));
        assert!(l.parse_word("luks.crypttab", Some("no"), &mut ig));
        assert!(ig.is_empty(), "luks.* without rd. is for the real system");
    }
}
