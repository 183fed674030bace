//! Blob layout: compressed frames, then a TOC describing every frame and chunk, then a
//! fixed trailer. A blob is self-describing: `naiad check` can verify one without its
//! bootstrap by reading the trailer, the TOC, and every frame.
//!
//! ```text
//! [frame 0][frame 1]...[frame n-1][TOC: header, frame records, chunk records][trailer 64 B]
//! ```
//! A frame holds one chunk, or several small chunks packed together so that small files
//! compress as well as they would in one stream. Each chunk also has a place in the blob's
//! *uncompressed view*: a sparse address space where every chunk starts on a 4 KiB boundary,
//! which is what the kernel reads through the EROFS device table.

use crate::compression::Compressor;
use crate::digest::{Digest32, Digester};
use crate::error::slice;
use crate::extension::ChunkRecord;
use crate::{
    block_align, FormatError, Result, BLOCK_SIZE_BYTES, MAX_CHUNK_SIZE_BYTES, MAX_FRAME_SIZE_BYTES,
};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// TOC magic.
pub const TOC_MAGIC: [u8; 8] = *b"NAIADTOC";
/// Blob trailer magic.
pub const BLOB_TRAILER_MAGIC: [u8; 8] = *b"NAIADBL1";
/// Size of the blob trailer.
pub const BLOB_TRAILER_SIZE_BYTES: u64 = 64;

#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawTocHeader {
    magic: [u8; 8],
    version: U32,
    digester: u8,
    reserved0: [u8; 3],
    frame_count: U64,
    chunk_count: U64,
    view_size: U64,
    reserved: [u8; 24],
}

#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawFrame {
    compressed_offset: U64,
    compressed_size: U32,
    size: U32,
    compressor: u8,
    reserved: [u8; 7],
}

#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawBlobChunk {
    digest: [u8; 32],
    view_offset: U64,
    frame_index: U32,
    frame_offset: U32,
    size: U32,
    reserved: [u8; 12],
}

#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawBlobTrailer {
    magic: [u8; 8],
    toc_offset: U64,
    toc_size: U64,
    reserved: [u8; 8],
    toc_sha256: [u8; 32],
}

/// One compressed frame of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub compressed_offset: u64,
    pub compressed_size: u32,
    /// Uncompressed size.
    pub size: u32,
    pub compressor: Compressor,
}

/// One chunk of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobChunk {
    pub digest: Digest32,
    pub view_offset: u64,
    pub frame_index: u32,
    pub frame_offset: u32,
    pub size: u32,
}

/// A blob's table of contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toc {
    pub digester: Digester,
    pub frames: Vec<Frame>,
    /// Sorted by view offset.
    pub chunks: Vec<BlobChunk>,
    /// Size of the uncompressed view (block aligned).
    pub view_size: u64,
}

/// Where the TOC is, read from a blob's trailer.
#[derive(Clone, Copy, Debug)]
pub struct BlobTrailer {
    pub toc_offset: u64,
    pub toc_size: u64,
    pub toc_sha256: Digest32,
}

impl Toc {
    /// Encodes the TOC followed by the trailer; `toc_offset` is where the TOC will start
    /// (the total size of the frames before it).
    pub fn encode_tail(&self, toc_offset: u64) -> Vec<u8> {
        let header = RawTocHeader {
            magic: TOC_MAGIC,
            version: crate::extension::FORMAT_VERSION.into(),
            digester: self.digester.code(),
            reserved0: [0; 3],
            frame_count: (self.frames.len() as u64).into(),
            chunk_count: (self.chunks.len() as u64).into(),
            view_size: self.view_size.into(),
            reserved: [0; 24],
        };
        let mut out = Vec::with_capacity(64 + self.frames.len() * 24 + self.chunks.len() * 64 + 64);
        out.extend_from_slice(header.as_bytes());
        for f in &self.frames {
            let raw = RawFrame {
                compressed_offset: f.compressed_offset.into(),
                compressed_size: f.compressed_size.into(),
                size: f.size.into(),
                compressor: f.compressor.code(),
                reserved: [0; 7],
            };
            out.extend_from_slice(raw.as_bytes());
        }
        for c in &self.chunks {
            let raw = RawBlobChunk {
                digest: c.digest,
                view_offset: c.view_offset.into(),
                frame_index: c.frame_index.into(),
                frame_offset: c.frame_offset.into(),
                size: c.size.into(),
                reserved: [0; 12],
            };
            out.extend_from_slice(raw.as_bytes());
        }
        let toc_size = out.len() as u64;
        let trailer = RawBlobTrailer {
            magic: BLOB_TRAILER_MAGIC,
            toc_offset: toc_offset.into(),
            toc_size: toc_size.into(),
            reserved: [0; 8],
            toc_sha256: crate::digest::sha256(&out),
        };
        out.extend_from_slice(trailer.as_bytes());
        out
    }

