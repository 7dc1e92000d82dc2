//! Reading Btrfs metadata for `ember diff`: which inodes of the root
//! subvolume changed since it was snapshotted from the blank, and where
//! they are.
//!
//! How it stays fast on a large, mostly unchanged root: a snapshot shares
//! every tree block with its source until something is written, and a
//! block written later carries a newer generation. `BTRFS_IOC_TREE_SEARCH_V2`
//! with `min_transid = T + 1` (T: the transaction that created the root, its
//! `otransid`) skips every subtree whose generation is older, so the blocks
//! inherited from the blank are never read and the cost follows the number of
//! changed leaves, not the number of files. A changed leaf is returned whole;
//! each INODE_ITEM in it is then checked on its own (`transid > T`).
//!
//! Classification:
//! - **created**: the inode's generation (the transaction that created it)
//!   is newer than T, so it cannot come from the blank;
//! - **modified**: an inode from the blank whose item was rewritten since T.
//!   When the blank can be found (the root's `parent_uuid`, looked up in the
//!   UUID tree) the same inode is read from it, and an inode whose only
//!   difference is its access time (or nothing visible) is left out: on a
//!   root mounted without `noatime`, reading a file rewrites its inode item.
//!   Without the blank every rewritten inode counts as modified.
//! - **subvolume**: the subvolumes nested directly in the root (ROOT_REF
//!   items of the root tree). A snapshot never contains nested subvolumes,
//!   so all of them appeared since T; their own trees are not read.
//!
//! Paths come from the INODE_REF/INODE_EXTREF items (every hard link is
//! listed) and, for directories above them, from `BTRFS_IOC_INO_LOOKUP`,
//! memoised per directory. Deleted files are not listed (the next boot
//! brings them back); their directory shows as modified.
//!
//! Tree search and INO_LOOKUP need CAP_SYS_ADMIN. Ioctl argument structs are
//! `#[repr(C)]` copies of `linux/btrfs.h`; item payloads (on-disk, little
//! endian, packed) are parsed from bytes; search result headers are in CPU
//! byte order.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::config::AbsPath;
use crate::diff::{Change, ChangeKind};
use crate::status::unescape_mountinfo;

// ---------------------------------------------------------------------------
// Constants from linux/btrfs_tree.h and linux/magic.h.

const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;
const ROOT_TREE_OBJECTID: u64 = 1;
const UUID_TREE_OBJECTID: u64 = 9;
/// The top directory of every subvolume.
const FIRST_FREE_OBJECTID: u64 = 256;
/// `-256ULL`: the last objectid an inode can have.
const LAST_FREE_OBJECTID: u64 = u64::MAX - 255;

const INODE_ITEM_KEY: u8 = 1;
const INODE_REF_KEY: u8 = 12;
const INODE_EXTREF_KEY: u8 = 13;
const ROOT_REF_KEY: u8 = 156;
const UUID_KEY_SUBVOL: u8 = 251;

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;

// ---------------------------------------------------------------------------
// Ioctl numbers and argument structs (linux/btrfs.h).

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, 0x94, nr, size)` in the encoding of x86, arm and most other
/// architectures (not alpha/mips/powerpc/sparc, which ember does not target).
const fn btrfs_ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (0x94 << 8) | nr
}

const IOC_TREE_SEARCH_V2: u32 = btrfs_ioc(IOC_READ | IOC_WRITE, 17, size_of::<SearchArgsV2>());
const IOC_INO_LOOKUP: u32 = btrfs_ioc(IOC_READ | IOC_WRITE, 18, size_of::<InoLookupArgs>());
const IOC_GET_SUBVOL_INFO: u32 = btrfs_ioc(IOC_READ, 60, size_of::<GetSubvolInfoArgs>());

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args_v2` without its flexible `buf[]`, which
/// follows it in the same allocation.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SearchArgsV2 {
    key: SearchKey,
    buf_size: u64,
}

/// `struct btrfs_ioctl_search_header`, as laid out in the result buffer.
const SEARCH_HEADER_LEN: usize = 32;

const INO_LOOKUP_PATH_MAX: usize = 4080;

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_timespec`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct IoctlTimespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args`.
#[repr(C)]
struct GetSubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: IoctlTimespec,
    otime: IoctlTimespec,
    stime: IoctlTimespec,
    rtime: IoctlTimespec,
    reserved: [u64; 8],
}

