//! The lazy-read seam: [`LazyBlob`] is one blob of a mounted image, everything a read of it
//! needs in one place (its cache entry, the image's chunk records of it, those chunks by frame,
//! the readahead state, where its chunks come from, the fetcher). Every mount mode reads
//! through it: kernel mode with [`LazyBlob::read`] (ranges of the blob's view), fuse mode with
//! [`LazyBlob::read_chunk`] (a file's chunk at a time), fanotify mode with [`LazyBlob::fill`]
//! (the kernel reads the cache files itself once they are filled), prefetch with
//! [`LazyBlob::ensure`]. A new way to get chunks (another [`ChunkSource`]) plugs in here once
//! and works in every mode.

use crate::cache::{CachedBlob, ChunkCache};
use crate::fetch::{chunks_starting_in, Fetcher, FrameIndex, Readahead, Target};
use crate::source::{ChunkSource, NaiadFrames};
use crate::{Result, StorageError};
use naiad_format::block_align;
use naiad_format::digest::to_hex;
use naiad_format::extension::{ChunkRecord, Extension};
use naiad_format::BLOCK_SIZE_BYTES;
use std::sync::Arc;

/// One blob of a mounted image.
pub struct LazyBlob {
    cached: Arc<CachedBlob>,
    /// The image's chunks of this blob, sorted by view offset.
    chunks: Vec<ChunkRecord>,
    /// The same chunks by frame: a fetch fills whole frames.
    frames: FrameIndex,
    readahead: Readahead,
    source: Arc<dyn ChunkSource>,
    fetcher: Arc<Fetcher>,
}

impl LazyBlob {
    /// A Naiad blob ([`NaiadFrames`]) whose entry is `cached`, with the image's `chunks` of
    /// it (any order), fetched through `fetcher`.
    pub fn new(
        cached: Arc<CachedBlob>,
        chunks: Vec<ChunkRecord>,
        fetcher: Arc<Fetcher>,
    ) -> Arc<Self> {
        Self::with_source(cached, chunks, Arc::new(NaiadFrames), fetcher)
    }

    /// A blob whose units `source` decodes.
    pub fn with_source(
        cached: Arc<CachedBlob>,
        mut chunks: Vec<ChunkRecord>,
        source: Arc<dyn ChunkSource>,
        fetcher: Arc<Fetcher>,
    ) -> Arc<Self> {
        chunks.sort_by_key(|c| c.view_offset);
        let frames = FrameIndex::new(chunks.clone());
        Arc::new(LazyBlob {
            cached,
            chunks,
            frames,
            readahead: Readahead::default(),
            source,
            fetcher,
        })
    }

