//! Just enough GPT to name a partition's unique GUID (`PARTUUID=`): the
//! kernel's uevents carry the partition name (PARTNAME) but not its GUID.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Formats a GPT GUID (mixed-endian on disk) as udev prints it.
pub fn format_guid(raw: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        raw[3],
        raw[2],
        raw[1],
        raw[0],
        raw[5],
        raw[4],
        raw[7],
        raw[6],
        raw[8],
        raw[9],
        raw[10],
        raw[11],
        raw[12],
        raw[13],
        raw[14],
        raw[15]
    )
}

/// Where partition entry `number` (1-based) lives, from the GPT header.
/// Returns `(byte offset of the entry, entry size)`.
pub fn entry_location(header: &[u8], sector_size: u64, number: u32) -> Option<(u64, u64)> {
    if header.len() < 92 || &header[0..8] != b"EFI PART" || number == 0 {
        return None;
    }
    let u64_at = |o: usize| header[o..o + 8].try_into().ok().map(u64::from_le_bytes);
    let u32_at = |o: usize| header[o..o + 4].try_into().ok().map(u32::from_le_bytes);
    let entries_lba = u64_at(72)?;
    let count = u32_at(80)?;
    let size = u32_at(84)? as u64;
    if number > count || size < 128 {
        return None;
    }
    Some((entries_lba * sector_size + (number as u64 - 1) * size, size))
}

/// Reads the unique GUID of partition `number` on `disk`.
pub fn partition_uuid(disk: &str, sector_size: u64, number: u32) -> io::Result<Option<String>> {
    let file = File::open(disk)?;
    let mut header = vec![0u8; 512];
    file.read_exact_at(&mut header, sector_size)?;
    let Some((offset, _)) = entry_location(&header, sector_size, number) else {
        return Ok(None);
    };
    let mut entry = [0u8; 32];
    file.read_exact_at(&mut entry, offset)?;
    let mut unique = [0u8; 16];
    unique.copy_from_slice(&entry[16..32]);
    if unique == [0u8; 16] {
        return Ok(None);
    }
    Ok(Some(format_guid(&unique)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_mixed_endian() {
        let raw = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        // The EFI system partition type GUID, as everybody prints it.
        assert_eq!(format_guid(&raw), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn locates_entries() {
        let mut header = vec![0u8; 512];
        header[0..8].copy_from_slice(b"EFI PART");
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&128u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        assert_eq!(entry_location(&header, 512, 1), Some((1024, 128)));
        assert_eq!(entry_location(&header, 512, 2), Some((1152, 128)));
        assert_eq!(entry_location(&header, 512, 129), None);
        assert_eq!(entry_location(&header, 512, 0), None);
        header[0] = b'X';
        assert_eq!(entry_location(&header, 512, 1), None);
    }
}