const _: () = assert!(size_of::<SearchKey>() == 104);
const _: () = assert!(size_of::<SearchArgsV2>() == 112);
const _: () = assert!(size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(size_of::<GetSubvolInfoArgs>() == 504);

// ---------------------------------------------------------------------------
// Item payload parsers (pure, little endian, no pointer casts).

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn ne_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `struct btrfs_timespec` (packed: le64 seconds, le32 nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timespec {
    pub sec: u64,
    pub nsec: u32,
}

fn timespec(b: &[u8], at: usize) -> Option<Timespec> {
    Some(Timespec {
        sec: le_u64(b, at)?,
        nsec: le_u32(b, at + 8)?,
    })
}

/// The fields of `struct btrfs_inode_item` (160 bytes, packed) ember uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InodeItem {
    /// Transaction that created the inode.
    pub generation: u64,
    /// Transaction that last wrote the inode item.
    pub transid: u64,
    pub size: u64,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub rdev: u64,
    pub flags: u64,
    /// i_version: bumped on content and metadata changes, not on atime.
    pub sequence: u64,
    pub atime: Timespec,
    pub ctime: Timespec,
    pub mtime: Timespec,
    pub otime: Timespec,
}

pub const INODE_ITEM_LEN: usize = 160;

pub fn parse_inode_item(b: &[u8]) -> Option<InodeItem> {
    if b.len() < INODE_ITEM_LEN {
        return None;
    }
    Some(InodeItem {
        generation: le_u64(b, 0)?,
        transid: le_u64(b, 8)?,
        size: le_u64(b, 16)?,
        // 24: nbytes, 32: block_group
        nlink: le_u32(b, 40)?,
        uid: le_u32(b, 44)?,
        gid: le_u32(b, 48)?,
        mode: le_u32(b, 52)?,
        rdev: le_u64(b, 56)?,
        flags: le_u64(b, 64)?,
        sequence: le_u64(b, 72)?,
        // 80: reserved[4]
        atime: timespec(b, 112)?,
        ctime: timespec(b, 124)?,
        mtime: timespec(b, 136)?,
        otime: timespec(b, 148)?,
    })
}

impl InodeItem {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// The same inode with nothing but its access time (and the bookkeeping
    /// fields `transid`, `nbytes`) changed.
    pub fn same_apart_from_atime(&self, old: &InodeItem) -> bool {
        let key = |i: &InodeItem| {
            (
                i.generation,
                i.size,
                i.nlink,
                (i.uid, i.gid, i.mode),
                i.rdev,
                i.flags,
                i.sequence,
                (i.ctime, i.mtime, i.otime),
            )
        };
        key(self) == key(old)
    }
}

/// One name of an inode: the directory holding it and the entry name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub parent: u64,
    pub name: Vec<u8>,
}

/// An INODE_REF item (key offset = the parent directory): packed
/// `{ le64 index; le16 name_len; name }` entries, one per hard link in that
/// directory. `None` when the payload is malformed.
pub fn parse_inode_refs(parent: u64, b: &[u8]) -> Option<Vec<Name>> {
    let mut names = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let len = usize::from(le_u16(b, at + 8)?);
        let name = b.get(at + 10..at + 10 + len)?;
        names.push(Name {
            parent,
            name: name.to_vec(),
        });
        at += 10 + len;
    }
    Some(names)
}

/// An INODE_EXTREF item (used when a directory's INODE_REF item is full):
/// packed `{ le64 parent; le64 index; le16 name_len; name }` entries.
pub fn parse_inode_extrefs(b: &[u8]) -> Option<Vec<Name>> {
    let mut names = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let parent = le_u64(b, at)?;
        let len = usize::from(le_u16(b, at + 16)?);
        let name = b.get(at + 18..at + 18 + len)?;
        names.push(Name {
            parent,
            name: name.to_vec(),
        });
        at += 18 + len;
    }
    Some(names)
}

/// A ROOT_REF item: `{ le64 dirid; le64 sequence; le16 name_len; name }`,
/// where the subvolume is linked in its parent.
pub fn parse_root_ref(b: &[u8]) -> Option<Name> {
    let parent = le_u64(b, 0)?;
    let len = usize::from(le_u16(b, 16)?);
    Some(Name {
        parent,
        name: b.get(18..18 + len)?.to_vec(),
    })
}

/// A UUID tree item: the ids of the subvolumes with that UUID, le64 each.
pub fn parse_uuid_item(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect()
}

/// A Btrfs key. Tree search ranges compare keys as (objectid, type, offset)
/// tuples, not field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub objectid: u64,
    pub ty: u8,
    pub offset: u64,
}

impl Key {
    pub const fn new(objectid: u64, ty: u8, offset: u64) -> Self {
        Key {
            objectid,
            ty,
            offset,
        }
    }

    /// The smallest key after this one, `None` after the very last.
    pub fn next(self) -> Option<Key> {
        if self.offset < u64::MAX {
            Some(Key::new(self.objectid, self.ty, self.offset + 1))
        } else if self.ty < u8::MAX {
            Some(Key::new(self.objectid, self.ty + 1, 0))
        } else if self.objectid < u64::MAX {
            Some(Key::new(self.objectid + 1, 0, 0))
        } else {
            None
        }
    }
}

