//! Block device discovery: what the kernel has (sysfs + uevents), what is on
//! it (libblkid superblock probe), and the `/dev/disk/by-*` links udev would
//! make, created by ember itself because a minimal initrd has no udev.

use std::collections::{BTreeMap, BTreeSet};
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
/// the modules bring up are probed while the rest of the modules load.
///
/// Some devices are only probed when a lookup needs them (see
/// [`deferrable`]): device-mapper devices, which the config names by path
/// (`/dev/mapper/cryptroot`), and whole disks that hold partitions. A lookup
/// that finds nothing probes them before giving its answer, so this only
/// saves work, never changes what is found.
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
    /// Every device seen; a deferred one with its name (and mapper name) only.
    known: BTreeMap<String, BlockDevice>,
    /// Devices seen but not probed yet.
    deferred: BTreeSet<String>,
    /// Deferred devices a lookup asked the prober to probe now.
    to_probe: BTreeSet<String>,
    /// Bumped on every change of `known`, so a waiter cannot miss one.
    generation: u64,
    /// Settle requests made and answered: a request is answered once the
    /// prober has handled every queued uevent and noted every device sysfs
    /// lists; requests up to `full_requested` also probe deferred devices.
    requested: u64,
    full_requested: u64,
    answered: u64,
    stop: bool,
    /// No prober thread runs (it could not be started): callers do its work.
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
    names.sort();
    names
}

/// Whether probing `name` can wait until a lookup needs it:
/// * a device-mapper device: ember made it (the config names it by path,
///   which needs no probe), or it is LVM or similar, which ember does not
///   assemble;
/// * a whole disk the kernel found partitions on: the filesystems are on the
///   partitions, and udev gives such a disk no by-label or by-uuid link
///   either (unless a signature sits on the whole disk, which a lookup that
///   misses still finds).
///
/// Probing those costs as much as the rest together (libblkid tries every
/// signature, at both ends of the device, through dm-crypt for a mapper).
fn deferrable(name: &str) -> bool {
    if name.starts_with("dm-") {
        return true;
    }
    let dir = Path::new("/sys/class/block").join(name);
    if dir.join("partition").exists() {
        return false;
    }
    fs::read_dir(&dir)
        .map(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| {
                e.file_name().to_str().is_some_and(|n| n.starts_with(name))
                    && e.path().join("partition").exists()
            })
        })
        .unwrap_or(false)
}

