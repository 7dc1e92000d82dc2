//! Subcommand arguments, parsed the same way by every subcommand: options
//! that take a value (`--config PATH` or `--config=PATH`), switches
//! (`--json`), `--help`/`-h`, and positional arguments where a command has
//! them. Each command states what it accepts; anything else is a usage
//! error that names the argument.

use std::collections::{BTreeMap, BTreeSet};

/// What a command accepts.
pub struct Spec<'s> {
    /// Options with a value, and what the value is (for "--config needs a path").
    pub values: &'s [(&'s str, &'s str)],
    pub switches: &'s [&'s str],
    /// How many positional arguments at most (0: none).
    pub positionals: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    values: BTreeMap<String, String>,
    switches: BTreeSet<String>,
    pub positionals: Vec<String>,
    pub help: bool,
}

impl Parsed {
    /// The value given to `option`, the last one if it came twice.
    pub fn value(&self, option: &str) -> Option<&str> {
        self.values.get(option).map(String::as_str)
    }

    pub fn switch(&self, switch: &str) -> bool {
        self.switches.contains(switch)
    }
}

/// Parses `args` (without the command name) against `spec`; the error is
/// the usage message.
pub fn parse(args: &[String], spec: &Spec<'_>) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg.as_str(), None),
        };
        if name == "--help" || name == "-h" {
            out.help = true;
        } else if let Some((_, what)) = spec.values.iter().find(|(o, _)| *o == name) {
            let value = match inline {
                Some(v) => v.to_string(),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a {what}"))?,
            };
            out.values.insert(name.to_string(), value);
        } else if spec.switches.contains(&name) && inline.is_none() {
            out.switches.insert(name.to_string());
        } else if arg.starts_with('-') && arg != "-" {
            return Err(format!("unknown argument `{arg}`"));
        } else if out.positionals.len() < spec.positionals {
            out.positionals.push(arg.clone());
        } else {
            return Err(format!("unexpected argument `{arg}`"));
        }
    }
    Ok(out)
}

/// [`parse`] for a command's `run`: `Err` is the exit code the command
/// returns at once: 0 after printing `help` for `--help`, 2 after a usage
/// error (named, then `help`, on stderr).
pub fn parse_or_exit(
    args: &[String],
    spec: &Spec<'_>,
    command: &str,
    help: &str,
) -> Result<Parsed, i32> {
    match parse(args, spec) {
        Err(message) => {
            eprintln!("ember: {command}: {message}\n\n{help}");
            Err(2)
        }
        Ok(p) if p.help => {
            println!("{help}");
            Err(0)
        }
        Ok(p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec<'static> = Spec {
        values: &[("--config", "path"), ("--ask-password", "mode")],
        switches: &["--json"],
        positionals: 1,
    };

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_switches_and_positionals() {
        let p = parse(
            &args(&["--config", "/c.toml", "--json", "x", "--ask-password=agent"]),
            &SPEC,
        )
        .expect("valid");
        assert_eq!(p.value("--config"), Some("/c.toml"));
        assert_eq!(p.value("--ask-password"), Some("agent"));
        assert!(p.switch("--json"));
        assert_eq!(p.positionals, vec!["x".to_string()]);
        assert!(!p.help);
        assert!(parse(&args(&["-h"]), &SPEC).expect("valid").help);
        // A value may start with a dash or hold an `=`.
        let p = parse(&args(&["--config", "-odd=name"]), &SPEC).expect("valid");
        assert_eq!(p.value("--config"), Some("-odd=name"));
    }

    #[test]
    fn usage_errors_name_the_argument() {
        assert_eq!(
            parse(&args(&["--config"]), &SPEC),
            Err("--config needs a path".into())
        );
        assert_eq!(
            parse(&args(&["--sysroot", "/x"]), &SPEC),
            Err("unknown argument `--sysroot`".into())
        );
        assert_eq!(
            parse(&args(&["--json=yes"]), &SPEC),
            Err("unknown argument `--json=yes`".into())
        );
        assert_eq!(
            parse(&args(&["a", "b"]), &SPEC),
            Err("unexpected argument `b`".into())
        );
    }
}
