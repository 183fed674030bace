//! A chunk dictionary: the chunks of an existing image, by digest, so a new build can
//! reference them instead of storing them again.

use naiad_format::bootstrap::Bootstrap;
use naiad_format::digest::{Digest32, Digester};
use naiad_format::extension::{BlobEntry, ChunkRecord};
use std::collections::HashMap;

/// Chunks of another image, keyed by digest.
#[derive(Debug)]
pub struct ChunkDict {
    digester: Digester,
    blobs: Vec<BlobEntry>,
    chunks: HashMap<Digest32, ChunkRecord>,
}

impl ChunkDict {
    /// Reads the dictionary from a bootstrap (its digest is verified).
    pub fn from_bootstrap(bytes: Vec<u8>) -> crate::Result<Self> {
        let bs = Bootstrap::open(bytes)?;
        let ext = bs.extension();
        let chunks = ext.chunks.iter().map(|c| (c.digest, *c)).collect();
        Ok(ChunkDict { digester: ext.digester, blobs: ext.blobs.clone(), chunks })
    }

    /// The digest the dictionary's chunks use.
    pub fn digester(&self) -> Digester {
        self.digester
    }

    /// The dictionary's blobs.
    pub fn blobs(&self) -> &[BlobEntry] {
        &self.blobs
    }

    /// The record of a chunk with this digest, if the dictionary has one.
    pub fn get(&self, digest: &Digest32) -> Option<&ChunkRecord> {
        self.chunks.get(digest)
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether the dictionary holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}
