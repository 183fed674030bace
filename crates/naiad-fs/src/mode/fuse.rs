//! The fuse mode: the whole filesystem of an image served from user space, straight from
//! the bootstrap, with file data read through each blob's [`LazyBlob`]. For kernels without
//! file-backed EROFS, unprivileged use, or debugging. Same tree and same bytes as the
//! kernel mode.
//!
//! FUSE inode numbers are EROFS nids plus 2 (0 and 1 are reserved), the root being 1.

use crate::fuse::abi::{op, reply, GetxattrIn, ReadIn, StatfsOut};
use crate::fuse::ring::{RingHandler, RingInit, RingRequest};
use crate::fuse::server::{FuseServer, RingParts};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Generation, INodeNo, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use naiad_format::bootstrap::{Bootstrap, ChunkSlot, DirEntry, Inode};
use naiad_format::erofs::file_type;
use naiad_format::BLOCK_SIZE_BYTES;
use naiad_storage::lazy::LazyBlob;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

/// Threads serving the filesystem. Every lookup and read is a round trip to this process
/// and a reader waits for each: with a thread always ready to take the next request, warm
/// re-reads of many small files measured about twice as fast as with one (bench/lazy.sh).
pub const FUSE_THREADS: usize = 8;

/// Directories kept parsed.
const DIR_CACHE_ENTRIES: usize = 1024;

/// The image never changes: attributes and entries may be cached for long.
const TTL: Duration = Duration::from_secs(3600);

/// A file's xattrs: (name, value) pairs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A read-only filesystem over one image. Clones share everything (the /dev/fuse and the
/// io_uring servers serve one filesystem).
#[derive(Clone)]
pub struct ImageFs {
    bs: Arc<Bootstrap>,
    /// Parsed directories, by nid (bounded: cleared when it grows past `DIR_CACHE_ENTRIES`).
    dirs: Arc<RwLock<HashMap<u64, Arc<Vec<DirEntry>>>>>,
    /// The image's blobs, by blob index.
    blobs: Arc<Vec<Arc<LazyBlob>>>,
    ring: RingInit,
}

impl ImageFs {
    /// The filesystem of image `bs`, its blobs (by blob index) read through `blobs`.
    pub fn new(bs: Arc<Bootstrap>, blobs: Vec<Arc<LazyBlob>>) -> Self {
        ImageFs {
            bs,
            dirs: Arc::new(RwLock::new(HashMap::new())),
            blobs: Arc::new(blobs),
            ring: RingInit::default(),
        }
    }

    /// A directory's entries, parsed once and kept (lookups in big directories would
    /// otherwise parse the whole directory each time).
    fn entries(&self, dir: &Inode) -> Result<Arc<Vec<DirEntry>>, Errno> {
        if let Some(e) = self.dirs.read().expect("dir cache lock").get(&dir.nid) {
            return Ok(e.clone());
        }
        let parsed = Arc::new(self.bs.dir_entries(dir).map_err(|e| {
            tracing::warn!(nid = dir.nid, error = %e, "bad directory");
            Errno::EIO
        })?);
        let mut cache = self.dirs.write().expect("dir cache lock");
        if cache.len() >= DIR_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(dir.nid, parsed.clone());
        Ok(parsed)
    }

    fn nid(&self, ino: INodeNo) -> u64 {
        if ino.0 == 1 {
            self.bs.root_nid()
        } else {
            ino.0 - 2
        }
    }

    fn ino(&self, nid: u64) -> u64 {
        if nid == self.bs.root_nid() {
            1
        } else {
            nid + 2
        }
    }

    fn inode(&self, ino: INodeNo) -> Result<Inode, Errno> {
        self.bs.inode(self.nid(ino)).map_err(|e| {
            tracing::warn!(ino = ino.0, error = %e, "bad inode");
            Errno::EIO
        })
    }

