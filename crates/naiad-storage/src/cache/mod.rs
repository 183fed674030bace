//! The lazy chunk cache: per blob, one sparse file per frame and a presence bitmap.
//!
//! An entry is named by its [`EntryKey`]: the blob's digest and the digest of the layout the
//! image reading it gives (its chunk records), `<blob hex>-<layout hex>` below as `<key>`.
//!
//! * `<dir>/<key>.frames/<frame>` (the frame's compressed offset, 16 hex digits) holds the
//!   chunks of one frame at their offsets in the blob's uncompressed view, and nothing else:
//!   a sparse file, ending with its last chunk's block. Given as an EROFS device, it reads as the view
//!   wherever that frame's chunks lie, so a bootstrap whose chunk indexes name the frame files
//!   instead of the blob ([`naiad_format::remap`]) mounts on them. A frame is fetched and
//!   filled whole, so its file is complete once any of it was read: the fanotify mode can then
//!   stop watching it, and only the frames still missing cost the kernel a question.
//! * `<dir>/<key>.present` holds one bit per 4 KiB block of the view; a set bit means the
//!   block is filled with verified data. The bitmap is the only truth about what is filled:
//!   a hole is never read as data.
//! * `<dir>/<key>.blob` is empty, the length of the view. A process that has the entry open
//!   holds a shared `flock` on it, so `gc` never removes an entry in use.
//!
//! Data in an entry was verified against the digests of the records its key names, and only
//! readers with those same records open it: images that agree on a blob share its entry, and
//! an image that gives a blob other records (hostile, or built differently) gets an entry of
//! its own. So no image can change what another reads, by the bytes it fills or by where it
//! says they lie, in any mode (in fanotify mode the kernel reads the frame files themselves).
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
use naiad_format::digest::{from_hex, to_hex, Digest32, Digester};
use naiad_format::extension::{ChunkRecord, Extension};
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

/// What names a cache entry: a blob, and the layout of it that the image reading it gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    /// The blob's digest (what the backend is asked for).
    pub blob: Digest32,
    /// SHA-256 of the view size, the chunk digest kind and every chunk record of the blob
    /// (view offset, size, frame, compression, digest), in view order.
    pub layout: Digest32,
}

impl EntryKey {
    /// The key of blob `blob` read through `chunks` (the image's records of it, any order),
    /// whose digests are `digester`'s, in a view of `view_size` bytes.
    pub fn new(
        blob: &Digest32,
        view_size: u64,
        digester: Digester,
        chunks: &[ChunkRecord],
    ) -> Self {
        use sha2::Digest as _;
        let mut order: Vec<&ChunkRecord> = chunks.iter().collect();
        order.sort_by_key(|c| c.view_offset);
        let mut h = sha2::Sha256::new();
        h.update(b"naiad cache layout 1\0");
        h.update(view_size.to_le_bytes());
        h.update([digester.code()]);
        for c in order {
            h.update(c.view_offset.to_le_bytes());
            h.update(c.size.to_le_bytes());
            h.update(c.compressed_offset.to_le_bytes());
            h.update(c.compressed_size.to_le_bytes());
            h.update(c.frame_size.to_le_bytes());
            h.update(c.frame_offset.to_le_bytes());
            h.update([c.compressor.code()]);
            h.update(c.digest);
        }
        EntryKey { blob: *blob, layout: h.finalize().into() }
    }

    /// The key of blob `index` of an image.
    pub fn of_image_blob(ext: &Extension, index: usize) -> Self {
        let b = &ext.blobs[index];
        Self::new(&b.digest, b.view_size, ext.digester, ext.blob_chunks(index as u32))
    }

    /// The entry's file name stem: `<blob hex>-<layout hex>`.
    pub fn name(&self) -> String {
        format!("{}-{}", to_hex(&self.blob), to_hex(&self.layout))
    }

    /// Parses [`EntryKey::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        let (blob, layout) = name.split_once('-')?;
        Some(EntryKey { blob: from_hex(blob)?, layout: from_hex(layout)? })
    }
}

/// A directory of cached blobs.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    open: Mutex<HashMap<EntryKey, Weak<CachedBlob>>>,
    /// Entries made for a blob that has an entry of another layout already: an image that
    /// disagrees with another about a blob's chunks (hostile, or built differently).
    pub layout_splits: std::sync::atomic::AtomicU64,
}

