//! Command-line entry points. As PID 1 ember boots; otherwise it is a tool
//! for systemd stage 1 units and the rescue shell.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad config.

use std::path::{Path, PathBuf};

use ember::boot::{self, BootError, PhaseRun};
use ember::cmdline::KernelCmdline;
use ember::config;
use ember::modules::{MANIFEST_PATH, ModuleManifest};
use ember::plan::{self, Discovered, Phase, SYSROOT};
use ember::unlock::AskMode;

const USAGE: &str = "\
usage: ember <command> [options]

commands:
  check CONFIG   validate a config (TOML or .json) and print the boot plan
  unlock         wait for the configured LUKS devices and open them
  rollback       roll the configured subvolume back (--dry-run: only print)
  mount          mount the configured subvolumes under the new root
  persist        bind the persisted paths into the new root
  diff           list what the next rollback will destroy (--json)
  status         devices, volumes, mounts, persisted paths, the last boot (--json)
  version        print the version
  help           print this help

unlock, rollback, mount and persist read /etc/ember/config.json unless
--config PATH is given, honour the kernel command line (ember.rollback=0, ...),
and leave alone what is already done, so running them twice is harmless.
mount and persist work on /sysroot unless --sysroot PATH is given.
`ember COMMAND --help` describes each.

As PID 1 (the initrd's /init) ember boots: modules, devices, unlock,
rollback, mount, persist, switch root.

exit codes: 0 success, 1 failure, 2 usage or configuration error";

pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    // Key material passes through this process: no core dumps of it, and no
    // ptrace by anything but root.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rustix::process::getpid().is_init() {
        boot::run_as_init(args.into_iter().skip(1).collect());
    }
    // A command line tool: `ember status | head` ends quietly when the
    // reader goes away, as other tools do (Rust ignores SIGPIPE, and
    // println! would then panic on EPIPE).
    // SAFETY: installs the default disposition; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    ember::sys::kmsg::KmsgLogger::install(log::LevelFilter::Info, false);
    let rest = args.get(2..).unwrap_or(&[]);
    match args.get(1).map(String::as_str) {
        Some("check") => check(rest),
        Some("unlock") => phases(
            rest,
            "unlock",
            "Waits for the configured LUKS devices and opens them, trying each volume's\nkey sources in order (keyfiles in the initrd or on another device, then a\npassphrase; a typed passphrase is tried on every volume waiting for one).\nVolumes already open are left alone. The kernel command line's rd.luks.*\noptions apply as at boot.\n\n  --ask-password=auto|console|agent\n      where passphrases are asked: the terminal, or systemd's password\n      agents (Plymouth, systemd-tty-ask-password-agent) through\n      /run/systemd/ask-password. auto (default): the terminal if there is\n      one, else the agents if that directory exists, else /dev/console.\n\nexit codes: 0 every volume is open, 1 a volume stayed closed (wrong key,\nno key source left, device missing, damaged header, missing kernel module),\n2 usage or configuration error",
            &[Phase::Devices, Phase::Unlock],
        ),
        Some("rollback") => phases(
            rest,
            "rollback",
            "Rolls back the configured subvolume(s) (see docs/design/rollback.md). Guards\nrefuse without changing anything when the filesystem, the blank snapshot or\nthe layout is not as configured. --dry-run prints the steps only.",
            &[Phase::Rollback],
        ),
        Some("mount") => phases(
            rest,
            "mount",
            "Mounts the configured subvolumes under the new root (--sysroot, default\n/sysroot), root first. Mount points already mounted are left alone.",
            &[Phase::Mount],
        ),
        Some("persist") => phases(
            rest,
            "persist",
            "Binds (or links) the persisted files and directories from their persist\nroots into the new root (--sysroot, default /sysroot), creating what is\nmissing with the configured owner and mode. Symlinks planted where a file or\ndirectory is expected are refused; entries already in place are left alone.\n--dry-run prints each entry's source, target, method and state (mounted,\nlinked, missing, refused and why) and changes nothing; exit 1 if any entry\nis refused.",
            &[Phase::Persist],
        ),
        Some("diff") => crate::diff_cmd::run(rest),
        Some("status") => crate::status_cmd::run(rest),
        Some("version" | "--version") => {
            println!("ember {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("ember: unknown command `{other}`\n\n{USAGE}");
            2
        }
        None => {
            eprintln!("{USAGE}");
            2
        }
    }
}

