//! Asking a person for a passphrase on the console: echo off, line by line,
//! straight into a locked, wiped buffer.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use rustix::termios::{self, LocalModes, OptionalActions};

use super::secret::Secret;

/// Longest passphrase accepted; cryptsetup's own interactive limit is 512.
pub const MAX_PASSPHRASE: usize = 512;

/// The terminal to talk to: /dev/console in the initrd, the controlling
/// terminal (/dev/tty) in a rescue shell.
pub fn open_terminal() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .or_else(|_| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/console")
        })
}

/// Restores the terminal's modes however reading ends.
struct EchoGuard<'a> {
    tty: &'a File,
    saved: Option<termios::Termios>,
}

impl Drop for EchoGuard<'_> {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(self.tty, OptionalActions::Now, saved);
        }
    }
}

/// Waits until `tty` has input or `deadline` passes (`TimedOut`).
fn wait_readable(tty: &File, deadline: Option<Instant>) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let Some(deadline) = deadline else {
        return Ok(());
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no passphrase was entered in time",
            ));
        }
        let mut fds = [PollFd::new(tty, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Prints `prompt` and reads one line without echo. `Ok(None)` on end of
/// input; `TimedOut` when `timeout` passes first.
pub fn read_passphrase(
    tty: &mut File,
    prompt: &str,
    timeout: Option<Duration>,
) -> io::Result<Option<Secret>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    // Anything typed before the prompt (type-ahead) would have been echoed by
    // the line discipline; drop it rather than use it.
    let _ = termios::tcflush(&*tty, termios::QueueSelector::IFlush);
    let saved = termios::tcgetattr(&*tty).ok();
    if let Some(saved) = &saved {
        let mut quiet = saved.clone();
        quiet
            .local_modes
            .remove(LocalModes::ECHO | LocalModes::ECHOE | LocalModes::ECHOK);
        quiet
            .local_modes
            .insert(LocalModes::ECHONL | LocalModes::ICANON);
        termios::tcsetattr(&*tty, OptionalActions::Flush, &quiet).map_err(io::Error::from)?;
    }
    let guard = EchoGuard { tty: &*tty, saved };
    let mut out: &File = &*tty;
    out.write_all(prompt.as_bytes())?;
    out.flush()?;

    let mut secret = Secret::with_capacity(MAX_PASSPHRASE);
    let mut reader = guard.tty;
    let mut byte = [0u8; 1];
    let mut got_any = false;
    loop {
        if let Err(e) = wait_readable(reader, deadline) {
            drop(guard);
            let _ = out.write_all(b"\n");
            return Err(e);
        }
        match reader.read(&mut byte) {
            Ok(0) => {
                if !got_any {
                    return Ok(None);
                }
                break;
            }
            Ok(_) => {
                got_any = true;
                match byte[0] {
                    b'\n' | b'\r' => break,
                    // Erase characters only reach us when the terminal is not canonical.
                    0x7f | 0x08 => secret.pop(),
                    b => {
                        if !secret.push(b) {
                            // Too long: swallow the rest of the line, then refuse.
                            while reader.read(&mut byte)? == 1 && byte[0] != b'\n' {}
                            drop(guard);
                            let _ = out.write_all(b"\n");
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidInput,
                                format!("passphrase longer than {MAX_PASSPHRASE} bytes"),
                            ));
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    drop(guard);
    Ok(Some(secret))
}
