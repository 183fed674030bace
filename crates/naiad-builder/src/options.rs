//! Build options.

use crate::chunk_dict::ChunkDict;
use naiad_format::compression::Compressor;
use naiad_format::digest::Digester;
use std::sync::Arc;

/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE_BYTES: u32 = 1 << 20;
/// Small chunks are packed into shared frames of at most this many uncompressed bytes, so a
/// read of one small file fetches at most this much more than it needs.
pub const DEFAULT_FRAME_SIZE_BYTES: u32 = 1 << 20;

/// How to build an image.
#[derive(Debug)]
pub struct BuildOptions {
    /// Power of two in 4 KiB ..= 16 MiB.
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    /// Upper bound of a packed frame.
    pub frame_size: u32,
    /// Chunks found here are referenced, not stored again.
    pub chunk_dict: Option<Arc<ChunkDict>>,
    /// Keep OCI whiteout entries as plain empty files instead of applying them: for a
    /// per-layer image that [`crate::merge`] later combines with the layers below it.
    pub keep_whiteouts: bool,
    /// Paths to prefetch first (absolute, as bytes).
    pub prefetch: Vec<Vec<u8>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            chunk_size: DEFAULT_CHUNK_SIZE_BYTES,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            frame_size: DEFAULT_FRAME_SIZE_BYTES,
            chunk_dict: None,
            keep_whiteouts: false,
            prefetch: Vec::new(),
        }
    }
}

impl BuildOptions {
    /// Checks the options against the format's limits.
    pub fn validate(&self) -> crate::Result<()> {
        let cs = self.chunk_size;
        if !cs.is_power_of_two()
            || !(naiad_format::MIN_CHUNK_SIZE_BYTES..=naiad_format::MAX_CHUNK_SIZE_BYTES)
                .contains(&cs)
        {
            return Err(crate::BuildError::Invalid(format!(
                "chunk size {cs} must be a power of two from 4 KiB to 16 MiB"
            )));
        }
        if let Some(dict) = &self.chunk_dict {
            if dict.digester() != self.digester {
                return Err(crate::BuildError::Invalid(format!(
                    "the chunk dictionary uses {} digests but this build uses {}",
                    dict.digester().name(),
                    self.digester.name()
                )));
            }
        }
        Ok(())
    }
}
