//! `ember status`: gathers what is there (block devices, LUKS mapper state,
//! mounted subvolumes, persisted paths) and the last boot's record, and
//! prints it readably or as JSON. Read-only: it never changes anything.

use std::path::PathBuf;

use ember::config::{self, PersistDisposition, validate};
use ember::status::{
    self, BootRecord, DeviceStatus, PersistStatus, Status, SubvolumeStatus, VolumeStatus,
};
use ember::sys::blockdev::Devices;
use ember::sys::luks;

const ABOUT: &str = "\
usage: ember status [--config PATH] [--sysroot PATH] [--json]

Shows, without changing anything:
  - the LUKS volumes (after rd.luks.* on the kernel command line): open or
    closed, and the device each resolves to;
  - every block device with its tags, and which config field wants it;
  - the configured subvolumes and where each is mounted;
  - the persisted paths and their state (mounted, linked, missing, refused);
  - what the last boot did, from /run/ember/last-boot.json: outcome, error,
    per-phase and per-step timings, how each volume was opened (key source,
    keyslot, keyslots tried).

  --config PATH   the config (default /etc/ember/config.json)
  --sysroot PATH  where the new root is (default /sysroot if something is
                  mounted there, else /: after switch root)
  --json          the same as one JSON object

exit codes: 0 status shown (whatever it says), 1 cannot gather it,
2 usage error or unreadable config";

pub fn run(args: &[String]) -> i32 {
    let spec = crate::args::Spec {
        values: &[("--config", "path"), ("--sysroot", "path")],
        switches: &["--json"],
        positionals: 0,
    };
    let parsed = match crate::args::parse_or_exit(args, &spec, "status", ABOUT) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let config_path = parsed.value("--config").map(PathBuf::from);
    let sysroot = parsed.value("--sysroot").map(str::to_string);
    let json = parsed.switch("--json");
    let explicit_config = config_path.is_some();
    let mounts = status::parse_mountinfo(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
    );
    let sysroot = sysroot.unwrap_or_else(|| {
        if mounts.iter().any(|m| m.mount_point == ember::plan::SYSROOT) {
            ember::plan::SYSROOT.to_string()
        } else {
            "/".to_string()
        }
    });
    let mut st = Status {
        ember_version: env!("CARGO_PKG_VERSION").to_string(),
        sysroot: sysroot.clone(),
        ..Status::default()
    };

    let checked = match config_path.or_else(ember::boot::find_config) {
        None => None,
        Some(p) => match config::load_for_boot(&p) {
            Ok(c) => {
                st.config = Some(p.display().to_string());
                Some(c)
            }
            Err(e) => {
                if explicit_config {
                    eprintln!("ember: {e}");
                    return 2;
                }
                st.config_error = Some(e.to_string());
                None
            }
        },
    };

    let devices = Devices::start(false);
    let cmdline = ember::boot::running_cmdline();
    let mut wanted: Vec<(config::DeviceSpec, String)> = Vec::new();
    if let Some(c) = &checked {
        let cfg = &c.config;
        let (volumes, _) = ember::volumes::volumes(cfg, &cmdline.luks);
        for v in &volumes {
            wanted.push((v.device.clone(), format!("{}.device", v.field)));
            for k in &v.keys {
                if let ember::volumes::KeySource::Keyfile {
                    device: Some(d), ..
                } = k
                {
                    wanted.push((d.clone(), format!("{}.device", k.field())));
                }
            }
            st.volumes.push(VolumeStatus {
                field: v.field.clone(),
                name: v.name.clone(),
                device: v.device.to_string(),
                resolved: devices.resolve(&v.device),
                open: luks::is_active(&v.name),
                dm_node: luks::active_dm_node(&v.name),
            });
        }
        for (i, fs) in cfg.btrfs.iter().enumerate() {
            wanted.push((fs.device.clone(), format!("btrfs[{i}].device")));
        }
        for m in validate::mounts(cfg) {
            let fs = &cfg.btrfs[m.field_fs];
            let mp = m.subvolume.mount_point.as_str();
            st.subvolumes.push(SubvolumeStatus {
                field: m.field(),
                device: fs.device.to_string(),
                subvolume: m.subvolume.subvol_path().to_string(),
                mount_point: mp.to_string(),
                mounted_at: status::find_subvolume_mount(
                    &mounts,
                    m.subvolume.subvol_path(),
                    mp,
                    &sysroot,
                )
                .map(|e| e.mount_point.clone()),
            });
        }
        for e in validate::persist_entries(cfg) {
            let state = match &e.disposition {
                PersistDisposition::OnPersistentSubvolume {
                    mount_point,
                    subvolume,
                } => format!("lives on subvolume `{subvolume}` ({mount_point}); not bound"),
                PersistDisposition::Bind => ember::sys::persist::inspect(&sysroot, &e).to_string(),
            };
            st.persist.push(PersistStatus {
                field: e.field.clone(),
                kind: e.kind.as_str().to_string(),
                method: e.method.as_str().to_string(),
                source: e.root.join(e.path.as_str()).to_string(),
                target: e.path.to_string(),
                state,
            });
        }
    }
    for d in devices.all() {
        let text = d.to_string();
        let tags = text
            .strip_prefix(&d.name)
            .unwrap_or_default()
            .trim()
            .to_string();
        st.devices.push(DeviceStatus {
            name: d.name.clone(),
            tags,
            wanted_by: wanted
                .iter()
                .filter(|(spec, _)| d.matches(spec))
                .map(|(_, f)| f.clone())
                .collect(),
        });
    }

    match std::fs::read_to_string(status::LAST_BOOT_PATH) {
        Ok(text) => match serde_json::from_str::<BootRecord>(&text) {
            Ok(r) => st.last_boot = Some(r),
            Err(e) => {
                st.last_boot_note = Some(format!("{} is unreadable: {e}", status::LAST_BOOT_PATH))
            }
        },
        Err(e) => {
            st.last_boot_note = Some(format!(
                "no boot record at {} ({e}): this boot did not go through ember, or /run was not handed over",
                status::LAST_BOOT_PATH
            ))
        }
    }

    if json {
        match serde_json::to_string_pretty(&st) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("ember: status: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", status::render(&st));
    }
    0
}
