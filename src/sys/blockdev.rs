//! Block device discovery: what the kernel has (sysfs + uevents), what is on
//! it (libblkid superblock probe), and the `/dev/disk/by-*` links udev would
//! make, created by ember itself because a minimal initrd has no udev.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libblkid_rs::{BlkidProbe, BlkidSublks, BlkidSublksFlags};

use super::gpt;
use super::uevent::{Uevent, UeventSocket, clear_eventfd, eventfd, poll_readable, signal_eventfd};
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

/// The registry of known block devices, kept current by a prober thread:
/// a cold-plug scan of sysfs, then every uevent as it arrives. Probing
/// (libblkid reads each device) thus runs while the caller does other work:
/// the boot starts the registry before loading kernel modules, so the disks
/// the modules bring up are probed while the rest of the modules load, and a
/// freshly unlocked mapper device is probed while the first mounts run.
pub struct Devices {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever the registry changes or a settle request is answered.
    changed: Condvar,
    /// Wakes the prober from poll(2) (settle and stop requests); `None`
    /// when there is no prober.
    wake: Option<OwnedFd>,
    /// Whether to create `/dev/disk/by-*` links (only as the initrd's init).
    make_links: bool,
}

#[derive(Default)]
struct State {
    known: BTreeMap<String, BlockDevice>,
    /// Bumped on every change of `known`, so a waiter cannot miss one.
    generation: u64,
    /// Settle requests made and answered: a request is answered once the
    /// prober has handled every queued uevent and probed every device sysfs
    /// lists that it did not know.
    requested: u64,
    answered: u64,
    stop: bool,
    /// No prober thread runs (it could not be started, or it ended): callers
    /// scan sysfs themselves.
    no_prober: bool,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The names of the block devices in sysfs.
fn sysfs_names() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    // Partitions before whole disks: a partitioned disk rarely carries
    // anything a config names, so the wanted device is usually found sooner.
    names.sort_by_key(|n| {
        (
            fs::metadata(format!("/sys/class/block/{n}/partition")).is_err(),
            n.clone(),
        )
    });
    names
}

impl Shared {
    /// Probes `name` (without holding the lock: a probe reads the device)
    /// and records the result.
    fn probe_and_insert(&self, name: &str) {
        let dev = probe(name);
        log::debug!("block device {dev}");
        if self.make_links {
            make_links(&dev);
        }
        let mut st = lock(self);
        st.known.insert(name.to_string(), dev);
        st.generation += 1;
        drop(st);
        self.changed.notify_all();
    }

    fn remove(&self, name: &str) {
        let mut st = lock(self);
        st.known.remove(name);
        st.generation += 1;
        drop(st);
        self.changed.notify_all();
    }

    fn wake(&self) {
        if let Some(fd) = &self.wake {
            signal_eventfd(fd.as_fd());
        }
    }

    /// Probes every device in sysfs not yet known.
    fn scan(&self) {
        for name in sysfs_names() {
            if !lock(self).known.contains_key(&name) {
                self.probe_and_insert(&name);
            }
        }
    }

    fn handle(&self, events: &[Uevent]) {
        for e in events.iter().filter(|e| e.subsystem == "block") {
            match (e.action.as_str(), &e.devname) {
                // A change (a mapper device's table loaded, a partition
                // table rewritten) may change what is on the device: re-probe.
                ("add" | "change", Some(name)) => self.probe_and_insert(name),
                ("remove", Some(name)) => self.remove(name),
                _ => {}
            }
        }
    }
}

/// The prober thread: cold-plug scan, then uevents until asked to stop.
fn prober(shared: Arc<Shared>, wake: BorrowedFd<'_>, mut socket: Option<UeventSocket>) {
    shared.scan();
    loop {
        let (requested, answered, stop) = {
            let st = lock(&shared);
            (st.requested, st.answered, st.stop)
        };
        if requested > answered || stop {
            // Catch up: every event the kernel queued so far, then sysfs.
            if let Some(s) = &socket
                && let Ok(received) = s.drain()
            {
                shared.handle(&received.events);
            }
            shared.scan();
            lock(&shared).answered = requested;
            shared.changed.notify_all();
            if stop {
                return;
            }
            continue;
        }
        match &socket {
            Some(s) => match s.wait_or_wake(wake, Duration::from_secs(3600)) {
                Ok(received) => {
                    shared.handle(&received.events);
                    if received.overflowed {
                        // Events were lost: at least pick up what appeared.
                        shared.scan();
                    }
                }
                Err(e) => {
                    log::warn!("uevent socket failed ({e}); rescanning sysfs instead");
                    socket = None;
                }
            },
            None => {
                if let Ok(ready) = poll_readable(&[wake], Duration::from_millis(100))
                    && ready.first().copied().unwrap_or(false)
                {
                    clear_eventfd(wake);
                }
                shared.scan();
            }
        }
    }
}

