//! Decompression of kernel module files (`.ko.gz` / `.ko.xz` / `.ko.zst`).
//!
//! The initramfs always carries plain `.ko` files so the runtime loader can
//! hand them to `finit_module` without in-kernel decompression support (and
//! the archive is compressed as a whole anyway). All three compressions
//! kmod knows are decoded, in pure Rust: gzip (flate2), xz (lzma-rs; what
//! NixOS kernels ship, `xz --check=crc32 --lzma2=dict=1MiB`) and zstd
//! (ruzstd).

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
    #[error("not valid {0}: {1}")]
    Corrupt(&'static str, String),
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
            Compression::Xz => {
                let mut out = Vec::with_capacity(data.len() * 4);
                lzma_rs::xz_decompress(&mut &data[..], &mut out)
                    .map_err(|e| DecodeError::Corrupt("xz", e.to_string()))?;
                Ok(out)
            }
            Compression::Zstd => {
                // One frame per module as the kernel writes them; more
                // (concatenated) frames are decoded in turn.
                let mut out = Vec::with_capacity(data.len() * 4);
                let mut input = &data[..];
                while !input.is_empty() {
                    let mut frame = ruzstd::decoding::StreamingDecoder::new(&mut input)
                        .map_err(|e| DecodeError::Corrupt("zstd", e.to_string()))?;
                    frame.read_to_end(&mut out)?;
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// What `testdata/module.ko.{xz,zst}` hold (made with the xz and zstd
    /// command-line tools, the xz one with the kernel's own options).
    fn module() -> Vec<u8> {
        let mut m = b"\x7fELF".to_vec();
        for i in 0..4000 {
            m.extend(format!("ember test module line {i}\n").as_bytes());
        }
        m
    }

    #[test]
    fn gzip_round_trip_and_passthrough() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"\x7fELF module").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(Compression::Gzip.decode(gz).unwrap(), b"\x7fELF module");
        assert_eq!(Compression::None.decode(b"raw".to_vec()).unwrap(), b"raw");
        assert!(Compression::Gzip.decode(b"not gzip".to_vec()).is_err());
    }

    #[test]
    fn xz_as_the_kernel_writes_it() {
        let xz = include_bytes!("testdata/module.ko.xz").to_vec();
        assert_eq!(Compression::Xz.decode(xz.clone()).unwrap(), module());
        let mut broken = xz;
        let mid = broken.len() / 2;
        broken[mid] ^= 0xff;
        assert!(matches!(
            Compression::Xz.decode(broken),
            Err(DecodeError::Corrupt("xz", _))
        ));
    }

    #[test]
    fn zstd_frames() {
        let zst = include_bytes!("testdata/module.ko.zst").to_vec();
        assert_eq!(Compression::Zstd.decode(zst.clone()).unwrap(), module());
        // Two concatenated frames decode to both contents.
        let mut two = zst.clone();
        two.extend_from_slice(&zst);
        assert_eq!(
            Compression::Zstd.decode(two).unwrap(),
            [module(), module()].concat()
        );
        assert!(Compression::Zstd.decode(b"not zstd".to_vec()).is_err());
    }
}
