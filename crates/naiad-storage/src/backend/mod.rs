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

/// The small tokio runtime a remote backend owns to run its async client behind the sync
/// [`Backend`] API. Dropped, it shuts down in the background: a backend may be dropped inside
/// async code (a mount failing part-way), where dropping a runtime the usual way panics.
pub(crate) struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    /// Two worker threads named `thread_name`.
    pub(crate) fn new(thread_name: &str) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(thread_name)
            .enable_all()
            .build()?;
        Ok(OwnedRuntime(Some(rt)))
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.0.as_ref().expect("the runtime lives until drop").block_on(f)
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
