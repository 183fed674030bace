//! Chunk digests.

use crate::{FormatError, Result};
use sha2::Digest as _;

/// A 32-byte chunk or blob digest.
pub type Digest32 = [u8; 32];

/// The hash used for chunk digests. Blob digests are always sha256 (they are OCI digests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Digester {
    /// BLAKE3 (default): fast, parallel-friendly.
    Blake3,
    /// SHA-256.
    Sha256,
}

impl Digester {
    /// The on-disk code of this digester.
    pub fn code(self) -> u8 {
        match self {
            Digester::Blake3 => 1,
            Digester::Sha256 => 2,
        }
    }

    /// Decodes an on-disk code.
    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            1 => Ok(Digester::Blake3),
            2 => Ok(Digester::Sha256),
            other => Err(FormatError::unsupported("digester", format!("code {other}"))),
        }
    }

    /// The name users type (`blake3`, `sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Digester::Blake3 => "blake3",
            Digester::Sha256 => "sha256",
        }
    }

    /// Parses a user-facing name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "blake3" => Some(Digester::Blake3),
            "sha256" => Some(Digester::Sha256),
            _ => None,
        }
    }

    /// Digest of `data`.
    pub fn digest(self, data: &[u8]) -> Digest32 {
        match self {
            Digester::Blake3 => *blake3::hash(data).as_bytes(),
            Digester::Sha256 => sha256(data),
        }
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Digest32 {
    sha2::Sha256::digest(data).into()
}

/// Lower-case hex of a digest.
pub fn to_hex(d: &Digest32) -> String {
    hex::encode(d)
}

/// Parses 64 hex characters, with or without a `sha256:` prefix.
pub fn from_hex(s: &str) -> Option<Digest32> {
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
