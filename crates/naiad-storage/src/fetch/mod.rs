//! Filling the chunk cache from a backend: only the chunks asked for, each verified, adjacent
//! units merged into one request, and one fetch in flight per chunk (other readers of the
//! same chunk wait for it rather than fetch it again). What a fetched unit decodes to is the
//! blob's [`ChunkSource`]'s business; verification and filling are the fetcher's, for every
//! source.
//!
//! Callers go through the lazy-read seam (`LazyBlob`), which holds what one blob needs.

mod frames;
mod readahead;

pub use frames::FrameIndex;
pub use readahead::{chunks_starting_in, Readahead, READAHEAD_MAX_BYTES, READAHEAD_MIN_BYTES};

use crate::backend::Backend;
use crate::cache::{CachedBlob, Filled};
use crate::source::ChunkSource;
use crate::{Result, StorageError};
use naiad_format::digest::{to_hex, Digester};
use naiad_format::extension::ChunkRecord;
use readahead::READAHEAD_FETCHES;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Default upper bound of one merged request.
pub const DEFAULT_MERGE_LIMIT_BYTES: u64 = 4 << 20;
/// Default number of backend requests one fetcher runs at once.
pub const DEFAULT_MAX_REQUESTS: usize = 8;

/// One blob as a fetch sees it: its cache entry, how its units decode, and its chunks by
/// frame (with them, a fetch fills whole frames; without, only the chunks asked for).
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub blob: &'a CachedBlob,
    pub source: &'a dyn ChunkSource,
    pub frames: Option<&'a FrameIndex>,
}

/// Upper bounds (seconds) of the fetch latency histogram's buckets.
pub const LATENCY_BUCKETS_SECS: [f64; 10] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Counters of a fetcher (exported as metrics).
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Backend requests by latency bucket (the last counts everything slower).
    pub latency: [AtomicU64; LATENCY_BUCKETS_SECS.len() + 1],
    /// Sum of backend request latencies, in microseconds.
    pub latency_sum_micros: AtomicU64,
    pub requests: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub chunks_fetched: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub verify_failures: AtomicU64,
    pub errors: AtomicU64,
    /// Fetches the cache could not store (disk full, write error), served from memory.
    pub cache_write_failures: AtomicU64,
}

#[derive(Default)]
struct Flight {
    done: Mutex<Option<std::result::Result<(), String>>>,
    cv: Condvar,
}

impl Flight {
    fn finish(&self, r: std::result::Result<(), String>) {
        *self.done.lock().expect("flight lock") = Some(r);
        self.cv.notify_all();
    }

    fn wait(&self) -> std::result::Result<(), String> {
        let mut g = self.done.lock().expect("flight lock");
        while g.is_none() {
            g = self.cv.wait(g).expect("flight lock");
        }
        g.clone().expect("set")
    }
}

/// After a backend read fails (its own retries and time limit spent), reads fail at once for
/// this long rather than each waiting out the backend's time limit again; then the backend is
/// tried again. One file read becomes several FUSE reads in the kernel, so without this a
/// backend that is down would hold a reader for a multiple of the configured timeout.
pub const BACKEND_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Fetches chunks into the cache.
pub struct Fetcher {
    backend: Arc<dyn Backend>,
    digester: Digester,
    merge_limit: u64,
    inflight: Mutex<HashMap<(crate::cache::EntryKey, u64), Arc<Flight>>>,
    /// Set when the backend failed: until when reads fail fast, and why.
    down: Mutex<Option<(Instant, String)>>,
    /// Background readahead fetches running.
    ahead: AtomicUsize,
    /// Backend requests running, and the most allowed at once.
    requests: (Mutex<usize>, Condvar),
    max_requests: usize,
    pub stats: FetchStats,
}

impl Fetcher {
    /// A fetcher reading from `backend`; chunk digests use `digester`.
    pub fn new(backend: Arc<dyn Backend>, digester: Digester, merge_limit: u64) -> Self {
        Fetcher {
            backend,
            digester,
            merge_limit: merge_limit.max(1),
            inflight: Mutex::new(HashMap::new()),
            down: Mutex::new(None),
            ahead: AtomicUsize::new(0),
            requests: (Mutex::new(0), Condvar::new()),
            max_requests: DEFAULT_MAX_REQUESTS,
            stats: FetchStats::default(),
        }
    }

    /// At most `n` (at least 1) backend requests at once; more wait for one to finish.
    pub fn with_max_requests(mut self, n: usize) -> Self {
        self.max_requests = n.max(1);
        self
    }

