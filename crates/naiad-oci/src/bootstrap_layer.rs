//! The bootstrap as an OCI layer: a gzip tar holding the single file [`BOOTSTRAP_PATH`], so
//! that any OCI tool can copy, store and mirror it like an ordinary layer.

use crate::{OciError, Result};
use std::io::{Read, Write};

/// Path of the bootstrap inside its layer.
pub const BOOTSTRAP_PATH: &str = "naiad/bootstrap";
/// Largest bootstrap unwrapped from a layer (bounds memory on hostile input).
pub const MAX_BOOTSTRAP_BYTES: u64 = 1 << 30;
/// Largest bootstrap layer once decompressed (its tar): the largest bootstrap and room for
/// the tar's headers. A gzip bomb is refused once it has inflated this far.
pub const MAX_BOOTSTRAP_LAYER_SIZE_BYTES: u64 = MAX_BOOTSTRAP_BYTES + (1 << 20);

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

/// The decompressed tar of a bootstrap layer, failing past [`MAX_BOOTSTRAP_LAYER_SIZE_BYTES`].
fn inflate(layer: &[u8]) -> Bounded<flate2::read::GzDecoder<&[u8]>> {
    Bounded { inner: flate2::read::GzDecoder::new(layer), left: MAX_BOOTSTRAP_LAYER_SIZE_BYTES }
}

/// A reader that fails (rather than ending) once it has given `left` bytes more.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX).max(1));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "larger than MAX_BOOTSTRAP_LAYER_SIZE_BYTES ({MAX_BOOTSTRAP_LAYER_SIZE_BYTES} \
                 bytes) once decompressed"
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The diff_id of a bootstrap layer: the sha256 of its tar, hashed as it is decompressed
/// (never held whole), refused past [`MAX_BOOTSTRAP_LAYER_SIZE_BYTES`].
pub fn diff_id(layer: &[u8], image: &str) -> Result<String> {
    use sha2::Digest as _;
    let mut tar = inflate(layer);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = tar
            .read(&mut buf)
            .map_err(|e| OciError::invalid(image, format!("bootstrap layer: {e}")))?;
        if n == 0 {
            return Ok(format!("sha256:{}", hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
    }
}

/// The bootstrap inside a bootstrap layer.
pub fn unwrap(layer: &[u8], image: &str) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(inflate(layer));
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
    use std::io::Read;

    #[test]
    fn bootstrap_layers_round_trip() {
        let data = b"pretend bootstrap".repeat(100);
        let (layer, _) = super::wrap(&data).unwrap();
        assert_eq!(super::unwrap(&layer, "test").unwrap(), data);
        assert!(super::unwrap(b"garbage", "test").is_err());
        let tar = std::io::copy(&mut super::inflate(&layer), &mut std::io::sink()).unwrap();
        assert!(tar > data.len() as u64, "{tar}");
        assert!(super::diff_id(&layer, "test").unwrap().starts_with("sha256:"));
    }

    #[test]
    fn a_bootstrap_layer_is_refused_once_inflated_past_the_limit() {
        let mut r = super::Bounded { inner: &[0u8; 100][..], left: 10 };
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 10);
        let e = r.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("MAX_BOOTSTRAP_LAYER_SIZE_BYTES"), "{e}");
        let mut exact = super::Bounded { inner: &[0u8; 10][..], left: 10 };
        assert_eq!(exact.read(&mut buf).unwrap(), 10);
        assert_eq!(exact.read(&mut buf).unwrap(), 0);
    }
}
