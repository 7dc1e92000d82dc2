//! The kernel command line, as far as ember cares: `init=`, `ember.*` and
//! `rd.luks.*`. Parsing is pure so the precedence rules can be tested
//! without a kernel.

pub mod luks;

use crate::config::{AbsPath, FailurePolicy};
pub use luks::{ActivationFlag, CmdlineKey, CmdlineOptions, LuksCmdline, LuksOptions};

/// Settings from the kernel command line. `None` means "not given": the
/// config file's value stands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelCmdline {
    /// `init=`: the real init, overriding the config's `init`.
    pub init: Option<AbsPath>,
    /// `ember.timeout=SECONDS`: device wait timeout.
    pub device_timeout_secs: Option<u32>,
    /// `ember.on_failure=rescue|halt|reboot|poweroff|retry`.
    pub on_failure: Option<FailurePolicy>,
    /// `ember.debug`: log at debug level.
    pub debug: bool,
    /// `quiet`: show only warnings and errors on the console (everything
    /// still goes to the kernel log).
    pub quiet: bool,
    /// `ember.rollback=0|1|dry-run`: the escape hatch for one boot.
    pub rollback: RollbackSwitch,
    /// `ember.rollback_pause_after=N`: a testing aid that stops (forever)
    /// once N rollback actions are durable, so a test can cut the power there.
    pub rollback_pause_after: Option<usize>,
    /// `resume=`: the hibernation image's device, if the system may be resuming.
    pub resume: Option<String>,
    /// `rd.luks=`, `rd.luks.uuid=`, `rd.luks.name=`, `rd.luks.key=`, `rd.luks.options=`.
    pub luks: LuksCmdline,
    /// Things that looked like ember options but were not understood;
    /// reported as warnings instead of being silently dropped.
    pub ignored: Vec<String>,
}

/// `ember.rollback=`: whether this boot rolls back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RollbackSwitch {
    /// As configured.
    #[default]
    On,
    /// `ember.rollback=0`: skip the rollback this once (something important
    /// was not persisted).
    Off,
    /// `ember.rollback=dry-run`: log what would be done, change nothing.
    DryRun,
}

/// Splits the command line the way the kernel does: on spaces, with double
/// quotes grouping (`foo="a b"`), quotes removed.
/// A decimal number written as digits only, as the kernel and systemd
/// take them (Rust's `parse` would also take `+3`).
pub fn decimal<T: std::str::FromStr>(v: &str) -> Option<T> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The kernel's separators (`isspace` in lib/cmdline.c): ASCII only.
fn is_kernel_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

pub fn split(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in text.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if is_kernel_space(c) && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(current);
    }
    words
}

impl KernelCmdline {
    /// Parses /proc/cmdline as read: bytes that are not UTF-8 (a path in
    /// another encoding, say) spoil only the word they are in.
    pub fn from_bytes(bytes: &[u8]) -> KernelCmdline {
        KernelCmdline::parse(&String::from_utf8_lossy(bytes))
    }

