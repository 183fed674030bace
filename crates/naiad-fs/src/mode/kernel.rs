//! The kernel mode: the kernel's EROFS mounted on blob-view files that this process serves
//! over FUSE (one read-only file per blob, each the blob's uncompressed view, filled on
//! demand), under a private directory. Metadata and the page cache are the kernel's; only
//! data reads of blocks not yet cached reach this process. Frames complete in the cache are
//! given to EROFS as their own files, like a local image.
//!
//! A read maps its range to the chunk records that cover it and reads through the blob's
//! [`LazyBlob`] (verified, one fetch per chunk, readahead for sequential readers). A block no
//! chunk of the image covers is an I/O error: unknown bytes are never served as data.

use crate::fuse::server::FuseServer;
use crate::keeper::Keep;
use crate::{FsError, Result};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use naiad_format::bootstrap::Bootstrap;
use naiad_format::digest::to_hex;
use naiad_format::BLOCK_SIZE_BYTES;
use naiad_storage::cache::BlockBuf;
use naiad_storage::lazy::LazyBlob;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Attributes never change: the kernel may cache them for long.
const TTL: Duration = Duration::from_secs(3600);

/// Threads serving the blob views (the kernel issues reads of different ranges in parallel;
/// more threads measured no faster here: bench/lazy.sh).
pub const VIEW_THREADS: usize = 4;

/// A mounted lazy image in kernel mode; dropping it (or [`KernelMount::unmount`]) unmounts
/// both layers.
pub struct KernelMount {
    mountpoint: PathBuf,
    views: Option<FuseServer>,
}

/// Mounts `bootstrap_path` (parsed as `bs`) at `mountpoint`, its blobs (`blobs`, by blob
/// index) served through views in `views_dir` (created). With `keep`, the views' FUSE
/// connection is held by a keeper process, so that a later server (after this one died)
/// takes it over: then EROFS is still mounted on the views and stays.
pub fn mount_kernel_mode(
    bootstrap_path: &Path,
    bs: &Bootstrap,
    blobs: Vec<Arc<LazyBlob>>,
    views_dir: &Path,
    mountpoint: &Path,
    keep: Option<&Keep>,
    exposure: crate::erofs_mount::Exposure,
) -> Result<KernelMount> {
    let fs = BlobViewFs::new(blobs);
    // Frames complete in the cache are read by EROFS straight from their files, like a local
    // image: nothing of them goes through this process (a remount of a cached image, or of
    // one partly cached). The rest is read through the views.
    let plan = {
        let devs: Vec<_> = fs
            .blobs
            .iter()
            .map(|b| crate::devices::BlobDevices {
                blob: b.cached(),
                frames: b.frames(),
                view: Some(views_dir.join(to_hex(b.cached().digest()))),
            })
            .collect();
        crate::devices::plan(bs, &devs, |i, frame| devs[i].blob.all_present(frame))?
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("naiad-views".into()),
        fuser::MountOption::Subtype("naiad".into()),
    ];
    // Only take over views that still carry the image: otherwise start afresh.
    let may_adopt = crate::erofs_mount::is_erofs_mounted(mountpoint);
    let (views, adopted) =
        FuseServer::start(fs, views_dir, config, VIEW_THREADS, keep, may_adopt, None)?;
    // From here on, dropping `m` (on an error too) unmounts the views.
    let m = KernelMount { mountpoint: mountpoint.into(), views: Some(views) };
    if !adopted {
        std::fs::create_dir_all(mountpoint).map_err(FsError::io(mountpoint))?;
        crate::devices::mount(
            &plan,
            bootstrap_path,
            &views_dir.with_extension("erofs"),
            mountpoint,
            exposure,
        )?;
    }
    Ok(m)
}

impl KernelMount {
    /// Unmounts the image, then the blob views.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(mut views) = self.views.take() else { return Ok(()) };
        // Unmounted already (the daemon unmounts the image first, to learn if it is busy):
        // just as done.
        let r = crate::erofs_mount::umount(&self.mountpoint);
        let r = if r.is_err() && !crate::erofs_mount::is_erofs_mounted(&self.mountpoint) {
            Ok(())
        } else {
            r
        };
        let _ = views.stop();
        r
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// The views' filesystem: inode 1 is the directory, inode `2 + i` is blob `i`, named by its
/// hex digest.
struct BlobViewFs {
    blobs: Vec<Arc<LazyBlob>>,
    names: Vec<String>,
    mounted_at: SystemTime,
}

impl BlobViewFs {
    fn new(blobs: Vec<Arc<LazyBlob>>) -> Self {
        let names = blobs.iter().map(|b| to_hex(b.cached().digest())).collect();
        BlobViewFs { blobs, names, mounted_at: SystemTime::now() }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = if ino == 1 {
            (FileType::Directory, 0o555, 0, 2)
        } else {
            let b = self.blobs.get(ino.checked_sub(2)? as usize)?;
            (FileType::RegularFile, 0o444, b.view_size(), 1)
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: BLOCK_SIZE_BYTES as u32,
            flags: 0,
        })
    }

    /// The bytes of `[offset, offset+size)` of blob file `i`, fetching what is missing.
    fn read_view(&self, i: usize, offset: u64, size: u64) -> Result<BlockBuf, Errno> {
        let b = &self.blobs[i];
        let end = offset.saturating_add(size).min(b.view_size());
        if offset >= end {
            return Ok(BlockBuf::new(0));
        }
        // Fetched data the cache cannot store (disk full) is served from memory. The kernel
        // reads whole blocks: a block-aligned buffer takes them from disk without a copy.
        let mut buf = BlockBuf::new((end - offset) as usize);
        if let Err(e) = b.read(offset, &mut buf) {
            tracing::warn!(blob = %self.names[i], offset, size, error = %e, "read failed");
            return Err(Errno::EIO);
        }
        Ok(buf)
    }

    /// The blob of inode `ino`, if it is one.
    fn blob_of(&self, ino: INodeNo) -> Option<usize> {
        ino.0.checked_sub(2).map(|i| i as usize).filter(|&i| i < self.blobs.len())
    }
}

impl fuser::Filesystem for BlobViewFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        match self.names.iter().position(|n| OsStr::new(n) == name) {
            Some(i) => reply.entry(&TTL, &self.attr(2 + i as u64).expect("exists"), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 < 2 || self.attr(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if opens_for_writing(flags) {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
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
        let Some(i) = self.blob_of(ino) else { return reply.error(Errno::ENOENT) };
        match self.read_view(i, offset, u64::from(size)) {
            Ok(data) => reply.data(&data),
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
        if ino.0 != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (1u64, FileType::Directory, ".".to_string()),
            (1, FileType::Directory, "..".to_string()),
        ];
        entries.extend(
            self.names
                .iter()
                .enumerate()
                .map(|(i, n)| (2 + i as u64, FileType::RegularFile, n.clone())),
        );
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Whether an open asks for write access (both filesystems are read-only).
pub(crate) fn opens_for_writing(flags: OpenFlags) -> bool {
    flags.0 & (rustix::fs::OFlags::WRONLY.bits() | rustix::fs::OFlags::RDWR.bits()) as i32 != 0
}