/// The kernel name (`dm-0`) of the block device a path spec points to, if
/// the path exists: from its device number, through /sys/dev/block.
fn kernel_name(spec: &DeviceSpec) -> Option<String> {
    let DeviceSpec::Path(p) = spec else {
        return None;
    };
    let meta = fs::metadata(p).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
    let link = fs::read_link(format!(
        "/sys/dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ))
    .ok()?;
    link.file_name()?.to_str().map(str::to_string)
}

impl Shared {
    fn changed(&self, mut st: MutexGuard<'_, State>) {
        st.generation += 1;
        drop(st);
        self.changed.notify_all();
    }

    /// Probes `name` (without holding the lock: a probe reads the device)
    /// and records the result.
    fn probe_and_insert(&self, name: &str) {
        let dev = probe(name);
        log::debug!("block device {dev}");
        if self.make_links {
            make_links(&dev);
        }
        let mut st = lock(self);
        st.deferred.remove(name);
        st.known.insert(name.to_string(), dev);
        self.changed(st);
    }

    /// A device appeared or changed: probe it, or note it for later.
    fn note(&self, name: &str) {
        if !deferrable(name) {
            return self.probe_and_insert(name);
        }
        let dev = BlockDevice {
            name: name.to_string(),
            dm_name: sysfs_trimmed(&format!("/sys/class/block/{name}/dm/name")),
            ..Default::default()
        };
        log::debug!("block device {name}: probed when needed");
        let mut st = lock(self);
        st.deferred.insert(name.to_string());
        st.known.insert(name.to_string(), dev);
        self.changed(st);
    }

    fn remove(&self, name: &str) {
        let mut st = lock(self);
        st.known.remove(name);
        st.deferred.remove(name);
        self.changed(st);
    }

    fn wake(&self) {
        if let Some(fd) = &self.wake {
            signal_eventfd(fd.as_fd());
        }
    }

    /// Notes every device in sysfs not yet known.
    fn scan(&self) {
        for name in sysfs_names() {
            if !lock(self).known.contains_key(&name) {
                self.note(&name);
            }
        }
    }

    /// Probes the devices whose probe was put off: those a lookup asked
    /// for, or (`all`) every one.
    fn probe_deferred(&self, all: bool) {
        let names = {
            let mut st = lock(self);
            let asked = std::mem::take(&mut st.to_probe);
            if all {
                st.deferred.clone()
            } else {
                asked.intersection(&st.deferred).cloned().collect()
            }
        };
        for name in names {
            self.probe_and_insert(&name);
        }
    }

    fn handle(&self, events: &[Uevent]) {
        for e in events.iter().filter(|e| e.subsystem == "block") {
            match (e.action.as_str(), &e.devname) {
                // A change (a mapper device's table loaded, a partition
                // table rewritten) may change what is on the device: again.
                ("add" | "change", Some(name)) => self.note(name),
                ("remove", Some(name)) => self.remove(name),
                _ => {}
            }
        }
    }

    /// Catches up with the kernel: queued events, then sysfs, then (`full`)
    /// the deferred probes.
    fn catch_up(&self, socket: Option<&UeventSocket>, full: bool) {
        if let Some(s) = socket
            && let Ok(received) = s.drain()
        {
            self.handle(&received.events);
        }
        self.scan();
        self.probe_deferred(full);
    }
}

/// The prober thread: cold-plug scan, then uevents until asked to stop.
fn prober(shared: Arc<Shared>, wake: BorrowedFd<'_>, mut socket: Option<UeventSocket>) {
    shared.scan();
    loop {
        let (requested, full_requested, answered, stop) = {
            let st = lock(&shared);
            (st.requested, st.full_requested, st.answered, st.stop)
        };
        if requested > answered || stop {
            shared.catch_up(socket.as_ref(), full_requested > answered);
            let mut st = lock(&shared);
            st.answered = requested;
            drop(st);
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
            .map_err(|e| log::warn!("cannot create an eventfd ({e}); probing in the foreground"))
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
                        prober(Arc::clone(&for_thread), fd.as_fd(), socket);
                    }
                })
                .map_err(|e| {
                    log::warn!("cannot start the device prober ({e}); probing in the foreground")
                })
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

    /// Waits until the prober has handled everything the kernel announced so
    /// far and probed the deferred devices in `probe`; `full` probes every
    /// deferred device.
    fn catch_up(&self, probe: &[String], full: bool) {
        let mut st = lock(&self.shared);
        st.to_probe.extend(probe.iter().cloned());
        if st.no_prober {
            drop(st);
            self.shared.catch_up(None, full);
            return;
        }
        st.requested += 1;
        let want = st.requested;
        if full {
            st.full_requested = want;
        }
        self.shared.wake();
        while st.answered < want {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The deferred devices that could be `spec`, likeliest first: one it
    /// names by path, then mapper devices (an unlocked volume's filesystem),
    /// then whole disks.
    fn candidates(&self, spec: &DeviceSpec) -> Vec<String> {
        let st = lock(&self.shared);
        let mut names: Vec<&String> = st.deferred.iter().collect();
        names.sort_by_key(|n| {
            let named = st.known.get(*n).is_some_and(|d| d.matches(spec));
            (!named, !n.starts_with("dm-"))
        });
        names.into_iter().cloned().collect()
    }

    /// Looks `spec` up: among the probed devices, then after catching up
    /// with the kernel, then probing deferred devices one by one. A path
    /// spec that names a device node goes straight to that device.
    fn lookup<T>(&self, spec: &DeviceSpec, get: impl Fn(&Self) -> Option<T>) -> Option<T> {
        if let Some(v) = get(self) {
            return Some(v);
        }
        if let Some(name) = kernel_name(spec) {
            self.catch_up(&[name], false);
            if let Some(v) = get(self) {
                return Some(v);
            }
        }
        self.catch_up(&[], false);
        if let Some(v) = get(self) {
            return Some(v);
        }
        for name in self.candidates(spec) {
            self.catch_up(&[name], false);
            if let Some(v) = get(self) {
                return Some(v);
            }
        }
        None
    }

    /// Waits until the registry reflects everything the kernel has announced
    /// so far, every device probed.
    pub fn settle(&self) {
        self.catch_up(&[], true);
    }

    /// Every known device (after [`Devices::settle`]).
    pub fn all(&self) -> Vec<BlockDevice> {
        self.settle();
        lock(&self.shared).known.values().cloned().collect()
    }

    /// Makes sure devices that appeared since (e.g. after unlocking, the
    /// new mapper device) get noted, without waiting: a lookup that needs
    /// one waits for it then.
    pub fn scan(&mut self) {
        let mut st = lock(&self.shared);
        if st.no_prober {
            drop(st);
            self.shared.scan();
            return;
        }
        st.requested += 1;
        drop(st);
        self.shared.wake();
    }

    /// (Re-)probes one device now, e.g. after it was unlocked.
    pub fn add(&mut self, name: &str) {
        self.shared.probe_and_insert(name);
    }

    /// A probed device matching `spec` (a deferred one has no tags yet, so
    /// it answers no question: a lookup that would match it probes it first).
    fn find_known(&self, spec: &DeviceSpec) -> Option<BlockDevice> {
        let st = lock(&self.shared);
        st.known
            .values()
            .find(|d| !st.deferred.contains(&d.name) && d.matches(spec))
            .cloned()
    }

    /// The device matching `spec`; if none is known, after probing what
    /// the kernel has announced (deferred devices one at a time, until found).
    pub fn find(&self, spec: &DeviceSpec) -> Option<BlockDevice> {
        self.lookup(spec, |d| d.find_known(spec))
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
        self.lookup(spec, |d| d.resolve_known(spec))
    }

    fn seen(&self) -> Vec<String> {
        lock(&self.shared)
            .known
            .values()
            .map(|d| d.to_string())
            .collect()
    }

    fn missing(&self, wanted: &[Wanted]) -> Vec<Wanted> {
        wanted
            .iter()
            .filter(|w| self.resolve_known(&w.spec).is_none())
            .cloned()
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
            let mut missing = self.missing(wanted);
            if !missing.is_empty() && !lock(&self.shared).deferred.is_empty() {
                // Not among the probed devices: perhaps a deferred one.
                for w in &missing {
                    self.lookup(&w.spec, |d| d.resolve_known(&w.spec));
                }
                missing = self.missing(wanted);
            }
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
                self.shared.catch_up(None, true);
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
    /// Lets the prober note what the kernel announced (probing all but the
    /// deferred devices, so their links exist), then stops it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lists_what_sysfs_lists_and_stops_cleanly() {
        let Ok(entries) = fs::read_dir("/sys/class/block") else {
            return; // no sysfs here
        };
        let mut want: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        want.sort();
        // Without root the probes find nothing, which is fine here: every
        // device must still be listed, deferred ones included.
        let devices = Devices::start(false);
        let got: Vec<String> = devices.all().into_iter().map(|d| d.name).collect();
        for name in &want {
            assert!(got.contains(name), "{name} missing from {got:?}");
        }
        // A spec nothing matches: answered (None) after a full catch-up.
        let nothing = DeviceSpec::Label("ember-test-no-such-label".into());
        assert!(devices.resolve(&nothing).is_none());
        assert!(devices.find(&nothing).is_none());
        drop(devices); // joins the prober
    }

    #[test]
    fn a_device_node_path_names_its_kernel_device() {
        let Ok(entries) = fs::read_dir("/sys/class/block") else {
            return;
        };
        for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
            let node = format!("/dev/{name}");
            if fs::metadata(&node).is_ok_and(|m| m.file_type().is_block_device()) {
                assert_eq!(kernel_name(&DeviceSpec::Path(node)), Some(name));
            }
        }
        assert_eq!(kernel_name(&DeviceSpec::Path("/dev/null".into())), None);
        assert_eq!(kernel_name(&DeviceSpec::Label("x".into())), None);
    }

    #[test]
    fn wait_for_times_out_naming_what_is_missing() {
        let mut devices = Devices::start(false);
        let wanted = [Wanted {
            spec: DeviceSpec::Label("ember-test-no-such-label".into()),
            field: "luks[0].device".into(),
        }];
        let err = devices
            .wait_for(&wanted, Duration::from_millis(150))
            .unwrap_err();
        assert_eq!(err.wanted.len(), 1);
        assert!(
            err.to_string().contains("ember-test-no-such-label"),
            "{err}"
        );
    }

    #[test]
    fn mapper_devices_are_deferred_and_answer_no_lookup_unprobed() {
        assert!(deferrable("dm-0"));
        let devices = Devices::start(false);
        devices.settle();
        // Plant a deferred placeholder the way the prober notes a mapper device.
        {
            let mut st = lock(&devices.shared);
            st.deferred.insert("dm-ember-test".into());
            st.known.insert(
                "dm-ember-test".into(),
                BlockDevice {
                    name: "dm-ember-test".into(),
                    dm_name: Some("embertest".into()),
                    ..Default::default()
                },
            );
        }
        let spec = DeviceSpec::Path("/dev/mapper/embertest".into());
        assert!(devices.find_known(&spec).is_none());
        // A full lookup probes it first. There is no such device, so the
        // probe finds no mapper name and nothing matches, but it ran.
        assert!(devices.find(&spec).is_none());
        assert!(lock(&devices.shared).deferred.is_empty());
    }
}
