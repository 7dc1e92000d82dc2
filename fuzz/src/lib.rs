//! The properties the fuzz targets check, beyond "does not panic".
//!
//! Config targets: whatever the text, `check_str` returns (and its error
//! formats); a config that validates must survive a JSON round trip unchanged,
//! plan, and yield a plan that honours what validation promised (`/` mounted
//! first, parents before children, every device waited for or unlocked before
//! use, no bind mount hiding a subvolume, nothing the kernel gets as a C
//! string containing NUL, ...).
//!
//! Command line target: `split` keeps every character except quotes and
//! unquoted whitespace, never leaves unquoted whitespace inside a word, and
//! re-quoting its words gives them back; `parse` depends only on the words,
//! keeps the last valid value of each option, and its result plans correctly
//! over the reference config and two more layouts.

use std::sync::OnceLock;

use ember::cmdline::{self, KernelCmdline, LuksCmdline};
use ember::config::{
    self, AbsPath, Checked, Config, ConfigError, DeviceSpec, EntryKind, FailurePolicy,
    RollbackStrategy, Syntax,
};
use ember::plan::{self, Discovered, KeySource, Plan, Step};

/// The layouts the command line target plans against: the reference one,
/// one with a rollback (which `ember.rollback=` and `resume=` change) and
/// one with several key sources and a volume by UUID (`rd.luks.*`).
pub const REFERENCE: &str = include_str!("../../examples/reference.toml");
pub const ROLLBACK: &str = include_str!("../corpus/config_toml/rollback.toml");
pub const KEYS: &str = include_str!("../corpus/config_toml/keys.toml");

fn layouts() -> &'static [Config] {
    static LAYOUTS: OnceLock<Vec<Config>> = OnceLock::new();
    LAYOUTS.get_or_init(|| {
        [REFERENCE, ROLLBACK, KEYS]
            .iter()
            .map(|text| {
                config::check_str(text, Syntax::Toml, "layout")
                    .expect("layout is valid")
                    .config
            })
            .collect()
    })
}

/// Config text in either syntax: parse, validate and, when valid, check
/// everything a valid config promises.
pub fn config(data: &[u8], syntax: Syntax) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::check_str(text, syntax, "fuzz") {
        Ok(checked) => valid_config(&checked, syntax),
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("config fuzz"), "{message}");
            if let ConfigError::Invalid { issues, .. } = &e {
                assert!(!issues.is_empty(), "invalid without a reason");
            }
        }
    }
}

fn valid_config(checked: &Checked, syntax: Syntax) {
    let config = &checked.config;

    // Validation is deterministic and agrees with check_str.
    let findings = config::validate::validate(config);
    assert!(findings.errors.is_empty(), "{:?}", findings.errors);
    assert!(
        findings.rollback_errors.is_empty(),
        "{:?}",
        findings.rollback_errors
    );
    assert_eq!(findings.warnings, checked.warnings);

    // What the NixOS module does: the config as JSON must read back the same.
    for json in [
        serde_json::to_string(config).expect("a config serialises"),
        serde_json::to_string_pretty(config).expect("a config serialises"),
    ] {
        let back = match config::check_str(&json, Syntax::Json, "roundtrip.json") {
            Ok(back) => back,
            Err(e) => panic!("{syntax} config does not survive JSON:\n{json}\n{e}"),
        };
        assert_eq!(&back.config, config, "JSON round trip changed\n{json}");
        assert_eq!(back.warnings, checked.warnings);
    }

    // Rollback names reach the filesystem (snapshot, rename, delete).
    for fs in &config.btrfs {
        if let Some(rb) = &fs.rollback {
            no_nul("rollback subvolume", &rb.subvolume);
            if rb.strategy == RollbackStrategy::Archive {
                no_nul("rollback archive_dir", &rb.archive_dir);
            }
            if let Some(blank) = &rb.blank_snapshot {
                no_nul("rollback blank_snapshot", blank);
            }
            if let Some(filesystem) = &rb.filesystem {
                device_round_trips(filesystem);
            }
        }
    }

    let default = KernelCmdline::default();
    check_plan(config, &default);
    let overriding = KernelCmdline::parse(
        "init=/nix/store/fuzz/init ember.timeout=7 ember.on_failure=halt ember.nope",
    );
    check_plan(config, &overriding);
}

/// A string the kernel receives as a C string must not hold NUL: it would be
/// cut short (or refused) at boot, after validation said yes.
fn no_nul(what: &str, s: &str) {
    assert!(!s.contains('\0'), "{what} `{s:?}` contains NUL");
}

