//! The kernel's FUSE structures (`linux/fuse.h`) that Naiad writes or reads itself, beside
//! what the FUSE library does: the INIT it hands the library on an adopted connection, the
//! requests and replies of FUSE over io_uring. Host byte order, as the kernel has them; each
//! size is checked against the header's at compile time.

use fuser::{FileAttr, FileType};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// FUSE opcodes Naiad reads or writes itself.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const READLINK: u32 = 5;
    pub const READ: u32 = 15;
    pub const STATFS: u32 = 17;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const INIT: u32 = 26;
    pub const READDIR: u32 = 28;
    pub const READDIRPLUS: u32 = 44;
}

/// `FUSE_NOTIFY_RESEND`: the kernel queues again the requests a server read but did not answer.
pub const NOTIFY_RESEND: i32 = 7;

/// `struct fuse_in_header`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
    pub padding: u16,
}

/// `struct fuse_out_header`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

/// `struct fuse_init_in`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub flags2: u32,
    pub unused: [u32; 11],
}

/// `struct fuse_read_in`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReadIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub read_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

/// `struct fuse_getxattr_in` (GETXATTR and LISTXATTR).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GetxattrIn {
    pub size: u32,
    pub padding: u32,
}

/// `struct fuse_getxattr_out`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GetxattrOut {
    pub size: u32,
    pub padding: u32,
}

/// `struct fuse_attr`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

/// `struct fuse_entry_out`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: Attr,
}

/// `struct fuse_attr_out`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct AttrOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub dummy: u32,
    pub attr: Attr,
}

/// `struct fuse_dirent`, without its name.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Dirent {
    pub ino: u64,
    pub off: u64,
    pub namelen: u32,
    pub typ: u32,
}

/// `struct fuse_statfs_out` (a `struct fuse_kstatfs`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StatfsOut {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub padding: u32,
    pub spare: [u32; 6],
}

/// `struct fuse_uring_ent_in_out`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct UringEntInOut {
    pub flags: u64,
    pub commit_id: u64,
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}

/// `struct fuse_uring_req_header`: the request's (or reply's) header, the opcode's fixed
/// argument, and the ring entry's own fields.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(64))]
pub struct UringReqHeader {
    pub in_out: [u8; 128],
    pub op_in: [u8; 128],
    pub ent: UringEntInOut,
    /// Up to the alignment (the kernel's struct is 288 bytes; the buffer it copies is that).
    pub tail: [u8; 32],
}

/// The size of `struct fuse_uring_req_header`: what the kernel copies in and out.
pub const URING_HEADER_SIZE: usize = 288;

/// `struct fuse_uring_cmd_req`, at the start of the SQE's command area.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct UringCmdReq {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}

/// `FUSE_IO_URING_CMD_*`.
pub const URING_CMD_REGISTER: u32 = 1;
pub const URING_CMD_COMMIT_AND_FETCH: u32 = 2;

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<InHeader>() == 40 && size_of::<OutHeader>() == 16);
    assert!(size_of::<InitIn>() == 64 && size_of::<ReadIn>() == 40);
    assert!(size_of::<Attr>() == 88 && size_of::<EntryOut>() == 128 && size_of::<AttrOut>() == 104);
    assert!(size_of::<Dirent>() == 24 && size_of::<StatfsOut>() == 80);
    assert!(size_of::<UringEntInOut>() == 32 && size_of::<UringCmdReq>() == 24);
    assert!(
        std::mem::offset_of!(UringReqHeader, ent) + size_of::<UringEntInOut>() == URING_HEADER_SIZE
    );
};

/// `(seconds, nanoseconds)` of `t`, as FUSE has times: before the epoch, negative seconds
/// and non-negative nanoseconds.
fn time(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                ((-s) as u64, 0)
            } else {
                ((-s - 1) as u64, 1_000_000_000 - n)
            }
        }
    }
}

fn type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// The `d_type` of a directory entry.
pub fn dtype(kind: FileType) -> u32 {
    type_bits(kind) >> 12
}

impl From<&FileAttr> for Attr {
    fn from(a: &FileAttr) -> Attr {
        let ((atime, atimensec), (mtime, mtimensec), (ctime, ctimensec)) =
            (time(a.atime), time(a.mtime), time(a.ctime));
        Attr {
            ino: a.ino.0,
            size: a.size,
            blocks: a.blocks,
            atime,
            mtime,
            ctime,
            atimensec,
            mtimensec,
            ctimensec,
            mode: type_bits(a.kind) | u32::from(a.perm),
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: a.blksize,
            flags: a.flags,
        }
    }
}

/// Writes `v` at the start of `out`; its length, or `None` if it does not fit.
fn put<T: IntoBytes + Immutable>(out: &mut [u8], v: &T) -> Option<usize> {
    v.write_to_prefix(out).ok().map(|()| std::mem::size_of::<T>())
}

/// Reply encoders for FUSE over io_uring: each writes at the start of `out` and returns the
/// reply's length (`out` is the ring entry's payload buffer, large enough for every reply
/// but directory listings, which stop at what fits).
pub mod reply {
    use super::*;

    fn entry_out(a: &FileAttr, valid: Duration) -> EntryOut {
        EntryOut {
            nodeid: a.ino.0,
            generation: 0,
            entry_valid: valid.as_secs(),
            attr_valid: valid.as_secs(),
            entry_valid_nsec: valid.subsec_nanos(),
            attr_valid_nsec: valid.subsec_nanos(),
            attr: a.into(),
        }
    }