impl Devices {
    /// Opens the uevent socket, then starts the prober, which scans sysfs:
    /// in that order, so a device added in between is announced by an event
    /// rather than missed. Returns at once; lookups wait for the prober
    /// where they need to.
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
        let wake = eventfd()
            .map_err(|e| {
                log::warn!(
                    "cannot create an eventfd ({e}); probing block devices in the foreground"
                )
            })
            .ok();
        let has_wake = wake.is_some();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            wake,
            make_links,
        });
        let thread = if has_wake {
            let for_thread = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("ember-devices".into())
                .spawn(move || {
                    if let Some(fd) = &for_thread.wake {
                        let fd = fd.as_fd();
                        prober(Arc::clone(&for_thread), fd, socket);
                    }
                })
                .map_err(|e| log::warn!("cannot start the device prober ({e}); probing block devices in the foreground"))
                .ok()
        } else {
            None
        };
        if thread.is_none() {
            lock(&shared).no_prober = true;
            shared.scan();
        }
        Devices { shared, thread }
    }

    /// Waits until the registry reflects everything the kernel has announced
    /// so far (queued uevents handled, every device in sysfs probed).
    pub fn settle(&self) {
        let mut st = lock(&self.shared);
        if st.no_prober {
            drop(st);
            self.shared.scan();
            return;
        }
        st.requested += 1;
        let want = st.requested;
        self.shared.wake();
        while st.answered < want && !st.no_prober {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Every known device (after [`Devices::settle`]).
    pub fn all(&self) -> Vec<BlockDevice> {
        self.settle();
        lock(&self.shared).known.values().cloned().collect()
    }

    /// Asks the prober to look for devices it does not know yet (e.g. after
    /// unlocking, the new mapper device) without waiting for it: a later
    /// lookup that needs the device waits then.
    pub fn scan(&mut self) {
        if lock(&self.shared).no_prober {
            self.shared.scan();
            return;
        }
        lock(&self.shared).requested += 1;
        self.shared.wake();
    }

    /// (Re-)probes one device now, e.g. after it was unlocked.
    pub fn add(&mut self, name: &str) {
        self.shared.probe_and_insert(name);
    }

    fn find_known(&self, spec: &DeviceSpec) -> Option<BlockDevice> {
        lock(&self.shared)
            .known
            .values()
            .find(|d| d.matches(spec))
            .cloned()
    }

    /// The device matching `spec`; if none is known, after letting the
    /// prober catch up with what the kernel has announced.
    pub fn find(&self, spec: &DeviceSpec) -> Option<BlockDevice> {
        self.find_known(spec).or_else(|| {
            self.settle();
            self.find_known(spec)
        })
    }

    fn resolve_known(&self, spec: &DeviceSpec) -> Option<String> {
        if let DeviceSpec::Path(p) = spec
            && fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
        {
            return Some(p.clone());
        }
        self.find_known(spec).map(|d| d.devnode())
    }

    /// Resolves a spec to a device node path, or `None` if absent.
    /// A path spec resolves to itself (so mounts show `/dev/mapper/cryptroot`,
    /// not `/dev/dm-0`); tags resolve to the kernel's device node.
    pub fn resolve(&self, spec: &DeviceSpec) -> Option<String> {
        self.resolve_known(spec).or_else(|| {
            self.settle();
            self.resolve_known(spec)
        })
    }

    fn seen(&self) -> Vec<String> {
        lock(&self.shared)
            .known
            .values()
            .map(|d| d.to_string())
            .collect()
    }

    /// Waits until every wanted device resolves: the prober announces each
    /// device it probes, and this re-checks then (no polling).
    pub fn wait_for(
        &mut self,
        wanted: &[Wanted],
        timeout: Duration,
    ) -> Result<Vec<String>, Missing> {
        let start = Instant::now();
        loop {
            // The change count before the check: a device probed between the
            // check and the wait below still ends the wait.
            let generation = lock(&self.shared).generation;
            let missing: Vec<Wanted> = wanted
                .iter()
                .filter(|w| self.resolve_known(&w.spec).is_none())
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(wanted
                    .iter()
                    .filter_map(|w| self.resolve_known(&w.spec))
                    .collect());
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                self.settle();
                return Err(Missing {
                    wanted: missing,
                    seen: self.seen(),
                    waited: timeout,
                });
            }
            let remaining = timeout - elapsed;
            let mut st = lock(&self.shared);
            if st.no_prober {
                drop(st);
                std::thread::sleep(remaining.min(Duration::from_millis(100)));
                self.shared.scan();
                continue;
            }
            // A path spec (a device node appearing) is not something the
            // registry announces: re-check those at least every 100 ms.
            let deadline = Instant::now() + remaining.min(Duration::from_millis(100));
            while st.generation == generation {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st = self
                    .shared
                    .changed
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

impl Drop for Devices {
    /// Lets the prober finish what the kernel announced (so every link
    /// exists), then stops it.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            {
                let mut st = lock(&self.shared);
                st.stop = true;
                st.requested += 1;
            }
            self.shared.wake();
            let _ = thread.join();
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
