//! `ember diff`: what the next boot's rollback will destroy. Finds the root
//! subvolume (through a private mount of the filesystem's top level, so it
//! works the same in a rescue shell and on the running system), asks the
//! tree-search engine what changed since the root was created, and hides
//! what survives: persisted paths and other subvolumes' mount points.

use std::path::{Path, PathBuf};

use ember::config::{self, AbsPath};
use ember::diff;
use ember::sys::blockdev::Devices;
use ember::sys::btrfs::TopLevel;
use ember::sys::btrfs_tree;

const ABOUT: &str = "\
usage: ember diff [--config PATH] [--root DIR] [--json]

Lists the paths in the root subvolume that were created or modified since it
was last rolled back, minus persisted paths and other subvolumes' mount
points: exactly what the next boot's rollback will destroy. Nested
subvolumes inside the root are listed as one line each.

  --config PATH   the config (default /etc/ember/config.json)
  --root DIR      inspect this mounted subvolume instead of the configured root
  --json          one JSON object: {\"changes\":[{\"path\",\"kind\",\"is_dir\"}],\"counts\":{...}}

exit codes: 0 success (changes or not), 1 failure, 2 usage or configuration error";

pub fn run(args: &[String]) -> i32 {
    let spec = crate::args::Spec {
        values: &[("--config", "path"), ("--root", "directory")],
        switches: &["--json"],
        positionals: 0,
    };
    let parsed = match crate::args::parse_or_exit(args, &spec, "diff", ABOUT) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let config_path = parsed.value("--config").map(PathBuf::from);
    let root_dir = parsed.value("--root").map(PathBuf::from);
    let json = parsed.switch("--json");
    let path = match config_path.or_else(ember::boot::find_config) {
        Some(p) => p,
        None => {
            eprintln!("ember: diff: no config (looked for /etc/ember/config.json); pass --config");
            return 2;
        }
    };
    let checked = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ember: {e}");
            return 2;
        }
    };
    let kept = kept_paths(&checked.config);
    let result = match root_dir {
        Some(dir) => changes_in(&dir, kept),
        None => match configured_root(&checked.config) {
            Ok((top, target)) => changes_in(&top.path().join(&target), kept),
            Err(message) => {
                eprintln!("ember: diff: {message}");
                return 1;
            }
        },
    };
    match result {
        Ok(changes) => {
            if json {
                println!("{}", diff::render_json(&changes));
            } else {
                print!("{}", diff::render_text(&changes));
            }
            0
        }
        Err(e) => {
            eprintln!("ember: diff: {e}");
            1
        }
    }
}

/// What survives a rollback: every persisted path and every mount point
/// of a subvolume other than the root.
fn kept_paths(config: &config::Config) -> Vec<AbsPath> {
    let mut kept: Vec<AbsPath> = config::validate::persist_entries(config)
        .into_iter()
        .map(|e| e.path)
        .collect();
    kept.extend(config.persist.iter().map(|p| p.root.clone()));
    for fs in &config.btrfs {
        kept.extend(
            fs.subvolumes
                .iter()
                .filter(|s| !s.mount_point.is_root())
                .map(|s| s.mount_point.clone()),
        );
    }
    kept
}

fn changes_in(root: &Path, kept: Vec<AbsPath>) -> std::io::Result<Vec<diff::Change>> {
    let since = btrfs_tree::subvolume_otransid(root)?;
    let changes = btrfs_tree::changed_since(root, since)?;
    Ok(diff::filter_and_sort(changes, &kept))
}

/// Mounts the top level of the filesystem whose rollback is configured and
/// returns it with the target's path inside it.
fn configured_root(config: &config::Config) -> Result<(TopLevel, String), String> {
    let fs = config
        .btrfs
        .iter()
        .find(|fs| fs.rollback.is_some())
        .ok_or("no filesystem has a rollback configured; use --root DIR")?;
    let rb = fs.rollback.as_ref().ok_or("no rollback")?;
    let devices = Devices::start(false);
    let device = devices.resolve(&fs.device).ok_or_else(|| {
        format!(
            "device {} is not present (unlock it first: ember unlock)",
            fs.device
        )
    })?;
    let top = TopLevel::mount(&device, Path::new("/run/ember/diff-top"), &[])
        .map_err(|e| format!("cannot mount the top level of {device}: {e}"))?;
    Ok((top, rb.subvolume.trim_matches('/').to_string()))
}
