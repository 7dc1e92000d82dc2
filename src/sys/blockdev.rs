//! Block device discovery: what the kernel has (sysfs + uevents), what is on
//! it (libblkid superblock probe), and the `/dev/disk/by-*` links udev would
//! make, created by ember itself because a minimal initrd has no udev.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

use libblkid_rs::{BlkidProbe, BlkidSublks, BlkidSublksFlags};

use super::gpt;
use super::uevent::UeventSocket;
use crate::config::DeviceSpec;
use crate::config::device::udev_escape;
use crate::plan::Wanted;

/// One block device and the identities it can be found by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name (`vda2`, `dm-0`).
    pub name: String,
    pub fstype: Option<String>,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub partlabel: Option<String>,
    pub partuuid: Option<String>,
    /// Device-mapper name (`cryptroot`) for dm devices.
    pub dm_name: Option<String>,
}

impl BlockDevice {
    pub fn devnode(&self) -> String {
        format!("/dev/{}", self.name)
    }

    pub fn matches(&self, spec: &DeviceSpec) -> bool {
        let eq = |a: &Option<String>, b: &str| a.as_deref() == Some(b);
        let eq_ci =
            |a: &Option<String>, b: &str| a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(b));
        match spec {
            DeviceSpec::Label(v) => eq(&self.label, v),
            DeviceSpec::Uuid(v) => eq_ci(&self.uuid, v),
            DeviceSpec::PartLabel(v) => eq(&self.partlabel, v),
            DeviceSpec::PartUuid(v) => eq_ci(&self.partuuid, v),
            DeviceSpec::Path(p) => {
                *p == self.devnode()
                    || spec.mapper_name().is_some_and(|n| eq(&self.dm_name, n))
                    || spec.by_link().is_none() && by_links(self).iter().any(|l| l == p)
            }
        }
    }
}

impl fmt::Display for BlockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        let mut tags = Vec::new();
        if let Some(v) = &self.dm_name {
            tags.push(format!("DM_NAME={v}"));
        }
        if let Some(v) = &self.fstype {
            tags.push(format!("TYPE={v}"));
        }
        if let Some(v) = &self.label {
            tags.push(format!("LABEL={v}"));
        }
        if let Some(v) = &self.partlabel {
            tags.push(format!("PARTLABEL={v}"));
        }
        if let Some(v) = &self.uuid {
            tags.push(format!("UUID={v}"));
        }
        if !tags.is_empty() {
            write!(f, " ({})", tags.join(" "))?;
        }
        Ok(())
    }
}

/// The `/dev/disk/by-*` (and `/dev/mapper`) names udev would give this device.
pub fn by_links(dev: &BlockDevice) -> Vec<String> {
    let mut links = Vec::new();
    let mut add = |dir: &str, v: &Option<String>| {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            links.push(format!("/dev/disk/{dir}/{}", udev_escape(v)));
        }
    };
    add("by-label", &dev.label);
    add("by-uuid", &dev.uuid);
    add("by-partlabel", &dev.partlabel);
    add("by-partuuid", &dev.partuuid);
    links
}

