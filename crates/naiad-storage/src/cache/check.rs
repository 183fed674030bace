//! Checking the chunk cache against the chunk digests of the images that use it: every chunk
//! with a block marked present must hash to its digest. The cache's own rules (data durable
//! before its bits, bits only set) promise that; this is how a user checks it after a crash,
//! a full disk or a suspect storage device. With `repair`, the bits of a chunk that fails are
//! cleared, so that the next read fetches it again.

use super::{entry_paths, EntryKey, PresenceMap};
use crate::{Result, StorageError};
use naiad_format::digest::{to_hex, Digest32, Digester};
use naiad_format::extension::ChunkRecord;
use naiad_format::BLOCK_SIZE_BYTES;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What the check of one cached blob found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BlobCheckReport {
    #[serde(serialize_with = "hex_digest")]
    pub digest: Digest32,
    /// The layout the images give the blob ([`EntryKey::layout`]): its entry.
    #[serde(serialize_with = "hex_digest")]
    pub layout: Digest32,
    /// Whether the cache has an entry for the blob (else every count is zero).
    pub cached: bool,
    /// An entry whose files do not have the sizes of this view: the cache discards and
    /// recreates it when it is next opened, so nothing in it is served (and nothing checked).
    pub stale: bool,
    /// Chunks the image names in this blob.
    pub chunks: u64,
    /// Those with a block marked present.
    pub present: u64,
    /// Present chunks whose bytes match their digest.
    pub verified: u64,
    /// Present chunks whose bytes do not.
    pub bad: Vec<BadChunk>,
    /// Blocks marked present that no chunk of the layout covers: not checked (Naiad's fills
    /// never set them; a damaged or foreign map could).
    pub unchecked_blocks: u64,
    /// Whether the bad chunks' bits were cleared.
    pub repaired: bool,
}

/// A chunk marked present whose bytes are wrong.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BadChunk {
    pub view_offset: u64,
    pub size: u32,
    pub detail: String,
}

fn hex_digest<S: serde::Serializer>(d: &Digest32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("sha256:{}", to_hex(d)))
}

