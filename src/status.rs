//! `ember status`: what is there (devices, mapper state, mounted subvolumes,
//! persisted paths) and what the last boot did, with timings. The boot path
//! writes its record to [`LAST_BOOT_PATH`] (`/run` moves into the new root at
//! switch root, so the running system can read it). Gathering lives in the
//! binary; the types, the mountinfo parser and the rendering here are pure.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Where the boot path records what it did.
pub const LAST_BOOT_PATH: &str = "/run/ember/last-boot.json";

/// What one boot (attempt) did. Written on success just before switch root,
/// and on failure before the failure policy. Holds no key material.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootRecord {
    pub ember_version: String,
    /// 1 for the first attempt; more after `retry` or a rescue shell's `exit 0`.
    pub attempt: u32,
    /// When ember started, after the kernel's start.
    pub started_after_kernel_ms: u64,
    pub total_ms: u64,
    /// `switching root`, `failed`.
    pub outcome: String,
    pub error: Option<String>,
    /// The failure policy applied after `error`.
    pub policy: Option<String>,
    pub phases: Vec<PhaseTime>,
    pub steps: Vec<StepRecord>,
    pub volumes: Vec<VolumeRecord>,
    pub persist_refused: usize,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: String,
    pub ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The plan's text for the step.
    pub step: String,
    pub phase: String,
    pub ms: u64,
    pub ok: bool,
}

/// How one LUKS volume was opened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// As configured (`LABEL=luks`).
    pub device: String,
    /// The device node it resolved to.
    pub path: String,
    /// `keyfile /etc/...`, `a passphrase (console)`, `already open`.
    pub key: String,
    pub key_field: String,
    pub keyslot: Option<u32>,
    /// Keyslots tried (key derivations run) with the key that fitted.
    pub keyslots_tried: usize,
    pub ms: u64,
    /// The volume whose typed passphrase also opened this one.
    pub opened_with: Option<String>,
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// The path inside the filesystem that is mounted (`/root` for a subvolume).
    pub root: String,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a
/// backslash, ...): the field's bytes, which need not be UTF-8.
pub fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn unescape(s: &str) -> String {
    String::from_utf8_lossy(&unescape_mountinfo(s)).into_owned()
}

/// Parses `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if fields.len() < 5 || sep + 2 >= fields.len() {
                return None;
            }
            Some(MountEntry {
                root: unescape(fields[3]),
                mount_point: unescape(fields[4]),
                fstype: fields[sep + 1].to_string(),
                source: unescape(fields[sep + 2]),
            })
        })
        .collect()
}

/// Everything `ember status` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub ember_version: String,
    /// The config read, if any.
    pub config: Option<String>,
    pub config_error: Option<String>,
    pub sysroot: String,
    pub volumes: Vec<VolumeStatus>,
    pub devices: Vec<DeviceStatus>,
    pub subvolumes: Vec<SubvolumeStatus>,
    pub persist: Vec<PersistStatus>,
    pub last_boot: Option<BootRecord>,
    /// Why there is no record (`no boot record at ...`).
    pub last_boot_note: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub field: String,
    pub name: String,
    pub device: String,
    /// The device node the spec resolves to now, if present.
    pub resolved: Option<String>,
    pub open: bool,
    /// `dm-0`.
    pub dm_node: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub name: String,
    /// `TYPE=... LABEL=...`, as blkid sees it.
    pub tags: String,
    /// Config fields that want this device.
    pub wanted_by: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubvolumeStatus {
    pub field: String,
    pub device: String,
    pub subvolume: String,
    pub mount_point: String,
    /// Where it is mounted now (under the new root, or at its place after switch root).
    pub mounted_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistStatus {
    pub field: String,
    pub kind: String,
    pub method: String,
    pub source: String,
    pub target: String,
    /// `mounted`, `missing`, `refused: ...`, as `ember persist --dry-run` says.
    pub state: String,
}

/// Where a configured subvolume is mounted, looking under `sysroot` and at
/// its final place.
pub fn find_subvolume_mount<'a>(
    mounts: &'a [MountEntry],
    subvolume: &str,
    mount_point: &str,
    sysroot: &str,
) -> Option<&'a MountEntry> {
    let root = format!("/{}", subvolume.trim_matches('/'));
    let under = if mount_point == "/" {
        sysroot.to_string()
    } else {
        format!("{}{mount_point}", sysroot.trim_end_matches('/'))
    };
    mounts
        .iter()
        .rev()
        .find(|m| m.fstype == "btrfs" && m.root == root && m.mount_point == under)
        .or_else(|| {
            mounts
                .iter()
                .rev()
                .find(|m| m.fstype == "btrfs" && m.root == root && m.mount_point == mount_point)
        })
}

fn ms(v: u64) -> String {
    format!("{v}ms")
}