/// The items of one search result buffer: `nr_items` x (32-byte header in
/// CPU byte order: transid, objectid, offset, u32 type, u32 len; payload).
pub fn parse_search_results(buf: &[u8], nr_items: u32) -> io::Result<Vec<(Key, &[u8])>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated tree search result");
    let mut items = Vec::with_capacity(nr_items as usize);
    let mut at = 0;
    for _ in 0..nr_items {
        let objectid = ne_u64(buf, at + 8).ok_or_else(bad)?;
        let offset = ne_u64(buf, at + 16).ok_or_else(bad)?;
        let ty = ne_u32(buf, at + 24).ok_or_else(bad)?;
        let len = ne_u32(buf, at + 28).ok_or_else(bad)? as usize;
        let start = at + SEARCH_HEADER_LEN;
        let payload = buf.get(start..start + len).ok_or_else(bad)?;
        items.push((Key::new(objectid, ty as u8, offset), payload));
        at = start + len;
    }
    Ok(items)
}

/// A path as text: UTF-8 as is, other bytes as `\xNN`.
pub fn decode_path(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Ioctls.

fn os_err(what: &str, e: io::Error) -> io::Error {
    let hint = if e.raw_os_error() == Some(libc::EPERM) {
        " (needs CAP_SYS_ADMIN: run as root)"
    } else {
        ""
    };
    io::Error::new(e.kind(), format!("{what}: {e}{hint}"))
}

/// What `BTRFS_IOC_GET_SUBVOL_INFO` says about the subvolume holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubvolInfo {
    pub treeid: u64,
    pub name: String,
    pub parent_id: u64,
    pub generation: u64,
    pub uuid: [u8; 16],
    /// The UUID of the subvolume this one is a snapshot of (zero if none).
    pub parent_uuid: [u8; 16],
    /// The transaction that created this subvolume.
    pub otransid: u64,
    pub otime_sec: u64,
}

fn get_subvol_info(fd: BorrowedFd<'_>) -> io::Result<SubvolInfo> {
    // SAFETY: an all-zero bit pattern is valid for this plain-data struct.
    let mut args: GetSubvolInfoArgs = unsafe { std::mem::zeroed() };
    // SAFETY: the request number encodes exactly this struct's size; the
    // kernel writes at most that many bytes into it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_GET_SUBVOL_INFO as _, &mut args) };
    if rc < 0 {
        return Err(os_err(
            "BTRFS_IOC_GET_SUBVOL_INFO",
            io::Error::last_os_error(),
        ));
    }
    let name_len = args
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(args.name.len());
    Ok(SubvolInfo {
        treeid: args.treeid,
        name: decode_path(&args.name[..name_len]),
        parent_id: args.parent_id,
        generation: args.generation,
        uuid: args.uuid,
        parent_uuid: args.parent_uuid,
        otransid: args.otransid,
        otime_sec: args.otime.sec,
    })
}

/// Opens `dir` and checks it is the top directory of a Btrfs subvolume.
fn open_subvolume(dir: &Path) -> io::Result<OwnedFd> {
    let shown = dir.display();
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{shown}: {e}")))?;
    let fs = rustix::fs::fstatfs(&fd)?;
    if fs.f_type as u64 != BTRFS_SUPER_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{shown} is not on a Btrfs filesystem"),
        ));
    }
    if rustix::fs::fstat(&fd)?.st_ino != FIRST_FREE_OBJECTID {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{shown} is not the top directory of a Btrfs subvolume"),
        ));
    }
    Ok(fd)
}

/// The subvolume whose top directory is `dir`.
pub fn subvolume_info(dir: &Path) -> io::Result<SubvolInfo> {
    let fd = open_subvolume(dir)?;
    get_subvol_info(fd.as_fd()).map_err(|e| with_path(dir, e))
}

/// The transaction that created the subvolume at `dir` (for a root made by
/// snapshotting the blank: the snapshot's transaction).
pub fn subvolume_otransid(dir: &Path) -> io::Result<u64> {
    Ok(subvolume_info(dir)?.otransid)
}

fn with_path(dir: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", dir.display()))
}

/// A range of keys in one tree.
#[derive(Debug, Clone, Copy)]
struct Query {
    tree: u64,
    min: Key,
    max: Key,
    /// Skip tree blocks older than this transaction.
    min_transid: u64,
}

impl Query {
    fn items_of(tree: u64, objectid: u64, min_ty: u8, max_ty: u8) -> Self {
        Query {
            tree,
            min: Key::new(objectid, min_ty, 0),
            max: Key::new(objectid, max_ty, u64::MAX),
            min_transid: 0,
        }
    }
}

const SEARCH_BUF: usize = 256 * 1024;
/// The kernel's own cap on a v2 search buffer.
const SEARCH_BUF_MAX: usize = 16 * 1024 * 1024;

struct Searcher<'fd> {
    fd: BorrowedFd<'fd>,
    /// A `SearchArgsV2` followed by the result buffer.
    buf: Vec<u8>,
    calls: u64,
    items: u64,
}

