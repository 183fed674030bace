//! The bootstrap as an OCI layer: a gzip tar holding the single file [`BOOTSTRAP_PATH`], so
//! that any OCI tool can copy, store and mirror it like an ordinary layer.

use crate::{OciError, Result};
use std::io::{Read, Write};

/// Path of the bootstrap inside its layer.
pub const BOOTSTRAP_PATH: &str = "naiad/bootstrap";
/// Largest bootstrap unwrapped from a layer (bounds memory on hostile input).
pub const MAX_BOOTSTRAP_BYTES: u64 = 1 << 30;

/// The layer bytes (gzip tar) and the sha256 of the uncompressed tar (its diff_id).
pub fn wrap(bootstrap: &[u8]) -> Result<(Vec<u8>, [u8; 32])> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o444);
    h.set_size(bootstrap.len() as u64);
    h.set_mtime(0);
    tar.append_data(&mut h, BOOTSTRAP_PATH, bootstrap).map_err(OciError::io("bootstrap layer"))?;
    let tar_bytes = tar.into_inner().map_err(OciError::io("bootstrap layer"))?;
    let diff_id = naiad_format::digest::sha256(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).map_err(OciError::io("bootstrap layer"))?;
    Ok((gz.finish().map_err(OciError::io("bootstrap layer"))?, diff_id))
}

/// The bootstrap inside a bootstrap layer.
pub fn unwrap(layer: &[u8], image: &str) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    let entries =
        archive.entries().map_err(|e| OciError::invalid(image, format!("bootstrap layer: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| OciError::invalid(image, format!("bootstrap layer: {e}")))?;
        if entry.path_bytes().as_ref() == BOOTSTRAP_PATH.as_bytes() {
            if entry.size() > MAX_BOOTSTRAP_BYTES {
                return Err(OciError::invalid(
                    image,
                    "bootstrap layer holds an oversized bootstrap",
                ));
            }
            let mut out = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut out)
                .map_err(|e| OciError::invalid(image, format!("bootstrap layer: {e}")))?;
            return Ok(out);
        }
    }
    Err(OciError::invalid(image, format!("bootstrap layer has no {BOOTSTRAP_PATH}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bootstrap_layers_round_trip() {
        let data = b"pretend bootstrap".repeat(100);
        let (layer, _) = super::wrap(&data).unwrap();
        assert_eq!(super::unwrap(&layer, "test").unwrap(), data);
        assert!(super::unwrap(b"garbage", "test").is_err());
    }
}
