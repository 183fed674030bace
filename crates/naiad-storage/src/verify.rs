//! Whole-blob verification: the file's sha256 against its name, the TOC, and every chunk's
//! digest; plus the cross-check of a bootstrap's chunk records against a blob's TOC.

use crate::blob_store::BlobFile;
use crate::{Result, StorageError};
use naiad_format::blob::Toc;
use naiad_format::compression::decompress_into;
use naiad_format::digest::to_hex;
use naiad_format::extension::ChunkRecord;
use sha2::Digest as _;
use std::io::Read;

/// What a blob verification saw.
#[derive(Clone, Debug, Default)]
pub struct BlobCheck {
    pub frames: u64,
    pub chunks: u64,
    pub view_bytes: u64,
}

/// Streams the blob and checks that its sha256 is its name.
pub fn check_blob_digest(blob: &BlobFile) -> Result<()> {
    let mut f = std::fs::File::open(blob.path()).map_err(StorageError::io(blob.path()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(StorageError::io(blob.path()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let actual: [u8; 32] = h.finalize().into();
    if &actual != blob.digest() {
        return Err(StorageError::BlobDigest {
            digest: to_hex(blob.digest()),
            actual: to_hex(&actual),
        });
    }
    Ok(())
}

/// Decompresses every frame and verifies every chunk's digest, calling `each` with each
/// verified chunk's view offset and bytes (to fill a view, say). The blob's own digest is
/// checked first.
pub fn for_each_verified_chunk(
    blob: &BlobFile,
    toc: &Toc,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<BlobCheck> {
    check_blob_digest(blob)?;
    let mut scratch = Vec::new();
    let mut frame = Vec::new();
    let mut by_frame: Vec<Vec<usize>> = vec![Vec::new(); toc.frames.len()];
    for (i, c) in toc.chunks.iter().enumerate() {
        by_frame[c.frame_index as usize].push(i);
    }
    let mut check = BlobCheck {
        frames: toc.frames.len() as u64,
        chunks: toc.chunks.len() as u64,
        view_bytes: toc.view_size,
    };
    for (fi, f) in toc.frames.iter().enumerate() {
        blob.read_at(f.compressed_offset, f.compressed_size as usize, &mut scratch)?;
        let first_view = by_frame[fi].first().map(|&c| toc.chunks[c].view_offset).unwrap_or(0);
        decompress_into(f.compressor, &scratch, f.size, &mut frame, || format!("frame {fi}"))
            .map_err(|e| StorageError::ChunkCorrupt {
                blob: to_hex(blob.digest()),
                view_offset: first_view,
                detail: e.to_string(),
            })?;
        for &ci in &by_frame[fi] {
            let rec = toc.record(ci, 0);
            let range = blob.check_chunk(&rec, toc.digester, &frame)?;
            each(rec.view_offset, &frame[range])?;
        }
    }
    check.view_bytes = toc.view_size;
    Ok(check)
}

/// Checks that every bootstrap chunk record of this blob names a chunk of its TOC with the
/// same digest, size and frame.
pub fn cross_check(
    blob: &BlobFile,
    toc: &Toc,
    records: &[ChunkRecord],
    view_size: u64,
) -> Result<()> {
    let mismatch = |detail: String| StorageError::Mismatch { blob: to_hex(blob.digest()), detail };
    if toc.view_size != view_size {
        return Err(mismatch(format!(
            "TOC view size {} differs from the bootstrap's {view_size}",
            toc.view_size
        )));
    }
    for r in records {
        let i =
            toc.chunks.binary_search_by_key(&r.view_offset, |c| c.view_offset).map_err(|_| {
                mismatch(format!("no chunk at view offset {} in the TOC", r.view_offset))
            })?;
        let c = &toc.chunks[i];
        let f = &toc.frames[c.frame_index as usize];
        if c.digest != r.digest
            || c.size != r.size
            || c.frame_offset != r.frame_offset
            || f.compressed_offset != r.compressed_offset
            || f.compressed_size != r.compressed_size
            || f.size != r.frame_size
            || f.compressor != r.compressor
        {
            return Err(mismatch(format!(
                "chunk at view offset {} differs between bootstrap and TOC",
                r.view_offset
            )));
        }
    }
    Ok(())
}