    /// Decodes and validates a TOC read from `toc_offset` of a blob: frames must tile the
    /// bytes before the TOC, chunks must lie inside their frames and be laid out in the view
    /// in order without overlap.
    pub fn decode(bytes: &[u8], trailer: &BlobTrailer) -> Result<Self> {
        let actual = crate::digest::sha256(bytes);
        if actual != trailer.toc_sha256 {
            return Err(FormatError::DigestMismatch {
                what: "blob TOC".into(),
                expected: hex::encode(trailer.toc_sha256),
                actual: hex::encode(actual),
            });
        }
        let (h, mut rest) =
            RawTocHeader::read_from_prefix(bytes).map_err(|_| FormatError::Truncated {
                what: "blob TOC",
                offset: 0,
                need: 64,
                have: bytes.len() as u64,
            })?;
        if h.magic != TOC_MAGIC {
            return Err(FormatError::BadMagic { what: "blob TOC" });
        }
        if h.version.get() != crate::extension::FORMAT_VERSION {
            return Err(FormatError::unsupported("blob TOC version", h.version.get().to_string()));
        }
        let digester = Digester::from_code(h.digester)?;
        let (nf, nc) = (h.frame_count.get(), h.chunk_count.get());
        let need =
            nf.checked_mul(24).and_then(|f| nc.checked_mul(64).and_then(|c| c.checked_add(f)));
        if need != Some(rest.len() as u64) {
            return Err(FormatError::invalid(
                "blob TOC",
                format!("{nf} frames and {nc} chunks do not fill {} bytes", rest.len()),
            ));
        }
        let bad = |d: String| FormatError::invalid("blob TOC", d);
        let mut frames = Vec::with_capacity(nf as usize);
        let mut expect_offset = 0u64;
        for i in 0..nf {
            let (f, r) =
                RawFrame::read_from_prefix(rest).map_err(|_| bad("short frame table".into()))?;
            rest = r;
            let frame = Frame {
                compressed_offset: f.compressed_offset.get(),
                compressed_size: f.compressed_size.get(),
                size: f.size.get(),
                compressor: Compressor::from_code(f.compressor)?,
            };
            if frame.compressed_offset != expect_offset
                || frame.size == 0
                || frame.size > MAX_FRAME_SIZE_BYTES
            {
                return Err(bad(format!("frame {i} is misplaced or has a bad size")));
            }
            expect_offset += u64::from(frame.compressed_size);
            frames.push(frame);
        }
        if expect_offset != trailer.toc_offset {
            return Err(bad(format!(
                "frames end at {expect_offset}, TOC starts at {}",
                trailer.toc_offset
            )));
        }
        let mut chunks: Vec<BlobChunk> = Vec::with_capacity(nc as usize);
        let mut view_end = 0u64;
        for i in 0..nc {
            let (c, r) = RawBlobChunk::read_from_prefix(rest)
                .map_err(|_| bad("short chunk table".into()))?;
            rest = r;
            let chunk = BlobChunk {
                digest: c.digest,
                view_offset: c.view_offset.get(),
                frame_index: c.frame_index.get(),
                frame_offset: c.frame_offset.get(),
                size: c.size.get(),
            };
            let frame = frames
                .get(chunk.frame_index as usize)
                .ok_or_else(|| bad(format!("chunk {i}: frame out of range")))?;
            let placed = chunk.size != 0
                && chunk.size <= MAX_CHUNK_SIZE_BYTES
                && u64::from(chunk.frame_offset) + u64::from(chunk.size) <= u64::from(frame.size)
                && chunk.view_offset.is_multiple_of(BLOCK_SIZE_BYTES)
                && chunk.view_offset >= view_end;
            // The end is checked too: a chunk in the last block of the 64-bit view has none.
            match chunk.view_offset.checked_add(block_align(u64::from(chunk.size))) {
                Some(end) if placed => view_end = end,
                _ => {
                    return Err(bad(format!(
                        "chunk {i} lies outside its frame or overlaps the previous chunk"
                    )))
                }
            }
            chunks.push(chunk);
        }
        let view_size = h.view_size.get();
        if view_size < view_end || view_size % BLOCK_SIZE_BYTES != 0 {
            return Err(bad("view size does not cover the chunks".into()));
        }
        Ok(Toc { digester, frames, chunks, view_size })
    }
}