    /// `fuse_entry_out`.
    pub fn entry(out: &mut [u8], a: &FileAttr, valid: Duration) -> usize {
        put(out, &entry_out(a, valid)).unwrap_or(0)
    }

    /// `fuse_attr_out`.
    pub fn attr(out: &mut [u8], a: &FileAttr, valid: Duration) -> usize {
        let v = AttrOut {
            attr_valid: valid.as_secs(),
            attr_valid_nsec: valid.subsec_nanos(),
            dummy: 0,
            attr: a.into(),
        };
        put(out, &v).unwrap_or(0)
    }

    /// A `fuse_dirent` and its name, padded to 8 bytes; `None` if it does not fit.
    pub fn dirent(out: &mut [u8], ino: u64, off: u64, typ: u32, name: &[u8]) -> Option<usize> {
        let len = (std::mem::size_of::<Dirent>() + name.len()).next_multiple_of(8);
        if len > out.len() {
            return None;
        }
        let head = put(out, &Dirent { ino, off, namelen: name.len() as u32, typ })?;
        out[head..head + name.len()].copy_from_slice(name);
        out[head + name.len()..len].fill(0);
        Some(len)
    }

    /// A `fuse_direntplus` (entry, then dirent and name); `None` if it does not fit.
    pub fn direntplus(
        out: &mut [u8],
        a: &FileAttr,
        valid: Duration,
        off: u64,
        name: &[u8],
    ) -> Option<usize> {
        let n = std::mem::size_of::<EntryOut>();
        if out.len() < n {
            return None;
        }
        let (e, rest) = out.split_at_mut(n);
        let d = dirent(rest, a.ino.0, off, dtype(a.kind), name)?;
        put(e, &entry_out(a, valid))?;
        Some(n + d)
    }

    /// `fuse_statfs_out`.
    pub fn statfs(out: &mut [u8], s: &StatfsOut) -> usize {
        put(out, s).unwrap_or(0)
    }

    /// A GETXATTR/LISTXATTR answer: the size alone when asked with size 0, else the data if
    /// it fits in `size`, else ERANGE.
    pub fn xattr(out: &mut [u8], data: &[u8], size: u32) -> Result<usize, i32> {
        if size == 0 {
            put(out, &GetxattrOut { size: data.len() as u32, padding: 0 }).ok_or(libc::ERANGE)
        } else if data.len() <= size as usize && data.len() <= out.len() {
            out[..data.len()].copy_from_slice(data);
            Ok(data.len())
        } else {
            Err(libc::ERANGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuser::INodeNo;

    #[test]
    fn replies_have_the_kernels_layout() {
        let t = UNIX_EPOCH - Duration::new(1, 250);
        let a = FileAttr {
            ino: INodeNo(7),
            size: 4097,
            blocks: 9,
            atime: t,
            mtime: UNIX_EPOCH + Duration::new(5, 6),
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::Symlink,
            perm: 0o777,
            nlink: 1,
            uid: 2,
            gid: 3,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        let mut out = [0xffu8; 256];
        assert_eq!(reply::entry(&mut out, &a, Duration::new(3600, 9)), 128);
        assert_eq!(u64::from_ne_bytes(out[0..8].try_into().unwrap()), 7, "nodeid");
        assert_eq!(u64::from_ne_bytes(out[16..24].try_into().unwrap()), 3600, "entry_valid");
        assert_eq!(u32::from_ne_bytes(out[32..36].try_into().unwrap()), 9, "entry_valid_nsec");
        // The attr: atime before the epoch is -2 s + (1e9 - 250) ns.
        assert_eq!(i64::from_ne_bytes(out[40 + 24..40 + 32].try_into().unwrap()), -2);
        assert_eq!(
            u32::from_ne_bytes(out[40 + 48..40 + 52].try_into().unwrap()),
            1_000_000_000 - 250
        );
        assert_eq!(
            u32::from_ne_bytes(out[40 + 60..40 + 64].try_into().unwrap()),
            libc::S_IFLNK | 0o777,
            "mode"
        );
        let mut d = [0xffu8; 40];
        assert_eq!(reply::dirent(&mut d, 7, 2, dtype(FileType::Directory), b"abc"), Some(32));
        assert_eq!(
            (d[16], d[20], &d[24..27], d[27]),
            (3, 4, &b"abc"[..], 0),
            "namelen, DT_DIR, name, padding"
        );
        assert_eq!(reply::dirent(&mut d[..31], 7, 2, 4, b"abc"), None);
        assert_eq!(reply::direntplus(&mut out, &a, Duration::ZERO, 1, b"x"), Some(128 + 32));
        assert_eq!(reply::xattr(&mut out, b"value", 0), Ok(8));
        assert_eq!(u32::from_ne_bytes(out[0..4].try_into().unwrap()), 5);
        assert_eq!(reply::xattr(&mut out, b"value", 4), Err(libc::ERANGE));
        let s = StatfsOut { blocks: 1, bsize: 4096, namelen: 255, ..Default::default() };
        assert_eq!(reply::statfs(&mut out, &s), 80);
        assert_eq!(u32::from_ne_bytes(out[40..44].try_into().unwrap()), 4096);
    }
}
