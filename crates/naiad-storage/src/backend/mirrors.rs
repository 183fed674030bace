//! Mirrors and proxies: backends tried in order, the origin last. A failing or incomplete
//! mirror costs one failed attempt per read, then the next backend serves it.

use super::Backend;
use crate::{Result, StorageError};
use naiad_format::digest::Digest32;
use std::sync::Arc;

/// Backends in order of preference.
pub struct MirroredBackend {
    backends: Vec<Arc<dyn Backend>>,
}

impl MirroredBackend {
    /// `backends` must not be empty; put the origin last.
    pub fn new(backends: Vec<Arc<dyn Backend>>) -> Self {
        assert!(!backends.is_empty(), "at least the origin");
        MirroredBackend { backends }
    }
}

impl Backend for MirroredBackend {
    fn read(&self, digest: &Digest32, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut errors = Vec::new();
        for b in &self.backends {
            match b.read(digest, offset, len) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::warn!(backend = %b.name(), error = %e, "falling back to the next backend");
                    errors.push(e.to_string());
                }
            }
        }
        Err(StorageError::Backend { backend: self.name(), detail: errors.join("; ") })
    }

    fn name(&self) -> String {
        self.backends.iter().map(|b| b.name()).collect::<Vec<_>>().join(" -> ")
    }
}