impl ChunkCache {
    /// Uses (and creates) `dir`. Entries of the cache's first layout (`<digest>.data` and
    /// `.map`) are removed, unless a process still has them open.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(StorageError::io(dir))?;
        remove_old_layout(dir);
        Ok(ChunkCache {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
            layout_splits: Default::default(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, key: &EntryKey) -> [PathBuf; 3] {
        entry_paths(&self.dir, key)
    }

    /// Opens the cache entry `key` (a blob whose view is `view_size` bytes), creating it empty
    /// if missing. An entry whose files have the wrong sizes is discarded and recreated.
    pub fn blob(&self, key: &EntryKey, view_size: u64) -> Result<Arc<CachedBlob>> {
        let mut open = self.open.lock().expect("cache lock");
        if let Some(b) = open.get(key).and_then(Weak::upgrade) {
            if b.view_size() != view_size {
                return Err(StorageError::Mismatch {
                    blob: to_hex(&key.blob),
                    detail: format!(
                        "view size {view_size} differs from the cached {}",
                        b.view_size()
                    ),
                });
            }
            return Ok(b);
        }
        let [entry_path, map_path, frames_dir] = self.paths(key);
        let sizes_ok = std::fs::metadata(&entry_path).is_ok_and(|m| m.len() == view_size)
            && std::fs::metadata(&map_path)
                .is_ok_and(|m| m.len() == PresenceMap::file_len(view_size));
        if !sizes_ok {
            self.note_other_layouts(key);
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
            Arc::new(CachedBlob::new(*key, entry, frames_dir, (map, map_path), bits, view_size));
        open.insert(*key, Arc::downgrade(&blob));
        Ok(blob)
    }

    /// Logs and counts a new entry for a blob that has entries of other layouts.
    fn note_other_layouts(&self, key: &EntryKey) {
        let prefix = format!("{}-", to_hex(&key.blob));
        let others = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix) && n.ends_with(ENTRY_SUFFIX))
            .filter(|n| n.strip_suffix(ENTRY_SUFFIX) != Some(&key.name()))
            .count();
        if others > 0 {
            self.layout_splits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                blob = %to_hex(&key.blob),
                layout = %to_hex(&key.layout),
                others,
                "an image gives this blob other chunk records than the cache holds it with: it gets an entry of its own, and reads nothing another image filled"
            );
        }
    }

    /// The entry of blob `index` of an image: of the layout that image gives it.
    pub fn image_blob(&self, ext: &Extension, index: usize) -> Result<Arc<CachedBlob>> {
        self.blob(&EntryKey::of_image_blob(ext, index), ext.blobs[index].view_size)
    }