fn normal_path(what: &str, p: &AbsPath) {
    no_nul(what, p.as_str());
    assert_eq!(
        AbsPath::parse(p.as_str()).as_ref(),
        Ok(p),
        "{what} {p} is not normalised"
    );
}

fn device_round_trips(d: &DeviceSpec) {
    assert_eq!(
        DeviceSpec::parse(&d.to_string()).as_ref(),
        Ok(d),
        "device {d:?} does not read back from its text"
    );
    // A path goes to open(2); tags are compared with what libblkid and the
    // kernel report, which are C strings: a NUL could never match.
    no_nul("device", &d.to_string());
}

/// The mount holding `path` among `mounts`: the deepest mount point at or above it.
fn owner<'a>(mounts: &[&'a AbsPath], path: &AbsPath) -> Option<&'a AbsPath> {
    mounts
        .iter()
        .copied()
        .filter(|m| m.contains(path))
        .max_by_key(|m| m.depth())
}

/// Plans a valid config with `cmdline` and checks the plan against the
/// config, using only the plan's steps (not the validator's helpers).
pub fn check_plan(config: &Config, cmdline: &KernelCmdline) {
    let plan = plan::plan(config, cmdline, &Discovered::default());
    let text = plan.to_string();
    assert!(text.contains("on failure: "));
    check_steps(config, cmdline, &plan);
}

