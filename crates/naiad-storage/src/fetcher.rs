//! Filling the chunk cache from a backend: only the chunks asked for, each verified, adjacent
//! frames merged into one request, and one fetch in flight per chunk (other readers of the
//! same chunk wait for it rather than fetch it again).

use crate::backend::Backend;
use crate::chunk_cache::{CachedBlob, Filled};
use crate::{Result, StorageError};
use naiad_format::compression::decompress_into;
use naiad_format::digest::{to_hex, Digest32, Digester};
use naiad_format::extension::ChunkRecord;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Default upper bound of one merged request.
pub const DEFAULT_MERGE_LIMIT_BYTES: u64 = 4 << 20;
/// Default number of backend requests one fetcher runs at once.
pub const DEFAULT_MAX_REQUESTS: usize = 8;

/// The chunks of one blob grouped by frame, so that a fetched frame fills every chunk it
/// holds (small files share frames: without this, each would fetch the frame again).
#[derive(Debug, Default)]
pub struct FrameIndex {
    /// Sorted by (compressed offset, offset in frame).
    chunks: Vec<ChunkRecord>,
}

impl FrameIndex {
    /// Indexes the chunk records of one blob.
    pub fn new(mut chunks: Vec<ChunkRecord>) -> Self {
        chunks.sort_by_key(|c| (c.compressed_offset, c.frame_offset));
        FrameIndex { chunks }
    }

    /// Every chunk of the frame at `compressed_offset`.
    pub fn frame(&self, compressed_offset: u64) -> &[ChunkRecord] {
        let start = self.chunks.partition_point(|c| c.compressed_offset < compressed_offset);
        let end = self.chunks.partition_point(|c| c.compressed_offset <= compressed_offset);
        &self.chunks[start..end]
    }

    /// Every frame: its chunks, frame by frame in blob order.
    pub fn frames(&self) -> impl Iterator<Item = &[ChunkRecord]> {
        self.chunks.chunk_by(|a, b| a.compressed_offset == b.compressed_offset)
    }

    /// Where in the view the data of the whole frames holding `chunks` ends (filling those
    /// chunks fills their frames); None for no chunks.
    pub fn frames_end(&self, chunks: &[ChunkRecord]) -> Option<u64> {
        chunks
            .iter()
            .flat_map(|c| self.frame(c.compressed_offset))
            .map(|c| c.view_offset + u64::from(c.size))
            .max()
    }
}

/// Smallest and largest readahead window (bytes of view).
pub const READAHEAD_MIN_BYTES: u64 = 256 << 10;
pub const READAHEAD_MAX_BYTES: u64 = 8 << 20;
/// Background readahead fetches running at once, per fetcher (more are skipped).
const READAHEAD_FETCHES: usize = 2;

/// Sequential-read detection on one blob's view. Reads that follow each other grow a window
/// (doubling, up to [`READAHEAD_MAX_BYTES`]) of view bytes to fetch ahead of the reader, in
/// the background; a read elsewhere resets it. Without it, a cold sequential read waits one
/// backend round trip per chunk.
#[derive(Debug, Default)]
pub struct Readahead {
    state: Mutex<ReadaheadState>,
}

#[derive(Debug, Default)]
struct ReadaheadState {
    last_end: u64,
    /// How far ahead fetching has been asked for.
    frontier: u64,
    window: u64,
}

impl Readahead {
    /// Notes a read of view bytes `[start, end)`; `missed` says whether some of it was not
    /// present. Returns the range to fetch ahead, if any: only reads that missed ask (data
    /// already cached never makes the reader fetch more), reads that hit keep the pattern.
    pub fn on_read(&self, start: u64, end: u64, missed: bool) -> Option<std::ops::Range<u64>> {
        let mut st = self.state.lock().expect("readahead lock");
        // The kernel's own readahead and several serving threads let reads arrive slightly
        // out of order: a read starting within the minimum window of where the last one ended
        // counts as following it. Random reads (even many at once) rarely do. So does a read
        // within (or just past) what was fetched ahead: a caller that only reports misses (the
        // fanotify mode, whose hits never reach this process) sees the reader next where the
        // data fetched ahead runs out.
        let sequential = st.last_end > 0
            && (start.abs_diff(st.last_end) <= READAHEAD_MIN_BYTES
                || (start >= st.last_end
                    && start <= st.frontier.saturating_add(READAHEAD_MIN_BYTES)));
        st.last_end = end;
        if !sequential {
            st.window = 0;
            st.frontier = end;
            return None;
        }
        if !missed {
            return None;
        }
        st.window = (st.window * 2).clamp(READAHEAD_MIN_BYTES, READAHEAD_MAX_BYTES);
        // Ask for more once the reader is within half a window of the frontier.
        if end + st.window / 2 < st.frontier {
            return None;
        }
        let from = st.frontier.max(end);
        let to = end + st.window;
        st.frontier = to;
        (from < to).then_some(from..to)
    }

