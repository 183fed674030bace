//! Error policy: errors of the layers below pass through with their own context (they name
//! the blob, image or path); daemon errors name the mount point or request involved.

/// Result alias of this crate.
pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// What can go wrong managing mounts or serving the API.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Oci(#[from] naiad_oci::OciError),
    #[error(transparent)]
    Fs(#[from] naiad_fs::FsError),
    #[error(transparent)]
    Storage(#[from] naiad_storage::StorageError),
    #[error(transparent)]
    Format(#[from] naiad_format::FormatError),
    #[error("{path}: {cause}")]
    Io {
        path: String,
        #[source]
        cause: std::io::Error,
    },
    /// A request that cannot be served as asked.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with another one (a mount point being mounted already).
    #[error("{0}")]
    Conflict(String),
    /// No mount at that mount point.
    #[error("nothing is mounted at {0}")]
    NotMounted(String),
    /// The daemon refused a request (its HTTP status and its error message).
    #[error("the daemon answered {status}: {message}")]
    Api { status: u16, message: String },
}

impl DaemonError {
    pub(crate) fn io(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> DaemonError {
        let path = path.to_string();
        move |cause| DaemonError::Io { path, cause }
    }
}
