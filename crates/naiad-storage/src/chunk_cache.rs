//! The lazy chunk cache: per blob, one sparse file per frame and a presence bitmap.
//!
//! * `<dir>/<digest>.frames/<frame>` (the frame's compressed offset, 16 hex digits) holds the
//!   chunks of one frame at their offsets in the blob's uncompressed view, and nothing else:
//!   a sparse file, ending with its last chunk's block. Given as an EROFS device, it reads as the view
//!   wherever that frame's chunks lie, so a bootstrap whose chunk indexes name the frame files
//!   instead of the blob ([`naiad_format::remap`]) mounts on them. A frame is fetched and
//!   filled whole, so its file is complete once any of it was read: the fanotify mode can then
//!   stop watching it, and only the frames still missing cost the kernel a question.
//! * `<dir>/<digest>.present` holds one bit per 4 KiB block of the view; a set bit means the
//!   block is filled with verified data. The bitmap is the only truth about what is filled:
//!   a hole is never read as data.
//! * `<dir>/<digest>.blob` is empty, the length of the view. A process that has the entry open
//!   holds a shared `flock` on it, so `gc` never removes an entry in use.
//!
//! Which frame a view block belongs to is the blob's own layout, the same for every image
//! that names the blob; callers pass the chunk records they know.
//!
//! Crash safety: a fill writes the data, makes it durable (`fdatasync`), and only then sets
//! the bits and writes the bitmap. Bits only ever go from 0 to 1, so even a torn bitmap
//! write can only lose bits (those chunks are fetched again), never claim data that is not
//! on disk. Callers hand [`CachedBlob::fill`] verified data only.
//!
//! A cache that cannot take the data (disk full, a write error) need not fail reads that
//! copy their bytes out with [`CachedBlob::read_at`]: the verified chunks of such a fill are
//! kept in memory instead (a bounded *spill*, oldest fills dropped first), their bits stay
//! unset, and `read_at` serves them from there. So the reader that fetched them gets its
//! bytes, the next reader of those chunks fetches them again, and the files on disk only
//! ever hold what their bits say. A reader of the frame files themselves (the kernel, in
//! fanotify mode) must go by the bits alone: for it such chunks are missing.
//!
//! Whole-block reads into a block-aligned buffer ([`BlockBuf`]: the kernel mode's blob-view
//! reads, 128 KiB and more) use direct I/O where the filesystem allows it: the data goes
//! from disk into the caller's buffer without a second copy in the page cache (the kernel
//! caches it already, in the view's pages), and without the page-cache readahead around
//! each read filling pages of the sparse file's holes with zeros. Small unaligned reads (the
//! fuse mode's, a file at a time) stay buffered: there that readahead brings in the next
//! files' blocks, and it is faster.

use crate::{Result, StorageError};
use naiad_format::digest::{to_hex, Digest32};
use naiad_format::extension::ChunkRecord;
use naiad_format::{block_align, BLOCK_SIZE_BYTES};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// Suffix of a blob's entry file (empty, the length of the view; locked while in use).
pub const ENTRY_SUFFIX: &str = ".blob";
/// Suffix of a blob's presence bitmap.
pub const MAP_SUFFIX: &str = ".present";
/// Suffix of a blob's directory of frame files.
pub const FRAMES_SUFFIX: &str = ".frames";
/// Suffixes of the entries of the cache's first layout (one data file per blob), removed
/// when a cache is opened.
const OLD_SUFFIXES: [&str; 2] = [".data", ".map"];
/// Bytes of verified chunks a blob keeps in memory when the cache cannot store them. The
/// last fill is always kept whole, whatever its size, so the read that made it is served.
pub const SPILL_LIMIT_BYTES: usize = 16 << 20;

/// A directory of cached blobs.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    open: Mutex<HashMap<Digest32, Weak<CachedBlob>>>,
}

/// One frame's file.
#[derive(Debug)]
pub struct FrameFile {
    path: PathBuf,
    file: File,
    /// The file opened for direct I/O (on first use), if its filesystem supports that.
    direct: std::sync::OnceLock<Option<File>>,
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
    digest: Digest32,
    /// Held open for its shared lock.
    _entry: File,
    frames_dir: PathBuf,
    frames: RwLock<HashMap<u64, Arc<FrameFile>>>,
    /// Set when a direct read failed: reads go through the page cache from then on.
    direct_failed: AtomicBool,
    map: File,
    map_path: PathBuf,
    view_size: u64,
    bits: Vec<AtomicU64>,
    map_lock: Mutex<()>,
    spill: Mutex<Spill>,
    /// Whether the last fill failed to reach the disk (to log the change, not every fill).
    write_failing: AtomicBool,
    /// errno of the last failed write (0: none yet).
    write_errno: AtomicI32,
}

