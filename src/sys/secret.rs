//! Key material in memory: a fixed-capacity buffer of whole pages of its own,
//! locked into RAM (never swapped), excluded from core dumps, and wiped when
//! dropped. It has no `Debug`/`Display`/`Clone`, so it cannot end up in a
//! log line, an error string or a second, unwiped copy.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

use zeroize::Zeroize;

pub struct Secret {
    ptr: NonNull<u8>,
    layout: Layout,
    /// Usable capacity (the allocation is rounded up to whole pages).
    capacity: usize,
    len: usize,
}

// SAFETY: Secret owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for Secret {}

fn page_size() -> usize {
    rustix::param::page_size()
}

impl Secret {
    /// Allocates all capacity up front, page-aligned: growing would copy the
    /// secret and leave the old allocation unwiped, and `mlock`/`madvise`
    /// work on whole pages that must hold nothing else.
    pub fn with_capacity(capacity: usize) -> Secret {
        let page = page_size();
        let capacity = capacity.max(1);
        let size = capacity.div_ceil(page) * page;
        let layout = Layout::from_size_align(size, page).expect("page-aligned layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // SAFETY: the range is our own live, page-aligned allocation. Failure
        // (RLIMIT_MEMLOCK) is tolerated: the buffer is still wiped on drop.
        unsafe {
            libc::mlock(ptr.as_ptr() as *const libc::c_void, size);
            libc::madvise(ptr.as_ptr() as *mut libc::c_void, size, libc::MADV_DONTDUMP);
        }
        Secret {
            ptr,
            layout,
            capacity,
            len: 0,
        }
    }

    /// A copy of `bytes` (e.g. one passphrase out of an agent's reply).
    pub fn copy_of(bytes: &[u8]) -> Secret {
        let mut s = Secret::with_capacity(bytes.len());
        s.buffer_mut()[..bytes.len()].copy_from_slice(bytes);
        s.len = bytes.len();
        s
    }

    /// The whole capacity, to receive into (then [`Secret::set_len`]).
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        // SAFETY: `capacity` bytes of the allocation are initialised (zeroed).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// Sets how many bytes of the buffer are the secret; the rest is wiped.
    pub fn set_len(&mut self, len: usize) {
        let len = len.min(self.capacity);
        self.buffer_mut()[len..].zeroize();
        self.len = len;
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends one byte; false when full.
    pub fn push(&mut self, byte: u8) -> bool {
        if self.len == self.capacity {
            return false;
        }
        let len = self.len;
        self.buffer_mut()[len] = byte;
        self.len += 1;
        true
    }

    /// Removes the last byte (console erase handling).
    pub fn pop(&mut self) {
        if self.len > 0 {
            self.len -= 1;
            let len = self.len;
            self.buffer_mut()[len] = 0;
        }
    }

    /// Fills the buffer from a reader (a keyfile), up to its capacity.
    /// Returns false if the source held more than fits.
    pub fn fill_from(&mut self, reader: &mut impl std::io::Read) -> std::io::Result<bool> {
        loop {
            if self.len == self.capacity {
                let mut probe = [0u8; 1];
                let more = reader.read(&mut probe)? != 0;
                probe.zeroize();
                return Ok(!more);
            }
            let len = self.len;
            let n = reader.read(&mut self.buffer_mut()[len..])?;
            if n == 0 {
                return Ok(true);
            }
            self.len += n;
        }
    }

    pub fn expose(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised and ours.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let size = self.layout.size();
        // SAFETY: our own allocation, still live; zeroize writes volatile.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), size).zeroize();
            libc::munlock(self.ptr.as_ptr() as *const libc::c_void, size);
            dealloc(self.ptr.as_ptr(), self.layout);
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
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn fill_reports_overflow() {
        let mut s = Secret::with_capacity(4);
        assert!(!s.fill_from(&mut &b"12345"[..]).expect("reads"));
        let mut s = Secret::with_capacity(8);
        assert!(s.fill_from(&mut &b"12345"[..]).expect("reads"));
        assert_eq!(s.expose(), b"12345");
    }

    #[test]
    fn page_aligned_receive_buffer() {
        let mut s = Secret::with_capacity(10);
        assert_eq!(s.ptr.as_ptr() as usize % page_size(), 0);
        s.buffer_mut()[..4].copy_from_slice(b"abcd");
        s.set_len(3);
        assert_eq!(s.expose(), b"abc");
        assert_eq!(s.buffer_mut()[3], 0, "the tail is wiped");
        assert_eq!(Secret::copy_of(b"xyz").expose(), b"xyz");
    }
}
