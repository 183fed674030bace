//! A blob's chunks grouped by frame (by the unit their bytes are fetched and decoded in), so
//! that a fetched frame fills every chunk it holds: small files share frames, and without
//! this each would fetch the frame again.

use naiad_format::extension::ChunkRecord;

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