fn usage_error(message: &str) -> i32 {
    eprintln!("ember: {message}\n\n{USAGE}");
    2
}

/// Exit code for a failed step: 2 for config problems, 1 for the rest.
fn failure_code(e: &BootError) -> i32 {
    match e {
        BootError::Config(_) | BootError::NoConfig => 2,
        _ => 1,
    }
}

fn phases(args: &[String], name: &str, about: &str, phases: &[Phase]) -> i32 {
    let with_dry_run = name == "rollback" || name == "persist";
    let values: &[(&str, &str)] = if name == "unlock" {
        &[
            ("--config", "path"),
            ("--sysroot", "path"),
            ("--ask-password", "mode"),
        ]
    } else {
        &[("--config", "path"), ("--sysroot", "path")]
    };
    let spec = crate::args::Spec {
        values,
        switches: if with_dry_run { &["--dry-run"] } else { &[] },
        positionals: 0,
    };
    let extra = match name {
        "rollback" | "persist" => " [--dry-run]",
        "unlock" => " [--ask-password=auto|console|agent]",
        _ => "",
    };
    let codes = if about.contains("exit codes:") {
        ""
    } else {
        "\n\nexit codes: 0 success, 1 failure, 2 usage or configuration error"
    };
    let help =
        format!("usage: ember {name} [--config PATH] [--sysroot PATH]{extra}\n\n{about}{codes}");
    let parsed = match crate::args::parse_or_exit(args, &spec, name, &help) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let ask = match parsed.value("--ask-password") {
        None | Some("auto") => None,
        Some("console") => Some(AskMode::Console),
        Some("agent") => Some(AskMode::Agent(PathBuf::from(
            ember::sys::ask_password::ASK_DIR,
        ))),
        Some(other) => {
            return usage_error(&format!(
                "--ask-password={other}: expected auto, console or agent"
            ));
        }
    };
    let config = parsed.value("--config").map(PathBuf::from);
    let sysroot = parsed.value("--sysroot").unwrap_or(SYSROOT).to_string();
    let dry_run = parsed.switch("--dry-run");
    let run = PhaseRun {
        phases,
        config: config.as_deref(),
        sysroot: &sysroot,
        rollback_dry_run: dry_run && name == "rollback",
        persist_dry_run: dry_run && name == "persist",
        ask: ask.unwrap_or_else(AskMode::detect),
    };
    match boot::run_phases(&run) {
        Ok((_, 0)) => 0,
        Ok((_, _refused)) => 1,
        Err(e) => {
            log::error!("{name} failed: {e}");
            failure_code(&e)
        }
    }
}

fn check(args: &[String]) -> i32 {
    let spec = crate::args::Spec {
        values: &[("--cmdline", "value"), ("--modules", "path")],
        switches: &[],
        positionals: 1,
    };
    const HELP: &str = "usage: ember check CONFIG [--cmdline TEXT] [--modules MANIFEST]\n\nValidates CONFIG and prints the plan ember would execute at boot, for the\ngiven kernel command line.\nexit codes: 0 valid, 2 invalid or unreadable";
    let parsed = match crate::args::parse_or_exit(args, &spec, "check", HELP) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let config_path = parsed.positionals.first().cloned();
    let cmdline = parsed.value("--cmdline").unwrap_or_default().to_string();
    let manifest_path = parsed.value("--modules").map(str::to_string);
    let Some(config_path) = config_path else {
        return usage_error("ember check needs a CONFIG path");
    };
    let checked = match config::load(Path::new(&config_path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ember: {e}");
            return 2;
        }
    };
    let manifest_path = manifest_path.or_else(|| {
        Path::new(MANIFEST_PATH)
            .exists()
            .then(|| MANIFEST_PATH.to_string())
    });
    let modules = match manifest_path {
        Some(p) => match std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<ModuleManifest>(&t).map_err(|e| e.to_string()))
        {
            Ok(m) => m.modules.into_iter().map(|m| m.name).collect(),
            Err(e) => {
                eprintln!("ember: cannot read module manifest {p}: {e}");
                return 2;
            }
        },
        None => Vec::new(),
    };
    let plan = plan::plan(
        &checked.config,
        &KernelCmdline::parse(&cmdline),
        &Discovered {
            modules,
            ..Default::default()
        },
    );
    println!("config {config_path} is valid; boot plan:");
    print!("{plan}");
    0
}
