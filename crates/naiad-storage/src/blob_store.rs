//! Local blobs: files named by their sha256 hex digest in one or more directories.

use crate::{Result, StorageError};
use naiad_format::blob::{BlobTrailer, Toc, BLOB_TRAILER_SIZE_BYTES};
use naiad_format::compression::decompress_into;
use naiad_format::digest::{to_hex, Digest32, Digester};
use naiad_format::extension::ChunkRecord;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Directories searched for blob files.
#[derive(Clone, Debug, Default)]
pub struct BlobDirs {
    pub dirs: Vec<PathBuf>,
}

impl BlobDirs {
    /// Searches `dirs` in order.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        BlobDirs { dirs }
    }

    /// Opens the blob with this digest.
    pub fn open(&self, digest: &Digest32) -> Result<BlobFile> {
        let name = to_hex(digest);
        for d in &self.dirs {
            let p = d.join(&name);
            match File::open(&p) {
                Ok(file) => {
                    let len = file.metadata().map_err(StorageError::io(&p))?.len();
                    return Ok(BlobFile { file, path: p, digest: *digest, len });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::Io { path: p, cause: e }),
            }
        }
        Err(StorageError::BlobMissing {
            digest: name,
            dirs: self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// An open local blob.
#[derive(Debug)]
pub struct BlobFile {
    file: File,
    path: PathBuf,
    digest: Digest32,
    len: u64,
}

impl BlobFile {
    /// The blob's digest (its name).
    pub fn digest(&self) -> &Digest32 {
        &self.digest
    }
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the file is empty (never true for a valid blob).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn hex(&self) -> String {
        to_hex(&self.digest)
    }

    /// Reads `len` bytes at `offset`; a short file is an error.
    pub fn read_at(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<()> {
        out.resize(len, 0);
        self.file.read_exact_at(out, offset).map_err(|cause| StorageError::BlobRead {
            blob: self.hex(),
            offset,
            len,
            cause,
        })
    }

    /// Reads and validates the blob's TOC (trailer, TOC digest, structure).
    pub fn toc(&self) -> Result<Toc> {
        let fmt = |cause| StorageError::Format { blob: self.hex(), cause };
        if self.len < BLOB_TRAILER_SIZE_BYTES {
            return Err(fmt(naiad_format::FormatError::Truncated {
                what: "blob trailer",
                offset: 0,
                need: BLOB_TRAILER_SIZE_BYTES,
                have: self.len,
            }));
        }
        let mut buf = Vec::new();
        self.read_at(
            self.len - BLOB_TRAILER_SIZE_BYTES,
            BLOB_TRAILER_SIZE_BYTES as usize,
            &mut buf,
        )?;
        let trailer = BlobTrailer::decode(&buf, self.len).map_err(fmt)?;
        self.read_at(trailer.toc_offset, trailer.toc_size as usize, &mut buf)?;
        Toc::decode(&buf, &trailer).map_err(fmt)
    }

    /// Reads, decompresses and verifies the chunk `rec`, leaving the frame in `frame` (so the
    /// caller can keep it for the next chunk of the same frame) and returning the chunk's
    /// range in it.
    pub fn read_chunk(
        &self,
        rec: &ChunkRecord,
        digester: Digester,
        scratch: &mut Vec<u8>,
        frame: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        self.read_at(rec.compressed_offset, rec.compressed_size as usize, scratch).map_err(
            |e| self.corrupt(rec.view_offset, format!("frame unreadable (blob truncated?): {e}")),
        )?;
        decompress_into(rec.compressor, scratch, rec.frame_size, frame, || {
            format!("frame at blob offset {}", rec.compressed_offset)
        })
        .map_err(|e| self.corrupt(rec.view_offset, e.to_string()))?;
        self.check_chunk(rec, digester, frame)
    }

    /// Checks that chunk `rec` lies in the decompressed `frame` and matches its digest.
    pub fn check_chunk(
        &self,
        rec: &ChunkRecord,
        digester: Digester,
        frame: &[u8],
    ) -> Result<std::ops::Range<usize>> {
        let range = rec.frame_offset as usize..rec.frame_offset as usize + rec.size as usize;
        let data = frame
            .get(range.clone())
            .ok_or_else(|| self.corrupt(rec.view_offset, "chunk lies outside its frame".into()))?;
        let actual = digester.digest(data);
        if actual != rec.digest {
            return Err(self.corrupt(
                rec.view_offset,
                format!(
                    "digest mismatch: expected {}, computed {}",
                    to_hex(&rec.digest),
                    to_hex(&actual)
                ),
            ));
        }
        Ok(range)
    }

    fn corrupt(&self, view_offset: u64, detail: String) -> StorageError {
        StorageError::ChunkCorrupt { blob: self.hex(), view_offset, detail }
    }
}

/// Reads chunks of one image's blobs, keeping the last decompressed frame of each blob so
/// that reading the small files packed in one frame decompresses it once.
#[derive(Debug)]
pub struct ChunkReader {
    blobs: Vec<BlobFile>,
    digester: Digester,
    scratch: Vec<u8>,
    /// Per blob: (compressed offset of the cached frame, frame bytes).
    frames: Vec<Option<(u64, Vec<u8>)>>,
}

impl ChunkReader {
    /// Opens every blob of an image.
    pub fn open(dirs: &BlobDirs, digests: &[Digest32], digester: Digester) -> Result<Self> {
        let blobs = digests.iter().map(|d| dirs.open(d)).collect::<Result<Vec<_>>>()?;
        let n = blobs.len();
        Ok(ChunkReader { blobs, digester, scratch: Vec::new(), frames: vec![None; n] })
    }

    /// The verified bytes of chunk `rec`.
    pub fn chunk(&mut self, rec: &ChunkRecord) -> Result<&[u8]> {
        let bi = rec.blob_index as usize;
        let blob = self.blobs.get(bi).ok_or_else(|| StorageError::Mismatch {
            blob: format!("#{bi}"),
            detail: "blob index out of range".into(),
        })?;
        let cached = matches!(&self.frames[bi], Some((off, f)) if *off == rec.compressed_offset && f.len() == rec.frame_size as usize);
        let range = if cached {
            blob.check_chunk(rec, self.digester, &self.frames[bi].as_ref().expect("checked").1)?
        } else {
            let mut frame = self.frames[bi].take().map(|(_, f)| f).unwrap_or_default();
            let range = blob.read_chunk(rec, self.digester, &mut self.scratch, &mut frame)?;
            self.frames[bi] = Some((rec.compressed_offset, frame));
            range
        };
        Ok(&self.frames[bi].as_ref().expect("filled").1[range])
    }
}