impl<'fd> Searcher<'fd> {
    fn new(fd: BorrowedFd<'fd>) -> Self {
        Searcher {
            fd,
            buf: vec![0; size_of::<SearchArgsV2>() + SEARCH_BUF],
            calls: 0,
            items: 0,
        }
    }

    /// Calls `visit` on every item of the range, in key order, until it
    /// returns false.
    fn search(&mut self, q: &Query, mut visit: impl FnMut(Key, &[u8]) -> bool) -> io::Result<()> {
        let head = size_of::<SearchArgsV2>();
        let mut min = q.min;
        loop {
            let args = SearchArgsV2 {
                key: SearchKey {
                    tree_id: q.tree,
                    min_objectid: min.objectid,
                    max_objectid: q.max.objectid,
                    min_offset: min.offset,
                    max_offset: q.max.offset,
                    min_transid: q.min_transid,
                    max_transid: u64::MAX,
                    min_type: u32::from(min.ty),
                    max_type: u32::from(q.max.ty),
                    nr_items: u32::MAX,
                    ..SearchKey::default()
                },
                buf_size: (self.buf.len() - head) as u64,
            };
            let ptr = self.buf.as_mut_ptr();
            // SAFETY: `buf` is at least `head` bytes long; unaligned writes
            // and reads need no alignment.
            unsafe { ptr.cast::<SearchArgsV2>().write_unaligned(args) };
            self.calls += 1;
            // SAFETY: the kernel reads the args struct and writes at most
            // `buf_size` bytes after it, all inside `buf`.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), IOC_TREE_SEARCH_V2 as _, ptr) };
            // SAFETY: as above.
            let out = unsafe { ptr.cast::<SearchArgsV2>().read_unaligned() };
            if rc < 0 {
                let e = io::Error::last_os_error();
                let needed = out.buf_size as usize;
                if e.raw_os_error() == Some(libc::EOVERFLOW)
                    && head + needed > self.buf.len()
                    && needed <= SEARCH_BUF_MAX
                {
                    // One item bigger than the buffer: grow it and retry.
                    self.buf.resize(head + needed, 0);
                    continue;
                }
                return Err(os_err(
                    &format!("BTRFS_IOC_TREE_SEARCH_V2 (tree {})", q.tree),
                    e,
                ));
            }
            let n = out.key.nr_items;
            if n == 0 {
                return Ok(());
            }
            self.items += u64::from(n);
            let mut last = min;
            for (key, payload) in parse_search_results(&self.buf[head..], n)? {
                if !visit(key, payload) {
                    return Ok(());
                }
                last = key;
            }
            match last.next() {
                Some(next) if next <= q.max => min = next,
                _ => return Ok(()),
            }
        }
    }

    /// The first item of a range, if any.
    fn first(&mut self, q: &Query) -> io::Result<Option<(Key, Vec<u8>)>> {
        let mut found = None;
        self.search(q, |k, p| {
            found = Some((k, p.to_vec()));
            false
        })?;
        Ok(found)
    }

    /// Every name of an inode (INODE_REF and INODE_EXTREF items).
    fn names(&mut self, tree: u64, ino: u64) -> io::Result<Vec<Name>> {
        let mut names = Vec::new();
        let q = Query::items_of(tree, ino, INODE_REF_KEY, INODE_EXTREF_KEY);
        self.search(&q, |k, p| {
            collect_names(k, p, &mut names);
            true
        })?;
        Ok(names)
    }

    fn inode(&mut self, tree: u64, ino: u64) -> io::Result<Option<InodeItem>> {
        let q = Query::items_of(tree, ino, INODE_ITEM_KEY, INODE_ITEM_KEY);
        Ok(self.first(&q)?.and_then(|(_, p)| parse_inode_item(&p)))
    }