/// The readable form.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ember {} status", s.ember_version);
    match (&s.config, &s.config_error) {
        (Some(c), None) => {
            let _ = writeln!(o, "config: {c}; new root: {}", s.sysroot);
        }
        (_, Some(e)) => {
            let _ = writeln!(o, "config: {e}");
        }
        (None, None) => {
            let _ = writeln!(o, "config: none found");
        }
    }

    let _ = writeln!(o, "\nLUKS volumes:");
    if s.volumes.is_empty() {
        let _ = writeln!(o, "  (none configured)");
    }
    for v in &s.volumes {
        let state = match (v.open, &v.dm_node, &v.resolved) {
            (true, Some(dm), _) => format!("open as /dev/mapper/{} ({dm})", v.name),
            (true, None, _) => format!("open as /dev/mapper/{}", v.name),
            (false, _, Some(r)) => format!("closed; the device is {r}"),
            (false, _, None) => "closed; the device is not present".to_string(),
        };
        let _ = writeln!(o, "  {:<12} {} ({}): {state}", v.name, v.device, v.field);
    }

    let _ = writeln!(o, "\nBlock devices:");
    for d in &s.devices {
        let mut line = format!("  {:<8}", d.name);
        if !d.tags.is_empty() {
            line.push_str(&format!(" {}", d.tags));
        }
        if !d.wanted_by.is_empty() {
            line.push_str(&format!("  <- {}", d.wanted_by.join(", ")));
        }
        let _ = writeln!(o, "{}", line.trim_end());
    }

    let _ = writeln!(o, "\nSubvolumes:");
    for sv in &s.subvolumes {
        let state = match &sv.mounted_at {
            Some(at) => format!("mounted at {at}"),
            None => "not mounted".to_string(),
        };
        let _ = writeln!(
            o,
            "  {:<12} {} of {}: {state}",
            sv.mount_point, sv.subvolume, sv.device
        );
    }

    let _ = writeln!(o, "\nPersisted paths:");
    if s.persist.is_empty() {
        let _ = writeln!(o, "  (none configured)");
    }
    for p in &s.persist {
        let _ = writeln!(
            o,
            "  {} {} -> {} ({}): {}",
            p.kind, p.source, p.target, p.method, p.state
        );
    }

    let _ = writeln!(o, "\nLast boot:");
    match &s.last_boot {
        None => {
            let _ = writeln!(
                o,
                "  {}",
                s.last_boot_note.as_deref().unwrap_or("no record")
            );
        }
        Some(b) => {
            let outcome = match &b.error {
                Some(e) => format!("{}: {e}", b.outcome),
                None => b.outcome.clone(),
            };
            let _ = writeln!(o, "  attempt {}: {outcome}", b.attempt);
            if let Some(p) = &b.policy {
                let _ = writeln!(o, "  then: {p}");
            }
            let phases: Vec<String> = b
                .phases
                .iter()
                .map(|p| format!("{} {}", p.phase, ms(p.ms)))
                .collect();
            let _ = writeln!(
                o,
                "  started {} after the kernel; {} in total: {}",
                ms(b.started_after_kernel_ms),
                ms(b.total_ms),
                phases.join(", ")
            );
            for v in &b.volumes {
                let how = match (&v.opened_with, v.keyslot) {
                    (Some(other), Some(k)) => {
                        format!("with the passphrase typed for {other} (keyslot {k})")
                    }
                    (None, Some(k)) => format!(
                        "with {} ({}), keyslot {k}, {} keyslot(s) tried",
                        v.key, v.key_field, v.keyslots_tried
                    ),
                    (_, None) => v.key.clone(),
                };
                let _ = writeln!(
                    o,
                    "  {} ({} on {}): {how}, {}",
                    v.name,
                    v.device,
                    v.path,
                    ms(v.ms)
                );
            }
            for st in &b.steps {
                let _ = writeln!(
                    o,
                    "  {:>6} {} {}",
                    ms(st.ms),
                    if st.ok { "ok  " } else { "FAIL" },
                    st.step
                );
            }
            if b.persist_refused > 0 {
                let _ = writeln!(o, "  {} persisted path(s) refused", b.persist_refused);
            }
            for w in &b.warnings {
                let _ = writeln!(o, "  warning: {w}");
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - rootfs rootfs rw
30 22 253:0 /root /sysroot rw,noatime - btrfs /dev/mapper/cryptroot rw,compress=zstd:3
31 30 253:0 /home /sysroot/home rw,noatime - btrfs /dev/mapper/cryptroot rw
32 30 253:0 /persist/etc/machine-id /sysroot/etc/machine-id rw - btrfs /dev/mapper/cryptroot rw
33 22 0:5 / /my\\040dir rw shared:2 - tmpfs none rw
";

    #[test]
    fn mountinfo_parses_with_optional_fields_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].root, "/root");
        assert_eq!(m[1].mount_point, "/sysroot");
        assert_eq!(m[1].fstype, "btrfs");
        assert_eq!(m[1].source, "/dev/mapper/cryptroot");
        assert_eq!(m[4].mount_point, "/my dir");
        assert_eq!(m[4].fstype, "tmpfs");
    }

    #[test]
    fn subvolume_mounts_are_found_under_the_new_root_or_in_place() {
        let m = parse_mountinfo(MOUNTINFO);
        let at =
            |sv, mp| find_subvolume_mount(&m, sv, mp, "/sysroot").map(|e| e.mount_point.clone());
        assert_eq!(at("root", "/").as_deref(), Some("/sysroot"));
        assert_eq!(at("home", "/home").as_deref(), Some("/sysroot/home"));
        assert_eq!(at("nix", "/nix"), None);
        let after_switch = "40 1 253:0 /root / rw - btrfs /dev/mapper/cryptroot rw\n";
        let m = parse_mountinfo(after_switch);
        assert!(find_subvolume_mount(&m, "root", "/", "/sysroot").is_some());
    }

    fn sample() -> Status {
        Status {
            ember_version: "0.1.0".into(),
            config: Some("/etc/ember/config.json".into()),
            config_error: None,
            sysroot: "/sysroot".into(),
            volumes: vec![VolumeStatus {
                field: "luks[0]".into(),
                name: "cryptroot".into(),
                device: "LABEL=luks".into(),
                resolved: Some("/dev/vda2".into()),
                open: true,
                dm_node: Some("dm-0".into()),
            }],
            devices: vec![
                DeviceStatus {
                    name: "vda2".into(),
                    tags: "(TYPE=crypto_LUKS LABEL=luks)".into(),
                    wanted_by: vec!["luks[0].device".into()],
                },
                DeviceStatus {
                    name: "vda".into(),
                    ..Default::default()
                },
            ],
            subvolumes: vec![SubvolumeStatus {
                field: "btrfs[0].subvolumes[0]".into(),
                device: "/dev/mapper/cryptroot".into(),
                subvolume: "root".into(),
                mount_point: "/".into(),
                mounted_at: Some("/sysroot".into()),
            }],
            persist: vec![PersistStatus {
                field: "persist[0].files[0]".into(),
                kind: "file".into(),
                method: "bind".into(),
                source: "/persist/etc/machine-id".into(),
                target: "/etc/machine-id".into(),
                state: "missing".into(),
            }],
            last_boot: Some(BootRecord {
                ember_version: "0.1.0".into(),
                attempt: 1,
                started_after_kernel_ms: 1200,
                total_ms: 2345,
                outcome: "failed".into(),
                error: Some("init /sbin/init is missing".into()),
                policy: Some("rescue shell".into()),
                phases: vec![PhaseTime {
                    phase: "unlock".into(),
                    ms: 812,
                }],
                steps: vec![StepRecord {
                    step: "unlock LABEL=luks as /dev/mapper/cryptroot with a passphrase from the console (3 tries)".into(),
                    phase: "unlock".into(),
                    ms: 812,
                    ok: true,
                }],
                volumes: vec![VolumeRecord {
                    name: "cryptroot".into(),
                    device: "LABEL=luks".into(),
                    path: "/dev/vda2".into(),
                    key: "a passphrase (console)".into(),
                    key_field: "luks[0]".into(),
                    keyslot: Some(1),
                    keyslots_tried: 1,
                    ms: 812,
                    opened_with: None,
                }],
                persist_refused: 0,
                warnings: vec![],
            }),
            last_boot_note: None,
        }
    }

    #[test]
    fn renders_every_section() {
        let text = render(&sample());
        let expect = [
            "config: /etc/ember/config.json; new root: /sysroot",
            "  cryptroot    LABEL=luks (luks[0]): open as /dev/mapper/cryptroot (dm-0)",
            "  vda2     (TYPE=crypto_LUKS LABEL=luks)  <- luks[0].device",
            "  vda\n",
            "  /            root of /dev/mapper/cryptroot: mounted at /sysroot",
            "  file /persist/etc/machine-id -> /etc/machine-id (bind): missing",
            "  attempt 1: failed: init /sbin/init is missing",
            "  then: rescue shell",
            "  started 1200ms after the kernel; 2345ms in total: unlock 812ms",
            "  cryptroot (LABEL=luks on /dev/vda2): with a passphrase (console) (luks[0]), keyslot 1, 1 keyslot(s) tried, 812ms",
            "   812ms ok   unlock LABEL=luks",
        ];
        for e in expect {
            assert!(text.contains(e), "missing {e:?} in\n{text}");
        }
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let json = serde_json::to_string(&s).expect("json");
        let back: Status = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, s);
    }
}
