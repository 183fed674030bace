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
//! The module's parts: [`blob`] (one entry's frame files, reads and fills), [`presence`] (the
//! bitmap), [`spill`] (what a full disk leaves in memory), [`direct`] (direct I/O for block
//! reads), [`check`] (`naiad cache verify`). This file is the directory: opening entries,
//! listing, removing and evicting them.

mod blob;
pub mod check;
mod direct;
pub mod presence;
mod spill;

pub use blob::{CachedBlob, Filled, FrameFile};
pub use direct::BlockBuf;
pub use presence::PresenceMap;
pub use spill::SPILL_LIMIT_BYTES;

use crate::{Result, StorageError};
use naiad_format::digest::{to_hex, Digest32};
use naiad_format::BLOCK_SIZE_BYTES;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// Suffix of a blob's entry file (empty, the length of the view; locked while in use).
pub const ENTRY_SUFFIX: &str = ".blob";
/// Suffix of a blob's presence bitmap.
pub const MAP_SUFFIX: &str = ".present";
/// Suffix of a blob's directory of frame files.
pub const FRAMES_SUFFIX: &str = ".frames";
/// Suffixes of the entries of the cache's first layout (one data file per blob), removed
/// when a cache is opened.
const OLD_SUFFIXES: [&str; 2] = [".data", ".map"];
/// A directory of cached blobs.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    open: Mutex<HashMap<Digest32, Weak<CachedBlob>>>,
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
            if b.view_size() != view_size {
                return Err(StorageError::Mismatch {
                    blob: to_hex(digest),
                    detail: format!(
                        "view size {view_size} differs from the cached {}",
                        b.view_size()
                    ),
                });
            }
            return Ok(b);
        }
        let hex = to_hex(digest);
        let [entry_path, map_path, frames_dir] = self.paths(&hex);
        let sizes_ok = std::fs::metadata(&entry_path).is_ok_and(|m| m.len() == view_size)
            && std::fs::metadata(&map_path)
                .is_ok_and(|m| m.len() == PresenceMap::file_len(view_size));
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
        map.set_len(PresenceMap::file_len(view_size)).map_err(StorageError::io(&map_path))?;
        // The map's mtime is the entry's last use, for LRU eviction.
        let now = rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW };
        let _ = rustix::fs::futimens(
            &map,
            &rustix::fs::Timestamps { last_access: now, last_modification: now },
        );
        let mut raw = vec![0u8; PresenceMap::file_len(view_size) as usize];
        map.read_exact_at(&mut raw, 0).map_err(StorageError::io(&map_path))?;
        let bits = PresenceMap::decode(&raw, view_size);
        let blob =
            Arc::new(CachedBlob::new(*digest, entry, frames_dir, (map, map_path), bits, view_size));
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
                        PresenceMap::decode(&bits, entry_md.len()).count() * BLOCK_SIZE_BYTES,
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

/// A chunk record that says where a chunk lies, for the tests: its frame and view range.
#[cfg(test)]
fn test_record(frame: u64, view_offset: u64, size: u32) -> naiad_format::extension::ChunkRecord {
    naiad_format::extension::ChunkRecord {
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

#[cfg(test)]
mod tests {
    use super::test_record as rec;
    use super::*;

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
}
