//! Where the bytes of a blob's chunks come from.
//!
//! A chunk record names a *unit* of its blob: the byte range `compressed_offset ..
//! compressed_offset + compressed_size` that is fetched and decoded as a whole, yielding
//! `frame_size` bytes of which the chunk is `frame_offset .. frame_offset + size`. The fetcher
//! reads units from the backend (adjacent ones merged into one request), hands each unit's
//! bytes to the blob's [`ChunkSource`] to decode, verifies every chunk it wants against its
//! digest, and fills the cache. So a source only decodes: it never sees the cache, and nothing
//! it returns reaches a reader unverified.
//!
//! Today's source is [`NaiadFrames`]: a unit is one compressed frame of a Naiad blob.
//!
//! # Adding a source
//!
//! 1. Describe each chunk with a [`ChunkRecord`] whose unit is what must be read to decode it:
//!    for a gzip layer indexed with checkpoints, the compressed span from the checkpoint at or
//!    before the chunk to the end of the span (`frame_offset`: where the chunk starts in the
//!    span's output); for an eStargz or zstd:chunked layer, the chunk's own compressed member.
//!    Chunks decoded from one unit share its `compressed_offset`, so one fetch fills them all.
//! 2. Implement [`ChunkSource::decode`]: turn the unit's bytes into its output, using whatever
//!    the source keeps beside the records (a checkpoint's saved 32 KiB window and bit offset,
//!    looked up by `compressed_offset`). Check what the input claims (sizes, offsets) and fail
//!    with an error naming the unit: a hostile blob must not panic or allocate without bound.
//! 3. Give the source to [`crate::lazy::LazyBlob::with_source`]; every mount mode then reads
//!    through it, with the same cache, verification, readahead and prefetch.

use naiad_format::compression::decompress_into;
use naiad_format::extension::ChunkRecord;

/// Decodes the units a blob's chunks are fetched in.
pub trait ChunkSource: Send + Sync + std::fmt::Debug {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Decodes the unit that `head` (any chunk of it) names from `input`, exactly its
    /// `compressed_size` bytes, into `out` (replacing what it holds). A chunk lies at
    /// `frame_offset .. frame_offset + size` of the output. An error says why the unit does
    /// not decode; the fetcher reports it as a corrupt chunk of the blob, at `head`'s offset.
    fn decode(&self, head: &ChunkRecord, input: &[u8], out: &mut Vec<u8>) -> Result<(), String>;
}

/// The units of a Naiad blob: frames, each compressed on its own with the compressor its
/// records name.
#[derive(Debug, Default, Clone, Copy)]
pub struct NaiadFrames;

impl ChunkSource for NaiadFrames {
    fn name(&self) -> &'static str {
        "naiad frames"
    }

    fn decode(&self, head: &ChunkRecord, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        decompress_into(head.compressor, input, head.frame_size, out, || {
            format!("frame at blob offset {}", head.compressed_offset)
        })
        .map_err(|e| e.to_string())
    }
}
