//! A `log::Log` that writes `ember:`-tagged records to `/dev/kmsg` with their
//! syslog priority, and to the console when the kernel would not print them
//! there itself (so nothing shows twice and nothing important is hidden).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The kernel rate-limits each open file of /dev/kmsg to 10 records per 5 s
/// (unless printk.devkmsg=on); reopening before that budget is spent keeps
/// every boot message.
const RECORDS_PER_OPEN: u32 = 8;

struct KmsgState {
    file: Option<File>,
    written: u32,
}

static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether a record belongs on the console. With `quiet`, only what needs
/// attention does (every record is in the kernel log all the same):
/// console output is slow on a serial line, and a quiet boot is what the
/// user asked for.
fn wanted_on_console(level: Level, target: &str, quiet: bool) -> bool {
    level <= Level::Warn || target == ATTENTION || !quiet
}

/// Log target for records the person at the console must see even with
/// `quiet`, because they ask them to do something (insert a key device).
pub const ATTENTION: &str = "ember::attention";

/// `quiet` on the kernel command line: from now on, ember itself echoes
/// only warnings and errors to the console.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub struct KmsgLogger {
    level: LevelFilter,
    state: Mutex<KmsgState>,
    /// As init, records at a level the kernel echoes to the console are not
    /// written to stderr again; elsewhere stderr always gets them.
    as_init: bool,
    /// The kernel's console log level, read once /proc is there.
    console_level: Mutex<Option<u8>>,
}

fn syslog_level(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The first field of /proc/sys/kernel/printk: records with a lower
/// priority number than this are printed on the console by the kernel.
fn read_console_loglevel() -> Option<u8> {
    let text = std::fs::read_to_string("/proc/sys/kernel/printk").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn open_kmsg() -> Option<File> {
    OpenOptions::new().write(true).open("/dev/kmsg").ok()
}

impl KmsgLogger {
    /// `as_init`: running as the initrd's init, where stderr is the console
    /// the kernel also prints to.
    pub fn install(level: LevelFilter, as_init: bool) {
        let logger = KmsgLogger {
            level,
            state: Mutex::new(KmsgState {
                file: open_kmsg(),
                written: 0,
            }),
            as_init,
            console_level: Mutex::new(None),
        };
        if log::set_boxed_logger(Box::new(logger)).is_ok() {
            log::set_max_level(level);
        }
    }

    /// /proc is mounted by ember itself, so the first records may predate it:
    /// keep trying until the value is known.
    fn console_level(&self) -> Option<u8> {
        let mut cached = self.console_level.lock().ok()?;
        if cached.is_none() {
            *cached = read_console_loglevel();
        }
        *cached
    }

    fn write_kmsg(&self, priority: u8, message: &str) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if state.file.is_none() || state.written >= RECORDS_PER_OPEN {
            state.file = open_kmsg();
            state.written = 0;
        }
        state.written += 1;
        let Some(file) = state.file.as_mut() else {
            return false;
        };
        // Facility 1 (user) so the record is not mistaken for a kernel one.
        // One write() is one record; long lines are split to stay one record each.
        let mut ok = true;
        for line in message.lines() {
            let record = format!("<{}>ember: {line}\n", 8 + priority);
            ok &= file.write_all(record.as_bytes()).is_ok();
        }
        ok
    }
}

impl Log for KmsgLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // The global maximum, not the level at install time: `ember.debug`
        // raises it after the logger is installed.
        metadata.level() <= self.level.max(log::max_level())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let priority = syslog_level(record.level());
        let message = record.args().to_string();
        let in_kmsg = self.write_kmsg(priority, &message);
        let kernel_shows_it =
            self.as_init && in_kmsg && self.console_level().is_some_and(|c| priority < c);
        if !kernel_shows_it
            && wanted_on_console(
                record.level(),
                record.target(),
                QUIET.load(Ordering::Relaxed),
            )
        {
            let prefix = match record.level() {
                Level::Error => "ember: error: ",
                Level::Warn => "ember: warning: ",
                _ => "ember: ",
            };
            let mut err = std::io::stderr().lock();
            for line in message.lines() {
                let _ = writeln!(err, "{prefix}{line}");
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_keeps_warnings_and_requests_for_action() {
        assert!(wanted_on_console(Level::Info, "ember::boot", false));
        assert!(!wanted_on_console(Level::Info, "ember::boot", true));
        assert!(wanted_on_console(Level::Warn, "ember::boot", true));
        assert!(wanted_on_console(Level::Error, "ember::boot", true));
        assert!(wanted_on_console(Level::Info, ATTENTION, true));
    }
}
