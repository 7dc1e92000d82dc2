//! Decompression of kernel module files (`.ko.gz` / `.ko.xz` / `.ko.zst`).
//!
//! The initramfs always carries plain `.ko` files so the runtime loader can
//! hand them to `finit_module` without in-kernel decompression support.
//! Only gzip is decoded here (flate2 is already needed for the archive); the
//! Debian tree this was built against ships uncompressed modules, so xz and
//! zstd are reported as unsupported rather than pulling in more crates.

use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}-compressed modules are not supported (only .ko and .ko.gz)")]
    Unsupported(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Compression {
    /// Module file-name suffixes kmod knows. No suffix is a tail of
    /// another, so the order of lookup does not matter.
    pub const MODULE_SUFFIXES: [(&'static str, Compression); 4] = [
        (".ko", Compression::None),
        (".ko.gz", Compression::Gzip),
        (".ko.xz", Compression::Xz),
        (".ko.zst", Compression::Zstd),
    ];

    pub fn decode(self, data: Vec<u8>) -> Result<Vec<u8>, DecodeError> {
        match self {
            Compression::None => Ok(data),
            Compression::Gzip => {
                let mut out = Vec::with_capacity(data.len() * 3);
                flate2::read::MultiGzDecoder::new(&data[..]).read_to_end(&mut out)?;
                Ok(out)
            }
            Compression::Xz => Err(DecodeError::Unsupported("xz")),
            Compression::Zstd => Err(DecodeError::Unsupported("zstd")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_round_trip_and_passthrough() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"\x7fELF module").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(Compression::Gzip.decode(gz).unwrap(), b"\x7fELF module");
        assert_eq!(Compression::None.decode(b"raw".to_vec()).unwrap(), b"raw");
        assert!(matches!(
            Compression::Xz.decode(vec![]),
            Err(DecodeError::Unsupported("xz"))
        ));
        assert!(Compression::Gzip.decode(b"not gzip".to_vec()).is_err());
    }
}