    /// The subvolume id of the snapshot source, from the UUID tree; `None`
    /// when it no longer exists.
    fn subvolume_by_uuid(&mut self, uuid: &[u8; 16]) -> io::Result<Option<u64>> {
        let lo = u64::from_le_bytes(uuid[..8].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(uuid[8..].try_into().expect("8 bytes"));
        let key = Key::new(lo, UUID_KEY_SUBVOL, hi);
        let q = Query {
            tree: UUID_TREE_OBJECTID,
            min: key,
            max: key,
            min_transid: 0,
        };
        Ok(self
            .first(&q)?
            .and_then(|(_, p)| parse_uuid_item(&p).first().copied()))
    }
}

fn collect_names(key: Key, payload: &[u8], into: &mut Vec<Name>) {
    let parsed = match key.ty {
        INODE_REF_KEY => parse_inode_refs(key.offset, payload),
        INODE_EXTREF_KEY => parse_inode_extrefs(payload),
        _ => return,
    };
    match parsed {
        Some(names) => into.extend(names),
        None => log::debug!("diff: malformed name item {key:?}, skipped"),
    }
}

/// `BTRFS_IOC_INO_LOOKUP`: the path of directory `ino` relative to the top
/// of subvolume `tree`, as `a/b/c` (empty for the top).
fn ino_lookup(fd: BorrowedFd<'_>, tree: u64, ino: u64) -> io::Result<Vec<u8>> {
    let mut args = InoLookupArgs {
        treeid: tree,
        objectid: ino,
        name: [0; INO_LOOKUP_PATH_MAX],
    };
    // SAFETY: the request number encodes exactly this struct's size.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_INO_LOOKUP as _, &mut args) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = args
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(args.name.len());
    let path = &args.name[..len];
    Ok(path.strip_suffix(b"/").unwrap_or(path).to_vec())
}

// ---------------------------------------------------------------------------
// The scan.

/// Counters of one scan, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Tree search ioctls made (all trees).
    pub search_calls: u64,
    /// Items returned by them (all trees).
    pub items_returned: u64,
    /// Inodes whose item was rewritten since the snapshot.
    pub inodes_rewritten: u64,
    /// Of those, left out because only their access time changed.
    pub atime_only: u64,
    /// The blank snapshot's subvolume id, when found.
    pub blank_tree: Option<u64>,
    /// `BTRFS_IOC_INO_LOOKUP` calls for directories.
    pub dir_lookups: u64,
}

#[derive(Debug, Clone)]
pub struct Scan {
    /// Unfiltered, unsorted: see [`crate::diff::filter_and_sort`].
    pub changes: Vec<Change>,
    pub stats: ScanStats,
}

/// Paths of directories, memoised. A directory has exactly one name.
struct DirPaths<'fd> {
    fd: BorrowedFd<'fd>,
    tree: u64,
    /// Names seen in the scan (from changed leaves only).
    names: HashMap<u64, Vec<Name>>,
    /// `ino -> /a/b` (empty for the top directory).
    known: HashMap<u64, Vec<u8>>,
    lookups: u64,
}

impl DirPaths<'_> {
    /// The path of directory `dir`, `None` when it no longer has one (removed
    /// while scanning).
    fn path(&mut self, searcher: &mut Searcher<'_>, dir: u64) -> io::Result<Option<Vec<u8>>> {
        // Walk up through names known from the scan until a directory
        // whose path is known (or looked up), then fill in on the way down.
        let mut chain: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut cur = dir;
        let base = loop {
            if cur == FIRST_FREE_OBJECTID {
                break Vec::new();
            }
            if let Some(p) = self.known.get(&cur) {
                break p.clone();
            }
            if chain.len() > 4096 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("directory {dir}: loop in its parent chain"),
                ));
            }
            if let Some(name) = self.names.get(&cur).and_then(|n| n.first()) {
                chain.push((cur, name.name.clone()));
                cur = name.parent;
                continue;
            }
            self.lookups += 1;
            match ino_lookup(self.fd, self.tree, cur) {
                Ok(rel) => {
                    let mut p = Vec::with_capacity(rel.len() + 1);
                    if !rel.is_empty() {
                        p.push(b'/');
                        p.extend_from_slice(&rel);
                    }
                    self.known.insert(cur, p.clone());
                    break p;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                    // Deeper than INO_LOOKUP's 4080 bytes: walk it ourselves.
                    let names = searcher.names(self.tree, cur)?;
                    if names.is_empty() {
                        return Ok(None);
                    }
                    self.names.insert(cur, names);
                }
                Err(e) => return Err(os_err("BTRFS_IOC_INO_LOOKUP", e)),
            }
        };
        let mut path = base;
        for (ino, name) in chain.into_iter().rev() {
            path.push(b'/');
            path.extend_from_slice(&name);
            self.known.insert(ino, path.clone());
        }
        Ok(Some(path))
    }
}

/// Everything in the root subvolume at `root_dir` (its top directory) that
/// was created or modified after transaction `transid`, plus the subvolumes
/// nested in it. Commits the filesystem first (`syncfs`), so that recent
/// changes still held in memory are seen.
pub fn changed_since(root_dir: &Path, transid: u64) -> io::Result<Vec<Change>> {
    Ok(scan(root_dir, transid)?.changes)
}

/// [`changed_since`] with counters.
pub fn scan(root_dir: &Path, transid: u64) -> io::Result<Scan> {
    let fd = open_subvolume(root_dir)?;
    let fd = fd.as_fd();
    let info = get_subvol_info(fd).map_err(|e| with_path(root_dir, e))?;
    rustix::fs::syncfs(fd).map_err(|e| with_path(root_dir, e.into()))?;
    scan_fd(fd, &info, transid).map_err(|e| with_path(root_dir, e))
}

