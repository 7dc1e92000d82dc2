//! The LUKS volumes a boot opens, and how: the config's `[[luks]]` entries
//! with the kernel command line's `rd.luks.*` applied (the command line
//! wins), and the order in which one key is tried against the keyslots.
//! Pure: `ember check --cmdline` shows exactly what boot will do.

use std::fmt;

use crate::cmdline::{ActivationFlag, LuksCmdline, LuksOptions};
use crate::config::keys::DEFAULT_KEY_DEVICE_TIMEOUT;
use crate::config::{AbsPath, Config, DeviceSpec, KeySpec};

/// Tries when a volume comes from the command line only.
const DEFAULT_TRIES: u32 = 3;

/// Which keyslot(s) to try first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SlotHint {
    #[default]
    None,
    Keyslot(u32),
    /// The keyslots this LUKS2 token is assigned to.
    Token(u32),
}

impl SlotHint {
    fn of(spec: &KeySpec) -> SlotHint {
        match (spec.keyslot, spec.token) {
            (Some(s), _) => SlotHint::Keyslot(s),
            (None, Some(t)) => SlotHint::Token(t),
            (None, None) => SlotHint::None,
        }
    }
}

/// One way to get a volume's key, in the order the volume lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Key bytes from a file in the initrd (`device: None`), a file on
    /// `device`'s filesystem, or `device` itself (`path: None`).
    Keyfile {
        field: String,
        path: Option<AbsPath>,
        device: Option<DeviceSpec>,
        offset: u64,
        size: Option<u64>,
        /// How long to wait for `device`.
        timeout_secs: u32,
        hint: SlotHint,
    },
    /// A typed passphrase: console or systemd password agents.
    Passphrase {
        field: String,
        tries: u32,
        timeout_secs: Option<u32>,
        hint: SlotHint,
    },
}

impl KeySource {
    pub fn field(&self) -> &str {
        match self {
            KeySource::Keyfile { field, .. } | KeySource::Passphrase { field, .. } => field,
        }
    }

    pub fn hint(&self) -> SlotHint {
        match self {
            KeySource::Keyfile { hint, .. } | KeySource::Passphrase { hint, .. } => *hint,
        }
    }

    fn set_hint(&mut self, new: SlotHint) {
        match self {
            KeySource::Keyfile { hint, .. } | KeySource::Passphrase { hint, .. } => *hint = new,
        }
    }

    pub fn is_passphrase(&self) -> bool {
        matches!(self, KeySource::Passphrase { .. })
    }

    fn from_spec(field: String, spec: &KeySpec, tries: u32, timeout: Option<u32>) -> KeySource {
        if spec.passphrase {
            KeySource::Passphrase {
                field,
                tries,
                timeout_secs: timeout,
                hint: SlotHint::of(spec),
            }
        } else {
            KeySource::Keyfile {
                field,
                path: spec.keyfile.clone(),
                device: spec.device.clone(),
                offset: spec.offset,
                size: spec.size,
                timeout_secs: spec.timeout_secs.unwrap_or(DEFAULT_KEY_DEVICE_TIMEOUT),
                hint: SlotHint::of(spec),
            }
        }
    }
}

/// What the key source is, for messages and the plan: never key material.
impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Keyfile {
                path,
                device,
                offset,
                size,
                ..
            } => {
                match (path, device) {
                    (Some(p), None) => write!(f, "keyfile {p}")?,
                    (Some(p), Some(d)) => write!(f, "keyfile {p} on {d}")?,
                    (None, Some(d)) => write!(f, "the raw key on {d}")?,
                    (None, None) => write!(f, "no key")?,
                }
                match (offset, size) {
                    (0, None) => {}
                    (o, None) => write!(f, " (from byte {o})")?,
                    (o, Some(s)) => write!(f, " ({s} bytes at offset {o})")?,
                }
            }
            KeySource::Passphrase { .. } => write!(f, "a passphrase")?,
        }
        Ok(())
    }
}

/// One volume to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// `luks[0]`, or the kernel option that added it (`rd.luks.uuid`).
    pub field: String,
    /// The device-mapper name.
    pub name: String,
    pub device: DeviceSpec,
    /// Tried in this order.
    pub keys: Vec<KeySource>,
    pub allow_discards: bool,
    /// Further dm-crypt flags (`rd.luks.options`).
    pub flags: Vec<ActivationFlag>,
}

impl Volume {
    pub fn has_passphrase(&self) -> bool {
        self.keys.iter().any(KeySource::is_passphrase)
    }