    /// Every entry of the cache: key, sizes, last use, and whether a process has it open.
    pub fn list(&self) -> Result<Vec<CacheEntry>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(StorageError::io(&self.dir))? {
            let e = e.map_err(StorageError::io(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(ENTRY_SUFFIX).and_then(EntryKey::from_name) else {
                continue;
            };
            let entry_md = e.metadata().map_err(StorageError::io(e.path()))?;
            let [_, map_path, frames_dir] = self.paths(&key);
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
                digest: key.blob,
                layout: key.layout,
                view_size: entry_md.len(),
                present_bytes,
                disk_bytes: frame_bytes + map_bytes,
                last_used,
                in_use: self.in_use(&key, &e.path()),
            });
        }
        out.sort_by_key(|e| e.key());
        Ok(out)
    }

    /// Whether this process or another holds the entry open.
    fn in_use(&self, key: &EntryKey, entry_path: &Path) -> bool {
        if self.open.lock().expect("cache lock").get(key).and_then(Weak::upgrade).is_some() {
            return true;
        }
        let Ok(f) = File::open(entry_path) else { return false };
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
    }

    /// Removes every entry of blob `digest` (one per layout images gave it) not in use; true
    /// if none is left.
    pub fn remove_blob(&self, digest: &Digest32) -> Result<bool> {
        let mut all = true;
        for e in self.list()?.iter().filter(|e| e.digest == *digest) {
            all &= self.remove(&e.key())?;
        }
        Ok(all)
    }

    /// Removes an entry unless it is in use (here or in another process).
    pub fn remove(&self, key: &EntryKey) -> Result<bool> {
        let open = self.open.lock().expect("cache lock");
        if open.get(key).and_then(Weak::upgrade).is_some() {
            return Ok(false);
        }
        let [entry_path, map_path, frames_dir] = self.paths(key);
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
        remove_entry_files([&entry_path, &map_path, &frames_dir]).map(|()| true)
    }

    /// Evicts whole entries not in use, least recently used first, until the cache takes at
    /// most `max_bytes` of disk (all unused entries with `None`). Returns what was removed.
    pub fn gc(&self, max_bytes: Option<u64>) -> Result<Vec<CacheEntry>> {
        let mut entries = self.list()?;
        entries.sort_by_key(|e| (e.last_used, e.key()));
        let mut total: u64 = entries.iter().map(|e| e.disk_bytes).sum();
        let mut removed = Vec::new();
        for e in entries {
            if max_bytes.is_some_and(|m| total <= m) {
                break;
            }
            if !e.in_use && self.remove(&e.key())? {
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

/// The entry file, presence map and frames directory of entry `key` in `dir`.
fn entry_paths(dir: &Path, key: &EntryKey) -> [PathBuf; 3] {
    let name = key.name();
    [ENTRY_SUFFIX, MAP_SUFFIX, FRAMES_SUFFIX].map(|s| dir.join(format!("{name}{s}")))
}

/// Removes an entry's files `[entry, map, frames]` (missing ones are fine): the map first,
/// since once it is gone no bit claims anything in the frame files.
fn remove_entry_files([entry, map, frames]: [&Path; 3]) -> Result<()> {
    let gone = |r: std::io::Result<()>, p: &Path| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StorageError::Io { path: p.to_path_buf(), cause: e })
        }
        _ => Ok(()),
    };
    gone(std::fs::remove_file(map), map)?;
    gone(std::fs::remove_dir_all(frames), frames)?;
    gone(std::fs::remove_file(entry), entry)
}

/// Removes the entries of the earlier cache layouts that no process holds:
/// * the first (a data file and a `.map` per blob, its lock on the data file), whose bits
///   describe a file this layout does not read;
/// * the second (`<blob hex>.blob`, `.present`, `.frames`: entries named by the blob alone),
///   whose data was verified against the records of whichever image filled it, not
///   necessarily those of the image now reading it.
fn remove_old_layout(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(hex) = name.strip_suffix(ENTRY_SUFFIX).filter(|h| from_hex(h).is_some()) {
            let Ok(f) = File::open(e.path()) else { continue };
            if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
            {
                continue;
            }
            tracing::info!(blob = hex, "removing a cache entry named by its blob alone");
            let [map, frames] = [MAP_SUFFIX, FRAMES_SUFFIX].map(|s| dir.join(format!("{hex}{s}")));
            if let Err(err) = remove_entry_files([&e.path(), &map, &frames]) {
                tracing::warn!(blob = hex, error = %err, "cannot remove an old cache entry");
            }
            continue;
        }
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
    /// The layout of the blob this entry holds ([`EntryKey::layout`]).
    #[serde(serialize_with = "hex_digest")]
    pub layout: Digest32,
    pub view_size: u64,
    pub present_bytes: u64,
    pub disk_bytes: u64,
    /// Last use (seconds since the epoch).
    pub last_used: i64,
    pub in_use: bool,
}

impl CacheEntry {
    /// The entry's key.
    pub fn key(&self) -> EntryKey {
        EntryKey { blob: self.digest, layout: self.layout }
    }
}

fn hex_digest<S: serde::Serializer>(d: &Digest32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("sha256:{}", to_hex(d)))
}