    fn attr(&self, ino: &Inode) -> FileAttr {
        let kind = kind_of(file_type_of(ino.mode));
        let mtime = if ino.mtime >= 0 {
            UNIX_EPOCH + Duration::new(ino.mtime as u64, ino.mtime_nsec)
        } else {
            UNIX_EPOCH - Duration::from_secs(ino.mtime.unsigned_abs())
                + Duration::from_nanos(u64::from(ino.mtime_nsec))
        };
        let rdev = if matches!(kind, FileType::CharDevice | FileType::BlockDevice) {
            let (ma, mi) = ino.rdev();
            naiad_format::erofs::encode_dev(ma, mi)
        } else {
            0
        };
        FileAttr {
            ino: INodeNo(self.ino(ino.nid)),
            size: if ino.is_dir() { BLOCK_SIZE_BYTES } else { ino.size },
            blocks: ino.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: (ino.mode & 0o7777) as u16,
            nlink: ino.nlink,
            uid: ino.uid,
            gid: ino.gid,
            rdev,
            blksize: BLOCK_SIZE_BYTES as u32,
            flags: 0,
        }
    }

    /// The entry `name` of directory `parent`.
    fn child(&self, parent: INodeNo, name: &[u8]) -> Result<Inode, Errno> {
        let dir = self.inode(parent)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let entries = self.entries(&dir)?;
        let i =
            entries.binary_search_by(|e| e.name.as_slice().cmp(name)).map_err(|_| Errno::ENOENT)?;
        self.bs.inode(entries[i].nid).map_err(|_| Errno::EIO)
    }

    /// A regular file's inode (EISDIR for anything else: the only reads the kernel sends).
    fn regular(&self, ino: INodeNo) -> Result<Inode, Errno> {
        self.inode(ino).and_then(|i| if i.is_reg() { Ok(i) } else { Err(Errno::EISDIR) })
    }

    fn symlink_target(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        self.inode(ino).and_then(|i| self.bs.symlink_target(&i).map_err(|_| Errno::EIO))
    }

    fn xattrs(&self, ino: INodeNo) -> Result<Xattrs, Errno> {
        self.inode(ino).and_then(|i| self.bs.xattrs(&i).map_err(|_| Errno::EIO))
    }

    fn xattr_value(&self, ino: INodeNo, name: &[u8]) -> Result<Vec<u8>, Errno> {
        self.xattrs(ino)?
            .into_iter()
            .find(|(k, _)| k.as_slice() == name)
            .map(|(_, v)| v)
            .ok_or(Errno::NO_XATTR)
    }

    /// The names of a file's xattrs, each ending in NUL.
    fn xattr_names(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        let mut names = Vec::new();
        for (k, _) in self.xattrs(ino)? {
            names.extend_from_slice(&k);
            names.push(0);
        }
        Ok(names)
    }

    /// What `statfs` says: the image's blocks, none free, 4 KiB blocks, 255-byte names.
    fn statfs(&self) -> StatfsOut {
        let blocks =
            self.bs.extension().blobs.iter().map(|b| b.view_size).sum::<u64>() / BLOCK_SIZE_BYTES;
        let bsize = BLOCK_SIZE_BYTES as u32;
        StatfsOut { blocks, bsize, namelen: 255, frsize: bsize, ..Default::default() }
    }

    /// Bytes `[offset, offset+size)` of a regular file.
    fn read_file(&self, ino: &Inode, offset: u64, size: u64) -> Result<Vec<u8>, Errno> {
        let len = offset.saturating_add(size).min(ino.size).saturating_sub(offset);
        let mut out = vec![0u8; len as usize];
        self.read_file_into(ino, offset, &mut out)?;
        Ok(out)
    }

