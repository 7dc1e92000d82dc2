//! Deterministic writer for the "newc" cpio format the kernel unpacks as
//! initramfs (see `init/initramfs.c` and `usr/gen_init_cpio.c` in Linux).
//!
//! Every entry is
//!
//! ```text
//! "070701" + 13 fields of 8 hex digits   (110 bytes)
//! name + NUL, zero-padded so header+name is a multiple of 4
//! data, zero-padded to a multiple of 4
//! ```
//!
//! and the archive ends with an entry named `TRAILER!!!`.
//!
//! Determinism: entries are kept in a sorted map and written in path order
//! (component-wise, so a directory always precedes its contents), inode
//! numbers are handed out in write order, and uid, gid and mtime are 0. The
//! same set of `add_*` calls, in any order, yields the same bytes.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry as MapEntry;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

/// The kernel silently skips entries whose name (with NUL) or symlink target
/// is longer than `PATH_MAX`; refuse them up front instead.
const PATH_MAX: usize = 4096;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
/// Permission bits plus setuid/setgid/sticky; the type bits are ours to set.
const PERM_MASK: u32 = 0o7777;
/// Mode of directories created implicitly as parents.
const IMPLICIT_DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{path:?}: mode {mode:#o} has bits outside the permission mask 0o7777")]
    InvalidMode { path: String, mode: u32 },
    #[error("{path:?} is already in the archive (as a {existing})")]
    Duplicate {
        path: String,
        existing: &'static str,
    },
    #[error("cannot add {path:?}: {parent:?} is a {existing}, not a directory")]
    ParentNotDirectory {
        path: String,
        parent: String,
        existing: &'static str,
    },
    #[error("{path:?}: {size} bytes does not fit the 32-bit newc size field")]
    TooLarge { path: String, size: usize },
    #[error("symlink {path:?}: invalid target {target:?}: {reason}")]
    InvalidSymlinkTarget {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("gzip level {0} is outside 0..=9")]
    InvalidGzipLevel(u32),
    #[error("writing {entry:?} to the archive: {source}")]
    Write {
        entry: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `explicit` is false for parents the archive made up itself, so a
    /// later `add_dir` may still choose their mode.
    Dir {
        explicit: bool,
    },
    File(Vec<u8>),
    Symlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::Dir { .. } => "directory",
            Kind::File(_) => "regular file",
            Kind::Symlink(_) => "symlink",
            Kind::CharDevice { .. } => "character device",
        }
    }

    fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir { .. } => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDevice { .. } => S_IFCHR,
        }
    }

    fn body(&self) -> &[u8] {
        match self {
            Kind::File(data) => data,
            // The kernel reads the target as the entry's data, without NUL.
            Kind::Symlink(target) => target.as_bytes(),
            Kind::Dir { .. } | Kind::CharDevice { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: Kind,
    perm: u32,
}

/// An in-memory initramfs image; see the module docs for the format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    /// Keyed by path components: component-wise ordering puts every
    /// directory right before its own subtree.
    nodes: BTreeMap<Vec<String>, Node>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries, implicit parents included, trailer excluded.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `path` (in any spelling `add_*` accepts) is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        split_path(path).is_ok_and(|key| self.nodes.contains_key(&key))
    }

    /// Adds a directory. Adding a directory that exists only as an implicit
    /// parent sets its mode; re-adding with the same mode is a no-op.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        let key = self.prepare(path, mode)?;
        match self.nodes.entry(key) {
            MapEntry::Vacant(slot) => {
                slot.insert(Node {
                    kind: Kind::Dir { explicit: true },
                    perm: mode,
                });
                Ok(())
            }
            MapEntry::Occupied(mut slot) => {
                let node = slot.get_mut();
                match node.kind {
                    Kind::Dir { explicit: false } => {
                        *node = Node {
                            kind: Kind::Dir { explicit: true },
                            perm: mode,
                        };
                        Ok(())
                    }
                    Kind::Dir { explicit: true } if node.perm == mode => Ok(()),
                    _ => Err(CpioError::Duplicate {
                        path: path.to_owned(),
                        existing: node.kind.describe(),
                    }),
                }
            }
        }
    }

    /// Adds a regular file with the given contents.
    pub fn add_file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<(), CpioError> {
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge {
                path: path.to_owned(),
                size: data.len(),
            });
        }
        self.insert_leaf(path, mode, Kind::File(data))
    }

    /// Adds a symlink; the target is stored verbatim and not checked to exist.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let bad_target = |reason| CpioError::InvalidSymlinkTarget {
            path: path.to_owned(),
            target: target.to_owned(),
            reason,
        };
        if target.is_empty() {
            return Err(bad_target("empty"));
        }
        if target.contains('\0') {
            return Err(bad_target("contains a NUL byte"));
        }
        if target.len() > PATH_MAX {
            return Err(bad_target(
                "longer than PATH_MAX (the kernel would skip it)",
            ));
        }
        self.insert_leaf(path, 0o777, Kind::Symlink(target.to_owned()))
    }

    /// Adds a character device node, e.g. `dev/console` (5, 1), so the kernel
    /// has a console before devtmpfs is mounted.
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.insert_leaf(path, mode, Kind::CharDevice { major, minor })
    }

    /// Writes the uncompressed archive.
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<(), CpioError> {
        self.write_entries(&mut w)?;
        // Flush so a BufWriter passed by value reports its errors here
        // instead of swallowing them on drop.
        w.flush().map_err(|source| CpioError::Write {
            entry: TRAILER.to_owned(),
            source,
        })
    }

    /// Writes the archive gzip-compressed at `level` (0..=9). The gzip header
    /// carries no name and mtime 0, so the output stays reproducible.
    pub fn write_gzip<W: Write>(&self, w: W, level: u32) -> Result<(), CpioError> {
        if level > 9 {
            return Err(CpioError::InvalidGzipLevel(level));
        }
        let mut encoder = GzEncoder::new(w, Compression::new(level));
        // Not write_to: flushing the encoder would emit a needless deflate
        // sync block before the end of the stream.
        self.write_entries(&mut encoder)?;
        encoder
            .finish()
            .and_then(|mut w| w.flush())
            .map_err(|source| CpioError::Write {
                entry: "gzip trailer".to_owned(),
                source,
            })
    }

    /// Writes the archive in the LZ4 "legacy" format, the one the kernel's
    /// initramfs unpacker reads (what `lz4 -l` writes): the magic, then the
    /// archive in independent 8 MiB chunks, each a little-endian compressed
    /// length and one LZ4 block. The kernel decompresses LZ4 several times
    /// faster than gzip, at some size. The format has no end marker: an
    /// archive appended to this one must be preceded by at least four zero
    /// bytes (and needs Linux >= 5.12 to be found).
    pub fn write_lz4<W: Write>(&self, mut w: W) -> Result<(), CpioError> {
        /// `ARCHIVE_MAGICNUMBER` and `LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE`
        /// of the kernel's lib/decompress_unlz4.c.
        const MAGIC: u32 = 0x184C_2102;
        const CHUNK: usize = 8 << 20;
        let mut raw = Vec::new();
        self.write_entries(&mut raw)?;
        let fail = |source| CpioError::Write {
            entry: "lz4 stream".to_owned(),
            source,
        };
        w.write_all(&MAGIC.to_le_bytes()).map_err(fail)?;
        for chunk in raw.chunks(CHUNK) {
            let block = lz4_flex::block::compress(chunk);
            w.write_all(&(block.len() as u32).to_le_bytes())
                .and_then(|()| w.write_all(&block))
                .map_err(fail)?;
        }
        w.flush().map_err(fail)
    }

    fn write_entries<W: Write>(&self, w: &mut W) -> Result<(), CpioError> {
        // Inode numbers only need to be distinct (the kernel pairs them with
        // nlink >= 2 to recreate hard links; every file here has nlink 1).
        // Starting at 1 leaves 0 for the trailer, as gen_init_cpio does.
        for (ino, (key, node)) in (1u32..).zip(&self.nodes) {
            let name = key.join("/");
            let body = node.kind.body();
            let (rdev_major, rdev_minor) = match node.kind {
                Kind::CharDevice { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let nlink = if matches!(node.kind, Kind::Dir { .. }) {
                2
            } else {
                1
            };
            let header = Header {
                ino,
                mode: node.kind.type_bits() | node.perm,
                nlink,
                // Checked in add_file / add_symlink.
                filesize: u32::try_from(body.len()).unwrap_or(u32::MAX),
                rdev_major,
                rdev_minor,
            };
            write_entry(w, &header, &name, body).map_err(|source| CpioError::Write {
                entry: name,
                source,
            })?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        write_entry(w, &trailer, TRAILER, &[]).map_err(|source| CpioError::Write {
            entry: TRAILER.to_owned(),
            source,
        })
    }

    fn insert_leaf(&mut self, path: &str, mode: u32, kind: Kind) -> Result<(), CpioError> {
        let key = self.prepare(path, mode)?;
        match self.nodes.entry(key) {
            MapEntry::Vacant(slot) => {
                slot.insert(Node { kind, perm: mode });
                Ok(())
            }
            MapEntry::Occupied(slot) => Err(CpioError::Duplicate {
                path: path.to_owned(),
                existing: slot.get().kind.describe(),
            }),
        }
    }

    /// Validates `path` and `mode`, creates missing parents, and returns the
    /// map key. Nothing is inserted when an error is returned.
    fn prepare(&mut self, path: &str, mode: u32) -> Result<Vec<String>, CpioError> {
        if mode & !PERM_MASK != 0 {
            return Err(CpioError::InvalidMode {
                path: path.to_owned(),
                mode,
            });
        }
        let key = split_path(path)?;
        // Check every ancestor before touching the map so a failed call
        // leaves the archive unchanged.
        for depth in 1..key.len() {
            if let Some(node) = self.nodes.get(&key[..depth])
                && !matches!(node.kind, Kind::Dir { .. })
            {
                return Err(CpioError::ParentNotDirectory {
                    path: path.to_owned(),
                    parent: key[..depth].join("/"),
                    existing: node.kind.describe(),
                });
            }
        }
        // The kernel does not create parents: an entry whose directory is
        // missing is dropped with only a console warning.
        for depth in 1..key.len() {
            self.nodes.entry(key[..depth].to_vec()).or_insert(Node {
                kind: Kind::Dir { explicit: false },
                perm: IMPLICIT_DIR_MODE,
            });
        }
        Ok(key)
    }
}

/// Splits an archive path into components. Leading and doubled slashes are
/// tolerated (`/dev/console` and `dev/console` are the same entry); `.` and
/// `..` are refused because the kernel would resolve them against whatever
/// is already unpacked.
fn split_path(path: &str) -> Result<Vec<String>, CpioError> {
    let invalid = |reason| CpioError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(invalid("contains a '.' or '..' component"));
        }
        parts.push(part.to_owned());
    }
    if parts.is_empty() {
        return Err(invalid("names the archive root"));
    }
    if parts == [TRAILER] {
        return Err(invalid("is the end-of-archive marker"));
    }
    // namesize counts the NUL.
    let joined_len = parts.iter().map(|p| p.len() + 1).sum::<usize>();
    if joined_len > PATH_MAX {
        return Err(invalid("longer than PATH_MAX (the kernel would skip it)"));
    }
    Ok(parts)
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn write_entry<W: Write>(w: &mut W, h: &Header, name: &str, body: &[u8]) -> std::io::Result<()> {
    let namesize = name.len() + 1;
    let mut head = String::with_capacity(HEADER_LEN + namesize + 3);
    head.push_str(MAGIC);
    // uid, gid, mtime, devmajor, devminor and check are always 0: ownership
    // is root's, timestamps would break reproducibility, the kernel ignores
    // dev for anything but hard-link matching, and newc has no checksum.
    let fields: [u32; 13] = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        0, // mtime
        h.filesize,
        0, // devmajor
        0, // devminor
        h.rdev_major,
        h.rdev_minor,
        u32::try_from(namesize).unwrap_or(u32::MAX), // bounded by PATH_MAX
        0,                                           // check
    ];
    for field in fields {
        head.push_str(&format!("{field:08X}"));
    }
    head.push_str(name);
    head.push('\0');
    // Header and name together end on a 4-byte boundary (the kernel's
    // N_ALIGN); the data is padded the same way so the next header is too.
    head.push_str(&"\0".repeat(pad4(HEADER_LEN + namesize)));
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.write_all(&[0u8; 3][..pad4(body.len())])
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::io::Read;
    use std::process::Command;

    /// One parsed entry; the test reader is deliberately independent of the
    /// writer's code so that it catches format mistakes instead of mirroring
    /// them.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Parsed {
        offset: usize,
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        devmajor: u32,
        devminor: u32,
        rdevmajor: u32,
        rdevminor: u32,
        check: u32,
        data: Vec<u8>,
    }

    /// Parses a whole newc archive, trailer included, asserting the padding
    /// rules the kernel relies on along the way.
    fn parse(bytes: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "header at {pos} is not 4-aligned");
            let head = &bytes[pos..pos + 110];
            assert_eq!(&head[..6], b"070701", "magic at {pos}");
            let field = |i: usize| {
                let hex = std::str::from_utf8(&head[6 + 8 * i..14 + 8 * i]).expect("ascii");
                u32::from_str_radix(hex, 16).expect("hex field")
            };
            let namesize = field(11) as usize;
            let name_start = pos + 110;
            let name_bytes = &bytes[name_start..name_start + namesize];
            assert_eq!(name_bytes.last(), Some(&0), "name not NUL-terminated");
            let name = std::str::from_utf8(&name_bytes[..namesize - 1])
                .expect("utf8 name")
                .to_owned();
            let mut data_start = name_start + namesize;
            while !data_start.is_multiple_of(4) {
                assert_eq!(bytes[data_start], 0, "name padding must be NUL");
                data_start += 1;
            }
            let filesize = field(6) as usize;
            let data = bytes[data_start..data_start + filesize].to_vec();
            let mut next = data_start + filesize;
            while !next.is_multiple_of(4) {
                assert_eq!(bytes[next], 0, "data padding must be NUL");
                next += 1;
            }
            out.push(Parsed {
                offset: pos,
                name: name.clone(),
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                devmajor: field(7),
                devminor: field(8),
                rdevmajor: field(9),
                rdevminor: field(10),
                check: field(12),
                data,
            });
            pos = next;
            if name == TRAILER {
                break;
            }
        }
        assert_eq!(pos, bytes.len(), "bytes after the trailer");
        out
    }

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("init", 0o755, b"#!ember\n".to_vec()).unwrap();
        a.add_dir("/dev", 0o755).unwrap();
        a.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        a.add_symlink("bin/sh", "/init").unwrap();
        a.add_file(
            "lib/modules/6.1.0/kernel/drivers/md/dm-crypt.ko",
            0o644,
            vec![0xAB; 5],
        )
        .unwrap();
        a.add_file("etc/ember/config.json", 0o644, b"{}".to_vec())
            .unwrap();
        a.add_dir("run", 0o700).unwrap();
        a
    }

    fn bytes(a: &Archive) -> Vec<u8> {
        let mut out = Vec::new();
        a.write_to(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_preserves_every_entry() {
        let entries = parse(&bytes(&sample()));
        let summary: Vec<(&str, u32, &[u8])> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.mode, e.data.as_slice()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("bin", 0o040755, &b""[..]),
                ("bin/sh", 0o120777, b"/init"),
                ("dev", 0o040755, b""),
                ("dev/console", 0o020600, b""),
                ("etc", 0o040755, b""),
                ("etc/ember", 0o040755, b""),
                ("etc/ember/config.json", 0o100644, b"{}"),
                ("init", 0o100755, b"#!ember\n"),
                ("lib", 0o040755, b""),
                ("lib/modules", 0o040755, b""),
                ("lib/modules/6.1.0", 0o040755, b""),
                ("lib/modules/6.1.0/kernel", 0o040755, b""),
                ("lib/modules/6.1.0/kernel/drivers", 0o040755, b""),
                ("lib/modules/6.1.0/kernel/drivers/md", 0o040755, b""),
                (
                    "lib/modules/6.1.0/kernel/drivers/md/dm-crypt.ko",
                    0o100644,
                    &[0xAB; 5]
                ),
                ("run", 0o040700, b""),
                ("TRAILER!!!", 0, b""),
            ]
        );
    }

    #[test]
    fn header_fields_match_what_the_kernel_reads() {
        let entries = parse(&bytes(&sample()));
        let (trailer, rest) = entries.split_last().unwrap();
        for (i, e) in rest.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1, "{}: sequential inodes", e.name);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.name);
            assert_eq!((e.devmajor, e.devminor, e.check), (0, 0, 0), "{}", e.name);
            let want_nlink = if e.mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
            assert_eq!(e.nlink, want_nlink, "{}", e.name);
        }
        let console = rest.iter().find(|e| e.name == "dev/console").unwrap();
        assert_eq!((console.rdevmajor, console.rdevminor), (5, 1));
        let others_have_no_rdev = rest
            .iter()
            .filter(|e| e.name != "dev/console")
            .all(|e| (e.rdevmajor, e.rdevminor) == (0, 0));
        assert!(others_have_no_rdev);
        assert_eq!(
            (trailer.ino, trailer.mode, trailer.nlink, trailer.data.len()),
            (0, 0, 1, 0)
        );
    }

    #[test]
    fn padding_aligns_headers_data_and_total_length() {
        // Name lengths 1..=8 and data lengths 0..=8 hit every remainder mod 4.
        let mut a = Archive::new();
        for n in 1..=8usize {
            let name = "x".repeat(n);
            a.add_file(&name, 0o644, vec![b'd'; n - 1]).unwrap();
        }
        let raw = bytes(&a);
        assert_eq!(raw.len() % 4, 0);
        for e in parse(&raw) {
            let data_offset = e.offset + 110 + e.name.len() + 1;
            let data_offset = data_offset + pad4(data_offset);
            assert_eq!(data_offset % 4, 0, "{}", e.name);
        }
        // Exact layout of one entry: 110 + "a\0" = 112, no name padding;
        // 1 data byte + 3 padding.
        let mut one = Archive::new();
        one.add_file("a", 0o644, vec![7]).unwrap();
        let raw = bytes(&one);
        assert_eq!(&raw[110..112], b"a\0");
        assert_eq!(&raw[112..116], &[7, 0, 0, 0]);
        assert_eq!(&raw[116..122], b"070701");
        // Trailer: 110 + 11 = 121, padded to 124.
        assert_eq!(raw.len(), 116 + 124);
    }

    #[test]
    fn parents_precede_children_regardless_of_insertion_order() {
        let mut forward = Archive::new();
        forward.add_dir("a", 0o755).unwrap();
        forward.add_file("a/b", 0o644, vec![]).unwrap();
        forward.add_file("a-b", 0o644, vec![]).unwrap();
        forward.add_file("a/c/d", 0o644, vec![]).unwrap();
        let mut backward = Archive::new();
        backward.add_file("a/c/d", 0o644, vec![]).unwrap();
        backward.add_file("a-b", 0o644, vec![]).unwrap();
        backward.add_file("a/b", 0o644, vec![]).unwrap();
        backward.add_dir("a", 0o755).unwrap();
        assert_eq!(bytes(&forward), bytes(&backward));

        let names: Vec<String> = parse(&bytes(&forward))
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a", "a/b", "a/c", "a/c/d", "a-b", "TRAILER!!!"]);
    }

    #[test]
    fn explicit_dir_mode_overrides_implicit_parent() {
        let mut a = Archive::new();
        a.add_file("run/x", 0o644, vec![]).unwrap();
        a.add_dir("run", 0o700).unwrap();
        let run = parse(&bytes(&a))
            .into_iter()
            .find(|e| e.name == "run")
            .unwrap();
        assert_eq!(run.mode, 0o040700);
        // Same mode again is fine, a different one is a conflict.
        a.add_dir("run", 0o700).unwrap();
        assert!(matches!(
            a.add_dir("run", 0o755),
            Err(CpioError::Duplicate { .. })
        ));
    }

    #[test]
    fn conflicts_and_bad_input_are_rejected_without_side_effects() {
        let mut a = Archive::new();
        a.add_file("etc/passwd", 0o644, vec![]).unwrap();
        let before = a.clone();
        let err = a.add_file("etc/passwd/x/y", 0o644, vec![]).unwrap_err();
        assert!(
            matches!(&err, CpioError::ParentNotDirectory { parent, .. } if parent == "etc/passwd"),
            "{err}"
        );
        assert!(matches!(
            a.add_symlink("etc/passwd", "x"),
            Err(CpioError::Duplicate { .. })
        ));
        assert!(matches!(
            a.add_file("etc", 0o644, vec![]),
            Err(CpioError::Duplicate { .. })
        ));
        for bad in ["", "/", "a/../b", "./a", "a\0b", "TRAILER!!!"] {
            assert!(
                matches!(a.add_dir(bad, 0o755), Err(CpioError::InvalidPath { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            a.add_file("f", 0o100644, vec![]),
            Err(CpioError::InvalidMode { .. })
        ));
        assert!(matches!(
            a.add_symlink("l", ""),
            Err(CpioError::InvalidSymlinkTarget { .. })
        ));
        // namesize (with NUL) may be 4096 but no more.
        let at_limit = "n/".repeat(2048);
        assert!(Archive::new().add_file(&at_limit, 0o644, vec![]).is_ok());
        assert!(matches!(
            a.add_file(&format!("n/{at_limit}"), 0o644, vec![]),
            Err(CpioError::InvalidPath { .. })
        ));
        assert_eq!(a, before);
        assert!(a.contains("/etc/passwd") && a.contains("etc") && !a.contains("x"));
    }

    #[test]
    fn lz4_output_is_the_kernels_legacy_format() {
        let mut a = Archive::new();
        a.add_file("init", 0o755, b"#!/bin/sh\n".repeat(10_000))
            .unwrap();
        let mut raw = Vec::new();
        a.write_to(&mut raw).unwrap();
        let mut lz = Vec::new();
        a.write_lz4(&mut lz).unwrap();
        assert_eq!(lz[..4], 0x184C_2102u32.to_le_bytes());
        assert!(lz.len() < raw.len() / 4, "{} vs {}", lz.len(), raw.len());
        // Decode as the kernel does: length-prefixed blocks until the end.
        let mut out = Vec::new();
        let mut rest = &lz[4..];
        while !rest.is_empty() {
            let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let block = &rest[4..4 + n];
            out.extend(lz4_flex::block::decompress(block, 8 << 20).unwrap());
            rest = &rest[4 + n..];
        }
        assert_eq!(out, raw);
        // Deterministic.
        let mut again = Vec::new();
        a.write_lz4(&mut again).unwrap();
        assert_eq!(lz, again);
    }

    #[test]
    fn gzip_output_decompresses_to_the_raw_archive() {
        let a = sample();
        let mut gz = Vec::new();
        a.write_gzip(&mut gz, 9).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        // mtime field of the gzip header is zero: reproducible output.
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, bytes(&a));

        let mut again = Vec::new();
        a.write_gzip(&mut again, 9).unwrap();
        assert_eq!(gz, again);
        assert!(matches!(
            a.write_gzip(Vec::new(), 10),
            Err(CpioError::InvalidGzipLevel(10))
        ));
    }

    fn host_cpio() -> Option<()> {
        match Command::new("cpio").arg("--version").output() {
            Ok(out) if out.status.success() => Some(()),
            _ => {
                eprintln!("skipping: no usable `cpio` on this host");
                None
            }
        }
    }

    /// GNU cpio reads the newc format the same way the kernel does; listing
    /// and extracting our output with it checks the format independently of
    /// the test reader above.
    #[test]
    fn host_cpio_lists_and_extracts_the_archive() {
        if host_cpio().is_none() {
            return;
        }
        let tmp = TempDir::new("cpio");
        let archive_path = tmp.path().join("initrd.cpio");
        std::fs::write(&archive_path, bytes(&sample())).unwrap();

        let list = Command::new("cpio")
            .args(["-i", "-t", "-v", "--quiet", "-F"])
            .arg(&archive_path)
            .output()
            .unwrap();
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        let listing = String::from_utf8(list.stdout).unwrap();
        // `ls -l`-style rows: permissions first, the name last (symlinks
        // print "name -> target").
        let by_name = |n: &str| {
            listing
                .lines()
                .find(|line| {
                    line.ends_with(&format!(" {n}")) || line.contains(&format!(" {n} -> "))
                })
                .map(|line| (line.split_whitespace().next().unwrap_or(""), line))
                .unwrap_or_else(|| panic!("{n} missing from cpio listing:\n{listing}"))
        };
        assert_eq!(by_name("init").0, "-rwxr-xr-x");
        assert_eq!(by_name("dev").0, "drwxr-xr-x");
        assert_eq!(by_name("run").0, "drwx------");
        assert_eq!(by_name("etc/ember/config.json").0, "-rw-r--r--");
        let console = by_name("dev/console");
        assert_eq!(console.0, "crw-------");
        assert!(console.1.contains("5,"), "{}", console.1);
        let sh = by_name("bin/sh");
        assert_eq!(sh.0, "lrwxrwxrwx");
        assert!(sh.1.ends_with("bin/sh -> /init"), "{}", sh.1);
        assert_eq!(listing.lines().count(), 16, "{listing}");

        // Extract everything but the device node (mknod needs privileges).
        let mut no_dev = sample();
        no_dev.nodes.retain(|k, _| k.join("/") != "dev/console");
        std::fs::write(&archive_path, bytes(&no_dev)).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let extract = Command::new("cpio")
            .args(["-i", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&archive_path)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            extract.status.success(),
            "{}",
            String::from_utf8_lossy(&extract.stderr)
        );
        assert_eq!(std::fs::read(root.join("init")).unwrap(), b"#!ember\n");
        assert_eq!(
            std::fs::read(root.join("lib/modules/6.1.0/kernel/drivers/md/dm-crypt.ko")).unwrap(),
            vec![0xAB; 5]
        );
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            std::path::Path::new("/init")
        );
    }
}
