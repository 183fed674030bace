//! The cache of uncompressed views: per blob, a sparse file in which every chunk sits at its
//! view offset. This is the file the kernel's EROFS reads as the blob's device.
//!
//! A view is written under a temporary name, verified chunk by chunk, synced, and only then
//! renamed to `<digest>.view`: a view under its final name is always complete and correct,
//! so a later mount reuses it without re-reading the blob, and a crash leaves at worst a
//! temporary file behind.

use crate::blob_store::BlobFile;
use crate::{verify, Result, StorageError};
use naiad_format::digest::to_hex;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// File name suffix of a complete view.
pub const VIEW_SUFFIX: &str = ".view";

/// A directory of views.
#[derive(Clone, Debug)]
pub struct ViewCache {
    dir: PathBuf,
}

/// Whether a view was reused or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewState {
    Reused,
    Written,
}

impl ViewCache {
    /// Uses (and creates) `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(StorageError::io(dir))?;
        Ok(ViewCache { dir: dir.to_path_buf() })
    }

    /// Where the view of a blob lives.
    pub fn path_of(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}{VIEW_SUFFIX}", to_hex(digest)))
    }

    /// Returns the view of `blob` (which must be `view_size` bytes), writing it first if the
    /// cache does not hold it.
    pub fn ensure(&self, blob: &BlobFile, view_size: u64) -> Result<(PathBuf, ViewState)> {
        let path = self.path_of(blob.digest());
        if let Ok(md) = std::fs::metadata(&path) {
            if md.len() == view_size {
                return Ok((path, ViewState::Reused));
            }
        }
        let toc = blob.toc()?;
        if toc.view_size != view_size {
            return Err(StorageError::Mismatch {
                blob: to_hex(blob.digest()),
                detail: format!(
                    "TOC view size {} differs from the bootstrap's {view_size}",
                    toc.view_size
                ),
            });
        }
        let tmp = self.dir.join(format!(".tmp-{}-{}", to_hex(blob.digest()), std::process::id()));
        let result = (|| {
            let f = File::create(&tmp).map_err(StorageError::io(&tmp))?;
            f.set_len(view_size).map_err(StorageError::io(&tmp))?;
            verify::for_each_verified_chunk(blob, &toc, |off, data| {
                f.write_all_at(data, off).map_err(StorageError::io(&tmp))
            })?;
            f.sync_all().map_err(StorageError::io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(StorageError::io(&path))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| (path, ViewState::Written))
    }
}
