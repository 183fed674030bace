//! The spill: verified chunks a cache that cannot store them (disk full, a write error) keeps
//! in memory for a while, so that the read that fetched them is still served. Bounded: the
//! oldest fills go first once [`SPILL_LIMIT_BYTES`] is passed, but the last fill is always
//! kept whole. Spilled chunks are never marked present.

use naiad_format::block_align;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Bytes of verified chunks a blob keeps in memory when the cache cannot store them. The
/// last fill is always kept whole, whatever its size, so the read that made it is served.
pub const SPILL_LIMIT_BYTES: usize = 16 << 20;

/// Verified chunks that the disk did not take, by view offset, oldest first out.
#[derive(Debug, Default)]
pub(crate) struct Spill {
    /// view offset -> (fill sequence number, bytes)
    pub(crate) chunks: BTreeMap<u64, (u64, Arc<[u8]>)>,
    order: VecDeque<(u64, u64)>,
    pub(crate) bytes: usize,
    next_seq: u64,
}

impl Spill {
    /// Keeps `chunks` (one fill), dropping older fills beyond [`SPILL_LIMIT_BYTES`].
    pub(crate) fn keep(&mut self, chunks: &[(u64, &[u8])]) {
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
    pub(crate) fn forget(&mut self, off: u64) {
        if let Some((_, old)) = self.chunks.remove(&off) {
            self.bytes -= old.len();
        }
    }

    /// The spilled chunk whose blocks cover `pos`: its offset and bytes.
    pub(crate) fn covering(&self, pos: u64) -> Option<(u64, Arc<[u8]>)> {
        let (&off, (_, bytes)) = self.chunks.range(..=pos).next_back()?;
        (pos < off + block_align(bytes.len() as u64)).then(|| (off, bytes.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
