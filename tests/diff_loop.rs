//! ember against a real Btrfs on a loop device (a sparse image): `ember
//! diff` on a read-only `root-blank` snapshot and a `root` made from it, as
//! the rollback leaves them, and subvolume mounts over nested subvolumes.
//! Needs root, loop devices and btrfs-progs; without them each test prints
//! why and passes.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ember::config::AbsPath;
use ember::diff::{Change, filter_and_sort, render_json, render_text};
use ember::sys::btrfs_tree;

fn run(program: &str, args: &[&OsStr]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {:?}: {}{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A Btrfs filesystem on a loop device, mounted at `top` (the top level).
/// Dropping it unmounts everything it mounted, detaches the loop device and
/// removes its directory, also when the test failed.
struct LoopBtrfs {
    dir: PathBuf,
    device: Option<String>,
    /// (options, mount point), in mount order.
    mounts: Vec<(String, PathBuf)>,
}

impl LoopBtrfs {
    /// `Err` carries the reason to skip.
    fn new(name: &str, size: &str) -> Result<LoopBtrfs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not running as root".into());
        }
        let dir = std::env::temp_dir().join(format!("ember-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("top")).map_err(|e| e.to_string())?;
        let mut fx = LoopBtrfs {
            dir,
            device: None,
            mounts: Vec::new(),
        };
        let image = fx.dir.join("disk.img");
        run("truncate", &[os("-s"), os(size), image.as_os_str()])?;
        run("mkfs.btrfs", &[os("-q"), os("-f"), image.as_os_str()])?;
        let device = run("losetup", &[os("--find"), os("--show"), image.as_os_str()])?;
        fx.device = Some(device);
        let top = fx.top();
        fx.mount(&[], &top)?;
        Ok(fx)
    }

    fn top(&self) -> PathBuf {
        self.dir.join("top")
    }

    fn device(&self) -> &str {
        self.device.as_deref().expect("set in new")
    }

    /// Mounts the filesystem (`-o options`) at `at`.
    fn mount(&mut self, options: &[&str], at: &Path) -> Result<(), String> {
        let joined = options.join(",");
        let mut args = vec![os("-t"), os("btrfs")];
        if !options.is_empty() {
            args.extend([os("-o"), os(&joined)]);
        }
        let device = self.device().to_string();
        args.extend([os(&device), at.as_os_str()]);
        run("mount", &args)?;
        self.mounts.push((joined, at.to_path_buf()));
        Ok(())
    }

    fn unmount_all(&mut self) -> Vec<(String, PathBuf)> {
        let mounts = std::mem::take(&mut self.mounts);
        for (_, at) in mounts.iter().rev() {
            if run("umount", &[at.as_os_str()]).is_err()
                && run("umount", &[os("-l"), at.as_os_str()]).is_err()
            {
                eprintln!("diff_loop: could not unmount {}", at.display());
            }
        }
        mounts
    }

    /// Unmounts and mounts everything again: Btrfs drops its cached tree
    /// blocks (the image's own pages may stay in the host's page cache).
    fn remount(&mut self) {
        for (options, at) in self.unmount_all() {
            let options: Vec<&str> = options.split(',').filter(|o| !o.is_empty()).collect();
            self.mount(&options, &at).unwrap();
        }
    }

    fn subvolume(&self, args: &[&str], paths: &[&Path]) {
        let mut all: Vec<&OsStr> = vec![os("subvolume")];
        all.extend(args.iter().map(|a| os(a)));
        all.extend(paths.iter().map(|p| p.as_os_str()));
        run("btrfs", &all).unwrap();
    }

    /// `root-blank` (read-only, holding what `populate` wrote) and `root`, a
    /// writable snapshot of it, mounted with `options` at `<dir>/mnt`.
    fn blank_and_root(
        &mut self,
        options: &[&str],
        populate: impl FnOnce(&Path),
    ) -> Result<PathBuf, String> {
        let top = self.top();
        let (src, blank, root) = (top.join("src"), top.join("root-blank"), top.join("root"));
        self.subvolume(&["create"], &[&src]);
        populate(&src);
        self.subvolume(&["snapshot", "-r"], &[&src, &blank]);
        self.subvolume(&["delete"], &[&src]);
        self.subvolume(&["snapshot"], &[&blank, &root]);
        let mnt = self.dir.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mut all = vec!["subvol=root"];
        all.extend_from_slice(options);
        self.mount(&all, &mnt)?;
        Ok(mnt)
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        self.unmount_all();
        let clean = self.mounts.is_empty()
            && !fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .contains(self.dir.to_string_lossy().as_ref());
        if let Some(device) = self.device.take()
            && let Err(e) = run("losetup", &[os("-d"), os(&device)])
        {
            eprintln!("diff_loop: {e}");
        }
        if clean {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The fixture, or `None` after printing why the test is skipped.
fn fixture(name: &str, size: &str) -> Option<LoopBtrfs> {
    match LoopBtrfs::new(name, size) {
        Ok(fx) => Some(fx),
        Err(why) => {
            eprintln!("SKIP {name}: no loop-mounted Btrfs here ({why})");
            None
        }
    }
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// A directory chain deeper than `BTRFS_IOC_INO_LOOKUP`'s 4080-byte path
/// limit, made (or opened) one component at a time below `base`.
const DEEP: usize = 18;

fn deep_name() -> String {
    "d".repeat(240)
}

fn deep_dir(base: &Path) -> std::os::fd::OwnedFd {
    use rustix::fs::{Mode, OFlags, mkdirat, open, openat};
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let mut fd = open(base, flags, Mode::empty()).unwrap();
    for _ in 0..DEEP {
        let _ = mkdirat(&fd, deep_name().as_str(), Mode::from_raw_mode(0o755));
        fd = openat(&fd, deep_name().as_str(), flags, Mode::empty()).unwrap();
    }
    fd
}

fn append_deep(base: &Path, text: &str) {
    use rustix::fs::{Mode, OFlags, openat};
    let dir = deep_dir(base);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::CLOEXEC;
    let file = openat(&dir, "deep", flags, Mode::from_raw_mode(0o644)).unwrap();
    rustix::io::write(&file, text.as_bytes()).unwrap();
}

fn kept(paths: &[&str]) -> Vec<AbsPath> {
    paths.iter().map(|p| AbsPath::parse(p).unwrap()).collect()
}

fn listing(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                c.kind.as_str(),
                c.path,
                if c.is_dir && c.path != "/" { "/" } else { "" }
            )
        })
        .collect()
}

#[test]
fn diff_lists_what_the_next_boot_destroys() {
    let Some(mut fx) = fixture("diff-loop", "256M") else {
        return;
    };
    let top = fx.top();
    // strictatime: every read rewrites an inode item, which must not count.
    let mnt = fx
        .blank_and_root(&["strictatime"], |blank| {
            // The deep chain's directories first (the lowest inode numbers,
            // so no leaf the changes below rewrite holds their names), then
            // enough inodes to put the file at its bottom in another leaf:
            // resolving its parent then needs INO_LOOKUP, which refuses
            // paths this long. (Made after /etc, the chain shared a leaf
            // with /etc's files in some runs, depending on leaf splits, and
            // the lookups this test is about did not happen.)
            deep_dir(blank);
            for i in 0..2000 {
                write(&blank.join(format!("usr/share/doc/f{i}")), "doc");
            }
            append_deep(blank, "deep");
            for f in [
                "passwd", "hosts", "readonly", "deleteme", "old-name", "chmodme",
            ] {
                write(&blank.join("etc").join(f), f);
            }
            for d in ["var/lib/keep", "srv", "home", "persist"] {
                fs::create_dir_all(blank.join(d)).unwrap();
            }
        })
        .unwrap();
    fx.subvolume(&["create"], &[&top.join("home")]);
    fx.subvolume(&["create"], &[&top.join("persist")]);

    let otransid = btrfs_tree::subvolume_otransid(&mnt).unwrap();
    let info = btrfs_tree::subvolume_info(&mnt).unwrap();
    assert_eq!(info.name, "root");
    assert_eq!(info.otransid, otransid);
    let blank_info = btrfs_tree::subvolume_info(&top.join("root-blank")).unwrap();
    assert_eq!(info.parent_uuid, blank_info.uuid);

    // Nothing changed yet but access times.
    fs::read(mnt.join("etc/readonly")).unwrap();
    let untouched = btrfs_tree::scan(&mnt, otransid).unwrap();
    assert_eq!(listing(&untouched.changes), Vec::<String>::new());

    // A boot and a session's worth of changes.
    write(&mnt.join("home/shadowed"), "under the /home mount");
    fx.mount(&["subvol=home"], &mnt.join("home")).unwrap();
    fx.mount(&["subvol=persist"], &mnt.join("persist")).unwrap();
    write(&mnt.join("home/alice/notes"), "in the home subvolume");
    write(&mnt.join("persist/data"), "in the persist subvolume");
    let etc = mnt.join("etc");
    write(&etc.join("new.conf"), "new");
    fs::OpenOptions::new()
        .append(true)
        .open(etc.join("hosts"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\n10.0.0.1 x\n"))
        .unwrap();
    fs::set_permissions(etc.join("chmodme"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::read(etc.join("readonly")).unwrap();
    // From the middle of the 2000: nowhere near the deep chain's leaves.
    for i in 1000..1050 {
        fs::read(mnt.join(format!("usr/share/doc/f{i}"))).unwrap();
    }
    append_deep(&mnt, " and deeper");
    fs::rename(etc.join("old-name"), etc.join("new-name")).unwrap();
    fs::remove_file(etc.join("deleteme")).unwrap();
    fs::hard_link(etc.join("new.conf"), mnt.join("var/new-link")).unwrap();
    std::os::unix::fs::symlink("new.conf", etc.join("link")).unwrap();
    write(&mnt.join("var/cache/app/sub/file"), "cache");
    let odd = OsStr::from_bytes(b"bad\xffname");
    write(&mnt.join("var/cache/app").join(odd), "odd");
    write(&mnt.join("var/lib/keep/state"), "persisted");
    write(&etc.join("machine-id"), "");
    write(&mnt.join("var/lib/newkeep/f"), "persisted too");
    fx.subvolume(&["create"], &[&mnt.join("srv/nested")]);
    write(&mnt.join("srv/nested/inner"), "inside the nested subvolume");

    let t = Instant::now();
    let scan = btrfs_tree::scan(&mnt, otransid).unwrap();
    let took = t.elapsed();
    eprintln!("small diff: {took:?}, {:?}", scan.stats);
    assert_eq!(scan.stats.blank_tree, Some(blank_info.treeid));
    assert!(
        scan.stats.atime_only > 0,
        "reads under strictatime rewrite inode items: {:?}",
        scan.stats
    );

    assert!(scan.stats.dir_lookups > 0, "{:?}", scan.stats);
    let deep = format!("/{}/deep", vec![deep_name(); DEEP].join("/"));
    assert!(deep.len() > 4080);

    // Everything that differs from the blank in the root's own tree.
    assert_eq!(
        listing(&filter_and_sort(scan.changes.clone(), &[])),
        [
            &format!("modified {deep}"),
            "modified /etc/",
            "modified /etc/chmodme",
            "modified /etc/hosts",
            "created /etc/link",
            "created /etc/machine-id",
            "modified /etc/new-name",
            "created /etc/new.conf",
            "modified /home/",
            "created /home/shadowed",
            "modified /srv/",
            "subvolume /srv/nested/",
            "modified /var/",
            "created /var/cache/",
            "created /var/cache/app/",
            "created /var/cache/app/bad\\xffname",
            "created /var/cache/app/sub/",
            "created /var/cache/app/sub/file",
            "modified /var/lib/",
            "modified /var/lib/keep/",
            "created /var/lib/keep/state",
            "created /var/lib/newkeep/",
            "created /var/lib/newkeep/f",
            "created /var/new-link",
        ]
    );

    // Minus what survives: persisted paths and mount points.
    let mounts = btrfs_tree::mount_points_below(&mnt).unwrap();
    assert_eq!(mounts, kept(&["/home", "/persist"]));
    let mut keep = kept(&["/etc/machine-id", "/var/lib/keep", "/var/lib/newkeep"]);
    keep.extend(mounts);
    let destroyed = filter_and_sort(scan.changes, &keep);
    assert_eq!(
        render_text(&destroyed),
        format!(
            "\
modified  {deep}
modified  /etc/chmodme
modified  /etc/hosts
created   /etc/link
modified  /etc/new-name
created   /etc/new.conf
modified  /srv/
subvolume /srv/nested/
created   /var/cache/
created   /var/cache/app/
created   /var/cache/app/bad\\xffname
created   /var/cache/app/sub/
created   /var/cache/app/sub/file
created   /var/new-link
14 paths the next boot will destroy: 8 created, 5 modified, 1 subvolume
"
        )
    );
    let json: serde_json::Value = serde_json::from_str(&render_json(&destroyed)).unwrap();
    assert_eq!(json["changes"][7]["kind"], "subvolume");
    assert_eq!(json["changes"][7]["path"], "/srv/nested");
    assert_eq!(json["counts"]["created"], 8);

    // The same through the top-level path of the root subvolume.
    let again = btrfs_tree::changed_since(&top.join("root"), otransid).unwrap();
    assert_eq!(filter_and_sort(again, &keep), destroyed);

    // Not the top of a subvolume: refused.
    let err = btrfs_tree::changed_since(&mnt.join("etc"), otransid).unwrap_err();
    assert!(err.to_string().contains("not the top directory"), "{err}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A naive diff would at least stat every file of the root.
fn walk(dir: &Path, count: &mut usize) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        *count += 1;
        if md.is_dir() {
            walk(&e.path(), count);
        }
    }
}

#[test]
fn diff_of_100k_unchanged_files_reads_only_changed_leaves() {
    let Some(mut fx) = fixture("diff-loop-100k", "2G") else {
        return;
    };
    let t = Instant::now();
    let mnt = fx
        .blank_and_root(&["noatime"], |blank| {
            for d in 0..100 {
                let dir = blank.join(format!("usr/share/d{d:03}"));
                fs::create_dir_all(&dir).unwrap();
                for f in 0..1000 {
                    fs::write(dir.join(format!("f{f:04}")), "x").unwrap();
                }
            }
        })
        .unwrap();
    eprintln!("100k: blank of 100 000 files built in {:?}", t.elapsed());
    let otransid = btrfs_tree::subvolume_otransid(&mnt).unwrap();

    // 10 changes.
    let share = mnt.join("usr/share");
    for d in [3, 40, 77] {
        write(&share.join(format!("d{d:03}/new")), "new");
    }
    for d in [10, 55, 99] {
        write(&share.join(format!("d{d:03}/f0500")), "changed");
    }
    write(&mnt.join("etc/new/file"), "new");
    fs::set_permissions(share.join("d020/f0001"), fs::Permissions::from_mode(0o600)).unwrap();

    let expected = [
        "modified /",
        "created /etc/",
        "created /etc/new/",
        "created /etc/new/file",
        "modified /usr/share/d003/",
        "created /usr/share/d003/new",
        "modified /usr/share/d010/f0500",
        "modified /usr/share/d020/f0001",
        "modified /usr/share/d040/",
        "created /usr/share/d040/new",
        "modified /usr/share/d055/f0500",
        "modified /usr/share/d077/",
        "created /usr/share/d077/new",
        "modified /usr/share/d099/f0500",
    ];
    let scan = btrfs_tree::scan(&mnt, otransid).unwrap();
    let got = listing(&filter_and_sort(scan.changes.clone(), &[]));
    assert_eq!(got, expected);
    assert!(
        scan.stats.items_returned < 10_000,
        "the search should skip unchanged leaves: {:?}",
        scan.stats
    );

    let mut diff_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let scan = btrfs_tree::scan(&mnt, otransid).unwrap();
        diff_times.push(t.elapsed());
        assert_eq!(scan.changes.len(), expected.len());
    }
    let mut walk_times = Vec::new();
    let mut seen = 0;
    for _ in 0..3 {
        seen = 0;
        let t = Instant::now();
        walk(&mnt, &mut seen);
        walk_times.push(t.elapsed());
    }
    fx.remount();
    let t = Instant::now();
    btrfs_tree::scan(&mnt, otransid).unwrap();
    let diff_cold = t.elapsed();
    fx.remount();
    let t = Instant::now();
    walk(&mnt, &mut 0);
    let walk_cold = t.elapsed();
    eprintln!(
        "100k: diff median {:?} over 5 runs ({:?}), {diff_cold:?} after a remount; \
         naive statx walk of {seen} entries median {:?} over 3 runs, {walk_cold:?} after a remount",
        median(diff_times),
        scan.stats,
        median(walk_times)
    );

    // The worst case: everything changed (transid 0), every path resolved.
    let t = Instant::now();
    let all = btrfs_tree::scan(&mnt, 0).unwrap();
    let took = t.elapsed();
    assert!(all.changes.len() > 100_000, "{}", all.changes.len());
    assert!(
        all.changes
            .iter()
            .all(|c| c.kind != ember::diff::ChangeKind::Modified || c.path == "/")
    );
    eprintln!(
        "100k: everything since transid 0: {} paths in {took:?} ({:?})",
        all.changes.len(),
        all.stats
    );
}

/// A mount point that is a nested subvolume of the root (systemd makes
/// /var/lib/machines one; some layouts nest more) has a device number of its
/// own without being mounted. It must not be taken for a mount that is
/// already there: the configured subvolume is mounted over it.
#[test]
fn a_nested_subvolume_as_mount_point_is_mounted_over() {
    use ember::sys::mount::{Mounted, mount_subvolume};
    let Some(mut fx) = fixture("nested-mount-point", "256M") else {
        return;
    };
    let top = fx.top();
    fx.subvolume(&["create"], &[&top.join("root")]);
    fx.subvolume(&["create"], &[&top.join("root/srv")]);
    fx.subvolume(&["create"], &[&top.join("srv")]);
    write(&top.join("srv/marker"), "the srv subvolume");
    let sysroot = fx.dir.join("sysroot");
    let sysroot_text = sysroot.to_str().expect("utf-8 temp dir").to_string();
    let device = fx.device().to_string();
    let at = |p: &str| AbsPath::parse(p).expect("absolute");

    let root = mount_subvolume(&device, &sysroot_text, &at("/"), "root", &[]);
    assert!(matches!(root, Ok(Mounted::Now)), "{root:?}");
    fx.mounts.push((String::new(), sysroot.clone()));
    let srv = mount_subvolume(&device, &sysroot_text, &at("/srv"), "srv", &[]);
    assert!(
        matches!(srv, Ok(Mounted::Now)),
        "the nested subvolume root/srv was taken for a mount: {srv:?}"
    );
    fx.mounts.push((String::new(), sysroot.join("srv")));
    assert_eq!(
        fs::read_to_string(sysroot.join("srv/marker"))
            .ok()
            .as_deref(),
        Some("the srv subvolume")
    );
    // A second run finds both mounts and leaves them.
    let again = mount_subvolume(&device, &sysroot_text, &at("/srv"), "srv", &[]);
    assert!(matches!(again, Ok(Mounted::Already)), "{again:?}");
}
