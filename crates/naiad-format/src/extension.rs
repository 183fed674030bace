//! The Naiad extension: what a reader needs beyond EROFS, stored after the EROFS blocks of
//! the bootstrap (the kernel and erofs-utils never look there), and the trailer that ends
//! every bootstrap.
//!
//! Layout of a bootstrap file:
//! ```text
//! [EROFS image: superblock, device table, inodes, directory blocks]   sb.blocks * 4 KiB
//! [extension: header, blob table, chunk table, prefetch list, block checksums]
//! [trailer: 64 bytes, ends with the sha256 of every byte before it]
//! ```

use crate::compression::Compressor;
use crate::digest::{Digest32, Digester};
use crate::error::slice;
use crate::{
    FormatError, Result, BLOCK_SIZE_BYTES, MAX_CHUNK_SIZE_BYTES, MAX_FRAME_SIZE_BYTES,
    MIN_CHUNK_SIZE_BYTES,
};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Extension header magic.
pub const EXT_MAGIC: [u8; 8] = *b"NAIADEXT";
/// Trailer magic.
pub const TRAILER_MAGIC: [u8; 8] = *b"NAIADBS1";
/// Format version written and read.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the trailer.
pub const TRAILER_SIZE_BYTES: u64 = 64;
/// Longest path the prefetch list may hold.
pub const MAX_PREFETCH_PATH_BYTES: usize = 4096;

#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    version: U32,
    digester: u8,
    reserved0: [u8; 3],
    chunk_size: U32,
    blob_count: U32,
    chunk_count: U64,
    prefetch_count: U32,
    prefetch_bytes: U32,
    checksum_count: U64,
    reserved: [u8; 16],
}

#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawBlob {
    digest: [u8; 32],
    compressed_size: U64,
    view_size: U64,
    chunk_count: U32,
    compressor: u8,
    reserved: [u8; 11],
}

#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawChunk {
    digest: [u8; 32],
    view_offset: U64,
    compressed_offset: U64,
    compressed_size: U32,
    frame_size: U32,
    frame_offset: U32,
    size: U32,
    blob_index: U32,
    compressor: u8,
    reserved: [u8; 3],
}

#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawTrailer {
    magic: [u8; 8],
    ext_offset: U64,
    ext_size: U64,
    reserved: [u8; 8],
    sha256: [u8; 32],
}

/// One blob the image references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// sha256 of the blob file: its OCI digest and its file name.
    pub digest: Digest32,
    pub compressed_size: u64,
    /// Size of the uncompressed view (a multiple of 4 KiB).
    pub view_size: u64,
    pub chunk_count: u32,
    /// The compressor most of its frames use (informational; frames carry their own).
    pub compressor: Compressor,
}

/// One chunk the image references, with everything needed to fetch and verify it: the frame
/// holding it (`compressed_offset..+compressed_size` in the blob, `frame_size` bytes once
/// decompressed) and its place in that frame and in the blob's uncompressed view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    pub blob_index: u32,
    pub view_offset: u64,
    pub size: u32,
    pub compressed_offset: u64,
    pub compressed_size: u32,
    pub frame_size: u32,
    pub frame_offset: u32,
    pub compressor: Compressor,
    pub digest: Digest32,
}

/// The decoded extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    pub digester: Digester,
    pub chunk_size: u32,
    pub blobs: Vec<BlobEntry>,
    /// Sorted by `(blob_index, view_offset)`, no two at the same place.
    pub chunks: Vec<ChunkRecord>,
    /// Absolute paths (bytes) to fetch first.
    pub prefetch: Vec<Vec<u8>>,
    /// First 8 bytes (little-endian) of the BLAKE3 of each 4 KiB block of the EROFS area,
    /// so that `check` can say which block, and so which inodes, a corruption hit.
    pub block_checksums: Vec<u64>,
}