    fn uuid(&self) -> Option<String> {
        match &self.device {
            DeviceSpec::Uuid(u) => Some(u.to_ascii_lowercase()),
            _ => None,
        }
    }

    fn passphrase_only(field: &str, name: String, uuid: &str) -> Volume {
        Volume {
            field: field.to_string(),
            name,
            device: DeviceSpec::Uuid(uuid.to_string()),
            keys: vec![KeySource::Passphrase {
                field: field.to_string(),
                tries: DEFAULT_TRIES,
                timeout_secs: None,
                hint: SlotHint::None,
            }],
            allow_discards: false,
            flags: Vec::new(),
        }
    }
}

/// The plan's text for the key sources of one volume.
pub fn describe_keys(keys: &[KeySource]) -> String {
    keys.iter()
        .map(|k| {
            let mut s = match k {
                KeySource::Passphrase {
                    tries,
                    timeout_secs,
                    ..
                } => {
                    let mut s = format!("a passphrase from the console ({tries} tries");
                    if let Some(t) = timeout_secs {
                        s.push_str(&format!(", {t}s each"));
                    }
                    s.push(')');
                    s
                }
                KeySource::Keyfile {
                    device: Some(_),
                    timeout_secs,
                    ..
                } => format!("{k}, waiting up to {timeout_secs}s for the device"),
                KeySource::Keyfile { .. } => k.to_string(),
            };
            match k.hint() {
                SlotHint::None => {}
                SlotHint::Keyslot(n) => s.push_str(&format!(" [keyslot {n} first]")),
                SlotHint::Token(t) => s.push_str(&format!(" [token {t}'s keyslots first]")),
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

/// The volumes to open, in order, and warnings about what the command
/// line changed or could not apply.
pub fn volumes(config: &Config, cmd: &LuksCmdline) -> (Vec<Volume>, Vec<String>) {
    let mut warnings = Vec::new();
    if cmd.disabled {
        for (i, l) in config.luks.iter().enumerate() {
            warnings.push(format!(
                "luks[{i}]: rd.luks=0 on the kernel command line: not unlocking {} ({})",
                l.name, l.device
            ));
        }
        return (Vec::new(), warnings);
    }
    let mut out: Vec<(Volume, bool)> = config
        .luks
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let keys = l
                .key_specs()
                .iter()
                .enumerate()
                .map(|(k, spec)| {
                    KeySource::from_spec(
                        l.key_field(i, k),
                        spec,
                        l.passphrase_tries,
                        l.passphrase_timeout_secs,
                    )
                })
                .collect();
            let v = Volume {
                field: format!("luks[{i}]"),
                name: l.name.clone(),
                device: l.device.clone(),
                keys,
                allow_discards: l.allow_discards,
                flags: Vec::new(),
            };
            (v, !cmd.names_volumes())
        })
        .collect();

    // rd.luks.name / rd.luks.uuid: select (and add) volumes, as systemd does.
    for (uuid, name) in &cmd.names {
        if let Some((v, selected)) = out.iter_mut().find(|(v, _)| v.name == *name) {
            if v.uuid().as_deref() != Some(uuid.as_str()) {
                warnings.push(format!(
                    "{}: rd.luks.name={uuid}={name}: opening UUID={uuid} as {name} instead of the configured {}",
                    v.field, v.device
                ));
                v.device = DeviceSpec::Uuid(uuid.clone());
            }
            *selected = true;
        } else if let Some((v, selected)) = out
            .iter_mut()
            .find(|(v, _)| v.uuid().as_deref() == Some(uuid.as_str()))
        {
            warnings.push(format!(
                "{}: rd.luks.name={uuid}={name}: the config opens UUID={uuid} as {}; keeping that name (filesystems refer to it)",
                v.field, v.name
            ));
            *selected = true;
        } else {
            out.push((
                Volume::passphrase_only("rd.luks.name", name.clone(), uuid),
                true,
            ));
        }
    }
    for uuid in &cmd.uuids {
        if let Some((_, selected)) = out
            .iter_mut()
            .find(|(v, _)| v.uuid().as_deref() == Some(uuid.as_str()))
        {
            *selected = true;
        } else {
            out.push((
                Volume::passphrase_only("rd.luks.uuid", format!("luks-{uuid}"), uuid),
                true,
            ));
        }
    }
    let mut vols = Vec::new();
    for (v, selected) in out {
        if selected {
            vols.push(v);
        } else {
            warnings.push(format!(
                "{}: not unlocking {} ({}): rd.luks.uuid/rd.luks.name on the kernel command line do not name it (name it by UUID= in the config to match)",
                v.field, v.name, v.device
            ));
        }
    }

    // rd.luks.options: every volume's, then the volume's own (later wins).
    for o in &cmd.options {
        if let Some(u) = &o.uuid
            && !vols.iter().any(|v| v.uuid().as_deref() == Some(u.as_str()))
        {
            warnings.push(format!(
                "rd.luks.options={u}=...: no volume with UUID={u} is unlocked"
            ));
        }
    }
    for v in &mut vols {
        let mut opts = LuksOptions::default();
        let uuid = v.uuid();
        let applicable = cmd.options.iter().filter(|o| o.uuid.is_none()).chain(
            cmd.options
                .iter()
                .filter(|o| o.uuid.is_some() && o.uuid == uuid),
        );
        for o in applicable {
            merge(&mut opts, &o.options);
        }

        // rd.luks.key: before the configured sources.
        let mut keys: Vec<KeySource> = Vec::new();
        for k in &cmd.keys {
            if k.uuid.is_none() || k.uuid == uuid {
                keys.push(KeySource::Keyfile {
                    field: "rd.luks.key".to_string(),
                    path: Some(k.path.clone()),
                    device: k.device.clone(),
                    offset: opts.keyfile_offset.unwrap_or(0),
                    size: opts.keyfile_size,
                    timeout_secs: opts
                        .keyfile_timeout_secs
                        .unwrap_or(DEFAULT_KEY_DEVICE_TIMEOUT),
                    hint: SlotHint::None,
                });
            }
        }
        keys.append(&mut v.keys);
        v.keys = keys;

        if opts.discard {
            v.allow_discards = true;
        }
        for f in &opts.flags {
            if !v.flags.contains(f) {
                v.flags.push(*f);
            }
        }
        for k in &mut v.keys {
            if let KeySource::Passphrase {
                tries,
                timeout_secs,
                ..
            } = k
            {
                if let Some(t) = opts.tries {
                    *tries = t;
                }
                match opts.timeout_secs {
                    Some(0) => *timeout_secs = None,
                    Some(t) => *timeout_secs = Some(t),
                    None => {}
                }
            }
            if let Some(s) = opts.keyslot {
                k.set_hint(SlotHint::Keyslot(s));
            }
        }
    }
    for k in &cmd.keys {
        if let Some(u) = &k.uuid
            && !vols.iter().any(|v| v.uuid().as_deref() == Some(u.as_str()))
        {
            warnings.push(format!(
                "rd.luks.key={u}=...: no volume with UUID={u} is unlocked"
            ));
        }
    }
    (vols, warnings)
}

fn merge(into: &mut LuksOptions, from: &LuksOptions) {
    into.discard |= from.discard;
    into.read_only |= from.read_only;
    into.tries = from.tries.or(into.tries);
    into.timeout_secs = from.timeout_secs.or(into.timeout_secs);
    into.keyslot = from.keyslot.or(into.keyslot);
    into.keyfile_offset = from.keyfile_offset.or(into.keyfile_offset);
    into.keyfile_size = from.keyfile_size.or(into.keyfile_size);
    into.keyfile_timeout_secs = from.keyfile_timeout_secs.or(into.keyfile_timeout_secs);
    for f in &from.flags {
        if !into.flags.contains(f) {
            into.flags.push(*f);
        }
    }
}

/// A keyslot's priority in the LUKS2 header (`cryptsetup config --priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotPriority {
    /// Never tried unless asked for by number.
    Ignore,
    Normal,
    Prefer,
}

/// What the header says about one active keyslot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot: u32,
    pub priority: SlotPriority,
    /// LUKS2 tokens (TPM2, FIDO2, PKCS#11, ...) assigned to this keyslot.
    pub tokens: Vec<u32>,
}

