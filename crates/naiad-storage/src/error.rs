//! Error policy: a [`StorageError`] names the blob (by digest) and, for data errors, the
//! chunk's offset in the blob's view. Corrupt data is always an error, never returned.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What went wrong reading or caching blob data.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    /// The blob file is shorter than a structure in it says, or cannot be read.
    #[error("blob {blob}: cannot read {len} bytes at offset {offset}: {cause}")]
    BlobRead {
        blob: String,
        offset: u64,
        len: usize,
        #[source]
        cause: std::io::Error,
    },
    /// A remote backend failed (after its retries), or refused us.
    #[error("{backend}: {detail}")]
    Backend { backend: String, detail: String },
    /// No blob directory holds this blob.
    #[error("blob {digest} not found in {dirs}")]
    BlobMissing { digest: String, dirs: String },
    /// The blob's bytes do not hash to its name.
    #[error("blob {digest}: content digest is {actual}")]
    BlobDigest { digest: String, actual: String },
    /// A chunk's bytes do not match its digest, or it cannot be decompressed.
    #[error("blob {blob}: chunk at view offset {view_offset}: {detail}")]
    ChunkCorrupt { blob: String, view_offset: u64, detail: String },
    /// The blob's TOC disagrees with what the bootstrap says about it.
    #[error("blob {blob}: {detail}")]
    Mismatch { blob: String, detail: String },
    #[error("blob {blob}: {cause}")]
    Format {
        blob: String,
        #[source]
        cause: naiad_format::FormatError,
    },
    /// A read of view bytes some block of which no chunk of the image covers: unknown
    /// bytes, never served as data.
    #[error("blob {blob}: view range {offset}+{len} holds blocks no chunk of the image covers")]
    Uncovered { blob: String, offset: u64, len: u64 },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.into();
        move |cause| StorageError::Io { path, cause }
    }

    /// errno for a filesystem: every storage failure reads as `EIO`.
    pub fn to_errno(&self) -> i32 {
        rustix::io::Errno::IO.raw_os_error()
    }
}