/// Verified chunks that the disk did not take, by view offset, oldest first out.
#[derive(Debug, Default)]
struct Spill {
    /// view offset -> (fill sequence number, bytes)
    chunks: BTreeMap<u64, (u64, Arc<[u8]>)>,
    order: VecDeque<(u64, u64)>,
    bytes: usize,
    next_seq: u64,
}

impl Spill {
    /// Keeps `chunks` (one fill), dropping older fills beyond [`SPILL_LIMIT_BYTES`].
    fn keep(&mut self, chunks: &[(u64, &[u8])]) {
        let seq = self.next_seq;
        self.next_seq += 1;
        for &(off, bytes) in chunks {
            if let Some((_, old)) = self.chunks.insert(off, (seq, Arc::from(bytes))) {
                self.bytes -= old.len();
            }
            self.bytes += bytes.len();
            self.order.push_back((off, seq));
        }
        while self.bytes > SPILL_LIMIT_BYTES {
            match self.order.front() {
                Some(&(off, s)) if s < seq => {
                    self.order.pop_front();
                    if self.chunks.get(&off).is_some_and(|(cs, _)| *cs == s) {
                        let (_, old) = self.chunks.remove(&off).expect("present");
                        self.bytes -= old.len();
                    }
                }
                _ => break,
            }
        }
        // Chunks filled again leave stale entries in `order`: drop them now and then.
        if self.order.len() > 2 * self.chunks.len() + 64 {
            let chunks = &self.chunks;
            self.order.retain(|(off, s)| chunks.get(off).is_some_and(|(cs, _)| cs == s));
        }
    }

    /// Forgets the chunk at `off` (it is on disk now).
    fn forget(&mut self, off: u64) {
        if let Some((_, old)) = self.chunks.remove(&off) {
            self.bytes -= old.len();
        }
    }

    /// The spilled chunk whose blocks cover `pos`: its offset and bytes.
    fn covering(&self, pos: u64) -> Option<(u64, Arc<[u8]>)> {
        let (&off, (_, bytes)) = self.chunks.range(..=pos).next_back()?;
        (pos < off + block_align(bytes.len() as u64)).then(|| (off, bytes.clone()))
    }
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

pub(crate) fn map_len(view_size: u64) -> u64 {
    let blocks = view_size / BLOCK_SIZE_BYTES;
    blocks.div_ceil(64) * 8
}

impl ChunkCache {
    /// Uses (and creates) `dir`. Entries of the cache's first layout (`<digest>.data` and
    /// `.map`) are removed, unless a process still has them open.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(StorageError::io(dir))?;
        remove_old_layout(dir);
        Ok(ChunkCache { dir: dir.to_path_buf(), open: Mutex::new(HashMap::new()) })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, hex: &str) -> [PathBuf; 3] {
        [ENTRY_SUFFIX, MAP_SUFFIX, FRAMES_SUFFIX].map(|s| self.dir.join(format!("{hex}{s}")))
    }

