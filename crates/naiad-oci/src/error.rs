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
    /// Any other registry failure.
    #[error("{image}: registry error: {detail}")]
    Registry { image: String, detail: String },
    /// Bytes that do not match their digest or size.
    #[error("{what}: digest or size mismatch: expected {expected}, got {actual}")]
    Digest { what: String, expected: String, actual: String },
    /// Something the image holds that we cannot use.
    #[error("{image}: {detail}")]
    Invalid { image: String, detail: String },
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("building layer {layer}: {cause}")]
    Build { layer: String, cause: naiad_builder::BuildError },
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
        match self {
            OciError::Registry { detail, .. } => {
                detail.contains("code: 5")
                    || detail.contains("code: 429")
                    || detail.contains("connect")
                    || detail.contains("timed out")
                    || detail.contains("reset")
            }
            _ => false,
        }
    }
}