fn scan_fd(fd: BorrowedFd<'_>, info: &SubvolInfo, transid: u64) -> io::Result<Scan> {
    let tree = info.treeid;
    let mut searcher = Searcher::new(fd);
    let mut stats = ScanStats::default();

    // 1. The changed leaves: rewritten inode items, and the names next to them.
    let mut rewritten: Vec<(u64, InodeItem)> = Vec::new();
    let mut names: HashMap<u64, Vec<Name>> = HashMap::new();
    let q = Query {
        tree,
        min: Key::new(FIRST_FREE_OBJECTID, 0, 0),
        max: Key::new(LAST_FREE_OBJECTID, u8::MAX, u64::MAX),
        min_transid: transid.saturating_add(1),
    };
    searcher.search(&q, |key, payload| {
        match key.ty {
            INODE_ITEM_KEY => match parse_inode_item(payload) {
                Some(item) if item.transid > transid => rewritten.push((key.objectid, item)),
                Some(_) => {}
                None => log::debug!("diff: malformed inode item {key:?}, skipped"),
            },
            INODE_REF_KEY | INODE_EXTREF_KEY => {
                collect_names(key, payload, names.entry(key.objectid).or_default())
            }
            _ => {}
        }
        true
    })?;
    stats.inodes_rewritten = rewritten.len() as u64;

    // 2. The blank, to tell real modifications from access-time updates.
    let blank = if info.parent_uuid == [0; 16] {
        None
    } else {
        match searcher.subvolume_by_uuid(&info.parent_uuid) {
            Ok(Some(id)) => match searcher.inode(id, FIRST_FREE_OBJECTID) {
                Ok(Some(_)) => Some(id),
                _ => None,
            },
            Ok(None) => None,
            Err(e) => {
                log::debug!("diff: cannot look up the blank snapshot: {e}");
                None
            }
        }
    };
    stats.blank_tree = blank;

    let mut dirs = DirPaths {
        fd,
        tree,
        names,
        known: HashMap::new(),
        lookups: 0,
    };
    let mut changes = Vec::new();
    for (ino, item) in rewritten {
        let kind = if item.generation > transid {
            ChangeKind::Created
        } else {
            // A failed lookup in the blank (deleted meanwhile) only costs
            // the access-time filtering.
            if let Some(blank) = blank
                && let Ok(Some(old)) = searcher.inode(blank, ino)
                && item.same_apart_from_atime(&old)
            {
                stats.atime_only += 1;
                continue;
            }
            ChangeKind::Modified
        };
        let is_dir = item.is_dir();
        if ino == FIRST_FREE_OBJECTID {
            changes.push(Change::new("/", kind, true));
            continue;
        }
        if item.nlink == 0 {
            continue; // unlinked, still open: gone at the next boot anyway
        }
        // Names from the scan may miss hard links stored in unchanged leaves.
        let wanted = if is_dir { 1 } else { item.nlink as usize };
        let known = dirs.names.get(&ino).map_or(0, Vec::len);
        if known < wanted {
            let found = searcher.names(tree, ino)?;
            dirs.names.insert(ino, found);
        }
        let inode_names = dirs.names.get(&ino).cloned().unwrap_or_default();
        for name in inode_names {
            let Some(mut path) = dirs.path(&mut searcher, name.parent)? else {
                continue;
            };
            path.push(b'/');
            path.extend_from_slice(&name.name);
            changes.push(Change::new(decode_path(&path), kind, is_dir));
            if is_dir {
                break;
            }
        }
    }

    // 3. Subvolumes nested in the root.
    let mut nested = Vec::new();
    let q = Query::items_of(ROOT_TREE_OBJECTID, tree, ROOT_REF_KEY, ROOT_REF_KEY);
    searcher.search(&q, |_, payload| {
        match parse_root_ref(payload) {
            Some(name) => nested.push(name),
            None => log::debug!("diff: malformed root ref, skipped"),
        }
        true
    })?;
    for name in nested {
        if let Some(mut path) = dirs.path(&mut searcher, name.parent)? {
            path.push(b'/');
            path.extend_from_slice(&name.name);
            changes.push(Change::new(decode_path(&path), ChangeKind::Subvolume, true));
        }
    }

    stats.search_calls = searcher.calls;
    stats.items_returned = searcher.items;
    stats.dir_lookups = dirs.lookups;
    log::debug!("diff: {stats:?}");
    Ok(Scan { changes, stats })
}

// ---------------------------------------------------------------------------
// Mount points.