/// The key of blob `d` read through no records, for the tests of the cache itself.
#[cfg(test)]
fn test_key(d: Digest32) -> EntryKey {
    EntryKey::new(&d, 0, Digester::Blake3, &[])
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
    use super::*;
    use super::{test_key as key, test_record as rec};

    #[test]
    fn presence_survives_reopening_and_holes_are_never_data() {
        let dir = tempfile::tempdir().unwrap();
        let d = [7u8; 32];
        let view = 64 * 4096;
        {
            let cache = ChunkCache::open(dir.path()).unwrap();
            let b = cache.blob(&key(d), view).unwrap();
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
        let b = cache.blob(&key(d), view).unwrap();
        assert!(b.is_present(8192, 8192) && b.is_present(40960, 4096) && !b.is_present(0, 4096));
        let list = cache.list().unwrap();
        assert_eq!(list.len(), 1);
        assert!(list[0].in_use);
        assert!(!cache.remove(&key(d)).unwrap(), "an open blob is not removed");
        drop(b);
        assert!(cache.remove(&key(d)).unwrap());
        assert!(cache.list().unwrap().is_empty());
    }

    #[test]
    fn images_that_disagree_about_a_blob_never_share_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path()).unwrap();
        let d = [5u8; 32];
        let view = 8 * 4096;
        let mine = [rec(0, 0, 4096), rec(0, 4096, 4096)];
        let mut other_digest = mine;
        other_digest[1].digest = [1; 32];
        let mut other_place = mine;
        other_place[1].view_offset = 8192;
        let key = |recs: &[ChunkRecord]| EntryKey::new(&d, view, Digester::Blake3, recs);
        let mut reversed = mine;
        reversed.reverse();
        assert_eq!(key(&mine), key(&reversed), "the key does not depend on the records' order");
        let others = [
            key(&other_digest),
            key(&other_place),
            key(&mine[..1]),
            EntryKey::new(&d, view, Digester::Sha256, &mine),
            EntryKey::new(&d, view + 4096, Digester::Blake3, &mine),
        ];
        let a = cache.blob(&key(&mine), view).unwrap();
        a.fill(&[(0, 0, &[1u8; 4096][..]), (0, 4096, &[2u8; 4096][..])]).unwrap();
        for (i, k) in others.iter().enumerate() {
            assert_ne!(k.layout, key(&mine).layout, "layout {i}");
            let b = cache.blob(k, view).unwrap();
            assert_eq!(b.present_bytes(), 0, "layout {i} sees another layout's data");
        }
        assert_eq!(
            cache.layout_splits.load(std::sync::atomic::Ordering::Relaxed),
            others.len() as u64
        );
        assert_eq!(cache.list().unwrap().len(), 1 + others.len());
        // The same records open the same entry, in this process and after a reopen.
        drop(a);
        let again = ChunkCache::open(dir.path()).unwrap().blob(&key(&mine), view).unwrap();
        assert_eq!(again.present_bytes(), 2 * 4096);
    }

    #[test]
    fn entries_named_by_the_blob_alone_are_removed_unless_held() {
        let dir = tempfile::tempdir().unwrap();
        let (held, free) = (to_hex(&[1u8; 32]), to_hex(&[2u8; 32]));
        for hex in [&held, &free] {
            std::fs::write(dir.path().join(format!("{hex}{ENTRY_SUFFIX}")), b"").unwrap();
            std::fs::write(dir.path().join(format!("{hex}{MAP_SUFFIX}")), [0xff; 1]).unwrap();
            std::fs::create_dir(dir.path().join(format!("{hex}{FRAMES_SUFFIX}"))).unwrap();
        }
        let lock = File::open(dir.path().join(format!("{held}{ENTRY_SUFFIX}"))).unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockShared).unwrap();
        let cache = ChunkCache::open(dir.path()).unwrap();
        let names = |hex: &str| {
            [ENTRY_SUFFIX, MAP_SUFFIX, FRAMES_SUFFIX]
                .map(|s| dir.path().join(format!("{hex}{s}")).exists())
        };
        assert_eq!(names(&free), [false; 3], "an unheld old entry is removed");
        assert_eq!(names(&held), [true; 3], "an entry a process of the old version holds stays");
        assert!(cache.list().unwrap().is_empty(), "old entries are not entries of this layout");
    }

    #[test]
    fn gc_evicts_unused_entries_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path()).unwrap();
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        for d in [&a, &b, &c] {
            let blob = cache.blob(&key(*d), 16 * 4096).unwrap();
            blob.fill(&[(0, 0, &[9u8; 8192][..])]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct mtimes
        }
        let held = cache.blob(&key(a), 16 * 4096).unwrap(); // oldest, but in use (and now recent)
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