fn read_uevent(name: &str) -> BTreeMap<String, String> {
    fs::read_to_string(format!("/sys/class/block/{name}/uevent"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sysfs_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The whole disk a partition belongs to (`vda` for `vda2`), from sysfs.
fn parent_disk(name: &str) -> Option<String> {
    let link = fs::canonicalize(format!("/sys/class/block/{name}")).ok()?;
    let parent = link.parent()?;
    if !parent.join("partition").exists() && parent.join("dev").exists() {
        return parent.file_name()?.to_str().map(str::to_string);
    }
    None
}

/// Reads everything ember matches devices by. Devices without a recognised
/// signature (or unreadable ones, like an empty CD drive) still appear,
/// with no tags.
pub fn probe(name: &str) -> BlockDevice {
    let uevent = read_uevent(name);
    let mut dev = BlockDevice {
        name: name.to_string(),
        partlabel: uevent.get("PARTNAME").cloned(),
        dm_name: sysfs_trimmed(&format!("/sys/class/block/{name}/dm/name")),
        ..Default::default()
    };
    if let Some(number) = uevent.get("PARTN").and_then(|n| n.parse::<u32>().ok())
        && let Some(disk) = parent_disk(name)
    {
        let sector = sysfs_trimmed(&format!("/sys/class/block/{disk}/queue/logical_block_size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(512);
        dev.partuuid = gpt::partition_uuid(&format!("/dev/{disk}"), sector, number)
            .ok()
            .flatten();
    }
    if let Ok(mut probe) = BlkidProbe::new_from_filename(Path::new(&dev.devnode())) {
        let flags = BlkidSublksFlags::new(vec![
            BlkidSublks::Label,
            BlkidSublks::Uuid,
            BlkidSublks::Type,
        ]);
        let _ = probe.enable_superblocks(true);
        let _ = probe.set_superblock_flags(flags);
        if probe.do_safeprobe().is_ok() {
            dev.fstype = probe.lookup_value("TYPE").ok();
            dev.label = probe.lookup_value("LABEL").ok();
            dev.uuid = probe.lookup_value("UUID").ok();
        }
    }
    dev
}

/// A device that did not show up in time.
#[derive(Debug, Clone)]
pub struct Missing {
    pub wanted: Vec<Wanted>,
    pub seen: Vec<String>,
    pub waited: Duration,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .wanted
            .iter()
            .map(|w| format!("{} ({})", w.spec, w.field))
            .collect();
        write!(
            f,
            "no device matching {} appeared within {}s; block devices seen: {}",
            names.join(", "),
            self.waited.as_secs(),
            if self.seen.is_empty() {
                "none".to_string()
            } else {
                self.seen.join(", ")
            }
        )
    }
}

/// The registry of known block devices, fed by a cold-plug scan and uevents.
pub struct Devices {
    socket: Option<UeventSocket>,
    known: BTreeMap<String, BlockDevice>,
    /// Whether to create `/dev/disk/by-*` links (only as the initrd's init).
    make_links: bool,
}

impl Devices {
    /// Opens the uevent socket, then scans sysfs: in that order, so a device
    /// added in between is announced by an event rather than missed.
    pub fn start(make_links: bool) -> Devices {
        let socket = match UeventSocket::open() {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!(
                    "cannot listen for uevents ({e}); falling back to rescanning sysfs every 100 ms"
                );
                None
            }
        };
        let mut devices = Devices {
            socket,
            known: BTreeMap::new(),
            make_links,
        };
        devices.scan();
        devices
    }

    pub fn all(&self) -> impl Iterator<Item = &BlockDevice> {
        self.known.values()
    }

    /// Probes every device in sysfs not yet known.
    pub fn scan(&mut self) {
        let Ok(entries) = fs::read_dir("/sys/class/block") else {
            return;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            if !self.known.contains_key(&name) {
                self.add(&name);
            }
        }
    }

    /// (Re-)probes one device, e.g. after it was unlocked.
    pub fn add(&mut self, name: &str) {
        let dev = probe(name);
        log::debug!("block device {dev}");
        if self.make_links {
            make_links(&dev);
        }
        self.known.insert(name.to_string(), dev);
    }

    pub fn find(&self, spec: &DeviceSpec) -> Option<&BlockDevice> {
        self.known.values().find(|d| d.matches(spec))
    }

    /// Resolves a spec to a device node path, or `None` if absent.
    /// A path spec resolves to itself (so mounts show `/dev/mapper/cryptroot`,
    /// not `/dev/dm-0`); tags resolve to the kernel's device node.
    pub fn resolve(&self, spec: &DeviceSpec) -> Option<String> {
        if let DeviceSpec::Path(p) = spec
            && fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
        {
            return Some(p.clone());
        }
        self.find(spec).map(BlockDevice::devnode)
    }

    fn seen(&self) -> Vec<String> {
        self.known.values().map(|d| d.to_string()).collect()
    }

    /// Waits until every wanted device resolves, reacting to uevents.
    pub fn wait_for(
        &mut self,
        wanted: &[Wanted],
        timeout: Duration,
    ) -> Result<Vec<String>, Missing> {
        let start = Instant::now();
        loop {
            let missing: Vec<Wanted> = wanted
                .iter()
                .filter(|w| self.resolve(&w.spec).is_none())
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(wanted
                    .iter()
                    .filter_map(|w| self.resolve(&w.spec))
                    .collect());
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(Missing {
                    wanted: missing,
                    seen: self.seen(),
                    waited: timeout,
                });
            }
            let remaining = timeout - elapsed;
            match &self.socket {
                Some(socket) => match socket.wait(remaining) {
                    Ok(events) => {
                        for e in events.iter().filter(|e| e.subsystem == "block") {
                            match (e.action.as_str(), &e.devname) {
                                ("add" | "change", Some(name)) => self.add(name),
                                ("remove", Some(name)) => {
                                    self.known.remove(name);
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(e) => {
                        log::warn!("uevent socket failed ({e}); rescanning sysfs instead");
                        self.socket = None;
                    }
                },
                None => {
                    std::thread::sleep(remaining.min(Duration::from_millis(100)));
                    self.scan();
                }
            }
        }
    }
}

/// Creates the udev-style links for one device, relative like udev's
/// (`../../vda2`), so they stay right after /dev moves into the new root.
fn make_links(dev: &BlockDevice) {
    for link in by_links(dev) {
        let path = Path::new(&link);
        if let Some(dir) = path.parent()
            && let Err(e) = fs::create_dir_all(dir)
        {
            log::warn!("cannot create {}: {e}", dir.display());
            continue;
        }
        match fs::symlink_metadata(path) {
            Ok(_) => {
                // First come, first served, like udev without link priorities.
                if fs::read_link(path).ok().as_deref()
                    != Some(Path::new(&format!("../../{}", dev.name)))
                {
                    log::warn!(
                        "{link} already points elsewhere; not repointing it to {}",
                        dev.devnode()
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Err(e) = std::os::unix::fs::symlink(format!("../../{}", dev.name), path) {
                    log::warn!("cannot create link {link}: {e}");
                }
            }
            Err(e) => log::warn!("cannot inspect {link}: {e}"),
        }
    }
}