fn check_steps(config: &Config, cmdline: &KernelCmdline, plan: &Plan) {
    let steps = &plan.steps;
    assert_eq!(steps.first(), Some(&Step::MountApiFilesystems));
    let init = cmdline.init.as_ref().unwrap_or(&config.init);
    assert_eq!(steps.last(), Some(&Step::SwitchRoot { init: init.clone() }));
    normal_path("init", init);
    assert_eq!(
        plan.on_failure,
        cmdline.on_failure.unwrap_or(config.on_failure)
    );
    let timeout = cmdline
        .device_timeout_secs
        .unwrap_or(config.device_timeout_secs);
    assert!(timeout > 0);
    for w in &cmdline.ignored {
        assert!(
            plan.warnings.iter().any(|pw| pw.ends_with(w.as_str())),
            "ignored `{w}` not warned about"
        );
    }

    let mut waited: Vec<&DeviceSpec> = Vec::new();
    let mut unlocked: Vec<&str> = Vec::new();
    let mut mounted: Vec<&AbsPath> = Vec::new();
    let mut bound: Vec<(&AbsPath, EntryKind)> = Vec::new();
    let mut unlocks = 0;
    let available = |d: &DeviceSpec, waited: &[&DeviceSpec], unlocked: &[&str]| {
        waited.contains(&d) || d.mapper_name().is_some_and(|n| unlocked.contains(&n))
    };

    for (i, step) in steps.iter().enumerate() {
        let _ = step.to_string();
        let _ = step.phase().name();
        match step {
            Step::MountApiFilesystems => assert_eq!(i, 0),
            Step::LoadModules { .. } => panic!("no modules were discovered"),
            Step::WaitForDevices {
                devices,
                timeout_secs,
            } => {
                assert!(mounted.is_empty(), "waiting after mounting");
                assert_eq!(*timeout_secs, timeout);
                assert!(!devices.is_empty());
                for d in devices {
                    device_round_trips(&d.spec);
                    waited.push(&d.spec);
                }
            }
            Step::Unlock(v) => {
                unlocks += 1;
                let (device, name) = (&v.device, &v.name);
                assert!(mounted.is_empty(), "unlocking after mounting");
                assert!(
                    available(device, &waited, &unlocked),
                    "{device} not waited for"
                );
                device_round_trips(device);
                assert!(
                    !name.is_empty()
                        && name != "."
                        && name != ".."
                        && !name.contains('/')
                        && !name.contains('\0'),
                    "mapper name `{name:?}` is not one path component"
                );
                assert!(!unlocked.contains(&name.as_str()), "{name} unlocked twice");
                unlocked.push(name);
                if let Some(i) = v.field.strip_prefix("luks[") {
                    let i: usize = i.trim_end_matches(']').parse().expect("luks[N]");
                    assert!(i < config.luks.len(), "{} is not in the config", v.field);
                }
                assert!(!v.keys.is_empty(), "{} has no key source", v.field);
                for key in &v.keys {
                    match key {
                        KeySource::Keyfile {
                            path, device, size, ..
                        } => {
                            assert!(path.is_some() || device.is_some(), "key from nowhere");
                            if let Some(p) = path {
                                normal_path("keyfile", p);
                            }
                            if let Some(d) = device {
                                device_round_trips(d);
                            }
                            assert_ne!(*size, Some(0), "empty key");
                        }
                        KeySource::Passphrase { tries, .. } => {
                            assert!((1..=100).contains(tries), "{tries} tries");
                        }
                    }
                }
            }
            Step::MountSubvolume {
                device,
                subvolume,
                mount_point,
                options,
                ..
            } => {
                assert!(bound.is_empty(), "mounting after binding");
                assert!(
                    available(device, &waited, &unlocked),
                    "{device} not waited for"
                );
                device_round_trips(device);
                normal_path("mount point", mount_point);
                if mounted.is_empty() {
                    assert!(mount_point.is_root(), "first mount is {mount_point}");
                } else {
                    assert!(!mount_point.is_root(), "`/` mounted twice or late");
                }
                assert!(
                    !mounted.contains(&mount_point),
                    "{mount_point} mounted twice"
                );
                mounted.push(mount_point);
                // subvol=<subvolume> and the options go into one C string,
                // separated by commas.
                assert!(!subvolume.is_empty());
                assert!(!subvolume.starts_with('/') && !subvolume.ends_with('/'));
                assert!(!subvolume.contains(','), "subvolume {subvolume:?}");
                no_nul("subvolume", subvolume);
                assert!(
                    subvolume
                        .split('/')
                        .all(|c| !c.is_empty() && c != "." && c != ".."),
                    "subvolume {subvolume:?} is not normalised"
                );
                for (k, o) in options.iter().enumerate() {
                    assert!(!o.is_empty(), "empty mount option");
                    assert!(!o.contains(','), "mount option {o:?}");
                    assert!(!o.starts_with("subvol=") && !o.starts_with("subvolid="));
                    no_nul("mount option", o);
                    assert!(!options[..k].contains(o), "{o} given twice");
                }
            }
            Step::Persist(e) => {
                let (source, target, root, kind) =
                    (&e.root.join(e.path.as_str()), &e.path, &e.root, &e.kind);
                assert!(!mounted.is_empty());
                normal_path("persist source", source);
                normal_path("persist target", target);
                normal_path("persist root", root);
                // Bind flags are applied by a remount; x-* options go to
                // /run/mount/utab, comma-separated.
                for o in &e.options {
                    assert!(!o.is_empty(), "empty persist option");
                    assert!(!o.contains(','), "persist option {o:?}");
                    no_nul("persist option", o);
                }
                assert!(!target.is_root(), "binding over /");
                assert_eq!(source, &root.join(target.as_str()));
                assert!(!root.contains(target) && !target.contains(root));
                // The copy lives on a subvolume that is not rolled back...
                let from = owner(&mounted, source).expect("`/` is mounted");
                assert!(!from.is_root(), "{source} is on the root subvolume");
                // ...and is bound onto the root subvolume, hiding no mount.
                let onto = owner(&mounted, target).expect("`/` is mounted");
                assert!(onto.is_root(), "{target} is on {onto}, not on `/`");
                for m in &mounted {
                    assert!(
                        !target.contains(m),
                        "binding {target} would hide the mount at {m}"
                    );
                }
                for (earlier, earlier_kind) in &bound {
                    assert_ne!(*earlier, target, "{target} bound twice");
                    assert!(
                        !target.contains(earlier),
                        "{target} bound after {earlier} below it"
                    );
                    if *earlier_kind == EntryKind::File {
                        assert!(!earlier.contains(target), "{target} below file {earlier}");
                    }
                }
                if *kind == EntryKind::File {
                    for (earlier, _) in &bound {
                        assert!(!target.contains(earlier));
                    }
                }
                bound.push((target, *kind));
                let _ = e.method.as_str();
            }
            Step::SwitchRoot { .. } => assert_eq!(i, steps.len() - 1),
            // Rollback and resume steps: formatting them above is all that
            // is checked here.
            #[allow(unreachable_patterns)]
            _ => assert!(mounted.is_empty(), "{step} after mounting"),
        }
    }

    if cmdline.luks == LuksCmdline::default() {
        assert_eq!(unlocks, config.luks.len());
    }
    let subvolumes: usize = config.btrfs.iter().map(|fs| fs.subvolumes.len()).sum();
    assert_eq!(mounted.len(), subvolumes);
    // Every persisted path (as the config resolves them: files, directories,
    // per-user entries) is either bound or already on a subvolume of its own.
    for e in config::validate::persist_entries(config) {
        let path = &e.path;
        normal_path("persisted path", path);
        let on_own = !owner(&mounted, path).expect("`/` is mounted").is_root();
        let is_bound = bound.iter().any(|(t, _)| *t == path);
        if on_own {
            assert!(!is_bound, "{path} bound over the subvolume it lives on");
            assert!(
                plan.warnings
                    .iter()
                    .any(|w| w.contains(&format!("{path} already lives on subvolume"))),
                "{path} neither bound nor warned about"
            );
        } else {
            assert!(is_bound, "{path} ({}) is not put in place", e.field);
        }
    }
}