impl Toc {
    /// The bootstrap record of chunk `index` of this TOC, for a blob at `blob_index` of an
    /// image. Panics if `index` is out of range (TOCs are validated on decode).
    pub fn record(&self, index: usize, blob_index: u32) -> ChunkRecord {
        let c = &self.chunks[index];
        let f = &self.frames[c.frame_index as usize];
        ChunkRecord {
            blob_index,
            view_offset: c.view_offset,
            size: c.size,
            compressed_offset: f.compressed_offset,
            compressed_size: f.compressed_size,
            frame_size: f.size,
            frame_offset: c.frame_offset,
            compressor: f.compressor,
            digest: c.digest,
        }
    }
}

impl BlobTrailer {
    /// Decodes the trailer from the last [`BLOB_TRAILER_SIZE_BYTES`] of a blob of `blob_len` bytes.
    pub fn decode(last: &[u8], blob_len: u64) -> Result<Self> {
        let raw = slice(last, 0, BLOB_TRAILER_SIZE_BYTES, "blob trailer")?;
        let t = RawBlobTrailer::read_from_bytes(raw)
            .map_err(|_| FormatError::invalid("blob trailer", "unreadable"))?;
        if t.magic != BLOB_TRAILER_MAGIC {
            return Err(FormatError::BadMagic {
                what: "blob trailer (blob truncated or not a Naiad blob)",
            });
        }
        let tr = BlobTrailer {
            toc_offset: t.toc_offset.get(),
            toc_size: t.toc_size.get(),
            toc_sha256: t.toc_sha256,
        };
        match tr
            .toc_offset
            .checked_add(tr.toc_size)
            .and_then(|e| e.checked_add(BLOB_TRAILER_SIZE_BYTES))
        {
            Some(end) if end == blob_len => Ok(tr),
            _ => Err(FormatError::invalid(
                "blob trailer",
                format!("TOC range does not end the {blob_len}-byte blob"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob of `frames` bytes of stored data followed by the tail `toc` encodes.
    fn blob_of(toc: &Toc, frames: usize) -> Vec<u8> {
        let mut blob = vec![0u8; frames];
        blob.extend_from_slice(&toc.encode_tail(frames as u64));
        blob
    }

    fn decode(blob: &[u8]) -> Result<Toc> {
        let tail_at = blob.len() - BLOB_TRAILER_SIZE_BYTES as usize;
        let trailer = BlobTrailer::decode(&blob[tail_at..], blob.len() as u64)?;
        Toc::decode(&blob[trailer.toc_offset as usize..tail_at], &trailer)
    }

    /// Found while writing the `blob_toc` fuzz target (input in fuzz/regressions/blob_toc/): a
    /// chunk in the last block of the 64-bit view made the end-of-chunk sum overflow (a panic
    /// with overflow checks; without them the bound wrapped to 0 and later chunks could
    /// overlap it).
    #[test]
    fn a_chunk_at_the_end_of_the_address_space_is_refused() {
        let frame = Frame {
            compressed_offset: 0,
            compressed_size: 4096,
            size: 4096,
            compressor: Compressor::None,
        };
        let chunk = |view_offset| BlobChunk {
            digest: [0; 32],
            view_offset,
            frame_index: 0,
            frame_offset: 0,
            size: 4096,
        };
        let toc = |view_offset, view_size| Toc {
            digester: Digester::Blake3,
            frames: vec![frame],
            chunks: vec![chunk(view_offset)],
            view_size,
        };
        assert!(decode(&blob_of(&toc(0, 4096), 4096)).is_ok());
        let last_block = u64::MAX - (BLOCK_SIZE_BYTES - 1);
        let err = decode(&blob_of(&toc(last_block, 4096), 4096)).unwrap_err();
        assert!(err.to_string().contains("chunk 0"), "{err}");
    }
}
