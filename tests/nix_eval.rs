//! The Nix side, evaluated with Debian's `nix-instantiate` (package
//! `nix-bin`; scripts/setup-host installs it). Nothing is built: Nix cannot
//! build here, it only evaluates.
//!
//! - every `.nix` file in the repository parses;
//! - `nixos-module/lib/to-config.nix` (pure, builtins only) turns the
//!   reference layout's options and each example host's into a config that
//!   `ember check` accepts, and the reference one plans exactly like
//!   examples/reference.toml;
//! - the pure library's expectations (unit ordering, assertions, escaping,
//!   disko layout: nixos-module/eval/pure-eval.nix) hold;
//! - with `EMBER_NIXPKGS_LIB` pointing at a checkout of nixpkgs' `lib`
//!   (github.com/nix-community/nixpkgs.lib), the whole module is evaluated
//!   with `lib.evalModules` (nixos-module/eval/module-eval.nix) and so are
//!   the flake's outputs (nixos-module/eval/flake-eval.nix); without it that
//!   test says it skipped.
//!
//! nix-instantiate runs with `--store dummy://`: no daemon, no store writes,
//! no state directory, so it works as any user and in parallel.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nix-eval");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// `nix-instantiate ARGS` against a dummy store, with nothing from the
/// caller's Nix environment (NIX_PATH, channels) leaking in.
fn nix_instantiate(args: &[&str]) -> Output {
    let cache = tmp_dir().join("cache");
    Command::new("nix-instantiate")
        .args(["--store", "dummy://"])
        .args(args)
        .current_dir(repo())
        .env_remove("NIX_PATH")
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run nix-instantiate ({e}): install Debian's nix-bin (scripts/setup-host does)")
        })
}

