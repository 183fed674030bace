//! Error policy: every parser returns a [`FormatError`] that says *what* was wrong and
//! *where* (an offset, an inode number, a chunk index). Callers add the path or file name
//! they know about; nothing here prints, panics on input, or swallows an error.

/// Result alias of this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// What can be wrong with a bootstrap, a blob or data handed to a writer.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The input ends before a structure that must be there.
    #[error("{what} is truncated: need {need} bytes at offset {offset}, have {have}")]
    Truncated { what: &'static str, offset: u64, need: u64, have: u64 },
    /// A magic number or version does not match.
    #[error("bad magic in {what}: not a Naiad/EROFS structure")]
    BadMagic { what: &'static str },
    /// A field holds a value this format does not allow.
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// A feature this implementation does not read.
    #[error("unsupported {what}: {detail}")]
    Unsupported { what: &'static str, detail: String },
    /// A stored digest does not match the bytes it covers.
    #[error("digest mismatch in {what}: expected {expected}, computed {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    /// Decompression failed or produced the wrong number of bytes.
    #[error("decompression of {what} failed: {detail}")]
    Decompress { what: String, detail: String },
    /// An error found while looking at one entry of the tree.
    #[error("{path}: {cause}")]
    AtPath {
        path: String,
        #[source]
        cause: Box<FormatError>,
    },
    /// An I/O error from a `Read`/`Write` the caller handed in.
    #[error("i/o error while {context}: {cause}")]
    Io {
        context: &'static str,
        #[source]
        cause: std::io::Error,
    },
}

impl FormatError {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Invalid { what, detail: detail.into() }
    }

    pub(crate) fn unsupported(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Unsupported { what, detail: detail.into() }
    }

    /// Wraps this error with the path of the entry it was found at.
    pub fn at_path(self, path: &[u8]) -> Self {
        match self {
            e @ FormatError::AtPath { .. } => e,
            e => FormatError::AtPath {
                path: String::from_utf8_lossy(path).into_owned(),
                cause: Box::new(e),
            },
        }
    }

    /// The errno a filesystem should report for this error: corrupt data is `EIO`,
    /// an unsupported feature is `EOPNOTSUPP`.
    pub fn to_errno(&self) -> i32 {
        match self {
            FormatError::Unsupported { .. } => libc::EOPNOTSUPP,
            FormatError::AtPath { cause, .. } => cause.to_errno(),
            _ => libc::EIO,
        }
    }
}

/// Returns `bytes[offset..offset+len]` or a [`FormatError::Truncated`] naming `what`.
pub(crate) fn slice<'a>(
    bytes: &'a [u8],
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8]> {
    let have = bytes.len() as u64;
    match offset.checked_add(len) {
        Some(end) if end <= have => Ok(&bytes[offset as usize..end as usize]),
        _ => Err(FormatError::Truncated {
            what,
            offset,
            need: len,
            have: have.saturating_sub(offset),
        }),
    }
}