    /// Notes that fetching ahead reaches `to`: whole frames are filled, so a window asked for
    /// may end up fetched further than asked. For a caller that only sees misses, the reader
    /// is next seen past that point.
    pub fn fetched_to(&self, to: u64) {
        let mut st = self.state.lock().expect("readahead lock");
        st.frontier = st.frontier.max(to);
    }
}

/// The records of `chunks` (sorted by view offset) that start in `range`.
pub fn chunks_starting_in(chunks: &[ChunkRecord], range: std::ops::Range<u64>) -> &[ChunkRecord] {
    let a = chunks.partition_point(|c| c.view_offset < range.start);
    let b = chunks.partition_point(|c| c.view_offset < range.end);
    &chunks[a..b]
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
    inflight: Mutex<HashMap<(Digest32, u64), Arc<Flight>>>,
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

    /// Makes every chunk of `chunks` (all of `blob`) present in the cache: on disk, marked,
    /// so that the data file itself can be read (the fanotify mode's kernel does). When the
    /// cache cannot store them (disk full), an error, though they were fetched.
    pub fn ensure(&self, blob: &CachedBlob, chunks: &[ChunkRecord]) -> Result<()> {
        self.ensure_with(blob, chunks, None)
    }

    /// [`Fetcher::ensure`], filling whole frames using `frames`.
    pub fn ensure_with(
        &self,
        blob: &CachedBlob,
        chunks: &[ChunkRecord],
        frames: Option<&FrameIndex>,
    ) -> Result<()> {
        self.fetch_missing(blob, chunks, frames)?;
        match chunks.iter().find(|c| !blob.is_present(c.view_offset, u64::from(c.size))) {
            Some(_) => Err(blob.write_error()),
            None => Ok(()),
        }
    }

    /// Reads `buf.len()` bytes of `blob`'s view at `offset`, fetching first those of
    /// `chunks` (sorted by view offset; they must cover the range) not present. Unlike
    /// [`Fetcher::ensure_with`], succeeds when the cache cannot store them (disk full): the verified chunks just
    /// fetched are served from memory ([`Filled::InMemory`]), so reads still work, from the
    /// backend.
    pub fn read_with(
        &self,
        blob: &CachedBlob,
        chunks: &[ChunkRecord],
        frames: Option<&FrameIndex>,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<()> {
        self.fetch_missing(blob, chunks, frames)?;
        blob.read_at(chunks, buf, offset)
    }

    /// Fetches those of `chunks` not present (or waits for their fetch in flight).
    fn fetch_missing(
        &self,
        blob: &CachedBlob,
        chunks: &[ChunkRecord],
        frames: Option<&FrameIndex>,
    ) -> Result<()> {
        // Warm reads (everything present) take no lock: the in-flight table is one per fetcher.
        if blob.all_present(chunks) {
            self.stats.hits.fetch_add(chunks.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        let digest = *blob.digest();
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
                match inflight.entry((digest, c.view_offset)) {
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
        let result = self.fetch(blob, &todo, frames);
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            let shared = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            for c in &mine {
                if let Some(f) = inflight.remove(&(digest, c.view_offset)) {
                    f.finish(shared.clone());
                }
            }
        }
        result?;
        for f in theirs {
            f.wait().map_err(|detail| StorageError::Mismatch {
                blob: to_hex(&digest),
                detail: format!("a concurrent fetch failed: {detail}"),
            })?;
        }
        Ok(())
    }

    /// Fetches, in a background thread, those of `chunks` not present yet (readahead). At
    /// most [`READAHEAD_FETCHES`] run at once; beyond that the request is dropped. A failure is
    /// only logged: a read that needs these chunks fetches them itself (or waits for this
    /// fetch, if it is still in flight).
    pub fn fetch_ahead(
        self: &Arc<Self>,
        blob: Arc<CachedBlob>,
        chunks: Vec<ChunkRecord>,
        frames: Option<Arc<FrameIndex>>,
    ) {
        let missing: Vec<ChunkRecord> = chunks
            .into_iter()
            .filter(|c| !blob.is_present(c.view_offset, u64::from(c.size)))
            .collect();
        if missing.is_empty() || self.ahead.fetch_add(1, Ordering::AcqRel) >= READAHEAD_FETCHES {
            if !missing.is_empty() {
                self.ahead.fetch_sub(1, Ordering::AcqRel);
            }
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new().name("naiad-readahead".into()).spawn(move || {
            if let Err(e) = me.ensure_with(&blob, &missing, frames.as_deref()) {
                tracing::debug!(blob = %to_hex(blob.digest()), error = %e, "readahead failed");
            }
            me.ahead.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            self.ahead.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Fetches `chunks` (none present), frames merged into runs of adjacent byte ranges.
    fn fetch(
        &self,
        blob: &CachedBlob,
        chunks: &[ChunkRecord],
        index: Option<&FrameIndex>,
    ) -> Result<()> {
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
            let mut verified: Vec<(u64, u64, Vec<u8>)> = Vec::new();
            for (head, wanted) in &run {
                let at = (head.compressed_offset - start) as usize;
                let input = &bytes[at..at + head.compressed_size as usize];
                decompress_into(head.compressor, input, head.frame_size, &mut frame, || {
                    format!("frame at blob offset {}", head.compressed_offset)
                })
                .map_err(|e| self.corrupt(blob, head.view_offset, e.to_string()))?;
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
                    verified.push((c.compressed_offset, c.view_offset, data.to_vec()));
                }
            }
            let refs: Vec<(u64, u64, &[u8])> =
                verified.iter().map(|(f, o, d)| (*f, *o, d.as_slice())).collect();
            if blob.fill(&refs)? == Filled::InMemory {
                self.stats.cache_write_failures.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.chunks_fetched.fetch_add(verified.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn corrupt(&self, blob: &CachedBlob, view_offset: u64, detail: String) -> StorageError {
        self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(blob = %to_hex(blob.digest()), view_offset, %detail, backend = %self.backend.name(), "chunk failed verification; not cached");
        StorageError::ChunkCorrupt { blob: to_hex(blob.digest()), view_offset, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readahead_grows_on_sequential_reads_and_resets_elsewhere() {
        let ra = Readahead::default();
        const K: u64 = 128 << 10;
        assert_eq!(ra.on_read(0, K, true), None, "one read says nothing about a pattern");
        // Sequential: the window starts at the minimum, right after the read.
        assert_eq!(ra.on_read(K, 2 * K, true), Some(2 * K..2 * K + READAHEAD_MIN_BYTES));
        // Further reads inside the fetched window ask for more only near its end, and what
        // they ask for continues where the last request stopped.
        let mut frontier = 2 * K + READAHEAD_MIN_BYTES;
        let mut asked = Vec::new();
        for i in 2..200u64 {
            if let Some(r) = ra.on_read(i * K, (i + 1) * K, true) {
                assert_eq!(r.start, frontier, "contiguous requests");
                assert!(r.end - (i + 1) * K <= READAHEAD_MAX_BYTES);
                frontier = r.end;
                asked.push(r.end - (i + 1) * K);
            }
        }
        assert!(asked.len() > 3 && asked.len() < 100, "{} requests", asked.len());
        assert_eq!(asked.last(), Some(&READAHEAD_MAX_BYTES), "grown to the maximum: {asked:?}");
        // A jump elsewhere resets it.
        assert_eq!(ra.on_read(900 << 20, (900 << 20) + K, true), None);
        // Reads of cached data ask for nothing, but keep the pattern for the next miss.
        assert_eq!(ra.on_read((900 << 20) + K, (900 << 20) + 2 * K, false), None);
        assert_eq!(
            ra.on_read((900 << 20) + 2 * K, (900 << 20) + 3 * K, true),
            Some((900 << 20) + 3 * K..(900 << 20) + 3 * K + READAHEAD_MIN_BYTES)
        );
    }

    #[test]
    fn readahead_follows_a_reader_seen_only_where_it_misses() {
        // Only misses are reported: the reader shows up where the data fetched ahead ends.
        let ra = Readahead::default();
        const K: u64 = 128 << 10;
        ra.on_read(0, K, true);
        let mut r = ra.on_read(K, 2 * K, true).expect("sequential");
        let mut windows = Vec::new();
        for _ in 0..8 {
            let next = ra
                .on_read(r.end, r.end + K, true)
                .expect("a miss where the fetched data ends continues the pattern");
            assert!(next.start >= r.end);
            windows.push(next.end - next.start);
            r = next;
        }
        assert!(
            windows.windows(2).all(|w| w[1] >= w[0]),
            "the window does not shrink: {windows:?}"
        );
        assert_eq!(windows.last(), Some(&READAHEAD_MAX_BYTES), "grown to the maximum: {windows:?}");
        // Far past the fetched data is elsewhere: no readahead.
        assert_eq!(ra.on_read(r.end + (64 << 20), r.end + (64 << 20) + K, true), None);
    }

    #[test]
    fn readahead_counts_whole_frames_fetched_past_the_window() {
        // A window of 256 KiB whose chunks sit in a 1 MiB frame fetches the whole frame: the
        // reader's next miss, after that frame, still follows the pattern.
        let ra = Readahead::default();
        const K: u64 = 128 << 10;
        ra.on_read(0, K, true);
        let ahead = ra.on_read(K, 2 * K, true).expect("sequential");
        let frame_end = ahead.start + (1 << 20);
        assert!(ra.on_read(frame_end, frame_end + K, true).is_none(), "without knowing, a jump");
        let ra = Readahead::default();
        ra.on_read(0, K, true);
        ra.on_read(K, 2 * K, true).expect("sequential");
        ra.fetched_to(frame_end);
        assert!(
            ra.on_read(frame_end, frame_end + K, true).is_some(),
            "after the whole frame: still sequential"
        );
    }
}
