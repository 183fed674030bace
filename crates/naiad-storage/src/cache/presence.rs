//! The presence bitmap of a cached blob: which 4 KiB blocks of its view hold verified data.
//!
//! On disk (`<digest>.present`) it is an array of little-endian `u64` words, bit `b % 64` of
//! word `b / 64` for block `b`. The cache, `naiad cache verify` and the fanotify keeper all read
//! it through this type: the cache keeps it in memory as atomic words (presence checks take no
//! lock), the others decode the file or read the words a range needs.

use naiad_format::{block_align, BLOCK_SIZE_BYTES};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per block of a view of `view_size` bytes.
#[derive(Debug)]
pub struct PresenceMap {
    words: Vec<AtomicU64>,
    view_size: u64,
}

impl PresenceMap {
    /// Bytes of the bitmap file of a view of `view_size` bytes.
    pub fn file_len(view_size: u64) -> u64 {
        (view_size / BLOCK_SIZE_BYTES).div_ceil(64) * 8
    }

    /// The map held in `raw` (the file's bytes; missing words read as unset).
    pub fn decode(raw: &[u8], view_size: u64) -> Self {
        let n = (Self::file_len(view_size) / 8) as usize;
        let words = (0..n)
            .map(|w| {
                let mut b = [0u8; 8];
                if let Some(src) = raw.get(w * 8..w * 8 + 8) {
                    b.copy_from_slice(src);
                }
                AtomicU64::new(u64::from_le_bytes(b))
            })
            .collect();
        PresenceMap { words, view_size }
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        (0..self.words.len()).flat_map(|w| self.word_bytes(w)).collect()
    }

    /// The blocks of view bytes `[offset, offset + len)` (clipped to the view).
    pub fn blocks(&self, offset: u64, len: u64) -> Range<u64> {
        blocks_of(offset, len, self.view_size)
    }

    /// The blocks a chunk of `size` bytes at `offset` fills (its last block padded).
    pub fn chunk_blocks(&self, offset: u64, size: u32) -> Range<u64> {
        self.blocks(offset, block_align(u64::from(size)))
    }

    /// Whether block `b` is marked.
    pub fn is_set(&self, b: u64) -> bool {
        self.words
            .get((b / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (b % 64)) != 0)
    }

    /// Whether every block of `[offset, offset + len)` is marked.
    pub fn all_set(&self, offset: u64, len: u64) -> bool {
        self.blocks(offset, len).all(|b| self.is_set(b))
    }

    /// Marks `blocks`; the indexes of the words changed are added to `touched`.
    pub fn set(&self, blocks: Range<u64>, touched: &mut Vec<usize>) {
        for b in blocks {
            let w = (b / 64) as usize;
            if let Some(word) = self.words.get(w) {
                word.fetch_or(1 << (b % 64), Ordering::Release);
                if touched.last() != Some(&w) {
                    touched.push(w);
                }
            }
        }
    }

    /// Unmarks `blocks` (a repair: only while no process has the entry open).
    pub fn clear(&self, blocks: Range<u64>) {
        for b in blocks {
            if let Some(word) = self.words.get((b / 64) as usize) {
                word.fetch_and(!(1 << (b % 64)), Ordering::Release);
            }
        }
    }

    /// Word `w` as the file stores it.
    pub fn word_bytes(&self, w: usize) -> [u8; 8] {
        self.words[w].load(Ordering::Acquire).to_le_bytes()
    }

    /// Number of marked blocks.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.load(Ordering::Relaxed).count_ones())).sum()
    }

    /// Whether every block of view bytes `[offset, offset + count)` is marked in the bitmap
    /// file `map` (another process's fills, read without keeping a copy); false if it cannot be
    /// read.
    pub fn file_has(map: &File, view_size: u64, offset: u64, count: u64) -> bool {
        let blocks = blocks_of(offset, count, view_size);
        if blocks.is_empty() {
            return true;
        }
        let (first, last) = (blocks.start / 64, (blocks.end - 1) / 64);
        let mut raw = vec![0u8; ((last - first + 1) * 8) as usize];
        if map.read_exact_at(&mut raw, first * 8).is_err() {
            return false;
        }
        blocks.into_iter().all(|b| {
            let at = ((b / 64 - first) * 8) as usize;
            let word = u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
            word & (1 << (b % 64)) != 0
        })
    }
}

/// The blocks of view bytes `[offset, offset + len)`, clipped to a view of `view_size` bytes.
pub fn blocks_of(offset: u64, len: u64, view_size: u64) -> Range<u64> {
    let end = offset.saturating_add(len).min(view_size);
    if offset >= end {
        return 0..0;
    }
    offset / BLOCK_SIZE_BYTES..end.div_ceil(BLOCK_SIZE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn bits_round_trip_through_the_file_format_and_file_reads_agree() {
        let view = 200 * BLOCK_SIZE_BYTES + 100;
        let m = PresenceMap::decode(&[], view);
        assert_eq!(PresenceMap::file_len(view), 32, "200 whole blocks: four words");
        let mut touched = Vec::new();
        m.set(m.chunk_blocks(63 * BLOCK_SIZE_BYTES, 5000), &mut touched);
        assert_eq!(touched, vec![0, 1], "block 63 in word 0, block 64 in word 1");
        assert!(m.all_set(63 * BLOCK_SIZE_BYTES, 2 * BLOCK_SIZE_BYTES));
        assert!(!m.all_set(62 * BLOCK_SIZE_BYTES, 1) && !m.all_set(65 * BLOCK_SIZE_BYTES, 1));
        assert_eq!(m.count(), 2);
        let raw = m.encode();
        assert_eq!(raw[7], 0x80, "bit 63 of word 0, little endian");
        assert_eq!(raw[8], 0x01);
        let back = PresenceMap::decode(&raw, view);
        assert!(back.is_set(63) && back.is_set(64) && !back.is_set(65));
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&raw).unwrap();
        assert!(PresenceMap::file_has(&f, view, 63 * BLOCK_SIZE_BYTES, 8192));
        assert!(!PresenceMap::file_has(&f, view, 63 * BLOCK_SIZE_BYTES, 8193));
        assert!(PresenceMap::file_has(&f, view, view, 10), "an empty range is present");
        back.clear(63..64);
        assert!(!back.is_set(63) && back.is_set(64));
        assert!(!m.is_set(1 << 40), "past the end reads as unset");
    }
}