    /// Runs `f` as one of at most `max_requests` concurrent backend requests.
    fn limited<T>(&self, f: impl FnOnce() -> T) -> T {
        let (count, cv) = &self.requests;
        let mut n = count.lock().expect("request count");
        while *n >= self.max_requests {
            n = cv.wait(n).expect("request count");
        }
        *n += 1;
        drop(n);
        let r = f();
        *count.lock().expect("request count") -= 1;
        cv.notify_one();
        r
    }

    /// Makes every chunk of `chunks` (all of `t`'s blob) present in the cache: on disk,
    /// marked, so that the frame files themselves can be read (the fanotify mode's kernel
    /// does). When the cache cannot store them (disk full), an error, though they were fetched.
    pub(crate) fn ensure(&self, t: Target<'_>, chunks: &[ChunkRecord]) -> Result<()> {
        self.fetch_missing(t, chunks)?;
        match chunks.iter().find(|c| !t.blob.is_present(c.view_offset, u64::from(c.size))) {
            Some(_) => Err(t.blob.write_error()),
            None => Ok(()),
        }
    }

    /// Reads `buf.len()` bytes of the view at `offset`, fetching first those of `chunks`
    /// (sorted by view offset; they must cover the range) not present. Unlike
    /// [`Fetcher::ensure`], succeeds when the cache cannot store them (disk full): the
    /// verified chunks just fetched are served from memory ([`Filled::InMemory`]), so reads
    /// still work, from the backend.
    pub(crate) fn read(
        &self,
        t: Target<'_>,
        chunks: &[ChunkRecord],
        buf: &mut [u8],
        offset: u64,
    ) -> Result<()> {
        self.fetch_missing(t, chunks)?;
        t.blob.read_at(chunks, buf, offset)
    }

