//! One cached blob: its frame files, its presence map, reads and fills.
//!
//! Crash safety: a fill writes the data, makes it durable (`fdatasync`), and only then sets
//! the bits and writes the bitmap. Bits only ever go from 0 to 1, so even a torn bitmap
//! write can only lose bits (those chunks are fetched again), never claim data that is not
//! on disk. Callers hand [`CachedBlob::fill`] verified data only.
//!
//! A cache that cannot take the data (disk full, a write error) need not fail reads that
//! copy their bytes out with [`CachedBlob::read_at`]: the verified chunks of such a fill are
//! kept in memory instead ([`super::spill`]), their bits stay unset, and `read_at` serves them
//! from there. So the reader that fetched them gets its bytes, the next reader of those
//! chunks fetches them again, and the files on disk only ever hold what their bits say. A
//! reader of the frame files themselves (the kernel, in fanotify mode) must go by the bits
//! alone: for it such chunks are missing.

use super::direct::DirectFile;
use super::presence::PresenceMap;
use super::rw_create;
use super::spill::Spill;
use crate::{Result, StorageError};
use naiad_format::digest::{to_hex, Digest32};
use naiad_format::extension::ChunkRecord;
use naiad_format::{block_align, BLOCK_SIZE_BYTES};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One frame's file.
#[derive(Debug)]
pub struct FrameFile {
    path: PathBuf,
    file: File,
    /// The file opened for direct I/O (on first use), if its filesystem supports that.
    direct: DirectFile,
    /// Where fills write instead of `file`, once set ([`CachedBlob::set_frame_writer`]).
    writer: std::sync::OnceLock<File>,
}

impl FrameFile {
    /// The file's path (a valid EROFS device for this frame's chunks once they are present).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes fills of this frame write through `file` (the same frame file, opened elsewhere)
    /// from now on; false if a writer was set already. The fanotify mode needs a descriptor
    /// opened before the file was watched: writes through one opened after would raise the
    /// very events they are answering.
    pub fn set_writer(&self, file: File) -> bool {
        self.writer.set(file).is_ok()
    }

    /// The file's metadata (`fstat`).
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    /// The descriptor fills write through.
    pub fn writer_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.writer.get().unwrap_or(&self.file).as_fd()
    }
}

/// One cached blob. Cheap presence checks (atomic words, no lock); fills serialize only on
/// the bitmap write of their own blob; frame files are opened once and shared.
#[derive(Debug)]
pub struct CachedBlob {
    key: super::EntryKey,
    /// Held open for its shared lock.
    _entry: File,
    frames_dir: PathBuf,
    frames: RwLock<HashMap<u64, Arc<FrameFile>>>,
    /// Set when a direct read failed: reads go through the page cache from then on.
    direct_failed: AtomicBool,
    map: File,
    map_path: PathBuf,
    view_size: u64,
    bits: PresenceMap,
    map_lock: Mutex<()>,
    spill: Mutex<Spill>,
    /// Whether the last fill failed to reach the disk (to log the change, not every fill).
    write_failing: AtomicBool,
    /// errno of the last failed write (0: none yet).
    write_errno: AtomicI32,
    /// A frame file was created since the frames directory was last synced: its name is not
    /// durable yet, so neither is its data.
    dir_dirty: AtomicBool,
}

/// Where [`CachedBlob::fill`] put the chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// On disk, durable, marked present.
    Cached,
    /// The cache could not take them (disk full, write error): kept in memory for a while,
    /// readable with [`CachedBlob::read_at`] but not marked present.
    InMemory,
}

impl CachedBlob {
    /// The entry `key` (its lock taken), its frames directory, its presence map file with the
    /// bits read from it.
    pub(super) fn new(
        key: super::EntryKey,
        entry: File,
        frames_dir: PathBuf,
        (map, map_path): (File, PathBuf),
        bits: PresenceMap,
        view_size: u64,
    ) -> Self {
        CachedBlob {
            key,
            _entry: entry,
            frames_dir,
            frames: RwLock::new(HashMap::new()),
            direct_failed: AtomicBool::new(false),
            map,
            map_path,
            view_size,
            bits,
            map_lock: Mutex::new(()),
            spill: Mutex::new(Spill::default()),
            write_failing: AtomicBool::new(false),
            write_errno: AtomicI32::new(0),
            dir_dirty: AtomicBool::new(false),
        }
    }

