//! The kernel mode's FUSE filesystem: one read-only file per blob, each the blob's
//! uncompressed view, filled on demand. The kernel mounts the bootstrap as EROFS with these
//! files as its devices, so metadata and the page cache are the kernel's and only data reads
//! of blocks not yet cached reach this process.
//!
//! A read maps its range to the chunk records that cover it, has the fetcher make them
//! present (verified, one fetch per chunk), and answers from the cache file. Sequential reads
//! also start a background fetch of the view ahead of them (readahead). A block no
//! chunk of the image covers is an I/O error: unknown bytes are never served as data.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use naiad_format::digest::to_hex;
use naiad_format::extension::ChunkRecord;
use naiad_format::{block_align, BLOCK_SIZE_BYTES};
use naiad_storage::chunk_cache::{BlockBuf, CachedBlob};
use naiad_storage::fetcher::{chunks_starting_in, Fetcher, FrameIndex, Readahead};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Attributes never change: the kernel may cache them for long.
const TTL: Duration = Duration::from_secs(3600);

/// One blob exposed as a file.
pub struct ViewFile {
    pub blob: Arc<CachedBlob>,
    /// The image's chunks of this blob, sorted by view offset.
    pub chunks: Vec<ChunkRecord>,
    /// The same chunks by frame.
    pub frames: Arc<FrameIndex>,
    /// Sequential-read detection for readahead.
    ra: Readahead,
}

impl ViewFile {
    /// A view file for `blob` with the image's chunks of it.
    pub fn new(blob: Arc<CachedBlob>, mut chunks: Vec<ChunkRecord>) -> Self {
        chunks.sort_by_key(|c| c.view_offset);
        let frames = Arc::new(FrameIndex::new(chunks.clone()));
        ViewFile { blob, chunks, frames, ra: Readahead::default() }
    }
}

/// The filesystem: inode 1 is the directory, inode `2 + i` is blob `i`.
pub struct BlobViewFs {
    files: Vec<ViewFile>,
    fetcher: Arc<Fetcher>,
    mounted_at: SystemTime,
}

impl BlobViewFs {
    pub fn new(files: Vec<ViewFile>, fetcher: Arc<Fetcher>) -> Self {
        BlobViewFs { files, fetcher, mounted_at: SystemTime::now() }
    }

    /// Number of blob files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there is no blob file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Blob file `i`.
    pub fn file(&self, i: usize) -> &ViewFile {
        &self.files[i]
    }

    /// File name of blob `i` (its hex digest).
    pub fn file_name(&self, i: usize) -> String {
        to_hex(self.files[i].blob.digest())
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = if ino == 1 {
            (FileType::Directory, 0o555, 0, 2)
        } else {
            let f = self.files.get((ino - 2) as usize)?;
            (FileType::RegularFile, 0o444, f.blob.view_size(), 1)
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
        let f = &self.files[i];
        let end = offset.saturating_add(size).min(f.blob.view_size());
        if offset >= end {
            return Ok(BlockBuf::new(0));
        }
        // Chunks overlapping the range: the first one starting at or before `offset`, on.
        let start_idx =
            f.chunks.partition_point(|c| c.view_offset + block_align(u64::from(c.size)) <= offset);
        let wanted: Vec<ChunkRecord> =
            f.chunks[start_idx..].iter().take_while(|c| c.view_offset < end).copied().collect();
        // Every block of the range must belong to a chunk of the image.
        let mut covered = offset - offset % BLOCK_SIZE_BYTES;
        for c in &wanted {
            if c.view_offset > covered {
                break;
            }
            covered = covered.max(c.view_offset + block_align(u64::from(c.size)));
        }
        if covered < end {
            tracing::warn!(blob = %to_hex(f.blob.digest()), offset, size, "read of view blocks no chunk covers");
            return Err(Errno::EIO);
        }
        if let Some(ahead) = f.ra.on_read(offset, end, !f.blob.is_present(offset, end - offset)) {
            let chunks = chunks_starting_in(&f.chunks, ahead).to_vec();
            self.fetcher.fetch_ahead(f.blob.clone(), chunks, Some(f.frames.clone()));
        }
        // Fetched data the cache cannot store (disk full) is served from memory. The kernel
        // reads whole blocks: a block-aligned buffer takes them from disk without a copy.
        let mut buf = BlockBuf::new((end - offset) as usize);
        if let Err(e) = self.fetcher.read_with(&f.blob, &wanted, Some(&f.frames), &mut buf, offset)
        {
            tracing::warn!(blob = %to_hex(f.blob.digest()), offset, size, error = %e, "read failed");
            return Err(Errno::EIO);
        }
        Ok(buf)
    }
}

impl fuser::Filesystem for BlobViewFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        match (0..self.files.len()).find(|&i| OsStr::new(&self.file_name(i)) == name) {
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
        if ino.0 < 2 || (ino.0 - 2) as usize >= self.files.len() {
            return reply.error(Errno::ENOENT);
        }
        match self.read_view((ino.0 - 2) as usize, offset, u64::from(size)) {
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
            (0..self.files.len()).map(|i| (2 + i as u64, FileType::RegularFile, self.file_name(i))),
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