    /// Every blob of an image (by blob index), its entry opened in `cache`: the entry of the
    /// layout this image gives the blob, so that what it reads was verified against its own
    /// chunk digests whatever other images sharing the cache say.
    pub fn for_image(
        ext: &Extension,
        cache: &ChunkCache,
        fetcher: &Arc<Fetcher>,
    ) -> Result<Vec<Arc<Self>>> {
        ext.blobs
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let cached = cache.image_blob(ext, i)?;
                Ok(Self::new(cached, ext.blob_chunks(i as u32).to_vec(), fetcher.clone()))
            })
            .collect()
    }

    /// The blob's cache entry.
    pub fn cached(&self) -> &Arc<CachedBlob> {
        &self.cached
    }

    /// The image's chunks of the blob, by view offset.
    pub fn chunks(&self) -> &[ChunkRecord] {
        &self.chunks
    }

    /// The image's chunks of the blob, by frame.
    pub fn frames(&self) -> &FrameIndex {
        &self.frames
    }

    /// The fetcher (its counters are the mount's).
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// Size of the blob's view.
    pub fn view_size(&self) -> u64 {
        self.cached.view_size()
    }

    pub(crate) fn target(&self, whole_frames: bool) -> Target<'_> {
        Target {
            blob: &self.cached,
            source: &*self.source,
            frames: whole_frames.then_some(&self.frames),
        }
    }

    /// The chunks overlapping view bytes `[offset, end)`.
    fn overlapping(&self, offset: u64, end: u64) -> &[ChunkRecord] {
        let a = self
            .chunks
            .partition_point(|c| c.view_offset + block_align(u64::from(c.size)) <= offset);
        let b = a + self.chunks[a..].partition_point(|c| c.view_offset < end);
        &self.chunks[a..b]
    }

    /// The chunks overlapping view bytes `[offset, end)`, if together they cover every block
    /// of it (else a block no chunk of the image covers: unknown bytes, never data).
    pub fn covering(&self, offset: u64, end: u64) -> Option<&[ChunkRecord]> {
        let wanted = self.overlapping(offset, end);
        let mut covered = offset - offset % BLOCK_SIZE_BYTES;
        for c in wanted {
            if c.view_offset > covered {
                break;
            }
            covered = covered.max(c.view_offset + block_align(u64::from(c.size)));
        }
        (covered >= end).then_some(wanted)
    }

    /// Reads `buf.len()` bytes of the view at `offset` (clipped to the view by the caller),
    /// fetching what is missing, whole frames at a time, and fetching ahead of a sequential
    /// reader. Data the cache cannot store (disk full) is served from memory. An error for a
    /// range some block of which no chunk covers, or whose chunks cannot be fetched.
    pub fn read(self: &Arc<Self>, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        if buf.is_empty() {
            return Ok(());
        }
        let Some(wanted) = self.covering(offset, end) else {
            return Err(StorageError::Uncovered {
                blob: to_hex(self.cached.digest()),
                offset,
                len: buf.len() as u64,
            });
        };
        self.read_ahead(offset, end, !self.cached.is_present(offset, end - offset), false);
        self.fetcher.read(self.target(true), wanted, buf, offset)
    }

    /// Reads `buf.len()` bytes of chunk `rec` (one of this blob's) from byte `from` of the
    /// chunk, as [`LazyBlob::read`] does.
    pub fn read_chunk(
        self: &Arc<Self>,
        rec: &ChunkRecord,
        from: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let (start, end) = (rec.view_offset + from, rec.view_offset + from + buf.len() as u64);
        // A file's chunks lie in order in its blob's view: sequential reads of a file (or of
        // files stored one after another) are sequential there too.
        self.read_ahead(start, end, !self.cached.is_present(start, end - start), false);
        self.fetcher.read(self.target(true), std::slice::from_ref(rec), buf, start)
    }

    /// Makes view bytes `[offset, offset + count)` present in the cache files (clipped to the
    /// view), whole frames at a time, for a reader that is seen only where it misses (the
    /// kernel reads present data itself): readahead counts the whole frames a fill brings in.
    /// Blocks no chunk covers hold no file data (EROFS reads them only as padding).
    pub fn fill(self: &Arc<Self>, offset: u64, count: u64) -> Result<()> {
        let end = offset.saturating_add(count).min(self.view_size());
        if offset >= end || self.cached.is_present(offset, end - offset) {
            return Ok(());
        }
        let wanted = self.overlapping(offset, end);
        // The whole frames of these chunks are being filled: the reader's next miss comes
        // after them (reads of what they hold are answered without this process).
        let filled_to = self.frames.frames_end(wanted).unwrap_or(end);
        self.read_ahead(offset, end.max(filled_to), true, true);
        self.fetcher.ensure(self.target(true), wanted)
    }

    /// Makes exactly `chunks` (of this blob) present in the cache files: prefetch.
    pub fn ensure(&self, chunks: &[ChunkRecord]) -> Result<()> {
        self.fetcher.ensure(self.target(false), chunks)
    }

    /// Makes the whole frames of `chunks` (of this blob) present in the cache files, with no
    /// readahead.
    pub fn ensure_frames(&self, chunks: &[ChunkRecord]) -> Result<()> {
        self.fetcher.ensure(self.target(true), chunks)
    }

    /// Reads `buf.len()` bytes at view `offset`, fetching exactly those of `chunks` (sorted by
    /// view offset, covering the range) that are missing.
    pub fn read_chunks(&self, chunks: &[ChunkRecord], buf: &mut [u8], offset: u64) -> Result<()> {
        self.fetcher.read(self.target(false), chunks, buf, offset)
    }

    /// Notes a read of view bytes `[start, end)` and fetches ahead, in the background, what
    /// the readahead window asks for. `misses_only`: the reader is seen only where it misses,
    /// so the window moves past whole frames fetched.
    fn read_ahead(self: &Arc<Self>, start: u64, end: u64, missed: bool, misses_only: bool) {
        let Some(ahead) = self.readahead.on_read(start, end, missed) else { return };
        let chunks = chunks_starting_in(&self.chunks, ahead);
        if misses_only {
            if let Some(to) = self.frames.frames_end(chunks) {
                self.readahead.fetched_to(to);
            }
        }
        let missing: Vec<ChunkRecord> = chunks
            .iter()
            .filter(|c| !self.cached.is_present(c.view_offset, u64::from(c.size)))
            .copied()
            .collect();
        if missing.is_empty() {
            return;
        }
        let me = self.clone();
        self.fetcher.fetch_ahead(move || {
            if let Err(e) = me.ensure_frames(&missing) {
                tracing::debug!(blob = %to_hex(me.cached.digest()), error = %e, "readahead failed");
            }
        });
    }
}