    /// The entry's key: the blob and the layout of it this entry holds.
    pub fn key(&self) -> &super::EntryKey {
        &self.key
    }

    /// The blob's digest.
    pub fn digest(&self) -> &Digest32 {
        &self.key.blob
    }
    /// Size of the view.
    pub fn view_size(&self) -> u64 {
        self.view_size
    }
    /// The presence bitmap's path.
    pub fn map_path(&self) -> &Path {
        &self.map_path
    }

    /// Path of the file of the frame at compressed offset `frame`.
    pub fn frame_path(&self, frame: u64) -> PathBuf {
        self.frames_dir.join(format!("{frame:016x}"))
    }

    /// The file of the frame at compressed offset `frame`, opened (and created, empty) on
    /// first use and kept open. It ends with the last block written.
    pub fn frame(&self, frame: u64) -> Result<Arc<FrameFile>> {
        self.open_frame(frame).map_err(|(path, cause)| StorageError::Io { path, cause })
    }

    /// [`CachedBlob::frame`], failing with the path that could not be opened or created.
    fn open_frame(
        &self,
        frame: u64,
    ) -> std::result::Result<Arc<FrameFile>, (PathBuf, std::io::Error)> {
        if let Some(f) = self.frames.read().expect("frames lock").get(&frame) {
            return Ok(f.clone());
        }
        let path = self.frame_path(frame);
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.frames_dir)
                    .map_err(|e| (self.frames_dir.clone(), e))?;
                self.dir_dirty.store(true, Ordering::Release);
                rw_create().open(&path)
            }
            r => r,
        };
        let file = file.map_err(|e| (path.clone(), e))?;
        let f = Arc::new(FrameFile {
            path,
            file,
            direct: DirectFile::default(),
            writer: std::sync::OnceLock::new(),
        });
        Ok(self.frames.write().expect("frames lock").entry(frame).or_insert(f).clone())
    }

    /// The blob's presence map.
    pub fn presence(&self) -> &PresenceMap {
        &self.bits
    }

    /// Whether every block of `[offset, offset+len)` is filled.
    pub fn is_present(&self, offset: u64, len: u64) -> bool {
        self.bits.all_set(offset, len)
    }

    /// Whether every chunk of `chunks` is filled.
    pub fn all_present(&self, chunks: &[ChunkRecord]) -> bool {
        chunks.iter().all(|c| self.is_present(c.view_offset, u64::from(c.size)))
    }

    /// Bytes of the view filled.
    pub fn present_bytes(&self) -> u64 {
        self.bits.count() * BLOCK_SIZE_BYTES
    }

    /// Why chunks fetched for this blob are not in the cache: the last write error (after a
    /// [`Filled::InMemory`] fill).
    pub fn write_error(&self) -> StorageError {
        let errno = match self.write_errno.load(Ordering::Relaxed) {
            0 => eio_errno(),
            e => e,
        };
        StorageError::Io {
            path: self.frames_dir.clone(),
            cause: std::io::Error::from_raw_os_error(errno),
        }
    }

    /// Reads `buf.len()` bytes of the view at `offset`: filled bytes from the frame files, or
    /// chunks a full disk left in memory. `chunks` (sorted by view offset) must cover the
    /// range: they say which frame holds which block, and the tail of a chunk's last block
    /// reads as zeros. An error if any part of the range is in neither place or covered by
    /// none of `chunks`.
    pub fn read_at(&self, chunks: &[ChunkRecord], buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        let missing = |at: u64| StorageError::Mismatch {
            blob: to_hex(&self.key.blob),
            detail: format!("range {offset}+{len} is not in the cache (at {at})"),
        };
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= self.view_size)
            .ok_or_else(|| missing(offset))?;
        let first =
            chunks.partition_point(|c| c.view_offset + block_align(u64::from(c.size)) <= offset);
        let mut pos = offset;
        let mut i = first;
        while pos < end {
            let c = chunks.get(i).filter(|c| c.view_offset <= pos).ok_or_else(|| missing(pos))?;
            let chunk_end = (c.view_offset + block_align(u64::from(c.size))).min(end);
            if self.is_present(pos, chunk_end - pos) {
                // This chunk and the following ones of the same frame, present and adjacent:
                // one read of the frame file.
                let mut run_end = chunk_end;
                let mut j = i + 1;
                while run_end < end {
                    match chunks.get(j) {
                        Some(n)
                            if n.compressed_offset == c.compressed_offset
                                && n.view_offset == run_end =>
                        {
                            let e = (n.view_offset + block_align(u64::from(n.size))).min(end);
                            if !self.is_present(run_end, e - run_end) {
                                break;
                            }
                            run_end = e;
                            j += 1;
                        }
                        _ => break,
                    }
                }
                let out = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
                let frame = self.frame(c.compressed_offset)?;
                if !frame.direct.read(&frame.path, &self.direct_failed, out, pos) {
                    frame.file.read_exact_at(out, pos).map_err(StorageError::io(&frame.path))?;
                }
                pos = run_end;
                i = j;
            } else {
                // Not on disk: the chunk a full disk left in memory, if any.
                let (off, bytes) = self
                    .spill
                    .lock()
                    .expect("spill lock")
                    .covering(pos)
                    .ok_or_else(|| missing(pos))?;
                let run_end = (off + block_align(bytes.len() as u64)).min(end);
                let out = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
                let from = ((pos - off) as usize).min(bytes.len());
                let n = (bytes.len() - from).min(out.len());
                out[..n].copy_from_slice(&bytes[from..from + n]);
                out[n..].fill(0);
                pos = run_end;
                while chunks
                    .get(i)
                    .is_some_and(|c| c.view_offset + block_align(u64::from(c.size)) <= pos)
                {
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Stores verified chunks (`(frame, view offset, bytes)`: the frame's compressed offset,
    /// view offsets block aligned) and marks their blocks present, data first and durably,
    /// bitmap second. When the data cannot be written or made durable (disk full, I/O
    /// error), no bit is set and the chunks are kept in memory instead
    /// ([`Filled::InMemory`]); an error only for chunks outside the view.
    pub fn fill(&self, chunks: &[(u64, u64, &[u8])]) -> Result<Filled> {
        let mut touched = Vec::new();
        for &(_, off, bytes) in chunks {
            if off % BLOCK_SIZE_BYTES != 0
                || off.checked_add(bytes.len() as u64).is_none_or(|e| e > self.view_size)
            {
                return Err(StorageError::Mismatch {
                    blob: to_hex(&self.key.blob),
                    detail: format!("chunk at {off} does not fit the view"),
                });
            }
            touched.push(self.bits.blocks(off, block_align(bytes.len() as u64)));
        }
        let written = self.write_frames(chunks);
        if let Err((path, e)) = written {
            // Whatever part did reach the files has no bit: it is never read as data.
            self.spill
                .lock()
                .expect("spill lock")
                .keep(&chunks.iter().map(|&(_, o, b)| (o, b)).collect::<Vec<_>>());
            self.write_errno.store(e.raw_os_error().unwrap_or(eio_errno()), Ordering::Relaxed);
            if !self.write_failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(file = %path.display(), error = %e, "cannot write to the cache; serving fetched data from memory until it can");
            }
            return Ok(Filled::InMemory);
        }
        if self.write_failing.swap(false, Ordering::Relaxed) {
            tracing::info!(blob = %to_hex(&self.key.blob), "writing to the cache again");
        }
        {
            let mut spill = self.spill.lock().expect("spill lock");
            if !spill.chunks.is_empty() {
                chunks.iter().for_each(|&(_, off, _)| spill.forget(off));
            }
        }
        let _guard = self.map_lock.lock().expect("map lock");
        let mut words: Vec<usize> = Vec::new();
        for r in touched {
            self.bits.set(r, &mut words);
        }
        words.sort_unstable();
        words.dedup();
        for w in words {
            let v = self.bits.word_bytes(w);
            if let Err(e) = self.map.write_all_at(&v, w as u64 * 8) {
                // The data is durable and the bits in memory are true; the map on disk just
                // lacks them (a later process fetches those chunks again).
                tracing::warn!(file = %self.map_path.display(), error = %e, "cannot write the presence bitmap");
                break;
            }
        }
        Ok(Filled::Cached)
    }

    /// Writes the chunks into their frame files and makes them durable.
    fn write_frames(
        &self,
        chunks: &[(u64, u64, &[u8])],
    ) -> std::result::Result<(), (PathBuf, std::io::Error)> {
        let mut written: Vec<(u64, Arc<FrameFile>)> = Vec::new();
        for &(frame, off, bytes) in chunks {
            let f = self.open_frame(frame)?;
            let w = f.writer.get().unwrap_or(&f.file);
            w.write_all_at(bytes, off).map_err(|e| (f.path.clone(), e))?;
            // The rest of the chunk's last block too: the kernel's EROFS reads whole blocks
            // and fails a read that ends early (the file ends where its last write does).
            let pad = (block_align(bytes.len() as u64) - bytes.len() as u64) as usize;
            if pad > 0 {
                w.write_all_at(&ZERO_BLOCK[..pad], off + bytes.len() as u64)
                    .map_err(|e| (f.path.clone(), e))?;
            }
            if !written.iter().any(|(k, _)| *k == frame) {
                written.push((frame, f));
            }
        }
        // Durable once per frame file.
        for (_, f) in written {
            f.writer.get().unwrap_or(&f.file).sync_data().map_err(|e| (f.path.clone(), e))?;
        }
        // And the names of new frame files (and of their directory), before any bit says
        // their data is there: after a crash a bit never points into a file that is gone.
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            let parent = self.frames_dir.parent().map(Path::to_path_buf);
            for dir in std::iter::once(self.frames_dir.clone()).chain(parent) {
                if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                    self.dir_dirty.store(true, Ordering::Release);
                    return Err((dir, e));
                }
            }
        }
        Ok(())
    }
}

