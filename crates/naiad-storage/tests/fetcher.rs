//! The chunk cache filled through the fetcher from a local backend: exact bytes, no
//! refetch of present chunks, one fetch per chunk under concurrency, merged requests, and
//! corrupt data refused without being cached.

use naiad_builder::{build, BuildOptions, Source};
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::digest::Digest32;
use naiad_format::extension::ChunkRecord;
use naiad_storage::backend::{Backend, LocalBackend};
use naiad_storage::blob_store::BlobDirs;
use naiad_storage::cache::ChunkCache;
use naiad_storage::fetch::{Fetcher, BACKEND_RETRY_AFTER, DEFAULT_MERGE_LIMIT_BYTES};
use naiad_storage::lazy::LazyBlob;
use naiad_storage::{Result, StorageError};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Counts requests, can flip a byte of everything it returns, and can be down (a fault a
/// real server cannot be switched into and out of on demand within one test).
struct Counting {
    inner: LocalBackend,
    requests: AtomicU64,
    /// Requests running now, and the most seen at once.
    running: AtomicU64,
    peak: AtomicU64,
    flip: bool,
    down: AtomicBool,
}

impl Backend for Counting {
    fn read(&self, digest: &Digest32, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StorageError::Backend {
                backend: self.name(),
                detail: "connection refused".into(),
            });
        }
        let mut v = self.inner.read(digest, offset, len)?;
        if self.flip {
            let n = v.len() / 2;
            v[n] ^= 0x10;
        }
        Ok(v)
    }
    fn name(&self) -> String {
        "counting".into()
    }
}

fn image(dir: &Path) -> (Bootstrap, Vec<u8>) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    let big: Vec<u8> =
        (0..5_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(src.join("big"), &big).unwrap();
    for i in 0..40u32 {
        std::fs::write(
            src.join(format!("small/f{i:02}")),
            format!("file {i} ").repeat(100 + i as usize),
        )
        .unwrap();
    }
    build(Source::Dir(src), BuildOptions::default(), &dir.join("out")).unwrap();
    (Bootstrap::open(std::fs::read(dir.join("out/bootstrap")).unwrap()).unwrap(), big)
}

fn records(bs: &Bootstrap, path: &[u8]) -> Vec<ChunkRecord> {
    let ino = bs.lookup(path).unwrap();
    (0..ino.chunk_count())
        .map(|i| match bs.chunk(&ino, i).unwrap() {
            ChunkSlot::Data(r) => *r,
            ChunkSlot::Hole => panic!("hole"),
        })
        .collect()
}

type Setup = (tempfile::TempDir, Bootstrap, Vec<u8>, Arc<Counting>, ChunkCache);

fn setup(flip: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (bs, big) = image(dir.path());
    let backend = Arc::new(Counting {
        inner: LocalBackend::new(BlobDirs::new(vec![dir.path().join("out")])),
        requests: AtomicU64::new(0),
        running: AtomicU64::new(0),
        peak: AtomicU64::new(0),
        flip,
        down: AtomicBool::new(false),
    });
    let cache = ChunkCache::open(&dir.path().join("cache")).unwrap();
    (dir, bs, big, backend, cache)
}

#[test]
fn only_requested_chunks_are_fetched_verified_and_kept() {
    let (_dir, bs, big, backend, cache) = setup(false);
    let ext = bs.extension();
    let blob = cache.image_blob(ext, 0).unwrap();
    let fetcher = Arc::new(Fetcher::new(backend.clone(), ext.digester, DEFAULT_MERGE_LIMIT_BYTES));
    let lazy = LazyBlob::new(blob.clone(), ext.blob_chunks(0).to_vec(), fetcher.clone());
    let recs = records(&bs, b"/big");
    lazy.ensure(&recs[1..2]).unwrap();
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
    assert!(blob.is_present(recs[1].view_offset, u64::from(recs[1].size)));
    assert!(!blob.is_present(recs[0].view_offset, 1) && !blob.is_present(recs[2].view_offset, 1));
    let mut buf = vec![0u8; recs[1].size as usize];
    blob.read_at(&recs[1..2], &mut buf, recs[1].view_offset).unwrap();
    assert_eq!(buf, big[1 << 20..2 << 20]);
    // Present chunks are not fetched again.
    lazy.ensure(&recs[1..2]).unwrap();
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
    assert_eq!(fetcher.stats.hits.load(Ordering::SeqCst), 1);
    // The rest of the file: adjacent frames merged into few requests.
    lazy.ensure(&recs).unwrap();
    let reqs = backend.requests.load(Ordering::SeqCst);
    assert!(reqs <= 3, "{reqs} requests for 4 adjacent chunks around a present one");
    for (i, r) in recs.iter().enumerate() {
        let mut buf = vec![0u8; r.size as usize];
        blob.read_at(std::slice::from_ref(r), &mut buf, r.view_offset).unwrap();
        assert_eq!(buf, big[i << 20..(i << 20) + r.size as usize]);
    }
    // Small files packed in one frame.
    let small: Vec<ChunkRecord> =
        (0..40).flat_map(|i| records(&bs, format!("/small/f{i:02}").as_bytes())).collect();
    let before = backend.requests.load(Ordering::SeqCst);
    lazy.ensure(&small).unwrap();
    assert_eq!(
        backend.requests.load(Ordering::SeqCst) - before,
        1,
        "40 small files share one frame"
    );
}