    /// Fills `out` from byte `offset` of a regular file, up to its end; returns the length.
    fn read_file_into(&self, ino: &Inode, offset: u64, out: &mut [u8]) -> Result<usize, Errno> {
        let end = offset.saturating_add(out.len() as u64).min(ino.size);
        if offset >= end {
            return Ok(0);
        }
        let cs = ino.chunk_size();
        let mut at = 0usize;
        let eio = |e: &dyn std::fmt::Display| {
            tracing::warn!(nid = ino.nid, offset, error = %e, "read failed");
            Errno::EIO
        };
        for idx in offset / cs..end.div_ceil(cs) {
            let chunk_start = idx * cs;
            let from = offset.max(chunk_start) - chunk_start;
            let to = end.min(chunk_start + cs) - chunk_start;
            let dst = &mut out[at..at + (to - from) as usize];
            at += dst.len();
            match self.bs.chunk(ino, idx).map_err(|e| eio(&e))? {
                ChunkSlot::Hole => dst.fill(0),
                ChunkSlot::Data(rec) => {
                    let blob = self.blobs.get(rec.blob_index as usize).ok_or(Errno::EIO)?;
                    // Fetched data the cache cannot store (disk full) is served from memory.
                    blob.read_chunk(rec, from, dst).map_err(|e| eio(&e))?;
                }
            }
        }
        Ok(at)
    }
}

fn file_type_of(mode: u32) -> u8 {
    naiad_format::erofs::file_type_of_mode(mode)
}

