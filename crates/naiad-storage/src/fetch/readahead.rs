//! Sequential-read detection on one blob's view, and the window to fetch ahead.

use naiad_format::extension::ChunkRecord;
use std::sync::Mutex;

/// Smallest and largest readahead window (bytes of view).
pub const READAHEAD_MIN_BYTES: u64 = 256 << 10;
pub const READAHEAD_MAX_BYTES: u64 = 8 << 20;
/// Background readahead fetches running at once, per fetcher (more are skipped).
pub(crate) const READAHEAD_FETCHES: usize = 2;

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