#[test]
fn a_fetched_frame_fills_all_its_chunks() {
    let (_dir, bs, _big, backend, cache) = setup(false);
    let ext = bs.extension();
    let blob = cache.image_blob(ext, 0).unwrap();
    let fetcher = Arc::new(Fetcher::new(backend.clone(), ext.digester, DEFAULT_MERGE_LIMIT_BYTES));
    let lazy = LazyBlob::new(blob.clone(), ext.blob_chunks(0).to_vec(), fetcher.clone());
    let first = records(&bs, b"/small/f00");
    lazy.ensure_frames(&first).unwrap();
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
    for i in 1..40 {
        lazy.ensure_frames(&records(&bs, format!("/small/f{i:02}").as_bytes())).unwrap();
    }
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        1,
        "the other 39 small files came with the first frame"
    );
}

#[test]
fn concurrent_readers_share_one_fetch() {
    let (_dir, bs, _big, backend, cache) = setup(false);
    let ext = bs.extension();
    let blob = cache.image_blob(ext, 0).unwrap();
    let fetcher = Arc::new(Fetcher::new(backend.clone(), ext.digester, 1));
    let lazy = LazyBlob::new(blob.clone(), ext.blob_chunks(0).to_vec(), fetcher.clone());
    let recs = records(&bs, b"/big");
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| lazy.ensure(&recs).unwrap());
        }
    });
    let frames: std::collections::HashSet<u64> = recs.iter().map(|r| r.compressed_offset).collect();
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        frames.len() as u64,
        "each frame fetched once"
    );
    assert!(recs.iter().all(|r| blob.is_present(r.view_offset, u64::from(r.size))));
}

#[test]
fn backend_requests_are_limited_to_the_configured_concurrency() {
    for limit in [1usize, 2] {
        let (_dir, bs, big, backend, cache) = setup(false);
        let ext = bs.extension();
        let blob = cache.image_blob(ext, 0).unwrap();
        // One frame per request (merge limit 1), one reader per chunk, all at once.
        let fetcher =
            Arc::new(Fetcher::new(backend.clone(), ext.digester, 1).with_max_requests(limit));
        let lazy = LazyBlob::new(blob.clone(), ext.blob_chunks(0).to_vec(), fetcher.clone());
        let recs = records(&bs, b"/big");
        std::thread::scope(|s| {
            for r in &recs {
                let l = &lazy;
                s.spawn(move || l.ensure(std::slice::from_ref(r)).unwrap());
            }
        });
        let frames: std::collections::HashSet<u64> =
            recs.iter().map(|r| r.compressed_offset).collect();
        assert!(frames.len() > limit, "the test needs more frames than the limit");
        assert_eq!(
            backend.requests.load(Ordering::SeqCst),
            frames.len() as u64,
            "one request per frame"
        );
        assert_eq!(
            backend.peak.load(Ordering::SeqCst),
            limit as u64,
            "peak concurrent requests with a limit of {limit}"
        );
        for (i, r) in recs.iter().enumerate() {
            let mut buf = vec![0u8; r.size as usize];
            blob.read_at(std::slice::from_ref(r), &mut buf, r.view_offset).unwrap();
            assert_eq!(buf, big[i << 20..(i << 20) + r.size as usize]);
        }
    }
}

#[test]
fn corrupt_chunks_are_errors_and_never_cached() {
    let (_dir, bs, _big, backend, cache) = setup(true);
    let ext = bs.extension();
    let blob = cache.image_blob(ext, 0).unwrap();
    let fetcher = Arc::new(Fetcher::new(backend, ext.digester, DEFAULT_MERGE_LIMIT_BYTES));
    let lazy = LazyBlob::new(blob.clone(), ext.blob_chunks(0).to_vec(), fetcher.clone());
    let recs = records(&bs, b"/big");
    let err = lazy.ensure(&recs[..1]).unwrap_err().to_string();
    assert!(err.contains("view offset 0"), "{err}");
    assert!(!blob.is_present(recs[0].view_offset, 1));
    assert_eq!(fetcher.stats.verify_failures.load(Ordering::SeqCst), 1);
}

#[test]
fn after_a_backend_failure_reads_fail_fast_then_the_backend_is_tried_again() {
    let (_dir, bs, big, backend, cache) = setup(false);
    let ext = bs.extension();
    let blob = cache.image_blob(ext, 0).unwrap();
    let fetcher = Arc::new(Fetcher::new(backend.clone(), ext.digester, DEFAULT_MERGE_LIMIT_BYTES));
    let lazy = LazyBlob::new(blob.clone(), ext.blob_chunks(0).to_vec(), fetcher.clone());
    let recs = records(&bs, b"/big");
    backend.down.store(true, Ordering::SeqCst);
    let e = lazy.ensure(&recs[..1]).unwrap_err();
    assert!(
        matches!(e, StorageError::Backend { .. }) && e.to_string().contains("connection refused"),
        "{e}"
    );
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
    // Other chunks fail at once, naming the cause, without asking the backend; even once it
    // is back, until the retry delay has passed.
    backend.down.store(false, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let e = lazy.ensure(&recs[1..2]).unwrap_err();
    assert!(
        e.to_string().contains("unavailable") && e.to_string().contains("connection refused"),
        "{e}"
    );
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
    assert!(!blob.is_present(recs[1].view_offset, 1));
    std::thread::sleep(
        BACKEND_RETRY_AFTER.saturating_sub(started.elapsed())
            + std::time::Duration::from_millis(50),
    );
    lazy.ensure(&recs).unwrap();
    for (i, r) in recs.iter().enumerate() {
        let mut buf = vec![0u8; r.size as usize];
        blob.read_at(std::slice::from_ref(r), &mut buf, r.view_offset).unwrap();
        assert_eq!(buf, big[i << 20..(i << 20) + r.size as usize]);
    }
}