    /// Opens the cache entry of a blob whose view is `view_size` bytes, creating it empty if
    /// missing. An entry whose files have the wrong sizes is discarded and recreated.
    pub fn blob(&self, digest: &Digest32, view_size: u64) -> Result<Arc<CachedBlob>> {
        let mut open = self.open.lock().expect("cache lock");
        if let Some(b) = open.get(digest).and_then(Weak::upgrade) {
            if b.view_size != view_size {
                return Err(StorageError::Mismatch {
                    blob: to_hex(digest),
                    detail: format!(
                        "view size {view_size} differs from the cached {}",
                        b.view_size
                    ),
                });
            }
            return Ok(b);
        }
        let hex = to_hex(digest);
        let [entry_path, map_path, frames_dir] = self.paths(&hex);
        let sizes_ok = std::fs::metadata(&entry_path).is_ok_and(|m| m.len() == view_size)
            && std::fs::metadata(&map_path).is_ok_and(|m| m.len() == map_len(view_size));
        if !sizes_ok {
            // New, or left inconsistent: start over (the map first, so no bit survives).
            let _ = std::fs::remove_file(&map_path);
            let _ = std::fs::remove_dir_all(&frames_dir);
            let _ = std::fs::remove_file(&entry_path);
        }
        let entry = rw_create().open(&entry_path).map_err(StorageError::io(&entry_path))?;
        entry.set_len(view_size).map_err(StorageError::io(&entry_path))?;
        // A shared lock for as long as the entry is open marks it in use for other
        // processes (`gc` takes the lock exclusively before removing an entry).
        rustix::fs::flock(&entry, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| StorageError::Io { path: entry_path.clone(), cause: e.into() })?;
        // Made again when a frame is first stored, if it cannot be now (a full disk): reads
        // are then served from memory, and nothing is lost.
        if let Err(e) = std::fs::create_dir_all(&frames_dir) {
            tracing::debug!(dir = %frames_dir.display(), error = %e, "cannot create the frames directory yet");
        }
        let map = rw_create().open(&map_path).map_err(StorageError::io(&map_path))?;
        map.set_len(map_len(view_size)).map_err(StorageError::io(&map_path))?;
        // The map's mtime is the entry's last use, for LRU eviction.
        let now = rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW };
        let _ = rustix::fs::futimens(
            &map,
            &rustix::fs::Timestamps { last_access: now, last_modification: now },
        );
        let mut raw = vec![0u8; map_len(view_size) as usize];
        map.read_exact_at(&mut raw, 0).map_err(StorageError::io(&map_path))?;
        let bits = raw
            .chunks_exact(8)
            .map(|w| AtomicU64::new(u64::from_le_bytes(w.try_into().expect("8 bytes"))))
            .collect();
        let blob = Arc::new(CachedBlob {
            digest: *digest,
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
        });
        open.insert(*digest, Arc::downgrade(&blob));
        Ok(blob)
    }

    /// Every entry of the cache: digest, sizes, last use, and whether a process has it open.
    pub fn list(&self) -> Result<Vec<CacheEntry>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(StorageError::io(&self.dir))? {
            let e = e.map_err(StorageError::io(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(ENTRY_SUFFIX) else { continue };
            let Some(digest) = naiad_format::digest::from_hex(hex) else { continue };
            let entry_md = e.metadata().map_err(StorageError::io(e.path()))?;
            let [_, map_path, frames_dir] = self.paths(hex);
            let (present_bytes, last_used, map_bytes) = match std::fs::read(&map_path) {
                Ok(bits) => {
                    let md = std::fs::metadata(&map_path).map_err(StorageError::io(&map_path))?;
                    (
                        bits.iter().map(|b| u64::from(b.count_ones())).sum::<u64>()
                            * BLOCK_SIZE_BYTES,
                        md.mtime(),
                        md.blocks() * 512,
                    )
                }
                Err(_) => (0, entry_md.mtime(), 0),
            };
            let frame_bytes: u64 = match std::fs::read_dir(&frames_dir) {
                Ok(rd) => {
                    rd.filter_map(|f| f.ok()?.metadata().ok()).map(|m| m.blocks() * 512).sum()
                }
                Err(_) => 0,
            };
            out.push(CacheEntry {
                digest,
                view_size: entry_md.len(),
                present_bytes,
                disk_bytes: frame_bytes + map_bytes,
                last_used,
                in_use: self.in_use(&digest, &e.path()),
            });
        }
        out.sort_by_key(|e| e.digest);
        Ok(out)
    }

    /// Whether this process or another holds the entry open.
    fn in_use(&self, digest: &Digest32, entry_path: &Path) -> bool {
        if self.open.lock().expect("cache lock").get(digest).and_then(Weak::upgrade).is_some() {
            return true;
        }
        let Ok(f) = File::open(entry_path) else { return false };
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
    }

    /// Removes a blob's entry unless it is in use (here or in another process).
    pub fn remove(&self, digest: &Digest32) -> Result<bool> {
        let open = self.open.lock().expect("cache lock");
        if open.get(digest).and_then(Weak::upgrade).is_some() {
            return Ok(false);
        }
        let [entry_path, map_path, frames_dir] = self.paths(&to_hex(digest));
        // Hold the exclusive lock while removing, so no process opens it meanwhile.
        let _lock = match File::open(&entry_path) {
            Ok(f) => {
                if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .is_err()
                {
                    return Ok(false);
                }
                Some(f)
            }
            Err(_) => None,
        };
        let gone = |r: std::io::Result<()>, p: &Path| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StorageError::Io { path: p.to_path_buf(), cause: e })
            }
            _ => Ok(()),
        };
        // The map first: once it is gone, no bit claims anything in the frame files.
        gone(std::fs::remove_file(&map_path), &map_path)?;
        gone(std::fs::remove_dir_all(&frames_dir), &frames_dir)?;
        gone(std::fs::remove_file(&entry_path), &entry_path)?;
        Ok(true)
    }

    /// Evicts whole entries not in use, least recently used first, until the cache takes at
    /// most `max_bytes` of disk (all unused entries with `None`). Returns what was removed.
    pub fn gc(&self, max_bytes: Option<u64>) -> Result<Vec<CacheEntry>> {
        let mut entries = self.list()?;
        entries.sort_by_key(|e| (e.last_used, e.digest));
        let mut total: u64 = entries.iter().map(|e| e.disk_bytes).sum();
        let mut removed = Vec::new();
        for e in entries {
            if max_bytes.is_some_and(|m| total <= m) {
                break;
            }
            if !e.in_use && self.remove(&e.digest)? {
                total -= e.disk_bytes;
                removed.push(e);
            }
        }
        Ok(removed)
    }
}

