//! The kernel's uevent netlink socket: how ember learns that a block device
//! appeared without polling. Opened before the cold-plug scan of sysfs so no
//! device can slip between the scan and the first event.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(err);
        }
        let mut events = Vec::new();
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
                    // Overflow: events were lost; the caller rescans sysfs anyway.
                    Some(libc::ENOBUFS) => continue,
                    _ => return Err(err),
                }
            }
            if let Some(e) = parse(&buf[..n as usize]) {
                events.push(e);
            }
        }
        Ok(events)
    }
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
    fn ignores_udev_rebroadcast() {
        assert_eq!(parse(b"libudev\0\xfe\xed"), None);
    }
}