/// Evaluates `expr` (a function of `{ repo, ... }` plus `argstrs`) strictly
/// to JSON; panics with Nix's message on failure.
fn eval_json(expr: &str, argstrs: &[(&str, &str)]) -> String {
    let repo = repo();
    let mut args = vec![
        "--eval",
        "--strict",
        "--json",
        "-E",
        expr,
        "--argstr",
        "repo",
        repo.to_str().unwrap(),
    ];
    for (k, v) in argstrs {
        args.extend(["--argstr", k, v]);
    }
    let out = nix_instantiate(&args);
    assert!(
        out.status.success(),
        "nix-instantiate failed for {expr}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("JSON is UTF-8")
}

/// `ember check FILE`: (exit code, stdout, stderr).
fn ember_check(path: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("check")
        .arg(path)
        .output()
        .expect("run ember");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `json` to `<tmp>/<name>.json` and runs `ember check` on it;
/// panics unless it is accepted. Returns the printed plan.
fn assert_ember_accepts(name: &str, json: &str) -> String {
    assert!(json.starts_with('{'), "{name}: not a JSON object: {json}");
    let path = tmp_dir().join(format!("{name}.json"));
    std::fs::write(&path, json).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let (code, stdout, stderr) = ember_check(&path);
    assert_eq!(
        code,
        0,
        "ember check rejects the config to-config.nix made for {name} ({}):\n{stderr}{stdout}\n{json}",
        path.display()
    );
    stdout
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type().unwrap().is_dir() {
            if !(name.starts_with('.') || name == "target") {
                nix_files(&path, out);
            }
        } else if name.ends_with(".nix") {
            out.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    for required in [
        "flake.nix",
        "default.nix",
        "nixos-module/default.nix",
        "nixos-module/disko-lib.nix",
        "nixos-module/lib/to-config.nix",
        "examples/hosts/perseus.nix",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "{required} not found in {names:?}"
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        let out = nix_instantiate(&["--parse", file.to_str().unwrap()]);
        if !out.status.success() {
            failures.push(format!(
                "{}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "unparsable Nix files:\n{}",
        failures.join("\n")
    );
    println!("{} .nix files parse: {}", files.len(), names.join(" "));
}

/// The plan lines of `ember check` output (without the first line, which
/// names the file).
fn plan(stdout: &str) -> Vec<&str> {
    stdout.lines().skip(1).collect()
}

#[test]
fn reference_options_make_the_reference_config() {
    // The init examples/reference.toml names, so that both plans compare.
    let toml_path = repo().join("examples/reference.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let init = toml
        .lines()
        .find_map(|l| l.strip_prefix("init = "))
        .expect("examples/reference.toml has an init line")
        .trim_matches('"');
    let json = eval_json(
        "{ repo, init }: import (repo + \"/nixos-module/lib/to-config.nix\") \
         (import (repo + \"/nixos-module/eval/reference.nix\") // { inherit init; })",
        &[("init", init)],
    );
    let from_nix = assert_ember_accepts("reference", &json);
    let (code, from_toml, stderr) = ember_check(&toml_path);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        plan(&from_nix),
        plan(&from_toml),
        "the reference layout's options must plan exactly like examples/reference.toml"
    );
}

#[test]
fn example_hosts_make_configs_ember_accepts() {
    let dir = repo().join("examples/hosts");
    let mut hosts: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".nix"))
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["archon.nix", "cadmus.nix", "perseus.nix"]);
    for host in &hosts {
        let json = eval_json(
            "{ repo, host }: let l = import (repo + \"/nixos-module/lib\"); in \
             l.toConfig (l.hostOptions (import (repo + \"/examples/hosts/\" + host)))",
            &[("host", host)],
        );
        let name = host.trim_end_matches(".nix");
        let stdout = assert_ember_accepts(name, &json);
        println!("{name}:\n{stdout}");
    }
}

#[test]
fn persisted_entries_with_owners_make_a_config_ember_accepts() {
    // Owner, mode, mount options, hidden mounts and per-user entries, with
    // owner names resolved to ids (nixos-module/eval/persist-users.nix).
    let json = eval_json(
        "{ repo }: let l = import (repo + \"/nixos-module/lib\"); \
         f = import (repo + \"/nixos-module/eval/persist-users.nix\"); in \
         l.toConfig (f.ember // { _resolve = l.resolveIds f.users; })",
        &[],
    );
    let stdout = assert_ember_accepts("persist-users", &json);
    for fragment in [
        "/sysroot/srv/www (x-gvfs-hide,nosuid; created as 1000:33 0755)",
        "/sysroot/home/alice/.ssh (x-gvfs-hide; created as 1000:100 0700)",
    ] {
        assert!(
            stdout.contains(fragment),
            "plan lacks {fragment:?}:\n{stdout}"
        );
    }
}

#[test]
fn key_sources_and_retry_reach_ember_and_the_units() {
    // Ordered key sources, a passphrase timeout and `onFailure = "retry"`.
    let opts = "(import (repo + \"/nixos-module/eval/reference.nix\")) // { onFailure = \"retry\"; \
                luks.devices.cryptroot = { device = \"LABEL=luks\"; passphraseTimeout = 60; \
                keys = [ { keyfile = \"/key.bin\"; device = \"LABEL=usbkey\"; size = 64; } \"passphrase\" ]; }; }";
    let json = eval_json(
        &format!("{{ repo }}: import (repo + \"/nixos-module/lib/to-config.nix\") ({opts})"),
        &[],
    );
    let stdout = assert_ember_accepts("keys-retry", &json);
    assert!(
        stdout.contains("with keyfile /key.bin on LABEL=usbkey (64 bytes at offset 0)")
            && stdout.contains("then a passphrase from the console (3 tries, 60s each)"),
        "{stdout}"
    );
    assert!(stdout.contains("on failure: retry"), "{stdout}");
    let units = eval_json(
        &format!(
            "{{ repo }}: let n = import (repo + \"/nixos-module/lib/normalize.nix\") ({opts}); \
             u = import (repo + \"/nixos-module/lib/units.nix\") {{ inherit n; exe = \"ember\"; }}; \
             in u.services.ember-unlock"
        ),
        &[],
    );
    assert!(units.contains("\"Restart\":\"on-failure\""), "{units}");
    assert!(units.contains("\"StartLimitBurst\":4"), "{units}");
}

#[test]
fn pure_library_expectations_hold() {
    let out = nix_instantiate(&[
        "--eval",
        "--strict",
        "--json",
        "nixos-module/eval/pure-eval.nix",
    ]);
    assert!(
        out.status.success(),
        "nixos-module/eval/pure-eval.nix:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("passed: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn module_evaluates_with_nixpkgs_lib() {
    let Some(lib) = std::env::var_os("EMBER_NIXPKGS_LIB") else {
        println!(
            "skipped: set EMBER_NIXPKGS_LIB=/path/to/nixpkgs.lib (a checkout of \
             https://github.com/nix-community/nixpkgs.lib, or of nixpkgs: the directory holding lib/) \
             to evaluate the whole NixOS module and the flake with lib.evalModules"
        );
        return;
    };
    let lib = PathBuf::from(lib);
    assert!(
        lib.join("lib/default.nix").is_file(),
        "EMBER_NIXPKGS_LIB={} has no lib/default.nix",
        lib.display()
    );
    for file in [
        "nixos-module/eval/module-eval.nix",
        "nixos-module/eval/flake-eval.nix",
    ] {
        let out = nix_instantiate(&[
            "--eval",
            "--strict",
            "--json",
            file,
            "--argstr",
            "nixpkgsLib",
            lib.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{file} with nixpkgs lib {}:\n{}",
            lib.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{file}: passed {}", String::from_utf8_lossy(&out.stdout));
    }
}
