//! The kernel's uevent netlink socket: how ember learns that a block device
//! appeared without polling. Opened before the cold-plug scan of sysfs so no
//! device can slip between the scan and the first event.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// One kernel uevent, reduced to what device discovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub subsystem: String,
    /// `DEVNAME`, e.g. `vda2` or `dm-0`.
    pub devname: Option<String>,
}

/// Parses one datagram: `action@devpath\0KEY=VALUE\0...`.
pub fn parse(datagram: &[u8]) -> Option<Uevent> {
    let mut fields = datagram.split(|b| *b == 0).filter(|f| !f.is_empty());
    let header = std::str::from_utf8(fields.next()?).ok()?;
    // udev re-broadcasts start with "libudev"; only kernel messages have '@'.
    header.split_once('@')?;
    let mut event = Uevent {
        action: String::new(),
        subsystem: String::new(),
        devname: None,
    };
    for field in fields {
        let Ok(text) = std::str::from_utf8(field) else {
            continue;
        };
        match text.split_once('=') {
            Some(("ACTION", v)) => event.action = v.to_string(),
            Some(("SUBSYSTEM", v)) => event.subsystem = v.to_string(),
            Some(("DEVNAME", v)) => event.devname = Some(v.to_string()),
            _ => {}
        }
    }
    Some(event)
}

pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; we set family and group 1 (kernel events).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = 1;
        // A large receive buffer: a burst of events at module load must not overflow.
        let size: libc::c_int = 4 * 1024 * 1024;
        // SAFETY: valid fd, pointer to a c_int of the stated size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: addr is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UeventSocket { fd })
    }

    /// Waits up to `timeout` for events and returns all that are queued.
    /// An empty result means the timeout passed.
    pub fn wait(&self, timeout: Duration) -> io::Result<Vec<Uevent>> {
        poll_readable(&[self.fd.as_fd()], timeout)?;
        Ok(self.drain()?.events)
    }

    /// Sleeps until events are queued, `wake` becomes readable (an eventfd
    /// another thread writes to; it is read here, which clears it), or
    /// `timeout` passes; then returns every queued event without blocking.
    pub fn wait_or_wake(&self, wake: BorrowedFd<'_>, timeout: Duration) -> io::Result<Received> {
        let ready = poll_readable(&[self.fd.as_fd(), wake], timeout)?;
        if ready.get(1).copied().unwrap_or(false) {
            clear_eventfd(wake);
        }
        self.drain()
    }

    /// Every event queued right now (never blocks: the socket is non-blocking).
    pub fn drain(&self) -> io::Result<Received> {
        let mut received = Received::default();
        let events = &mut received.events;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    // Overflow: events were lost; the caller must rescan sysfs.
                    Some(libc::ENOBUFS) => {
                        received.overflowed = true;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return Err(err),
                }
            }
            if let Some(e) = parse(&buf[..n as usize]) {
                events.push(e);
            }
        }
        Ok(received)
    }
}

/// What one [`UeventSocket::drain`] found.
#[derive(Debug, Default)]
pub struct Received {
    pub events: Vec<Uevent>,
    /// The kernel dropped events (receive buffer overflow).
    pub overflowed: bool,
}

/// poll(2) for readability on `fds` for up to `timeout`; which of them are
/// readable (none on timeout or EINTR).
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: pfds is a valid array of pfds.len() pollfds.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(err);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// A non-blocking eventfd: one thread wakes another sleeping in poll(2).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2); the result is checked and owned below.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Makes an eventfd readable (wakes whoever polls it).
pub fn signal_eventfd(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd. A full counter
    // (EAGAIN) means it is readable already, which is all we want.
    let _ = unsafe {
        libc::write(
            fd.as_raw_fd(),
            &one as *const u64 as *const libc::c_void,
            std::mem::size_of::<u64>(),
        )
    };
}

/// Resets an eventfd to not readable.
pub fn clear_eventfd(fd: BorrowedFd<'_>) {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64; EAGAIN (already clear) is fine.
    let _ = unsafe {
        libc::read(
            fd.as_raw_fd(),
            &mut value as *mut u64 as *mut libc::c_void,
            std::mem::size_of::<u64>(),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_event() {
        let msg = b"add@/devices/pci0000:00/virtio1/block/vda/vda2\0ACTION=add\0DEVPATH=/devices/x\0SUBSYSTEM=block\0DEVNAME=vda2\0DEVTYPE=partition\0PARTN=2\0PARTNAME=luks\0";
        let e = parse(msg).expect("parses");
        assert_eq!(e.action, "add");
        assert_eq!(e.subsystem, "block");
        assert_eq!(e.devname.as_deref(), Some("vda2"));
    }

    #[test]
    fn eventfd_wakes_a_poll_once() {
        let fd = eventfd().expect("eventfd");
        let none = poll_readable(&[fd.as_fd()], Duration::ZERO).unwrap();
        assert_eq!(none, vec![false]);
        signal_eventfd(fd.as_fd());
        signal_eventfd(fd.as_fd());
        let ready = poll_readable(&[fd.as_fd()], Duration::from_secs(5)).unwrap();
        assert_eq!(ready, vec![true]);
        clear_eventfd(fd.as_fd());
        let cleared = poll_readable(&[fd.as_fd()], Duration::ZERO).unwrap();
        assert_eq!(cleared, vec![false]);
    }

    #[test]
    fn ignores_udev_rebroadcast() {
        assert_eq!(parse(b"libudev\0\xfe\xed"), None);
    }
}