/// The order in which one key (a keyfile or a typed passphrase) is tried
/// against a volume's keyslots. Each try costs a full key derivation
/// (hundreds of milliseconds to seconds, by design), so the order matters:
///
/// 1. the hinted keyslot, or the keyslots of the hinted token;
/// 2. keyslots with priority `prefer`, then `normal`, as libcryptsetup
///    orders them, but keyslots bound to a token last: their keys are
///    random secrets released by a TPM or a security key, never typed;
/// 3. `ignore` keyslots only when hinted.
pub fn keyslot_order(slots: &[SlotInfo], hint: SlotHint) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    match hint {
        SlotHint::None => {}
        SlotHint::Keyslot(n) => {
            if slots.iter().any(|s| s.slot == n) {
                out.push(n);
            }
        }
        SlotHint::Token(t) => {
            for s in slots.iter().filter(|s| s.tokens.contains(&t)) {
                out.push(s.slot);
            }
        }
    }
    let rank = |s: &SlotInfo| -> Option<u8> {
        let bound = !s.tokens.is_empty();
        match (s.priority, bound) {
            (SlotPriority::Ignore, _) => None,
            (SlotPriority::Prefer, false) => Some(0),
            (SlotPriority::Normal, false) => Some(1),
            (SlotPriority::Prefer, true) => Some(2),
            (SlotPriority::Normal, true) => Some(3),
        }
    };
    let mut rest: Vec<(u8, u32)> = slots
        .iter()
        .filter_map(|s| rank(s).map(|r| (r, s.slot)))
        .filter(|(_, n)| !out.contains(n))
        .collect();
    rest.sort();
    out.extend(rest.into_iter().map(|(_, n)| n));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::KernelCmdline;
    use crate::config::{Syntax, check_str};

    const REFERENCE: &str = include_str!("../examples/reference.toml");
    const U: &str = "88986814-f388-442f-bde7-4f707059d440";
    const V: &str = "0f0e0d0c-0b0a-0908-0706-050403020100";

    fn config(text: &str) -> Config {
        check_str(text, Syntax::Toml, "t").expect("valid").config
    }

    fn with_luks(luks: &str) -> Config {
        let start = REFERENCE.find("[[luks]]").expect("luks table");
        let end = REFERENCE.find("[[btrfs]]").expect("btrfs table");
        config(&format!(
            "{}{luks}\n{}",
            &REFERENCE[..start],
            &REFERENCE[end..]
        ))
    }

    fn vols(c: &Config, cmdline: &str) -> (Vec<Volume>, Vec<String>) {
        let cmd = KernelCmdline::parse(cmdline);
        assert!(cmd.ignored.is_empty(), "{:?}", cmd.ignored);
        volumes(c, &cmd.luks)
    }

    #[test]
    fn keyfile_field_is_a_one_entry_list() {
        let (v, w) = vols(&config(REFERENCE), "");
        assert!(w.is_empty());
        assert_eq!(v.len(), 1);
        assert_eq!(
            describe_keys(&v[0].keys),
            "keyfile /etc/ember/keys/cryptroot.key"
        );
        assert_eq!(v[0].keys[0].field(), "luks[0].keyfile");
    }

    #[test]
    fn ordered_key_sources_with_hints() {
        let c = with_luks(
            r#"[[luks]]
name = "cryptroot"
device = "LABEL=luks"
passphrase_tries = 4
passphrase_timeout_secs = 90
keys = [
  { keyfile = "/k.bin", device = "LABEL=usbkey", offset = 512, size = 64, timeout_secs = 3, keyslot = 2 },
  { keyfile = "/etc/ember/keys/root.key", token = 0 },
  { device = "PARTLABEL=rawkey", size = 4096 },
  "passphrase",
]
"#,
        );
        let (v, _) = vols(&c, "");
        assert_eq!(
            describe_keys(&v[0].keys),
            "keyfile /k.bin on LABEL=usbkey (64 bytes at offset 512), waiting up to 3s for the device [keyslot 2 first], \
             then keyfile /etc/ember/keys/root.key [token 0's keyslots first], \
             then the raw key on PARTLABEL=rawkey (4096 bytes at offset 0), waiting up to 10s for the device, \
             then a passphrase from the console (4 tries, 90s each)"
        );
        assert_eq!(v[0].keys[3].field(), "luks[0].keys[3]");
    }

    #[test]
    fn rd_luks_0_unlocks_nothing() {
        let (v, w) = vols(&config(REFERENCE), "rd.luks=0");
        assert!(v.is_empty());
        assert!(w[0].contains("rd.luks=0"), "{w:?}");
    }

    #[test]
    fn uuid_selects_configured_volumes_and_adds_unknown_ones() {
        let c = with_luks(&format!(
            "[[luks]]\nname = \"cryptroot\"\ndevice = \"UUID={U}\"\n\n[[luks]]\nname = \"data\"\ndevice = \"LABEL=data\"\n"
        ));
        let (v, w) = vols(
            &c,
            &format!("rd.luks.uuid={} rd.luks.uuid={V}", U.to_uppercase()),
        );
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, vec!["cryptroot", format!("luks-{V}").as_str()]);
        assert_eq!(v[1].field, "rd.luks.uuid");
        assert!(v[1].has_passphrase());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("luks[1]: not unlocking data"), "{w:?}");
    }

    #[test]
    fn name_redirects_a_configured_volume_or_adds_one() {
        let (v, w) = vols(&config(REFERENCE), &format!("rd.luks.name={U}=cryptroot"));
        assert_eq!(v[0].device, DeviceSpec::Uuid(U.into()));
        assert!(
            w[0].contains("instead of the configured LABEL=luks"),
            "{w:?}"
        );
        let (v, _) = vols(&config(REFERENCE), &format!("rd.luks.name={U}=other"));
        assert_eq!(v.len(), 1, "the configured volume is not named: skipped");
        assert_eq!(v[0].name, "other");
        // A configured UUID keeps its configured name.
        let c = with_luks(&format!(
            "[[luks]]\nname = \"cryptroot\"\ndevice = \"UUID={U}\"\n"
        ));
        let (v, w) = vols(&c, &format!("rd.luks.name={U}=renamed"));
        assert_eq!(v[0].name, "cryptroot");
        assert!(w[0].contains("keeping that name"), "{w:?}");
    }

    #[test]
    fn cmdline_key_comes_first_and_options_override_the_config() {
        let c = with_luks(&format!(
            "[[luks]]\nname = \"cryptroot\"\ndevice = \"UUID={U}\"\npassphrase_tries = 2\n"
        ));
        let (v, w) = vols(
            &c,
            &format!(
                "rd.luks.key={U}=/key.bin:LABEL=usb rd.luks.options=tries=7,discard rd.luks.options={U}=keyfile-offset=8,keyfile-size=32,keyfile-timeout=4,key-slot=1,timeout=0,no-read-workqueue"
            ),
        );
        assert!(w.is_empty(), "{w:?}");
        let v = &v[0];
        assert!(v.allow_discards);
        assert_eq!(v.flags, vec![ActivationFlag::NoReadWorkqueue]);
        assert_eq!(
            v.keys[0],
            KeySource::Keyfile {
                field: "rd.luks.key".into(),
                path: Some(AbsPath::parse("/key.bin").unwrap()),
                device: Some(DeviceSpec::Label("usb".into())),
                offset: 8,
                size: Some(32),
                timeout_secs: 4,
                hint: SlotHint::Keyslot(1),
            }
        );
        assert_eq!(
            v.keys[1],
            KeySource::Passphrase {
                field: "luks[0]".into(),
                tries: 7,
                timeout_secs: None,
                hint: SlotHint::Keyslot(1),
            }
        );
        let (_, w) = vols(
            &c,
            &format!("rd.luks.key={V}=/k rd.luks.options={V}=discard"),
        );
        assert_eq!(w.len(), 2, "{w:?}");
    }

    fn slot(slot: u32, priority: SlotPriority, tokens: &[u32]) -> SlotInfo {
        SlotInfo {
            slot,
            priority,
            tokens: tokens.to_vec(),
        }
    }

    #[test]
    fn keyslot_order_follows_hints_priorities_and_tokens() {
        use SlotPriority::*;
        let slots = vec![
            slot(0, Normal, &[0]), // TPM2-bound
            slot(1, Normal, &[]),
            slot(2, Ignore, &[]),
            slot(3, Prefer, &[]),
            slot(4, Normal, &[1]), // FIDO2-bound
            slot(7, Normal, &[]),
        ];
        assert_eq!(keyslot_order(&slots, SlotHint::None), vec![3, 1, 7, 0, 4]);
        assert_eq!(
            keyslot_order(&slots, SlotHint::Keyslot(7)),
            vec![7, 3, 1, 0, 4]
        );
        assert_eq!(
            keyslot_order(&slots, SlotHint::Keyslot(2)),
            vec![2, 3, 1, 7, 0, 4],
            "an ignored keyslot is tried when asked for"
        );
        assert_eq!(
            keyslot_order(&slots, SlotHint::Keyslot(9)),
            vec![3, 1, 7, 0, 4],
            "a hint naming an inactive keyslot is harmless"
        );
        assert_eq!(
            keyslot_order(&slots, SlotHint::Token(1)),
            vec![4, 3, 1, 7, 0]
        );
    }
}
