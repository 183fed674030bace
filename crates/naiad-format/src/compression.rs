//! Frame compression. Every frame records its compressor and both sizes, so decompression
//! is bounded by the recorded uncompressed size and checked against it.

use crate::{FormatError, Result, MAX_FRAME_SIZE_BYTES};

/// How a frame's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compressor {
    /// Stored as is.
    None,
    /// zstd (default, level 3).
    Zstd,
    /// LZ4 block format.
    Lz4,
}

/// zstd level used by the builder: the same trade-off as `zstd -3`.
pub const ZSTD_LEVEL: i32 = 3;

impl Compressor {
    /// On-disk code.
    pub fn code(self) -> u8 {
        match self {
            Compressor::None => 0,
            Compressor::Zstd => 1,
            Compressor::Lz4 => 2,
        }
    }

    /// Decodes an on-disk code.
    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            0 => Ok(Compressor::None),
            1 => Ok(Compressor::Zstd),
            2 => Ok(Compressor::Lz4),
            other => Err(FormatError::unsupported("compressor", format!("code {other}"))),
        }
    }

    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::None => "none",
            Compressor::Zstd => "zstd",
            Compressor::Lz4 => "lz4",
        }
    }

    /// Parses a user-facing name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Compressor::None),
            "zstd" => Some(Compressor::Zstd),
            "lz4" => Some(Compressor::Lz4),
            _ => None,
        }
    }
}

/// Decompresses one frame into `out` (cleared first), which ends up exactly
/// `uncompressed_size` bytes long or an error is returned. `what` names the frame in errors.
pub fn decompress_into(
    compressor: Compressor,
    input: &[u8],
    uncompressed_size: u32,
    out: &mut Vec<u8>,
    what: impl Fn() -> String,
) -> Result<()> {
    if uncompressed_size > MAX_FRAME_SIZE_BYTES {
        return Err(FormatError::Decompress {
            what: what(),
            detail: format!(
                "frame size {uncompressed_size} exceeds the limit {MAX_FRAME_SIZE_BYTES}"
            ),
        });
    }
    let n = uncompressed_size as usize;
    out.clear();
    let fail = |detail: String| FormatError::Decompress { what: what(), detail };
    match compressor {
        Compressor::None => {
            if input.len() != n {
                return Err(fail(format!("stored frame is {} bytes, expected {n}", input.len())));
            }
            out.extend_from_slice(input);
        }
        Compressor::Zstd => {
            out.resize(n, 0);
            let got = zstd::bulk::decompress_to_buffer(input, &mut out[..])
                .map_err(|e| fail(e.to_string()))?;
            if got != n {
                return Err(fail(format!("got {got} bytes, expected {n}")));
            }
        }
        Compressor::Lz4 => {
            out.resize(n, 0);
            let got = lz4_flex::block::decompress_into(input, &mut out[..])
                .map_err(|e| fail(e.to_string()))?;
            if got != n {
                return Err(fail(format!("got {got} bytes, expected {n}")));
            }
        }
    }
    Ok(())
}
