//! A temporary output file that is removed unless it is persisted under its final name, so a
//! failed build never leaves a half-written blob or bootstrap that a later run could trust.

use crate::{BuildError, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A path in the output directory, removed on drop unless [`TempPath::persist`]ed.
#[derive(Debug)]
pub struct TempPath {
    pub path: PathBuf,
    keep: bool,
}

impl TempPath {
    /// A fresh hidden name in `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".naiad-tmp-{}-{n}", std::process::id()));
        Ok(TempPath { path, keep: false })
    }

    /// Renames the file to `dest` (atomically, same directory).
    pub fn persist(&mut self, dest: &Path) -> Result<()> {
        std::fs::rename(&self.path, dest).map_err(BuildError::io(dest))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
