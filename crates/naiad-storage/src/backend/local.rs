//! Blobs in local directories.

use super::Backend;
use crate::blob_store::BlobDirs;
use crate::Result;
use naiad_format::digest::Digest32;

/// Blobs in local directories, named by hex digest.
pub struct LocalBackend {
    dirs: BlobDirs,
}

impl LocalBackend {
    pub fn new(dirs: BlobDirs) -> Self {
        LocalBackend { dirs }
    }
}

impl Backend for LocalBackend {
    fn read(&self, digest: &Digest32, offset: u64, len: u64) -> Result<Vec<u8>> {
        let f = self.dirs.open(digest)?;
        let mut out = Vec::new();
        f.read_at(offset, len as usize, &mut out)?;
        Ok(out)
    }

    fn name(&self) -> String {
        format!(
            "local:{}",
            self.dirs.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(",")
        )
    }
}
