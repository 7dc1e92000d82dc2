//! systemd's password agent protocol (systemd's docs: "Password Agents"),
//! used when ember runs under systemd in stage 1 (`ember unlock` as a
//! service): the question goes into `/run/systemd/ask-password/ask.XXXX`, an
//! ini file naming a datagram socket; whichever agent is running (Plymouth,
//! `systemd-tty-ask-password-agent` on the consoles, ...) asks the person and
//! sends back `+passphrase` (or `-` to cancel) to that socket. Replies are
//! accepted from root only (`SO_PASSCRED`).

use std::fs;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix,
    SocketFlags, SocketType, bind, recvmsg, socket_with, sockopt,
};

use super::secret::Secret;

/// Where agents look for questions.
pub const ASK_DIR: &str = "/run/systemd/ask-password";

/// Longest reply accepted (the passphrase limit plus the `+`).
const MAX_REPLY: usize = super::console::MAX_PASSPHRASE + 1;

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Shown to the person (`Please enter passphrase for disk ...`).
    pub message: String,
    /// Identifies the question for agents and caches (`cryptsetup:/dev/vda2`).
    pub id: String,
    pub icon: String,
    /// CLOCK_MONOTONIC microseconds after which agents stop asking; 0: never.
    pub not_after_usec: u64,
}

/// An agent's answer.
pub enum Reply {
    /// One or more candidate passphrases (agents may send several, NUL-separated).
    Passphrases(Vec<Secret>),
    /// The person cancelled (`-`), e.g. pressed Escape in Plymouth.
    Cancelled,
}

/// The ini file agents read. Values are single lines: control characters
/// in the message become spaces.
pub fn ask_file(q: &Question, pid: u32, socket: &Path) -> String {
    let line = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    format!(
        "[Ask]\nPID={pid}\nSocket={}\nAcceptCached=0\nEcho=0\nNotAfter={}\nMessage={}\nIcon={}\nId={}\n",
        line(&socket.to_string_lossy()),
        q.not_after_usec,
        line(&q.message),
        line(&q.icon),
        line(&q.id),
    )
}

/// Parses a reply datagram. `None` for something that is not a reply
/// (empty, or neither `+` nor `-`): it is ignored, as systemd does.
pub fn parse_reply(datagram: &[u8]) -> Option<Reply> {
    match datagram.first()? {
        b'-' => Some(Reply::Cancelled),
        b'+' => {
            let body = &datagram[1..];
            let mut out: Vec<Secret> = body
                .split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(Secret::copy_of)
                .collect();
            if out.is_empty() {
                // `+` alone: an empty passphrase.
                out.push(Secret::with_capacity(1));
            }
            Some(Reply::Passphrases(out))
        }
        _ => None,
    }
}

/// Removes the question and the socket however asking ends.
struct Cleanup {
    ask: PathBuf,
    socket: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.ask);
        let _ = fs::remove_file(&self.socket);
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    // SAFETY: valid buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Not secret, only unique: the clock and the pid do.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        b = (t ^ u64::from(std::process::id()) << 40).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Asks through the agents in `dir` and waits up to `timeout` (forever
/// if `None`). `TimedOut` if nobody answered in time.
pub fn ask(dir: &Path, q: &Question, timeout: Option<Duration>) -> io::Result<Reply> {
    ask_from(dir, q, timeout, 0)
}

/// [`ask`], accepting replies from `uid` (tests run unprivileged).
pub fn ask_from(
    dir: &Path,
    q: &Question,
    timeout: Option<Duration>,
    uid: u32,
) -> io::Result<Reply> {
    let suffix = random_suffix();
    let cleanup = Cleanup {
        ask: dir.join(format!("ask.{suffix}")),
        socket: dir.join(format!("sck.{suffix}")),
    };
    let sock = socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    bind(&sock, &SocketAddrUnix::new(&cleanup.socket)?)?;
    sockopt::set_socket_passcred(&sock, true)?;

    // Written under another name and renamed, so agents (which watch for
    // `ask.*`) never read half a file.
    let tmp = dir.join(format!(".#ask.{suffix}"));
    let text = ask_file(q, std::process::id(), &cleanup.socket);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|_| fs::rename(&tmp, &cleanup.ask));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    wait_reply(&sock, timeout, uid)
}

