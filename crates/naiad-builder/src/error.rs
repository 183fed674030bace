//! Error policy: a [`BuildError`] always names the input that was wrong: the file path, or
//! the layer and tar entry, and what was wrong with it. Library code never prints; the CLI
//! adds its own context and decides how to report.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading a source file or writing an output failed.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    /// The layer stream failed to read (a broken connection, a digest mismatch found by the
    /// reader under it, a damaged compressed stream): `context` says what was being read, in
    /// the words of [`BuildError::Layer`] and [`BuildError::Entry`].
    #[error("{context}: {cause}")]
    Read {
        context: String,
        #[source]
        cause: std::io::Error,
    },
    /// A tar layer could not be read (bad header checksum, truncated stream, ...).
    #[error("layer {layer}: {detail}")]
    Layer { layer: String, detail: String },
    /// One entry of the source is invalid or hostile (`..`, absolute path, a write through a
    /// symlink, a hardlink to a missing target, ...).
    #[error("{source_name}: entry {entry:?}: {detail}")]
    Entry { source_name: String, entry: String, detail: String },
    /// Options that do not go together, or a bad chunk dictionary.
    #[error("{0}")]
    Invalid(String),
    /// The image could not be encoded.
    #[error(transparent)]
    Format(#[from] naiad_format::FormatError),
}

impl BuildError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |cause| BuildError::Io { path, cause }
    }
}