static ZERO_BLOCK: [u8; BLOCK_SIZE_BYTES as usize] = [0; BLOCK_SIZE_BYTES as usize];

/// EIO, for a failed write that carries no errno.
fn eio_errno() -> i32 {
    rustix::io::Errno::IO.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{test_key as key, test_record as rec, BlockBuf, ChunkCache};
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn data_without_bits_is_not_present() {
        // A crash between the data write and the bitmap write leaves data but no bit.
        let dir = tempfile::tempdir().unwrap();
        let d = [9u8; 32];
        let cache = ChunkCache::open(dir.path()).unwrap();
        let b = cache.blob(&key(d), 8 * 4096).unwrap();
        b.frame(0).unwrap().file.write_all_at(&[5u8; 4096], 0).unwrap();
        drop(b);
        let b = ChunkCache::open(dir.path()).unwrap().blob(&key(d), 8 * 4096).unwrap();
        assert!(!b.is_present(0, 4096));
    }

    #[test]
    fn spilled_chunks_are_read_from_memory_never_marked_present() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path()).unwrap();
        let b = cache.blob(&key([4u8; 32]), 8 * 4096).unwrap();
        assert_eq!(b.fill(&[(0, 0, &[1u8; 4096][..])]).unwrap(), Filled::Cached);
        // What a full disk leaves: a chunk of 5000 bytes at 4096 only in memory.
        b.spill.lock().unwrap().keep(&[(4096, &[2u8; 5000][..])]);
        assert!(!b.is_present(4096, 1), "a spilled chunk is not present");
        let chunks = [rec(0, 0, 4096), rec(1, 4096, 5000), rec(1, 12288, 4096)];
        let mut buf = vec![9u8; 3 * 4096];
        b.read_at(&chunks, &mut buf, 0).unwrap();
        assert_eq!(&buf[..4096], &[1u8; 4096][..], "from the file");
        assert_eq!(&buf[4096..9096], &[2u8; 5000][..], "from memory");
        assert!(buf[9096..].iter().all(|&x| x == 0), "the chunk's block padding reads as zeros");
        let mut buf = vec![0u8; 100];
        b.read_at(&chunks, &mut buf, 4096 + 4000).unwrap();
        assert_eq!(buf, vec![2u8; 100], "an unaligned read inside the chunk");
        assert!(
            b.read_at(&chunks, &mut vec![0u8; 4096 * 4], 0).is_err(),
            "a block in neither is an error"
        );
        // Once the disk takes it, it is present and leaves memory.
        assert_eq!(b.fill(&[(1, 4096, &[2u8; 5000][..])]).unwrap(), Filled::Cached);
        assert!(b.is_present(4096, 5000) && b.spill.lock().unwrap().chunks.is_empty());
    }

    #[test]
    fn block_aligned_reads_go_direct_and_agree_with_buffered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path()).unwrap();
        let view = 10 * 4096 + 100; // the last block is partial
        let b = cache.blob(&key([6u8; 32]), view).unwrap();
        let data: Vec<u8> = (0..view as usize).map(|i| (i * 7 + i / 4096) as u8).collect();
        // Two frames: blocks 0-4 and 5-10, one chunk per block (the last one 100 bytes).
        let chunks: Vec<ChunkRecord> = (0..11u64)
            .map(|i| rec(if i < 5 { 0 } else { 1 }, i * 4096, if i < 10 { 4096 } else { 100 }))
            .collect();
        let piece = |c: &ChunkRecord| {
            (
                c.compressed_offset,
                c.view_offset,
                &data[c.view_offset as usize..(c.view_offset + u64::from(c.size)) as usize],
            )
        };
        b.fill(&chunks[..3].iter().map(piece).collect::<Vec<_>>()).unwrap();
        // Aligned buffer and range: read directly, same bytes as the file holds.
        let mut buf = BlockBuf::new(2 * 4096);
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        b.read_at(&chunks, &mut buf, 4096).unwrap();
        assert_eq!(&buf[..], &data[4096..3 * 4096]);
        let probe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(b.frame_path(0));
        if probe.is_ok() {
            assert!(
                b.frame(0).unwrap().direct.is_open() && !b.direct_failed.load(Ordering::Relaxed),
                "the read went direct"
            );
        } else {
            eprintln!("{}: no O_DIRECT here; only the fallback is checked", dir.path().display());
        }
        // Data filled after the direct descriptor was opened reads right through it, across
        // the two frames' files.
        b.fill(&chunks[3..].iter().map(piece).collect::<Vec<_>>()).unwrap();
        let mut buf = BlockBuf::new(7 * 4096);
        b.read_at(&chunks, &mut buf, 3 * 4096).unwrap();
        assert_eq!(&buf[..], &data[3 * 4096..10 * 4096]);
        // Unaligned reads (a misaligned buffer, a partial last block) go through the page cache.
        let mut raw = BlockBuf::new(4096 + 1);
        b.read_at(&chunks, &mut raw[1..], 8192).unwrap();
        assert_eq!(&raw[1..], &data[8192..12288]);
        let mut tail = BlockBuf::new(100);
        b.read_at(&chunks, &mut tail, 10 * 4096).unwrap();
        assert_eq!(&tail[..], &data[10 * 4096..]);
        // A hole is never read as data, aligned or not.
        let c = cache.blob(&key([8u8; 32]), 4 * 4096).unwrap();
        c.fill(&[(0, 0, &[1u8; 4096][..])]).unwrap();
        assert!(c
            .read_at(&[rec(0, 0, 4096), rec(0, 4096, 4096)], &mut BlockBuf::new(2 * 4096), 0)
            .is_err());
        assert!(!b.direct_failed.load(Ordering::Relaxed));
    }

    #[test]
    fn fills_outside_the_view_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path()).unwrap();
        let b = cache.blob(&key([1u8; 32]), 4096).unwrap();
        assert!(b.fill(&[(0, 4096, &[0u8; 10][..])]).is_err());
        assert!(b.fill(&[(0, 100, &[0u8; 10][..])]).is_err());
        assert!(!b.is_present(0, 4096));
    }
}
