//! Where blob bytes come from: a local directory, an OCI registry (Range GETs), S3-compatible
//! object storage (ranged GETs through `object_store`). Every
//! backend bounds its retries and timeouts, so a dead backend turns into an error within the
//! configured time, never a hang.

mod local;
mod mirrors;
mod registry;
mod s3;

pub use local::LocalBackend;
pub use mirrors::MirroredBackend;
pub use registry::{RegistryBackend, RegistryOptions};
pub use s3::{S3Backend, S3Credentials, S3Location, S3Options, DEFAULT_S3_REGION};

use crate::Result;
use naiad_format::digest::Digest32;

/// A source of blob bytes.
pub trait Backend: Send + Sync {
    /// `len` bytes at `offset` of blob `digest` (exactly that many, or an error).
    fn read(&self, digest: &Digest32, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// A name for logs and metrics (never holds credentials).
    fn name(&self) -> String;
}
