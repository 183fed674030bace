//! Where blob bytes come from: a local directory, an OCI registry (Range GETs), S3-compatible
//! object storage (ranged GETs through `object_store`). Every
//! backend bounds its retries and timeouts, so a dead backend turns into an error within the
//! configured time, never a hang.

mod local;
mod mirrors;
mod registry;
mod s3;

/// Longest timeout of one backend request a mount may ask for.
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Most attempts per read a mount may ask for.
pub const MAX_ATTEMPTS: u32 = 100;

/// Checks a request timeout and attempt count against [`MAX_TIMEOUT_SECS`] and
/// [`MAX_ATTEMPTS`] (their product bounds a read: it must not overflow, and a reader must not
/// wait for ever); the error names the limit.
pub(crate) fn check_bounds(timeout: std::time::Duration, attempts: u32) -> Result<(), String> {
    if timeout > std::time::Duration::from_secs(MAX_TIMEOUT_SECS) {
        return Err(format!(
            "timeout of {} s is over the limit MAX_TIMEOUT_SECS ({MAX_TIMEOUT_SECS} s)",
            timeout.as_secs()
        ));
    }
    if attempts > MAX_ATTEMPTS {
        return Err(format!("{attempts} attempts is over the limit MAX_ATTEMPTS ({MAX_ATTEMPTS})"));
    }
    Ok(())
}

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