fn rw_create() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    o
}

/// Removes the entries of the first cache layout (a data file and a `.map` per blob) that no
/// process holds (its lock was on the data file). Their bits describe a file this layout does
/// not read, so they must never be mistaken for an entry of this one.
fn remove_old_layout(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(OLD_SUFFIXES[0]) else { continue };
        if naiad_format::digest::from_hex(hex).is_none() {
            continue;
        }
        let Ok(f) = File::open(e.path()) else { continue };
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        tracing::info!(blob = hex, "removing a cache entry of the old layout");
        let _ = std::fs::remove_file(dir.join(format!("{hex}{}", OLD_SUFFIXES[1])));
        let _ = std::fs::remove_file(e.path());
    }
}

/// What `cache ls` shows of one blob.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CacheEntry {
    #[serde(serialize_with = "hex_digest")]
    pub digest: Digest32,
    pub view_size: u64,
    pub present_bytes: u64,
    pub disk_bytes: u64,
    /// Last use (seconds since the epoch).
    pub last_used: i64,
    pub in_use: bool,
}

fn hex_digest<S: serde::Serializer>(d: &Digest32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("sha256:{}", to_hex(d)))
}

impl CachedBlob {
    /// The blob's digest.
    pub fn digest(&self) -> &Digest32 {
        &self.digest
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
        let file = match rw_create().open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.frames_dir)
                    .map_err(|e| (self.frames_dir.clone(), e))?;
                rw_create().open(&path)
            }
            r => r,
        };
        let file = file.map_err(|e| (path.clone(), e))?;
        let f = Arc::new(FrameFile {
            path,
            file,
            direct: std::sync::OnceLock::new(),
            writer: std::sync::OnceLock::new(),
        });
        Ok(self.frames.write().expect("frames lock").entry(frame).or_insert(f).clone())
    }

    fn block_range(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let end = offset.saturating_add(len).min(self.view_size);
        offset / BLOCK_SIZE_BYTES..end.div_ceil(BLOCK_SIZE_BYTES)
    }

    fn bit(&self, block: u64) -> bool {
        self.bits[(block / 64) as usize].load(Ordering::Acquire) & (1 << (block % 64)) != 0
    }

    /// Whether every block of `[offset, offset+len)` is filled.
    pub fn is_present(&self, offset: u64, len: u64) -> bool {
        self.block_range(offset, len).all(|b| self.bit(b))
    }

    /// Whether every chunk of `chunks` is filled.
    pub fn all_present(&self, chunks: &[ChunkRecord]) -> bool {
        chunks.iter().all(|c| self.is_present(c.view_offset, u64::from(c.size)))
    }

    /// Bytes of the view filled.
    pub fn present_bytes(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.load(Ordering::Relaxed).count_ones())).sum::<u64>()
            * BLOCK_SIZE_BYTES
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
            blob: to_hex(&self.digest),
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
                if !self.read_direct(&frame, out, pos) {
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

    /// Reads present bytes with direct I/O, if `buf` and the range are block aligned and
    /// the filesystem allows it; false if not done (the caller reads through the page cache).
    fn read_direct(&self, frame: &FrameFile, buf: &mut [u8], offset: u64) -> bool {
        if !BlockBuf::fits(buf, offset) || self.direct_failed.load(Ordering::Relaxed) {
            return false;
        }
        let Some(direct) = frame.direct.get_or_init(|| {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(&frame.path)
                .ok()
        }) else {
            return false;
        };
        match direct.read_exact_at(buf, offset) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(file = %frame.path.display(), error = %e, "direct read failed; reading through the page cache from now on");
                self.direct_failed.store(true, Ordering::Relaxed);
                false
            }
        }
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
                    blob: to_hex(&self.digest),
                    detail: format!("chunk at {off} does not fit the view"),
                });
            }
            touched.push(self.block_range(off, block_align(bytes.len() as u64)));
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
            tracing::info!(blob = %to_hex(&self.digest), "writing to the cache again");
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
            for b in r {
                let w = (b / 64) as usize;
                self.bits[w].fetch_or(1 << (b % 64), Ordering::Release);
                if words.last() != Some(&w) {
                    words.push(w);
                }
            }
        }
        words.sort_unstable();
        words.dedup();
        for w in words {
            let v = self.bits[w].load(Ordering::Acquire).to_le_bytes();
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
        Ok(())
    }
}