fn wait_reply(sock: &OwnedFd, timeout: Option<Duration>, uid: u32) -> io::Result<Reply> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no password agent answered in time",
                    ));
                }
                Some(Timespec {
                    tv_sec: left.as_secs() as _,
                    tv_nsec: left.subsec_nanos() as _,
                })
            }
            None => None,
        };
        let mut fds = [PollFd::new(sock, PollFlags::IN)];
        match poll(&mut fds, wait.as_ref()) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        // Received straight into locked memory.
        let mut buf = Secret::with_capacity(MAX_REPLY + 1);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = {
            let mut iov = [io::IoSliceMut::new(buf.buffer_mut())];
            recvmsg(sock, &mut iov, &mut control, RecvFlags::TRUNC)
        };
        let msg = match received {
            Ok(m) => m,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let sender = control.drain().find_map(|m| match m {
            RecvAncillaryMessage::ScmCredentials(c) => Some(c.uid.as_raw()),
            _ => None,
        });
        if sender != Some(uid) {
            log::warn!("ignoring a password reply from uid {sender:?} (only {uid} may answer)");
            continue;
        }
        if msg.bytes > MAX_REPLY {
            log::warn!("ignoring a password reply longer than {MAX_REPLY} bytes");
            continue;
        }
        buf.set_len(msg.bytes);
        match parse_reply(buf.expose()) {
            Some(r) => return Ok(r),
            None => continue,
        }
    }
}

/// CLOCK_MONOTONIC now + `d`, in microseconds (`NotAfter=`).
pub fn monotonic_usec_after(d: Duration) -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_us = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    now_us + d.as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn question() -> Question {
        Question {
            message: "Please enter passphrase for disk cryptroot (LABEL=luks on /dev/vda2)\n!"
                .into(),
            id: "cryptsetup:/dev/vda2".into(),
            icon: "drive-harddisk".into(),
            not_after_usec: 0,
        }
    }

    #[test]
    fn ask_file_format() {
        let text = ask_file(
            &question(),
            42,
            Path::new("/run/systemd/ask-password/sck.ab"),
        );
        assert_eq!(
            text,
            "[Ask]\nPID=42\nSocket=/run/systemd/ask-password/sck.ab\nAcceptCached=0\nEcho=0\nNotAfter=0\n\
             Message=Please enter passphrase for disk cryptroot (LABEL=luks on /dev/vda2) !\n\
             Icon=drive-harddisk\nId=cryptsetup:/dev/vda2\n"
        );
    }

    #[test]
    fn replies() {
        match parse_reply(b"+hunter2") {
            Some(Reply::Passphrases(p)) => {
                assert_eq!(p.len(), 1);
                assert_eq!(p[0].expose(), b"hunter2");
            }
            _ => panic!("a passphrase"),
        }
        match parse_reply(b"+one\0two\0") {
            Some(Reply::Passphrases(p)) => {
                let got: Vec<&[u8]> = p.iter().map(|s| s.expose()).collect();
                assert_eq!(got, vec![&b"one"[..], &b"two"[..]]);
            }
            _ => panic!("two passphrases"),
        }
        match parse_reply(b"+") {
            Some(Reply::Passphrases(p)) => assert!(p[0].is_empty()),
            _ => panic!("an empty passphrase"),
        }
        assert!(matches!(parse_reply(b"-"), Some(Reply::Cancelled)));
        assert!(parse_reply(b"").is_none());
        assert!(parse_reply(b"hunter2").is_none());
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-ask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// What an agent does: find the question, read its socket, answer.
    fn agent(dir: PathBuf, answer: &'static [u8]) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            for _ in 0..500 {
                let ask = fs::read_dir(&dir).ok().and_then(|d| {
                    d.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("ask."))
                    })
                });
                if let Some(ask) = ask {
                    let text = fs::read_to_string(&ask).expect("read question");
                    let socket = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Socket="))
                        .expect("Socket=")
                        .to_string();
                    let s = UnixDatagram::unbound().expect("socket");
                    s.send_to(b"garbage", &socket).expect("send");
                    s.send_to(answer, &socket).expect("send");
                    return text;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("no question appeared");
        })
    }

    #[test]
    fn an_agent_answers_through_the_socket() {
        let dir = scratch("answer");
        let a = agent(dir.clone(), b"+correct horse");
        let uid = rustix::process::getuid().as_raw();
        let reply = ask_from(&dir, &question(), Some(Duration::from_secs(10)), uid).expect("reply");
        let text = a.join().expect("agent");
        assert!(text.contains("Id=cryptsetup:/dev/vda2"));
        match reply {
            Reply::Passphrases(p) => assert_eq!(p[0].expose(), b"correct horse"),
            Reply::Cancelled => panic!("not cancelled"),
        }
        assert_eq!(
            fs::read_dir(&dir).expect("dir").count(),
            0,
            "question and socket are removed"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn replies_from_other_users_are_ignored_and_time_runs_out() {
        let dir = scratch("other");
        let a = agent(dir.clone(), b"+from someone else");
        let not_us = rustix::process::getuid().as_raw() + 1;
        let r = ask_from(&dir, &question(), Some(Duration::from_millis(800)), not_us);
        a.join().expect("agent");
        assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn cancel() {
        let dir = scratch("cancel");
        let a = agent(dir.clone(), b"-");
        let uid = rustix::process::getuid().as_raw();
        let r = ask_from(&dir, &question(), Some(Duration::from_secs(10)), uid).expect("reply");
        a.join().expect("agent");
        assert!(matches!(r, Reply::Cancelled));
        let _ = fs::remove_dir_all(&dir);
    }
}