    /// Fetches those of `chunks` not present (or waits for their fetch in flight).
    fn fetch_missing(&self, t: Target<'_>, chunks: &[ChunkRecord]) -> Result<()> {
        let (blob, frames) = (t.blob, t.frames);
        // Warm reads (everything present) take no lock: the in-flight table is one per fetcher.
        if blob.all_present(chunks) {
            self.stats.hits.fetch_add(chunks.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        let key = *blob.key();
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        // With a frame index, the whole frames are claimed: a frame being fetched for one
        // chunk fills the others, which then must not be fetched again meanwhile.
        let mut expanded = Vec::new();
        let chunks = match frames {
            Some(index) => {
                let mut seen = std::collections::HashSet::new();
                for c in
                    chunks.iter().filter(|c| !blob.is_present(c.view_offset, u64::from(c.size)))
                {
                    if seen.insert(c.compressed_offset) {
                        expanded.extend(
                            index
                                .frame(c.compressed_offset)
                                .iter()
                                .filter(|m| {
                                    m.view_offset == c.view_offset
                                        || !blob.is_present(m.view_offset, u64::from(m.size))
                                })
                                .copied(),
                        );
                    }
                }
                &expanded[..]
            }
            _ => chunks,
        };
        {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            for c in chunks {
                if blob.is_present(c.view_offset, u64::from(c.size)) {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match inflight.entry((key, c.view_offset)) {
                    Entry::Occupied(e) => theirs.push(e.get().clone()),
                    Entry::Vacant(v) => {
                        self.stats.misses.fetch_add(1, Ordering::Relaxed);
                        v.insert(Arc::new(Flight::default()));
                        mine.push(*c);
                    }
                }
            }
        }
        // A fill may have finished between the presence check and the claim.
        let todo: Vec<ChunkRecord> = mine
            .iter()
            .filter(|c| !blob.is_present(c.view_offset, u64::from(c.size)))
            .copied()
            .collect();
        let result = self.fetch(t, &todo);
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            let shared = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            for c in &mine {
                if let Some(f) = inflight.remove(&(key, c.view_offset)) {
                    f.finish(shared.clone());
                }
            }
        }
        result?;
        for f in theirs {
            f.wait().map_err(|detail| StorageError::Mismatch {
                blob: to_hex(&key.blob),
                detail: format!("a concurrent fetch failed: {detail}"),
            })?;
        }
        Ok(())
    }

    /// Runs `job` (a readahead fetch) in a background thread, unless
    /// [`READAHEAD_FETCHES`] run already: then it is dropped. A read that needs those chunks
    /// fetches them itself (or waits for the fetch in flight).
    pub(crate) fn fetch_ahead(self: &Arc<Self>, job: impl FnOnce() + Send + 'static) {
        if self.ahead.fetch_add(1, Ordering::AcqRel) >= READAHEAD_FETCHES {
            self.ahead.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new().name("naiad-readahead".into()).spawn(move || {
            job();
            me.ahead.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            self.ahead.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Fetches `chunks` (none present), frames merged into runs of adjacent byte ranges.
    fn fetch(&self, t: Target<'_>, chunks: &[ChunkRecord]) -> Result<()> {
        let (blob, index, source) = (t.blob, t.frames, t.source);
        // Frames by compressed offset, each with the chunks wanted from it.
        let mut frames: BTreeMap<u64, (ChunkRecord, Vec<ChunkRecord>)> = BTreeMap::new();
        for c in chunks {
            frames.entry(c.compressed_offset).or_insert_with(|| (*c, Vec::new())).1.push(*c);
        }
        if let Some(index) = index {
            for (off, (_, wanted)) in frames.iter_mut() {
                let all = index.frame(*off);
                if all.len() > wanted.len() {
                    *wanted = all
                        .iter()
                        .filter(|c| !blob.is_present(c.view_offset, u64::from(c.size)))
                        .copied()
                        .collect();
                }
            }
        }
        let mut runs: Vec<Vec<(ChunkRecord, Vec<ChunkRecord>)>> = Vec::new();
        let mut run_end = 0u64;
        let mut run_start = 0u64;
        for (off, f) in frames {
            let end = off + u64::from(f.0.compressed_size);
            match runs.last_mut() {
                Some(run) if off == run_end && end - run_start <= self.merge_limit => run.push(f),
                _ => {
                    run_start = off;
                    runs.push(vec![f]);
                }
            }
            run_end = end;
        }
        let mut frame = Vec::new();
        for run in runs {
            let start = run[0].0.compressed_offset;
            let last = &run[run.len() - 1].0;
            let len = last.compressed_offset + u64::from(last.compressed_size) - start;
            if let Some((until, why)) = &*self.down.lock().expect("down lock") {
                if Instant::now() < *until {
                    return Err(StorageError::Backend {
                        backend: self.backend.name(),
                        detail: format!("unavailable (retried shortly): {why}"),
                    });
                }
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let t = Instant::now();
            let read = self.limited(|| self.backend.read(blob.digest(), start, len));
            *self.down.lock().expect("down lock") = match &read {
                Err(StorageError::Backend { detail, .. }) => {
                    Some((Instant::now() + BACKEND_RETRY_AFTER, detail.clone()))
                }
                _ => None,
            };
            let secs = t.elapsed().as_secs_f64();
            let bucket = LATENCY_BUCKETS_SECS
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(LATENCY_BUCKETS_SECS.len());
            self.stats.latency[bucket].fetch_add(1, Ordering::Relaxed);
            self.stats.latency_sum_micros.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
            let bytes = read?;
            if bytes.len() as u64 != len {
                return Err(StorageError::Mismatch {
                    blob: to_hex(blob.digest()),
                    detail: format!(
                        "backend {} returned {} bytes, asked {len}",
                        self.backend.name(),
                        bytes.len()
                    ),
                });
            }
            self.stats.bytes_fetched.fetch_add(len, Ordering::Relaxed);
            // Frame by frame: each is decoded into the one buffer, its wanted chunks verified,
            // and filled straight from it (no copy of the chunks, one frame in memory at a
            // time). A chunk that fails verification ends the fetch; the frames before it
            // were verified and stay cached.
            for (head, wanted) in &run {
                let at = (head.compressed_offset - start) as usize;
                let input = &bytes[at..at + head.compressed_size as usize];
                source
                    .decode(head, input, &mut frame)
                    .map_err(|detail| self.corrupt(blob, head.view_offset, detail))?;
                let mut verified: Vec<(u64, u64, &[u8])> = Vec::with_capacity(wanted.len());
                for c in wanted {
                    let data = frame
                        .get(c.frame_offset as usize..c.frame_offset as usize + c.size as usize)
                        .ok_or_else(|| {
                            self.corrupt(blob, c.view_offset, "chunk lies outside its frame".into())
                        })?;
                    let actual = self.digester.digest(data);
                    if actual != c.digest {
                        return Err(self.corrupt(
                            blob,
                            c.view_offset,
                            format!(
                                "digest mismatch: expected {}, computed {}",
                                to_hex(&c.digest),
                                to_hex(&actual)
                            ),
                        ));
                    }
                    verified.push((c.compressed_offset, c.view_offset, data));
                }
                if blob.fill(&verified)? == Filled::InMemory {
                    self.stats.cache_write_failures.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.chunks_fetched.fetch_add(verified.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn corrupt(&self, blob: &CachedBlob, view_offset: u64, detail: String) -> StorageError {
        self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(blob = %to_hex(blob.digest()), view_offset, %detail, backend = %self.backend.name(), "chunk failed verification; not cached");
        StorageError::ChunkCorrupt { blob: to_hex(blob.digest()), view_offset, detail }
    }
}
