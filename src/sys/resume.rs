//! Hibernation: a root rollback before the resume would destroy the state
//! the hibernated kernel still has in memory. So: find the resume device,
//! look for a hibernation signature, and as the initrd's init ask the kernel
//! to resume (which does not return when it works).

use std::io::Read;

/// Signatures the kernel (and uswsusp) write in place of `SWAPSPACE2` at the
/// end of the swap header page when an image is stored.
const SIGNATURES: [&[u8]; 4] = [b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001"];
const PAGE: usize = 4096;

/// Whether the first page of `header` carries a hibernation signature.
pub fn has_image_signature(header: &[u8]) -> bool {
    if header.len() < PAGE {
        return false;
    }
    let tail = &header[PAGE - 10..PAGE];
    SIGNATURES.iter().any(|sig| tail.starts_with(sig))
}

pub fn image_present(device: &str) -> std::io::Result<bool> {
    let mut header = vec![0u8; PAGE];
    std::fs::File::open(device)?.read_exact(&mut header)?;
    Ok(has_image_signature(&header))
}

/// Asks the kernel to resume from `device`. Returns only if it did not.
pub fn request_resume(device: &str) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(device)?.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    std::fs::write("/sys/power/resume", format!("{major}:{minor}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_signatures() {
        let mut page = vec![0u8; PAGE];
        page[PAGE - 10..].copy_from_slice(b"SWAPSPACE2");
        assert!(!has_image_signature(&page));
        page[PAGE - 10..PAGE - 1].copy_from_slice(b"S1SUSPEND");
        assert!(has_image_signature(&page));
        assert!(!has_image_signature(&page[..100]));
    }
}
