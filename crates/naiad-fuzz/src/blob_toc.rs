//! Target `blob_toc`: the input is a whole blob. Its trailer and TOC are decoded as
//! `naiad check` and the daemon do ([`BlobTrailer::decode`], then [`Toc::decode`]), and
//! when the TOC is accepted every frame is decompressed and every chunk checked against its
//! digest, as `verify` does with a blob file.
//!
//! The trailer holds the sha256 of the TOC. When that digest is all that is wrong, the harness
//! reseals the trailer and decodes again, so that mutations reach the TOC parser.

use naiad_format::blob::{BlobTrailer, Toc, BLOB_TRAILER_SIZE_BYTES};
use naiad_format::compression::decompress_into;
use naiad_format::digest::sha256;
use naiad_format::FormatError;

/// Uncompressed bytes decompressed per input. A frame may claim up to 16 MiB, and a legitimate
/// zstd frame of zeros is a few hundred bytes, so a small input can ask for gigabytes of
/// honest work: the cap keeps the fuzzer's pace, not a limit of the format.
pub const MAX_DECOMPRESSED_BYTES: u64 = 64 << 20;
/// Where the TOC digest lies in the trailer (magic, TOC offset, TOC size, reserved, digest).
const TRAILER_DIGEST_OFFSET: usize = 32;

/// The harness.
pub fn run(data: &[u8]) {
    let toc = match decode(data) {
        Err(FormatError::DigestMismatch { .. }) => {
            let mut sealed = data.to_vec();
            reseal(&mut sealed);
            decode(&sealed).map(|toc| (toc, sealed))
        }
        other => other.map(|toc| (toc, data.to_vec())),
    };
    if let Ok((toc, blob)) = toc {
        round_trip(&toc, &blob);
        read_frames(&toc, &blob);
    }
}

/// Decodes the trailer and the TOC of `blob`.
pub fn decode(blob: &[u8]) -> naiad_format::Result<Toc> {
    let tail_at = blob.len().saturating_sub(BLOB_TRAILER_SIZE_BYTES as usize);
    let trailer = BlobTrailer::decode(&blob[tail_at..], blob.len() as u64)?;
    // The trailer promises toc_offset + toc_size + 64 == blob.len().
    let toc = &blob[trailer.toc_offset as usize..tail_at];
    Toc::decode(toc, &trailer)
}

/// Writes the digest of the TOC that the trailer names into the trailer. Panics unless the
/// trailer decodes (call it after [`decode`] failed with a digest mismatch).
pub fn reseal(blob: &mut [u8]) {
    let tail_at = blob.len() - BLOB_TRAILER_SIZE_BYTES as usize;
    let trailer = BlobTrailer::decode(&blob[tail_at..], blob.len() as u64)
        .expect("the trailer decoded before");
    let digest = sha256(&blob[trailer.toc_offset as usize..tail_at]);
    blob[tail_at + TRAILER_DIGEST_OFFSET..].copy_from_slice(&digest);
}

/// A decoded TOC, encoded again, decodes to the same TOC.
fn round_trip(toc: &Toc, blob: &[u8]) {
    let toc_offset = toc.frames.iter().map(|f| u64::from(f.compressed_size)).sum::<u64>();
    let tail = toc.encode_tail(toc_offset);
    let mut again = vec![0u8; toc_offset as usize];
    again.extend_from_slice(&tail);
    let decoded = decode(&again).unwrap_or_else(|e| {
        panic!("a TOC decoded from {} bytes does not decode once re-encoded: {e}", blob.len())
    });
    assert_eq!(&decoded, toc, "TOC changed through encode and decode");
}

/// Decompresses every frame and checks every chunk's digest; errors are expected, panics not.
fn read_frames(toc: &Toc, blob: &[u8]) {
    let mut budget = MAX_DECOMPRESSED_BYTES;
    let mut frame = Vec::new();
    let mut current: Option<u32> = None;
    for (i, chunk) in toc.chunks.iter().enumerate() {
        let rec = toc.record(i, 0);
        if current != Some(chunk.frame_index) {
            current = None;
            let f = &toc.frames[chunk.frame_index as usize];
            if u64::from(f.size) > budget {
                return;
            }
            budget -= u64::from(f.size);
            let start = f.compressed_offset as usize;
            let input = &blob[start..start + f.compressed_size as usize];
            if decompress_into(f.compressor, input, f.size, &mut frame, || {
                format!("frame {}", chunk.frame_index)
            })
            .is_err()
            {
                continue;
            }
            current = Some(chunk.frame_index);
        }
        let range = rec.frame_offset as usize..rec.frame_offset as usize + rec.size as usize;
        let data = frame.get(range).expect("a decoded chunk lies inside its decompressed frame");
        let _matches = toc.digester.digest(data) == chunk.digest;
    }
}
