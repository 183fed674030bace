//! Error policy: format and storage errors pass through unchanged (they already name the
//! blob, chunk or inode); errors here add the output path or mount point involved.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// What went wrong on the read path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Format(#[from] naiad_format::FormatError),
    #[error(transparent)]
    Storage(#[from] naiad_storage::StorageError),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// An error while handling one entry of the image.
    #[error("{path}: {cause}")]
    Entry {
        path: String,
        #[source]
        cause: Box<FsError>,
    },
}

impl FsError {
    /// Adds the image path (`/usr/bin/x`) of the entry being handled.
    pub fn at(self, rel: &[u8]) -> Self {
        FsError::Entry { path: String::from_utf8_lossy(rel).into_owned(), cause: Box::new(self) }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FsError {
        let path = path.into();
        move |cause| FsError::Io { path, cause }
    }
}
