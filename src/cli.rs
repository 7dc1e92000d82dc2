//! Command-line entry points. As PID 1 ember boots; otherwise it is a tool.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad config.

use std::path::Path;

use ember::cmdline::KernelCmdline;
use ember::config;
use ember::modules::{MANIFEST_PATH, ModuleManifest};
use ember::plan::{self, Discovered};

const USAGE: &str = "\
usage: ember <command> [options]

commands:
  check CONFIG [--cmdline TEXT] [--modules MANIFEST]
                validate a config (TOML or .json) and print the boot plan
  version       print the version
  help          print this help

As PID 1 (the initrd's /init) ember boots: it reads /etc/ember/config.json,
loads kernel modules, unlocks, mounts, binds persisted paths and switches root.

exit codes: 0 success, 1 failure, 2 usage or configuration error";

pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    if rustix::process::getpid().is_init() {
        ember::boot::run_as_init(args.into_iter().skip(1).collect());
    }
    ember::sys::kmsg::KmsgLogger::install(log::LevelFilter::Info, false);
    match args.get(1).map(String::as_str) {
        Some("check") => check(&args[2..]),
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

fn check(args: &[String]) -> i32 {
    let mut config_path = None;
    let mut cmdline = String::new();
    let mut manifest_path = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cmdline" => match it.next() {
                Some(v) => cmdline = v.clone(),
                None => return usage_error("--cmdline needs a value"),
            },
            "--modules" => match it.next() {
                Some(v) => manifest_path = Some(v.clone()),
                None => return usage_error("--modules needs a path"),
            },
            "--help" | "-h" => {
                println!(
                    "usage: ember check CONFIG [--cmdline TEXT] [--modules MANIFEST]\n\nValidates CONFIG and prints the plan ember would execute at boot.\nexit codes: 0 valid, 2 invalid or unreadable"
                );
                return 0;
            }
            s if s.starts_with('-') => return usage_error(&format!("unknown option {s}")),
            s => {
                if config_path.replace(s.to_string()).is_some() {
                    return usage_error("give one CONFIG");
                }
            }
        }
    }
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
        &Discovered { modules },
    );
    println!("config {config_path} is valid; boot plan:");
    print!("{plan}");
    0
}

fn usage_error(message: &str) -> i32 {
    eprintln!("ember: {message}\n\n{USAGE}");
    2
}