/// True for the whitespace the command line splits on.
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Quotes a word so that `split` gives it back: words never hold `"`.
fn quote(word: &str) -> String {
    if word.is_empty() || word.chars().any(is_space) {
        format!("\"{word}\"")
    } else {
        word.to_string()
    }
}

/// A kernel command line: split and parse, and check both.
pub fn cmdline(data: &[u8]) {
    // The agent reads /proc/cmdline with read_to_string; other bytes never
    // reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let words = cmdline::split(text);

    // Every character survives except quotes and unquoted whitespace, and
    // every whitespace character left inside a word was quoted.
    let mut kept: Vec<(char, bool)> = Vec::new();
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if quoted || !is_space(c) {
            kept.push((c, quoted));
        }
    }
    let mut kept = kept.into_iter();
    for w in &words {
        assert!(!w.contains('"'), "word {w:?} keeps a quote");
        for c in w.chars() {
            let (k, was_quoted) = kept.next().expect("split invented characters");
            assert_eq!(c, k, "split changed characters");
            assert!(
                was_quoted || !is_space(c),
                "word {w:?} holds unquoted whitespace"
            );
        }
    }
    assert_eq!(kept.next(), None, "split dropped characters");
    if !text.contains('"') {
        let plain: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(words, plain);
    }

    // Re-quoting the words gives them back, and parse sees only the words.
    let requoted = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
    assert_eq!(cmdline::split(&requoted), words, "requoted: {requoted:?}");
    let parsed = KernelCmdline::parse(text);
    assert_eq!(KernelCmdline::parse(&requoted), parsed);

    // The last valid value of each option wins; invalid ones are reported.
    let value = |key: &'static str| {
        words
            .iter()
            .filter_map(move |w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    };
    let init = value("init").filter_map(|v| AbsPath::parse(v).ok()).last();
    assert_eq!(parsed.init, init);
    if let Some(p) = &parsed.init {
        normal_path("init", p);
    }
    let timeout = value("ember.timeout")
        .filter_map(|v| v.parse::<u32>().ok().filter(|n| *n > 0))
        .last();
    assert_eq!(parsed.device_timeout_secs, timeout);
    let policy = value("ember.on_failure")
        .filter_map(|v| match v {
            "rescue" => Some(FailurePolicy::Rescue),
            "halt" => Some(FailurePolicy::Halt),
            "reboot" => Some(FailurePolicy::Reboot),
            "poweroff" => Some(FailurePolicy::Poweroff),
            _ => None,
        })
        .last();
    assert_eq!(parsed.on_failure, policy);
    assert_eq!(parsed.debug, words.iter().any(|w| w == "ember.debug"));
    // Only options ember reads can be reported as ignored.
    let ours = |w: &&String| {
        ["ember.", "init=", "rd.luks", "luks"]
            .iter()
            .any(|p| w.starts_with(p))
    };
    if !words.iter().any(|w| ours(&w)) {
        assert!(parsed.ignored.is_empty(), "{:?}", parsed.ignored);
    }

    // Whatever the command line, valid layouts still plan soundly.
    for layout in layouts() {
        check_plan(layout, &parsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = format!("{}/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .expect("seed directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).expect("seed"))
            })
            .collect();
        out.sort();
        assert!(!out.is_empty());
        out
    }

    /// Every seed passes the checks; every seed not named `invalid*` is a
    /// valid config, so mutations start from configs that reach the planner.
    #[test]
    fn config_seeds() {
        for (target, syntax) in [("config_toml", Syntax::Toml), ("config_json", Syntax::Json)] {
            for (name, data) in seeds(target) {
                config(&data, syntax);
                let text = std::str::from_utf8(&data).expect("UTF-8 seed");
                let result = config::check_str(text, syntax, &name);
                assert_eq!(
                    result.is_ok(),
                    !name.starts_with("invalid"),
                    "{target}/{name}: {:?}",
                    result.err().map(|e| e.to_string())
                );
            }
        }
    }

    #[test]
    fn cmdline_seeds() {
        for (_, data) in seeds("cmdline") {
            cmdline(&data);
        }
        cmdline(b"");
        cmdline(b"\"\"");
        cmdline("a\u{a0}b \u{2028}c".as_bytes());
    }
}