    pub fn parse(text: &str) -> KernelCmdline {
        let mut out = KernelCmdline::default();
        for word in split(text) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            match (key, value) {
                ("init", Some(v)) => match AbsPath::parse(v) {
                    Ok(p) => out.init = Some(p),
                    Err(e) => out.ignored.push(format!("init={v}: {e}")),
                },
                ("ember.timeout", Some(v)) => match decimal::<u32>(v) {
                    Some(n) if n > 0 => out.device_timeout_secs = Some(n),
                    _ => out.ignored.push(format!(
                        "ember.timeout={v}: not a positive number of seconds"
                    )),
                },
                ("ember.on_failure", Some(v)) => match v {
                    "rescue" => out.on_failure = Some(FailurePolicy::Rescue),
                    "halt" => out.on_failure = Some(FailurePolicy::Halt),
                    "reboot" => out.on_failure = Some(FailurePolicy::Reboot),
                    "poweroff" => out.on_failure = Some(FailurePolicy::Poweroff),
                    "retry" => out.on_failure = Some(FailurePolicy::Retry),
                    _ => out.ignored.push(format!(
                        "ember.on_failure={v}: expected rescue, halt, reboot, poweroff or retry"
                    )),
                },
                ("ember.debug", None) => out.debug = true,
                ("quiet", None) => out.quiet = true,
                ("ember.rollback", Some(v)) => match v {
                    "0" | "no" | "off" | "false" => out.rollback = RollbackSwitch::Off,
                    "1" | "yes" | "on" | "true" => out.rollback = RollbackSwitch::On,
                    "dry-run" => out.rollback = RollbackSwitch::DryRun,
                    _ => out
                        .ignored
                        .push(format!("ember.rollback={v}: expected 0, 1 or dry-run")),
                },
                ("ember.rollback_pause_after", Some(v)) => match decimal::<usize>(v) {
                    Some(n) if n > 0 => out.rollback_pause_after = Some(n),
                    _ => out.ignored.push(format!(
                        "ember.rollback_pause_after={v}: not a positive number"
                    )),
                },
                ("resume", Some(v)) if !v.is_empty() => out.resume = Some(v.to_string()),
                ("noresume", None) => out.resume = None,
                (k, v) if out.luks.parse_word(k, v, &mut out.ignored) => {}
                (k, _) if k.starts_with("ember.") => {
                    out.ignored.push(format!("{word}: unknown ember option"))
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_with_quotes() {
        assert_eq!(
            split("  a b=\"c d\"  e\n"),
            vec!["a".to_string(), "b=c d".into(), "e".into()]
        );
        assert_eq!(split(""), Vec::<String>::new());
        assert_eq!(split("x=\"\""), vec!["x=".to_string()]);
        // Only ASCII whitespace separates words, as in the kernel.
        assert_eq!(
            split("a\u{a0}b\tc"),
            vec!["a\u{a0}b".to_string(), "c".into()]
        );
    }

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(
            KernelCmdline::parse("ember.timeout=3").device_timeout_secs,
            Some(3)
        );
        for bad in ["+3", "-3", "3s", "", " 3"] {
            let c = KernelCmdline::parse(&format!("ember.timeout={bad}"));
            assert_eq!(c.device_timeout_secs, None, "{bad:?}");
        }
        assert_eq!(
            KernelCmdline::parse("ember.rollback_pause_after=+2").rollback_pause_after,
            None
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_spoil_only_their_word() {
        let c = KernelCmdline::from_bytes(b"root=/dev/\xff\xfe ember.timeout=7 ember.debug\n");
        assert_eq!(c.device_timeout_secs, Some(7));
        assert!(c.debug);
    }

    #[test]
    fn reads_ember_options() {
        let c = KernelCmdline::parse(
            "BOOT_IMAGE=/vmlinuz root=x init=/nix/store/abc-nixos/init ember.timeout=5 ember.on_failure=halt ember.debug quiet",
        );
        assert_eq!(
            c.init.as_ref().map(|p| p.as_str()),
            Some("/nix/store/abc-nixos/init")
        );
        assert_eq!(c.device_timeout_secs, Some(5));
        assert_eq!(c.on_failure, Some(FailurePolicy::Halt));
        assert!(c.debug);
        assert!(c.quiet);
        assert!(!KernelCmdline::parse("ember.debug").quiet);
        assert!(c.ignored.is_empty());
    }

    #[test]
    fn rollback_switch_and_resume() {
        assert_eq!(
            KernelCmdline::parse("ember.rollback=0").rollback,
            RollbackSwitch::Off
        );
        assert_eq!(
            KernelCmdline::parse("ember.rollback=dry-run").rollback,
            RollbackSwitch::DryRun
        );
        assert_eq!(KernelCmdline::parse("").rollback, RollbackSwitch::On);
        let c = KernelCmdline::parse(
            "ember.rollback=maybe ember.rollback_pause_after=2 resume=UUID=abc",
        );
        assert_eq!(c.rollback, RollbackSwitch::On);
        assert_eq!(c.ignored.len(), 1);
        assert_eq!(c.rollback_pause_after, Some(2));
        assert_eq!(c.resume.as_deref(), Some("UUID=abc"));
        assert_eq!(
            KernelCmdline::parse("resume=/dev/vdb noresume").resume,
            None
        );
    }

    #[test]
    fn reports_what_it_ignores() {
        let c = KernelCmdline::parse(
            "ember.timout=5 ember.timeout=0 init=relative ember.on_failure=explode",
        );
        assert_eq!(c.device_timeout_secs, None);
        assert_eq!(c.init, None);
        assert_eq!(c.ignored.len(), 4, "{:?}", c.ignored);
        assert!(c.ignored[0].contains("unknown ember option"));
    }
}