/// The mount points strictly below `root` in a `/proc/self/mountinfo` text,
/// as paths inside `root` (`/home` for `/sysroot/home` under `/sysroot`).
pub fn mount_points_in(mountinfo: &str, root: &str) -> Vec<AbsPath> {
    let root = root.trim_end_matches('/');
    let mut out: Vec<AbsPath> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter_map(|field| {
            let mp = decode_path(&unescape_mountinfo(field));
            let rel = mp.strip_prefix(root)?;
            if !rel.starts_with('/') || rel == "/" {
                return None;
            }
            AbsPath::parse(rel).ok()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The mount points below `root_dir` in this mount namespace: other
/// subvolumes, tmpfs, persisted binds. What lies under them is not in the
/// root's tree as seen through them, and the mount point itself survives.
pub fn mount_points_below(root_dir: &Path) -> io::Result<Vec<AbsPath>> {
    let root = fs::canonicalize(root_dir).map_err(|e| with_path(root_dir, e))?;
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| with_path(Path::new("/proc/self/mountinfo"), e))?;
    Ok(mount_points_in(&text, &root.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode_item_bytes(i: &InodeItem, nbytes: u64, block_group: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&i.generation.to_le_bytes());
        b.extend_from_slice(&i.transid.to_le_bytes());
        b.extend_from_slice(&i.size.to_le_bytes());
        b.extend_from_slice(&nbytes.to_le_bytes());
        b.extend_from_slice(&block_group.to_le_bytes());
        b.extend_from_slice(&i.nlink.to_le_bytes());
        b.extend_from_slice(&i.uid.to_le_bytes());
        b.extend_from_slice(&i.gid.to_le_bytes());
        b.extend_from_slice(&i.mode.to_le_bytes());
        b.extend_from_slice(&i.rdev.to_le_bytes());
        b.extend_from_slice(&i.flags.to_le_bytes());
        b.extend_from_slice(&i.sequence.to_le_bytes());
        b.extend_from_slice(&[0xee; 32]); // reserved
        for t in [i.atime, i.ctime, i.mtime, i.otime] {
            b.extend_from_slice(&t.sec.to_le_bytes());
            b.extend_from_slice(&t.nsec.to_le_bytes());
        }
        assert_eq!(b.len(), INODE_ITEM_LEN);
        b
    }

    fn sample_inode() -> InodeItem {
        InodeItem {
            generation: 7,
            transid: 42,
            size: 0x0102_0304_0506,
            nlink: 2,
            uid: 1000,
            gid: 100,
            mode: 0o100_644,
            rdev: 0,
            flags: 0x10,
            sequence: 9,
            atime: Timespec { sec: 1, nsec: 2 },
            ctime: Timespec { sec: 3, nsec: 4 },
            mtime: Timespec { sec: 5, nsec: 6 },
            otime: Timespec {
                sec: 7,
                nsec: 999_999_999,
            },
        }
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(IOC_TREE_SEARCH_V2, 0xc070_9411);
        assert_eq!(IOC_INO_LOOKUP, 0xd000_9412);
        assert_eq!(IOC_GET_SUBVOL_INFO, 0x81f8_943c);
        assert_eq!(std::mem::offset_of!(GetSubvolInfoArgs, parent_uuid), 312);
        assert_eq!(std::mem::offset_of!(GetSubvolInfoArgs, otransid), 352);
        assert_eq!(std::mem::offset_of!(GetSubvolInfoArgs, otime), 392);
    }

    #[test]
    fn parses_an_inode_item() {
        let item = sample_inode();
        let bytes = inode_item_bytes(&item, 4096, 0);
        assert_eq!(parse_inode_item(&bytes), Some(item));
        assert!(!item.is_dir());
        let dir = InodeItem {
            mode: 0o040_755,
            ..item
        };
        assert!(
            parse_inode_item(&inode_item_bytes(&dir, 0, 0))
                .unwrap()
                .is_dir()
        );
        assert_eq!(parse_inode_item(&bytes[..159]), None);
    }

    #[test]
    fn access_time_alone_is_not_a_change() {
        let old = sample_inode();
        let read = InodeItem {
            transid: 50,
            atime: Timespec { sec: 100, nsec: 0 },
            ..old
        };
        assert!(read.same_apart_from_atime(&old));
        let written = InodeItem {
            sequence: 10,
            mtime: Timespec { sec: 100, nsec: 0 },
            ctime: Timespec { sec: 100, nsec: 0 },
            ..read
        };
        assert!(!written.same_apart_from_atime(&old));
        let chmod = InodeItem {
            mode: 0o100_600,
            ..read
        };
        assert!(!chmod.same_apart_from_atime(&old));
        let reused = InodeItem {
            generation: 60,
            ..read
        };
        assert!(!reused.same_apart_from_atime(&old));
    }

    fn inode_ref(index: u64, name: &[u8]) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        b
    }

    #[test]
    fn parses_inode_refs_with_several_links() {
        let mut b = inode_ref(2, b"passwd");
        b.extend(inode_ref(3, b"passwd-"));
        assert_eq!(
            parse_inode_refs(300, &b),
            Some(vec![
                Name {
                    parent: 300,
                    name: b"passwd".to_vec()
                },
                Name {
                    parent: 300,
                    name: b"passwd-".to_vec()
                },
            ])
        );
        assert_eq!(parse_inode_refs(300, &[]), Some(vec![]));
        // name_len pointing past the end, and a header cut short
        assert_eq!(parse_inode_refs(300, &b[..b.len() - 1]), None);
        assert_eq!(parse_inode_refs(300, &b[..5]), None);
    }

    #[test]
    fn parses_inode_extrefs() {
        let mut b = Vec::new();
        for (parent, name) in [(257u64, &b"a"[..]), (258, b"bc")] {
            b.extend_from_slice(&parent.to_le_bytes());
            b.extend_from_slice(&5u64.to_le_bytes());
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name);
        }
        let names = parse_inode_extrefs(&b).unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(
            names[1],
            Name {
                parent: 258,
                name: b"bc".to_vec()
            }
        );
        assert_eq!(parse_inode_extrefs(&b[..20]), None);
    }

    #[test]
    fn parses_root_refs_and_uuid_items() {
        let mut b = 300u64.to_le_bytes().to_vec();
        b.extend_from_slice(&17u64.to_le_bytes());
        b.extend_from_slice(&6u16.to_le_bytes());
        b.extend_from_slice(b"nested");
        assert_eq!(
            parse_root_ref(&b),
            Some(Name {
                parent: 300,
                name: b"nested".to_vec()
            })
        );
        assert_eq!(parse_root_ref(&b[..20]), None);
        let mut u = 258u64.to_le_bytes().to_vec();
        u.extend_from_slice(&300u64.to_le_bytes());
        assert_eq!(parse_uuid_item(&u), vec![258, 300]);
    }

    fn header(objectid: u64, ty: u32, offset: u64, len: u32) -> Vec<u8> {
        let mut b = 99u64.to_ne_bytes().to_vec();
        b.extend_from_slice(&objectid.to_ne_bytes());
        b.extend_from_slice(&offset.to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&len.to_ne_bytes());
        b
    }

    #[test]
    fn walks_a_search_result_buffer() {
        let mut buf = header(257, 1, 0, 3);
        buf.extend_from_slice(b"abc");
        buf.extend(header(257, 12, 256, 0));
        buf.extend(header(258, 84, 7, 2));
        buf.extend_from_slice(b"xy");
        buf.extend_from_slice(&[0; 40]); // stale bytes after the last item
        let items = parse_search_results(&buf, 3).unwrap();
        assert_eq!(
            items,
            vec![
                (Key::new(257, 1, 0), &b"abc"[..]),
                (Key::new(257, 12, 256), &b""[..]),
                (Key::new(258, 84, 7), &b"xy"[..]),
            ]
        );
        assert!(parse_search_results(&buf, 5).is_err());
        assert!(parse_search_results(&buf[..34], 1).is_err());
    }

    #[test]
    fn next_key_carries_into_type_then_objectid() {
        assert_eq!(Key::new(5, 1, 7).next(), Some(Key::new(5, 1, 8)));
        assert_eq!(Key::new(5, 1, u64::MAX).next(), Some(Key::new(5, 2, 0)));
        assert_eq!(
            Key::new(5, u8::MAX, u64::MAX).next(),
            Some(Key::new(6, 0, 0))
        );
        assert_eq!(Key::new(u64::MAX, u8::MAX, u64::MAX).next(), None);
        assert!(Key::new(5, 200, 0) < Key::new(6, 0, 0));
        assert!(Key::new(5, 1, u64::MAX) < Key::new(5, 12, 0));
    }

    #[test]
    fn decodes_paths_with_invalid_utf8() {
        assert_eq!(decode_path(b"/etc/caf\xc3\xa9"), "/etc/café");
        assert_eq!(decode_path(b"/tmp/\xff\xfeok"), "/tmp/\\xff\\xfeok");
    }

    #[test]
    fn mount_points_below_a_root() {
        let info = "\
22 1 0:21 / / rw,relatime shared:1 - btrfs /dev/mapper/cryptroot rw,subvol=/root
23 22 0:21 /home /home rw shared:2 - btrfs /dev/mapper/cryptroot rw,subvol=/home
24 22 0:5 / /proc rw shared:3 - proc proc rw
25 22 0:21 /persist/etc/machine-id /etc/machine-id rw - btrfs /dev/mapper/cryptroot rw
26 22 0:30 / /mnt/with\\040space rw - tmpfs tmpfs rw
27 22 0:31 / /sysroot rw - btrfs /dev/vda rw,subvol=/root
28 27 0:31 / /sysroot/nix rw - btrfs /dev/vda rw,subvol=/nix
29 27 0:31 / /sysroot-other rw - tmpfs tmpfs rw
";
        let got = |root| {
            mount_points_in(info, root)
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got("/"),
            [
                "/etc/machine-id",
                "/home",
                "/mnt/with space",
                "/proc",
                "/sysroot",
                "/sysroot-other",
                "/sysroot/nix"
            ]
        );
        assert_eq!(got("/sysroot"), ["/nix"]);
        assert_eq!(got("/sysroot/"), ["/nix"]);
        assert_eq!(unescape_mountinfo("a\\134b\\011c\\0"), b"a\\b\tc\\0");
    }
}