fn kind_of(t: u8) -> FileType {
    match t {
        file_type::DIR => FileType::Directory,
        file_type::SYMLINK => FileType::Symlink,
        file_type::CHRDEV => FileType::CharDevice,
        file_type::BLKDEV => FileType::BlockDevice,
        file_type::FIFO => FileType::NamedPipe,
        file_type::SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn xattr_reply(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() <= size as usize {
        reply.data(data);
    } else {
        reply.error(Errno::ERANGE);
    }
}

impl fuser::Filesystem for ImageFs {
    /// Symlink targets never change (the kernel may cache them); lookups in one directory
    /// may run in parallel; a directory listing may carry each entry's attributes
    /// (READDIRPLUS, when the kernel sees lookups follow listings), so that walking a tree
    /// costs a round trip per directory instead of one per file.
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        for cap in [
            fuser::InitFlags::FUSE_CACHE_SYMLINKS,
            fuser::InitFlags::FUSE_PARALLEL_DIROPS,
            fuser::InitFlags::FUSE_DO_READDIRPLUS,
            fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            let _ = config.add_capabilities(cap);
        }
        self.ring.negotiate(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name.as_bytes()) {
            Ok(child) => reply.entry(&TTL, &self.attr(&child), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.symlink_target(ino) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    /// Opens need no state here, and the mount is read-only (the kernel refuses a write open
    /// before asking): ENOSYS makes the kernel stop sending OPEN and RELEASE for files
    /// altogether ("no_open"), keeping their page cache across opens, which saves two round
    /// trips per file.
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    /// The same for directories ("no_opendir"): the kernel also caches their listings.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.regular(ino).and_then(|i| self.read_file(&i, offset, u64::from(size))) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.inode(ino).and_then(|d| self.entries(&d)) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(self.ino(e.nid)),
                i as u64 + 1,
                kind_of(e.file_type),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let entries = match self.inode(ino).and_then(|d| self.entries(&d)) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let Ok(child) = self.bs.inode(e.nid) else { return reply.error(Errno::EIO) };
            if reply.add(
                INodeNo(self.ino(e.nid)),
                i as u64 + 1,
                OsStr::from_bytes(&e.name),
                &TTL,
                &self.attr(&child),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    /// Nothing to flush: ENOSYS makes the kernel stop sending FLUSH on every close.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: fuser::LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.statfs();
        reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.xattr_value(ino, name.as_bytes()) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.xattr_names(ino) {
            Ok(names) => xattr_reply(&names, size, reply),
            Err(e) => reply.error(e),
        }
    }
}

/// The same answers as the `fuser::Filesystem` implementation, for requests that come
/// through FUSE over io_uring.
impl RingHandler for ImageFs {
    fn handle(&self, req: &RingRequest<'_>, buf: &mut [u8]) -> Result<usize, i32> {
        let ino = INodeNo(req.nodeid);
        let errno = |e: Errno| i32::from(e);
        // The variable argument: a NUL-terminated name (read before the reply overwrites it).
        let len = req.payload_len;
        fn name(buf: &[u8], len: usize) -> &[u8] {
            buf[..len].strip_suffix(&[0]).unwrap_or(&buf[..len])
        }
        match req.opcode {
            op::LOOKUP => {
                let child = self.child(ino, name(buf, len)).map_err(errno)?;
                Ok(reply::entry(buf, &self.attr(&child), TTL))
            }
            op::GETATTR => Ok(reply::attr(buf, &self.attr(&self.inode(ino).map_err(errno)?), TTL)),
            op::READLINK => {
                let t = self.symlink_target(ino).map_err(errno)?;
                let n = t.len().min(buf.len());
                buf[..n].copy_from_slice(&t[..n]);
                Ok(n)
            }
            op::READ => {
                let ReadIn { offset, size, .. } = req.arg();
                let size = size as usize;
                let i = self.regular(ino).map_err(errno)?;
                let n = size.min(buf.len());
                self.read_file_into(&i, offset, &mut buf[..n]).map_err(errno)
            }
            op::READDIR | op::READDIRPLUS => {
                let ReadIn { offset, size, .. } = req.arg();
                let size = size as usize;
                let entries = self.inode(ino).and_then(|d| self.entries(&d)).map_err(errno)?;
                let limit = size.min(buf.len());
                let out = &mut buf[..limit];
                let mut at = 0;
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    let n = if req.opcode == op::READDIR {
                        reply::dirent(
                            &mut out[at..],
                            self.ino(e.nid),
                            i as u64 + 1,
                            crate::fuse::abi::dtype(kind_of(e.file_type)),
                            &e.name,
                        )
                    } else {
                        let child = self.bs.inode(e.nid).map_err(|_| libc::EIO)?;
                        reply::direntplus(
                            &mut out[at..],
                            &self.attr(&child),
                            TTL,
                            i as u64 + 1,
                            &e.name,
                        )
                    };
                    let Some(n) = n else { break };
                    at += n;
                }
                Ok(at)
            }
            op::STATFS => Ok(reply::statfs(buf, &self.statfs())),
            op::GETXATTR => {
                let v = self.xattr_value(ino, name(buf, len)).map_err(errno)?;
                reply::xattr(buf, &v, req.arg::<GetxattrIn>().size)
            }
            op::LISTXATTR => reply::xattr(
                buf,
                &self.xattr_names(ino).map_err(errno)?,
                req.arg::<GetxattrIn>().size,
            ),
            // As on /dev/fuse: no OPEN, OPENDIR or FLUSH (see the Filesystem implementation),
            // and nothing else a read-only tree needs.
            _ => Err(libc::ENOSYS),
        }
    }
}

/// Mounts an image in fuse mode at `mountpoint`; the server stops (and unmounts) on drop.
/// With `keep`, the FUSE connection is held by a keeper process, and a mount still in place
/// whose keeper lives (its server died) is taken over instead of mounted again.
pub fn mount_fuse_mode(
    fs: ImageFs,
    mountpoint: &std::path::Path,
    keep: Option<&crate::keeper::Keep>,
    exposure: crate::erofs_mount::Exposure,
) -> crate::Result<FuseServer> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("naiad".into()),
        fuser::MountOption::Subtype("naiad".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.mount_options.extend(exposure.fuse_options());
    let may_adopt = crate::erofs_mount::has_mount(mountpoint, &["fuse", "fuse.naiad"]);
    let ring: RingParts = (fs.ring.clone(), Arc::new(fs.clone()));
    FuseServer::start(fs, mountpoint, config, FUSE_THREADS, keep, may_adopt, Some(ring))
        .map(|(s, _)| s)
}