/// Checksum of one EROFS block as stored in [`Extension::block_checksums`].
pub fn block_checksum(block: &[u8]) -> u64 {
    let h = blake3::hash(block);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

impl Extension {
    /// Finds the chunk of `blob_index` that starts at `view_offset`.
    pub fn find_chunk(&self, blob_index: u32, view_offset: u64) -> Option<&ChunkRecord> {
        self.chunks
            .binary_search_by(|c| (c.blob_index, c.view_offset).cmp(&(blob_index, view_offset)))
            .ok()
            .map(|i| &self.chunks[i])
    }

    /// The chunks of one blob (a slice: the table is sorted by blob, then view offset).
    pub fn blob_chunks(&self, blob_index: u32) -> &[ChunkRecord] {
        let start = self.chunks.partition_point(|c| c.blob_index < blob_index);
        let end = self.chunks.partition_point(|c| c.blob_index <= blob_index);
        &self.chunks[start..end]
    }

    /// Encodes the extension.
    pub fn encode(&self) -> Vec<u8> {
        let prefetch_bytes: usize = self.prefetch.iter().map(|p| 2 + p.len()).sum();
        let header = RawHeader {
            magic: EXT_MAGIC,
            version: FORMAT_VERSION.into(),
            digester: self.digester.code(),
            reserved0: [0; 3],
            chunk_size: self.chunk_size.into(),
            blob_count: (self.blobs.len() as u32).into(),
            chunk_count: (self.chunks.len() as u64).into(),
            prefetch_count: (self.prefetch.len() as u32).into(),
            prefetch_bytes: (prefetch_bytes as u32).into(),
            checksum_count: (self.block_checksums.len() as u64).into(),
            reserved: [0; 16],
        };
        let mut out = Vec::with_capacity(
            64 + self.blobs.len() * 64 + self.chunks.len() * 72 + prefetch_bytes,
        );
        out.extend_from_slice(header.as_bytes());
        for b in &self.blobs {
            let raw = RawBlob {
                digest: b.digest,
                compressed_size: b.compressed_size.into(),
                view_size: b.view_size.into(),
                chunk_count: b.chunk_count.into(),
                compressor: b.compressor.code(),
                reserved: [0; 11],
            };
            out.extend_from_slice(raw.as_bytes());
        }
        for c in &self.chunks {
            let raw = RawChunk {
                digest: c.digest,
                view_offset: c.view_offset.into(),
                compressed_offset: c.compressed_offset.into(),
                compressed_size: c.compressed_size.into(),
                frame_size: c.frame_size.into(),
                frame_offset: c.frame_offset.into(),
                size: c.size.into(),
                blob_index: c.blob_index.into(),
                compressor: c.compressor.code(),
                reserved: [0; 3],
            };
            out.extend_from_slice(raw.as_bytes());
        }
        for p in &self.prefetch {
            out.extend_from_slice(&(p.len() as u16).to_le_bytes());
            out.extend_from_slice(p);
        }
        for c in &self.block_checksums {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// Decodes and validates an extension. Every count is checked against the bytes
    /// actually present before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (header, mut rest) =
            RawHeader::read_from_prefix(bytes).map_err(|_| FormatError::Truncated {
                what: "extension header",
                offset: 0,
                need: std::mem::size_of::<RawHeader>() as u64,
                have: bytes.len() as u64,
            })?;
        if header.magic != EXT_MAGIC {
            return Err(FormatError::BadMagic { what: "extension header" });
        }
        if header.version.get() != FORMAT_VERSION {
            return Err(FormatError::unsupported(
                "extension version",
                header.version.get().to_string(),
            ));
        }
        let digester = Digester::from_code(header.digester)?;
        let chunk_size = header.chunk_size.get();
        if !chunk_size.is_power_of_two()
            || !(MIN_CHUNK_SIZE_BYTES..=MAX_CHUNK_SIZE_BYTES).contains(&chunk_size)
        {
            return Err(FormatError::invalid("chunk size", chunk_size.to_string()));
        }
        let blob_count = u64::from(header.blob_count.get());
        let chunk_count = header.chunk_count.get();
        let need = blob_count
            .checked_mul(64)
            .and_then(|b| chunk_count.checked_mul(72).and_then(|c| c.checked_add(b)))
            .and_then(|n| n.checked_add(u64::from(header.prefetch_bytes.get())))
            .and_then(|n| {
                header.checksum_count.get().checked_mul(8).and_then(|c| c.checked_add(n))
            });
        match need {
            Some(n) if n <= rest.len() as u64 => {}
            _ => {
                return Err(FormatError::Truncated {
                    what: "extension tables",
                    offset: 64,
                    need: need.unwrap_or(u64::MAX),
                    have: rest.len() as u64,
                })
            }
        }
        let mut blobs = Vec::with_capacity(blob_count as usize);
        let mut total_view = 0u64;
        for i in 0..blob_count {
            let (raw, r) = RawBlob::read_from_prefix(rest)
                .map_err(|_| FormatError::invalid("blob table", "short"))?;
            rest = r;
            if raw.view_size.get() % BLOCK_SIZE_BYTES != 0 {
                return Err(FormatError::invalid(
                    "blob table",
                    format!("blob {i}: view size not block aligned"),
                ));
            }
            if raw.view_size.get() > crate::MAX_BLOB_VIEW_SIZE_BYTES {
                return Err(FormatError::invalid(
                    "blob table",
                    format!(
                        "blob {i}: view size {} is over the limit MAX_BLOB_VIEW_SIZE_BYTES ({} bytes)",
                        raw.view_size.get(),
                        crate::MAX_BLOB_VIEW_SIZE_BYTES
                    ),
                ));
            }
            total_view += raw.view_size.get();
            if total_view > crate::MAX_IMAGE_VIEW_SIZE_BYTES {
                return Err(FormatError::invalid(
                    "blob table",
                    format!(
                        "the blobs' views add up to over the limit MAX_IMAGE_VIEW_SIZE_BYTES ({} bytes) at blob {i}",
                        crate::MAX_IMAGE_VIEW_SIZE_BYTES
                    ),
                ));
            }
            blobs.push(BlobEntry {
                digest: raw.digest,
                compressed_size: raw.compressed_size.get(),
                view_size: raw.view_size.get(),
                chunk_count: raw.chunk_count.get(),
                compressor: Compressor::from_code(raw.compressor)?,
            });
        }
        let mut chunks: Vec<ChunkRecord> = Vec::with_capacity(chunk_count as usize);
        for i in 0..chunk_count {
            let (raw, r) = RawChunk::read_from_prefix(rest)
                .map_err(|_| FormatError::invalid("chunk table", "short"))?;
            rest = r;
            let c = ChunkRecord {
                blob_index: raw.blob_index.get(),
                view_offset: raw.view_offset.get(),
                size: raw.size.get(),
                compressed_offset: raw.compressed_offset.get(),
                compressed_size: raw.compressed_size.get(),
                frame_size: raw.frame_size.get(),
                frame_offset: raw.frame_offset.get(),
                compressor: Compressor::from_code(raw.compressor)?,
                digest: raw.digest,
            };
            validate_chunk(&c, &blobs)
                .map_err(|d| FormatError::invalid("chunk table", format!("chunk {i}: {d}")))?;
            if let Some(prev) = chunks.last() {
                let prev_end = prev.view_offset + crate::block_align(u64::from(prev.size));
                if (prev.blob_index, prev.view_offset) >= (c.blob_index, c.view_offset)
                    || (prev.blob_index == c.blob_index && prev_end > c.view_offset)
                {
                    return Err(FormatError::invalid(
                        "chunk table",
                        format!("chunk {i}: not sorted or overlaps the previous chunk"),
                    ));
                }
            }
            chunks.push(c);
        }
        let (mut pf, rest) = rest.split_at(header.prefetch_bytes.get() as usize);
        let mut prefetch = Vec::new();
        for _ in 0..header.prefetch_count.get() {
            let len_bytes = slice(pf, 0, 2, "prefetch list")?;
            let len = u16::from_le_bytes([len_bytes[0], len_bytes[1]]) as usize;
            let path = slice(pf, 2, len as u64, "prefetch list")?;
            if len > MAX_PREFETCH_PATH_BYTES || path.first() != Some(&b'/') || path.contains(&0) {
                return Err(FormatError::invalid("prefetch list", "entry is not an absolute path"));
            }
            prefetch.push(path.to_vec());
            pf = &pf[2 + len..];
        }
        let count = header.checksum_count.get() as usize;
        let block_checksums = rest[..count * 8]
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8-byte chunk")))
            .collect();
        Ok(Extension { digester, chunk_size, blobs, chunks, prefetch, block_checksums })
    }
}

fn validate_chunk(c: &ChunkRecord, blobs: &[BlobEntry]) -> std::result::Result<(), String> {
    let blob = blobs
        .get(c.blob_index as usize)
        .ok_or_else(|| format!("blob index {} out of range", c.blob_index))?;
    if !c.view_offset.is_multiple_of(BLOCK_SIZE_BYTES) {
        return Err("view offset not block aligned".into());
    }
    if c.size == 0 || c.size > MAX_CHUNK_SIZE_BYTES {
        return Err(format!("size {} out of range", c.size));
    }
    if c.view_offset.checked_add(u64::from(c.size)).is_none_or(|e| e > blob.view_size) {
        return Err("extends past the blob's view".into());
    }
    if c.frame_size > MAX_FRAME_SIZE_BYTES
        || u64::from(c.frame_offset) + u64::from(c.size) > u64::from(c.frame_size)
    {
        return Err("lies outside its frame".into());
    }
    if c.compressed_size > crate::MAX_COMPRESSED_FRAME_SIZE_BYTES {
        return Err(format!(
            "compressed frame size {} is over the limit MAX_COMPRESSED_FRAME_SIZE_BYTES ({} bytes)",
            c.compressed_size,
            crate::MAX_COMPRESSED_FRAME_SIZE_BYTES
        ));
    }
    if c.compressed_offset
        .checked_add(u64::from(c.compressed_size))
        .is_none_or(|e| e > blob.compressed_size)
    {
        return Err("frame extends past the blob".into());
    }
    Ok(())
}

/// The decoded trailer.
#[derive(Clone, Copy, Debug)]
pub struct Trailer {
    pub ext_offset: u64,
    pub ext_size: u64,
    /// sha256 of every byte of the bootstrap before this field.
    pub sha256: Digest32,
}

/// Encodes a trailer; `sha256` is filled in by [`seal`].
pub fn encode_trailer(ext_offset: u64, ext_size: u64) -> [u8; TRAILER_SIZE_BYTES as usize] {
    let raw = RawTrailer {
        magic: TRAILER_MAGIC,
        ext_offset: ext_offset.into(),
        ext_size: ext_size.into(),
        reserved: [0; 8],
        sha256: [0; 32],
    };
    let mut out = [0u8; TRAILER_SIZE_BYTES as usize];
    out.copy_from_slice(raw.as_bytes());
    out
}

/// Writes the digest of everything before the last 32 bytes into those bytes.
pub fn seal(bootstrap: &mut [u8]) {
    let n = bootstrap.len() - 32;
    let d = crate::digest::sha256(&bootstrap[..n]);
    bootstrap[n..].copy_from_slice(&d);
}

/// Reads the trailer at the end of a bootstrap (does not verify the digest).
pub fn decode_trailer(bootstrap: &[u8]) -> Result<Trailer> {
    let len = bootstrap.len() as u64;
    if len < TRAILER_SIZE_BYTES {
        return Err(FormatError::Truncated {
            what: "bootstrap trailer",
            offset: 0,
            need: TRAILER_SIZE_BYTES,
            have: len,
        });
    }
    let raw = RawTrailer::read_from_bytes(&bootstrap[(len - TRAILER_SIZE_BYTES) as usize..])
        .map_err(|_| FormatError::invalid("bootstrap trailer", "unreadable"))?;
    if raw.magic != TRAILER_MAGIC {
        return Err(FormatError::BadMagic {
            what: "bootstrap trailer (file truncated or not a Naiad bootstrap)",
        });
    }
    let t = Trailer {
        ext_offset: raw.ext_offset.get(),
        ext_size: raw.ext_size.get(),
        sha256: raw.sha256,
    };
    match t.ext_offset.checked_add(t.ext_size) {
        Some(end) if end <= len - TRAILER_SIZE_BYTES => Ok(t),
        _ => {
            Err(FormatError::invalid("bootstrap trailer", "extension range lies outside the file"))
        }
    }
}

/// Checks the trailer digest against the bytes it covers.
pub fn verify_seal(bootstrap: &[u8]) -> Result<()> {
    let t = decode_trailer(bootstrap)?;
    let n = bootstrap.len() - 32;
    let actual = crate::digest::sha256(&bootstrap[..n]);
    if actual != t.sha256 {
        return Err(FormatError::DigestMismatch {
            what: "bootstrap".into(),
            expected: hex::encode(t.sha256),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::Compressor;

    fn blobs(views: &[u64]) -> Extension {
        Extension {
            digester: Digester::Blake3,
            chunk_size: 1 << 20,
            blobs: views
                .iter()
                .enumerate()
                .map(|(i, &view_size)| BlobEntry {
                    digest: [i as u8; 32],
                    compressed_size: 0,
                    view_size,
                    chunk_count: 0,
                    compressor: Compressor::Zstd,
                })
                .collect(),
            chunks: Vec::new(),
            prefetch: Vec::new(),
            block_checksums: Vec::new(),
        }
    }

    #[test]
    fn the_views_of_all_blobs_together_are_bounded() {
        let max = crate::MAX_BLOB_VIEW_SIZE_BYTES;
        let n = (crate::MAX_IMAGE_VIEW_SIZE_BYTES / max) as usize;
        let at_limit = blobs(&vec![max; n]);
        assert_eq!(Extension::decode(&at_limit.encode()).unwrap(), at_limit);
        let err = Extension::decode(&blobs(&vec![max; n + 1]).encode()).unwrap_err();
        assert!(err.to_string().contains("MAX_IMAGE_VIEW_SIZE_BYTES"), "{err}");
    }
}