/// Checks the cache entry in `cache_dir` of blob `digest` (view of `view_size` bytes) read
/// through `chunks` (an image's chunk records of it, any order), hashed with `digester`: the
/// entry of that layout ([`EntryKey`]). With `repair`, clears the bits of bad chunks; that
/// needs the entry unused (an error if a process has it open, since that process keeps its
/// own copy of the bits).
pub fn check_cached_blob(
    cache_dir: &Path,
    digest: &Digest32,
    view_size: u64,
    chunks: &[ChunkRecord],
    digester: Digester,
    repair: bool,
) -> Result<BlobCheckReport> {
    let key = EntryKey::new(digest, view_size, digester, chunks);
    let [entry_path, map_path, frames_dir] = entry_paths(cache_dir, &key);
    let mut chunks = chunks.to_vec();
    chunks.sort_by_key(|c| c.view_offset);
    chunks.dedup_by_key(|c| c.view_offset);
    let mut report = BlobCheckReport {
        digest: *digest,
        layout: key.layout,
        chunks: chunks.len() as u64,
        ..Default::default()
    };
    let (entry_md, map) = match (std::fs::metadata(&entry_path), std::fs::read(&map_path)) {
        (Ok(d), Ok(m)) => (d, m),
        (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        (Err(e), _) => return Err(StorageError::Io { path: entry_path, cause: e }),
        (_, Err(e)) => return Err(StorageError::Io { path: map_path, cause: e }),
    };
    report.cached = true;
    if entry_md.len() != view_size || map.len() as u64 != PresenceMap::file_len(view_size) {
        report.stale = true;
        return Ok(report);
    }
    let map = PresenceMap::decode(&map, view_size);
    let bit = |b: u64| map.is_set(b);
    let blocks_of = |c: &ChunkRecord| {
        let b = map.chunk_blocks(c.view_offset, c.size);
        b.start..b.end.min(view_size / BLOCK_SIZE_BYTES)
    };
    let mut covered = vec![false; (view_size / BLOCK_SIZE_BYTES) as usize];
    let mut buf = Vec::new();
    // The frame file last opened: chunks in view order mostly come frame after frame.
    let mut open: Option<(u64, std::io::Result<File>)> = None;
    for c in &chunks {
        let blocks = blocks_of(c);
        blocks.clone().for_each(|b| covered[b as usize] = true);
        if !blocks.clone().any(bit) {
            continue;
        }
        report.present += 1;
        buf.resize(c.size as usize, 0);
        if open.as_ref().is_none_or(|(frame, _)| *frame != c.compressed_offset) {
            open = Some((
                c.compressed_offset,
                File::open(frames_dir.join(format!("{:016x}", c.compressed_offset))),
            ));
        }
        let read = match &open {
            Some((_, Ok(f))) => f.read_exact_at(&mut buf, c.view_offset),
            Some((_, Err(e))) => Err(std::io::Error::new(e.kind(), e.to_string())),
            None => unreachable!("opened above"),
        };
        let detail = match read {
            Err(e) => Some(format!("cannot read it: {e}")),
            Ok(()) => {
                let actual = digester.digest(&buf);
                (actual != c.digest).then(|| {
                    format!(
                        "digest mismatch: expected {}, computed {}",
                        to_hex(&c.digest),
                        to_hex(&actual)
                    )
                })
            }
        };
        match detail {
            None => report.verified += 1,
            Some(detail) => {
                report.bad.push(BadChunk { view_offset: c.view_offset, size: c.size, detail })
            }
        }
    }
    report.unchecked_blocks = (0..view_size / BLOCK_SIZE_BYTES)
        .filter(|&b| bit(b) && !covered[b as usize])
        .count() as u64;
    if repair && !report.bad.is_empty() {
        clear_bits(
            &entry_path,
            &map_path,
            view_size,
            report.bad.iter().map(|b| (b.view_offset, b.size)),
        )?;
        report.repaired = true;
    }
    Ok(report)
}

/// Clears the bits of the chunks `(view offset, size)`, holding the entry's lock exclusively.
fn clear_bits(
    entry_path: &Path,
    map_path: &Path,
    view_size: u64,
    chunks: impl Iterator<Item = (u64, u32)>,
) -> Result<()> {
    let entry = File::open(entry_path).map_err(StorageError::io(entry_path))?;
    if rustix::fs::flock(&entry, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(StorageError::Io {
            path: entry_path.to_path_buf(),
            cause: std::io::Error::other(
                "in use by a mount: unmount it or stop the daemon to repair",
            ),
        });
    }
    let map = OpenOptions::new()
        .read(true)
        .write(true)
        .open(map_path)
        .map_err(StorageError::io(map_path))?;
    let mut raw = vec![0u8; PresenceMap::file_len(view_size) as usize];
    map.read_exact_at(&mut raw, 0).map_err(StorageError::io(map_path))?;
    let bits = PresenceMap::decode(&raw, view_size);
    for (off, size) in chunks {
        bits.clear(bits.chunk_blocks(off, size));
    }
    map.write_all_at(&bits.encode(), 0).map_err(StorageError::io(map_path))?;
    map.sync_data().map_err(StorageError::io(map_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ChunkCache;
    use naiad_format::compression::Compressor;

    fn record(view_offset: u64, data: &[u8]) -> ChunkRecord {
        ChunkRecord {
            blob_index: 0,
            view_offset,
            size: data.len() as u32,
            compressed_offset: 0,
            compressed_size: 0,
            frame_size: 0,
            frame_offset: 0,
            compressor: Compressor::None,
            digest: Digester::Blake3.digest(data),
        }
    }

    #[test]
    fn present_chunks_are_verified_and_bad_ones_found_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let d = [6u8; 32];
        let view = 16 * 4096;
        let (a, b, c) = (vec![1u8; 5000], vec![2u8; 4096], vec![3u8; 100]);
        let recs = [record(0, &a), record(8192, &b), record(12288, &c)];
        let key = EntryKey::new(&d, view, Digester::Blake3, &recs);
        {
            let cache = ChunkCache::open(dir.path()).unwrap();
            let blob = cache.blob(&key, view).unwrap();
            // And a block no record covers (what a damaged map could claim).
            blob.fill(&[(0, 0, &a[..]), (0, 8192, &b[..]), (0, 32768, &[4u8; 4096][..])]).unwrap();
            let r =
                check_cached_blob(dir.path(), &d, view, &recs, Digester::Blake3, false).unwrap();
            assert_eq!(
                (r.cached, r.chunks, r.present, r.verified, r.bad.len(), r.unchecked_blocks),
                (true, 3, 2, 2, 0, 1),
                "{r:?}"
            );
            assert_eq!(r.layout, key.layout);
            // Repair needs the entry unused: a damaged chunk, the entry open, is refused.
            let frame0 = dir.path().join(format!("{}.frames/{:016x}", key.name(), 0));
            let f = OpenOptions::new().write(true).open(&frame0).unwrap();
            f.write_all_at(&[9], 10).unwrap();
            let err =
                check_cached_blob(dir.path(), &d, view, &recs, Digester::Blake3, true).unwrap_err();
            assert!(err.to_string().contains("in use"), "{err}");
            f.write_all_at(&a, 0).unwrap();
        }
        // Damage a present chunk: found, then repaired (its bits cleared).
        let data = OpenOptions::new()
            .write(true)
            .open(dir.path().join(format!("{}.frames/{:016x}", key.name(), 0)))
            .unwrap();
        data.write_all_at(&[9], 8192 + 10).unwrap();
        let r = check_cached_blob(dir.path(), &d, view, &recs, Digester::Blake3, false).unwrap();
        assert_eq!((r.present, r.verified), (2, 1));
        assert_eq!(r.bad.len(), 1);
        assert_eq!(r.bad[0].view_offset, 8192);
        assert!(r.bad[0].detail.contains("digest mismatch"));
        let r = check_cached_blob(dir.path(), &d, view, &recs, Digester::Blake3, true).unwrap();
        assert!(r.repaired);
        let r = check_cached_blob(dir.path(), &d, view, &recs, Digester::Blake3, false).unwrap();
        assert_eq!((r.present, r.verified, r.bad.len()), (1, 1, 0), "{r:?}");
        let blob = ChunkCache::open(dir.path()).unwrap().blob(&key, view).unwrap();
        assert!(blob.is_present(0, 5000) && !blob.is_present(8192, 1), "the cache sees the repair");
        drop(blob);
        // Other records of the same blob are another entry: none cached.
        let r =
            check_cached_blob(dir.path(), &d, view, &recs[1..], Digester::Blake3, false).unwrap();
        assert!(!r.cached && r.present == 0, "{r:?}");
    }

    #[test]
    fn missing_and_stale_entries_are_reported_not_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = [8u8; 32];
        let recs = [record(0, &[1])];
        let r = check_cached_blob(dir.path(), &d, 4096, &recs, Digester::Blake3, false).unwrap();
        assert!(!r.cached && r.present == 0);
        // An entry of this layout whose files have another view's sizes.
        let key = EntryKey::new(&d, 4096, Digester::Blake3, &recs);
        ChunkCache::open(dir.path())
            .unwrap()
            .blob(&key, 8192)
            .unwrap()
            .fill(&[(0, 0, &[1u8][..])])
            .unwrap();
        let r = check_cached_blob(dir.path(), &d, 4096, &recs, Digester::Blake3, false).unwrap();
        assert!(r.cached && r.stale && r.present == 0, "{r:?}");
    }
}
