//! Error policy: every [`OciError`] names the image, blob or manifest involved and what went
//! wrong with it; registry errors keep the HTTP status so callers can tell a 404 from an
//! authentication failure. Credentials never appear in messages.

/// Result alias of this crate.
pub type Result<T, E = OciError> = std::result::Result<T, E>;

/// What can go wrong reading, converting or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The image reference does not parse.
    #[error("bad image reference {reference:?}: {detail}")]
    Reference { reference: String, detail: String },
    /// A manifest, blob or tag does not exist.
    #[error("{what} not found in {image}")]
    NotFound { what: String, image: String },
    /// The registry refused our credentials (or asked for some).
    #[error("{image}: authentication failed ({detail})")]
    Auth { image: String, detail: String },
    /// Any other registry failure; `transient` when retrying the same request may succeed
    /// (a 5xx or 429 answer, a connection refused, reset or timed out).
    #[error("{image}: registry error: {detail}")]
    Registry { image: String, detail: String, transient: bool },
    /// Bytes that do not match their digest or size.
    #[error("{what}: digest or size mismatch: expected {expected}, got {actual}")]
    Digest { what: String, expected: String, actual: String },
    /// Something the image holds that we cannot use.
    #[error("{image}: {detail}")]
    Invalid { image: String, detail: String },
    #[error("{path}: {cause}")]
    Io {
        path: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("building layer {layer}: {cause}")]
    Build {
        layer: String,
        #[source]
        cause: naiad_builder::BuildError,
    },
    #[error(transparent)]
    Format(#[from] naiad_format::FormatError),
}

impl OciError {
    pub(crate) fn io(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> OciError {
        let path = path.to_string();
        move |cause| OciError::Io { path, cause }
    }

    pub(crate) fn invalid(image: impl std::fmt::Display, detail: impl Into<String>) -> OciError {
        OciError::Invalid { image: image.to_string(), detail: detail.into() }
    }

    /// Whether retrying the same request may succeed (5xx, 429, connection trouble).
    pub fn is_transient(&self) -> bool {
        matches!(self, OciError::Registry { transient: true, .. })
    }

    /// Whether an I/O error is one a retry may get past (connection trouble, a timeout).
    pub(crate) fn io_is_transient(e: &std::io::Error) -> bool {
        use std::io::ErrorKind::*;
        matches!(
            e.kind(),
            ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | BrokenPipe
                | TimedOut
                | UnexpectedEof
                | Interrupted
        )
    }
}
