//! Key material in memory: a fixed-capacity buffer that is locked into RAM
//! (never swapped, never in a core dump) and wiped when dropped. It has no
//! `Debug`/`Display`, so it cannot end up in a log line or error string.

use zeroize::Zeroize;

pub struct Secret {
    buf: Vec<u8>,
    len: usize,
}

impl Secret {
    /// Allocates all capacity up front: growing would copy the secret and
    /// leave the old allocation unwiped.
    pub fn with_capacity(capacity: usize) -> Secret {
        let buf = vec![0u8; capacity.max(1)];
        // SAFETY: the range is our own live allocation. Failure (RLIMIT_MEMLOCK)
        // is tolerated: the buffer is still wiped on drop.
        unsafe {
            libc::mlock(buf.as_ptr() as *const libc::c_void, buf.len());
            libc::madvise(buf.as_ptr() as *mut libc::c_void, 0, libc::MADV_DONTDUMP);
        }
        Secret { buf, len: 0 }
    }

    /// Appends one byte; false when full.
    pub fn push(&mut self, byte: u8) -> bool {
        if self.len == self.buf.len() {
            return false;
        }
        self.buf[self.len] = byte;
        self.len += 1;
        true
    }

    /// Removes the last byte (console erase handling).
    pub fn pop(&mut self) {
        if self.len > 0 {
            self.len -= 1;
            self.buf[self.len] = 0;
        }
    }

    /// Fills the buffer from a reader (a keyfile), up to its capacity.
    /// Returns false if the source held more than fits.
    pub fn fill_from(&mut self, reader: &mut impl std::io::Read) -> std::io::Result<bool> {
        loop {
            if self.len == self.buf.len() {
                let mut probe = [0u8; 1];
                return Ok(reader.read(&mut probe)? == 0);
            }
            let n = reader.read(&mut self.buf[self.len..])?;
            if n == 0 {
                return Ok(true);
            }
            self.len += n;
        }
    }

    pub fn expose(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.buf.zeroize();
        // SAFETY: same allocation as in with_capacity, still live.
        unsafe {
            libc::munlock(self.buf.as_ptr() as *const libc::c_void, self.buf.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_erasable() {
        let mut s = Secret::with_capacity(3);
        assert!(s.push(b'a') && s.push(b'b') && s.push(b'c'));
        assert!(!s.push(b'd'));
        s.pop();
        assert_eq!(s.expose(), b"ab");
    }

    #[test]
    fn fill_reports_overflow() {
        let mut s = Secret::with_capacity(4);
        assert!(!s.fill_from(&mut &b"12345"[..]).expect("reads"));
        let mut s = Secret::with_capacity(8);
        assert!(s.fill_from(&mut &b"12345"[..]).expect("reads"));
        assert_eq!(s.expose(), b"12345");
    }
}