/// A zeroed byte buffer that starts on a block boundary, as direct I/O needs.
pub struct BlockBuf {
    raw: Vec<u8>,
    at: usize,
    len: usize,
}

impl BlockBuf {
    pub fn new(len: usize) -> Self {
        let b = BLOCK_SIZE_BYTES as usize;
        let raw = vec![0u8; len + b];
        let at = (b - raw.as_ptr() as usize % b) % b;
        BlockBuf { raw, at, len }
    }

    /// Whether a direct read of `buf` at `offset` can go straight into `buf`.
    fn fits(buf: &[u8], offset: u64) -> bool {
        let b = BLOCK_SIZE_BYTES as usize;
        (buf.as_ptr() as usize).is_multiple_of(b)
            && buf.len().is_multiple_of(b)
            && offset.is_multiple_of(BLOCK_SIZE_BYTES)
    }
}

impl std::ops::Deref for BlockBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.at..self.at + self.len]
    }
}

impl std::ops::DerefMut for BlockBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + self.len]
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
    use std::os::unix::fs::OpenOptionsExt;

    /// A chunk record that says where a chunk lies: its frame and view range.
    fn rec(frame: u64, view_offset: u64, size: u32) -> ChunkRecord {
        ChunkRecord {
            blob_index: 0,
            view_offset,
            size,
            compressed_offset: frame,
            compressed_size: 0,
            frame_size: 0,
            frame_offset: 0,
            compressor: naiad_format::compression::Compressor::None,
            digest: [0; 32],
        }
    }

    #[test]
    fn presence_survives_reopening_and_holes_are_never_data() {
        let dir = tempfile::tempdir().unwrap();
        let d = [7u8; 32];
        let view = 64 * 4096;
        {
            let cache = ChunkCache::open(dir.path()).unwrap();
            let b = cache.blob(&d, view).unwrap();
            assert!(!b.is_present(0, 1));
            b.fill(&[(0, 8192, &[1u8; 5000][..]), (77, 40960, &[2u8; 4096][..])]).unwrap();
            assert!(b.is_present(8192, 8192) && b.is_present(40960, 4096));
            assert!(!b.is_present(0, 8193));
            let chunks = [rec(5, 0, 4096), rec(0, 8192, 5000), rec(77, 40960, 4096)];
            let mut buf = [0u8; 4096];
            assert!(b.read_at(&chunks, &mut buf, 0).is_err(), "a hole must not read as data");
            b.read_at(&chunks, &mut buf, 8192).unwrap();
            assert_eq!(buf, [1u8; 4096]);
            let mut buf = [9u8; 4096];
            b.read_at(&chunks, &mut buf, 12288).unwrap();
            assert!(
                buf[..904].iter().all(|&x| x == 1) && buf[904..].iter().all(|&x| x == 0),
                "the chunk's tail block, zero padded"
            );
            assert!(
                b.read_at(&chunks, &mut [0u8; 4096], 16384).is_err(),
                "a block no chunk covers is not data"
            );
            // Each frame's chunks are in its own file, at their view offsets, and only there.
            let f0 = std::fs::read(b.frame_path(0)).unwrap();
            let f77 = std::fs::read(b.frame_path(77)).unwrap();
            assert_eq!(
                (f0.len(), f77.len()),
                (16384, 40960 + 4096),
                "each ends with its last chunk's block"
            );
            assert!(f0[8192..13192].iter().all(|&x| x == 1) && f0[..8192].iter().all(|&x| x == 0));
            assert!(
                f77[40960..45056].iter().all(|&x| x == 2) && f77[..40960].iter().all(|&x| x == 0)
            );
            assert_eq!(b.present_bytes(), 3 * 4096);
        }
        let cache = ChunkCache::open(dir.path()).unwrap();
        let b = cache.blob(&d, view).unwrap();
        assert!(b.is_present(8192, 8192) && b.is_present(40960, 4096) && !b.is_present(0, 4096));
        let list = cache.list().unwrap();
        assert_eq!(list.len(), 1);
        assert!(list[0].in_use);
        assert!(!cache.remove(&d).unwrap(), "an open blob is not removed");
        drop(b);
        assert!(cache.remove(&d).unwrap());
        assert!(cache.list().unwrap().is_empty());
    }

    #[test]
    fn gc_evicts_unused_entries_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path()).unwrap();
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        for d in [&a, &b, &c] {
            let blob = cache.blob(d, 16 * 4096).unwrap();
            blob.fill(&[(0, 0, &[9u8; 8192][..])]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct mtimes
        }
        let held = cache.blob(&a, 16 * 4096).unwrap(); // oldest, but in use (and now recent)
        let total: u64 = cache.list().unwrap().iter().map(|e| e.disk_bytes).sum();
        let removed = cache.gc(Some(total - 1)).unwrap();
        assert_eq!(
            removed.iter().map(|e| e.digest).collect::<Vec<_>>(),
            vec![b],
            "least recently used unused entry first"
        );
        assert!(cache.gc(Some(u64::MAX)).unwrap().is_empty());
        let removed = cache.gc(None).unwrap();
        assert_eq!(removed.iter().map(|e| e.digest).collect::<Vec<_>>(), vec![c]);
        assert!(held.is_present(0, 8192));
        assert_eq!(cache.list().unwrap().len(), 1);
    }

    #[test]
    fn data_without_bits_is_not_present() {
        // A crash between the data write and the bitmap write leaves data but no bit.
        let dir = tempfile::tempdir().unwrap();
        let d = [9u8; 32];
        let cache = ChunkCache::open(dir.path()).unwrap();
        let b = cache.blob(&d, 8 * 4096).unwrap();
        b.frame(0).unwrap().file.write_all_at(&[5u8; 4096], 0).unwrap();
        drop(b);
        let b = ChunkCache::open(dir.path()).unwrap().blob(&d, 8 * 4096).unwrap();
        assert!(!b.is_present(0, 4096));
    }

    #[test]
    fn spilled_chunks_are_read_from_memory_never_marked_present() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path()).unwrap();
        let b = cache.blob(&[4u8; 32], 8 * 4096).unwrap();
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
    fn the_spill_is_bounded_but_keeps_the_last_fill_whole() {
        let mut s = Spill::default();
        let big = vec![3u8; SPILL_LIMIT_BYTES / 2 + 4096];
        s.keep(&[(0, &big[..])]);
        s.keep(&[(1 << 30, &big[..])]);
        assert!(s.covering(0).is_none(), "the oldest fill went");
        assert!(s.covering(1 << 30).is_some());
        // One fill over the limit stays whole.
        let huge = vec![4u8; SPILL_LIMIT_BYTES];
        s.keep(&[(2 << 30, &huge[..]), (3 << 30, &huge[..])]);
        assert!(
            s.covering(1 << 30).is_none()
                && s.covering(2 << 30).is_some()
                && s.covering(3 << 30).is_some()
        );
        assert_eq!(s.bytes, 2 * SPILL_LIMIT_BYTES);
        // A chunk filled again replaces its older copy.
        s.keep(&[(3 << 30, &[5u8; 10][..])]);
        assert_eq!(&s.covering(3 << 30).unwrap().1[..], &[5u8; 10][..]);
        assert!(s.covering(2 << 30).is_none(), "older fill dropped once over the limit");
        assert_eq!(s.bytes, 10);
    }

    #[test]
    fn block_aligned_reads_go_direct_and_agree_with_buffered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path()).unwrap();
        let view = 10 * 4096 + 100; // the last block is partial
        let b = cache.blob(&[6u8; 32], view).unwrap();
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
                b.frame(0).unwrap().direct.get().is_some_and(|d| d.is_some())
                    && !b.direct_failed.load(Ordering::Relaxed),
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
        let c = cache.blob(&[8u8; 32], 4 * 4096).unwrap();
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
        let b = cache.blob(&[1u8; 32], 4096).unwrap();
        assert!(b.fill(&[(0, 4096, &[0u8; 10][..])]).is_err());
        assert!(b.fill(&[(0, 100, &[0u8; 10][..])]).is_err());
        assert!(!b.is_present(0, 4096));
    }
}
