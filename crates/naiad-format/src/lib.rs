//! On-disk structures of a Naiad image.
//!
//! A Naiad image is a *bootstrap* plus one or more *blobs*:
//!
//! * the bootstrap is a valid EROFS image (4 KiB blocks, metadata only) whose regular files
//!   are chunk-based inodes pointing into the blobs' *uncompressed views* through the EROFS
//!   device table, followed by the Naiad extension (blob table, chunk table, prefetch list,
//!   per-block checksums) and a trailer carrying the bootstrap's own digest;
//! * a blob holds compressed frames of chunk data and a TOC at its tail that describes every
//!   frame and chunk, so a blob can be verified without its bootstrap.
//!
//! This crate only encodes and decodes byte slices. Every parser treats its input as
//! untrusted: every offset and length is checked before use, and no allocation is sized by an
//! unchecked field.

pub mod blob;
pub mod bootstrap;
pub mod compression;
pub mod digest;
pub mod erofs;
mod error;
pub mod extension;
pub mod remap;
pub mod tree;
pub mod writer;

pub use error::{FormatError, Result};

/// Size of an EROFS block and of the alignment unit of the uncompressed view.
pub const BLOCK_SIZE_BYTES: u64 = 4096;
/// log2 of [`BLOCK_SIZE_BYTES`].
pub const BLOCK_SIZE_BITS: u8 = 12;
/// Smallest chunk size a builder may use.
pub const MIN_CHUNK_SIZE_BYTES: u32 = 4096;
/// Largest chunk size a builder may use.
pub const MAX_CHUNK_SIZE_BYTES: u32 = 16 << 20;
/// Largest uncompressed frame a blob may hold. A frame is either one chunk (up to
/// [`MAX_CHUNK_SIZE_BYTES`]) or several small chunks packed together.
pub const MAX_FRAME_SIZE_BYTES: u32 = MAX_CHUNK_SIZE_BYTES;
/// Largest compressed frame: more than zstd or lz4 can make of a frame of
/// [`MAX_FRAME_SIZE_BYTES`] at worst (they add under 1/255 of the input and a few bytes), so a
/// chunk record can never ask a backend for more than this in one frame.
pub const MAX_COMPRESSED_FRAME_SIZE_BYTES: u32 =
    MAX_FRAME_SIZE_BYTES + MAX_FRAME_SIZE_BYTES / 128 + 65536;
/// Largest uncompressed view of one blob (a layer's files, block aligned). A mount keeps a
/// presence bitmap of one bit per block of every view: at most 2 MiB for such a blob.
pub const MAX_BLOB_VIEW_SIZE_BYTES: u64 = 64 << 30;
/// Largest sum of the views of an image's blobs: at most 8 MiB of presence bitmaps a mount.
pub const MAX_IMAGE_VIEW_SIZE_BYTES: u64 = 256 << 30;

/// Rounds `n` up to a multiple of [`BLOCK_SIZE_BYTES`].
pub const fn block_align(n: u64) -> u64 {
    n.div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES
}
