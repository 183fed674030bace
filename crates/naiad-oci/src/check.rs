//! Fetching a Naiad image for verification: every manifest, config and blob is downloaded
//! and checked against its digest; the bootstrap is unwrapped; the config's `diff_ids` must
//! match the layers. The caller then checks the bootstrap and chunks (`naiad-fs`).

use crate::bootstrap_layer;
use crate::manifest::{Index, Manifest, MAX_CONFIG_BYTES};
use crate::media::{is_index, is_manifest, NAIAD_BLOB};
use crate::reference::ImageRef;
use crate::registry::Timeouts;
use crate::store::Store;
use crate::{OciError, Result};
use std::path::{Path, PathBuf};

/// One Naiad image (platform) fetched into a local directory.
#[derive(Debug)]
pub struct Fetched {
    pub platform: Option<String>,
    pub manifest_digest: String,
    pub bootstrap: Vec<u8>,
    /// Holds the image's blobs, named by hex digest.
    pub blob_dir: PathBuf,
    /// Problems found at the OCI level (digests, config, media types).
    pub problems: Vec<String>,
}

/// Fetches every Naiad image `r` names (an index may hold several, and original OCI
/// manifests, which are skipped) into `dir`.
pub async fn fetch_naiad(r: &ImageRef, insecure: bool, dir: &Path) -> Result<Vec<Fetched>> {
    let store = Store::open(r, insecure, false)?;
    let (bytes, mt, digest) = store.manifest(r.reference()).await?;
    let mut manifests = Vec::new();
    if is_index(&mt) {
        for d in Index::parse(&bytes, &r.to_string())?.manifests {
            if !is_manifest(&d.media_type) {
                continue;
            }
            let (b, _, got) = store.manifest(Some(&d.digest)).await?;
            if got != d.digest {
                return Err(OciError::Digest {
                    what: format!("manifest of {r}"),
                    expected: d.digest,
                    actual: got,
                });
            }
            manifests.push((b, got, d.platform.map(|p| p.name())));
        }
    } else {
        manifests.push((bytes, digest, None));
    }
    let mut out = Vec::new();
    for (bytes, digest, platform) in manifests {
        let m = Manifest::parse(&bytes, &r.to_string())?;
        let Some(boot) = m.bootstrap_layer().cloned() else {
            continue; // an original OCI manifest of a merged index
        };
        let blob_dir = dir.join(&digest[7..]);
        std::fs::create_dir_all(&blob_dir).map_err(OciError::io(blob_dir.display()))?;
        let mut problems = Vec::new();
        let config: serde_json::Value =
            serde_json::from_slice(&store.blob_bytes(&m.config, MAX_CONFIG_BYTES).await?)
                .map_err(|e| OciError::invalid(r, format!("config does not parse: {e}")))?;
        let mut diff_ids = Vec::new();
        for l in &m.layers {
            if l.digest == boot.digest {
                continue;
            }
            if l.media_type != NAIAD_BLOB {
                problems.push(format!(
                    "layer {} has media type {:?}, expected {NAIAD_BLOB}",
                    l.digest, l.media_type
                ));
            }
            let mut reader = store.blob_reader(l, None).await?;
            let path = blob_dir.join(&l.digest[7..]);
            let result = tokio::task::block_in_place(|| -> std::io::Result<()> {
                let mut f = std::fs::File::create(&path)?;
                std::io::copy(&mut reader, &mut f)?;
                Ok(())
            });
            if let Err(e) = result {
                problems.push(format!("blob {}: {e}", l.digest));
            }
            diff_ids.push(l.digest.clone());
        }
        let wrapped = store.blob_bytes(&boot, bootstrap_layer::MAX_BOOTSTRAP_BYTES).await?;
        let bootstrap = bootstrap_layer::unwrap(&wrapped, &r.to_string())?;
        diff_ids.push(bootstrap_layer::diff_id(&wrapped, &r.to_string())?);
        let want: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        if want != diff_ids {
            problems.push("config rootfs.diff_ids do not match the layers".to_string());
        }
        out.push(Fetched { platform, manifest_digest: digest, bootstrap, blob_dir, problems });
    }
    if out.is_empty() {
        return Err(OciError::invalid(r, "not a Naiad image: no manifest has a bootstrap layer"));
    }
    Ok(out)
}

/// The bootstrap of a Naiad image, without its blobs (for a lazy mount), each request to a
/// registry within `timeouts`. In an index, the Naiad manifest for `platform` (`os/arch`)
/// is used.
pub async fn fetch_bootstrap(
    r: &ImageRef,
    insecure: bool,
    platform: &str,
    timeouts: Timeouts,
) -> Result<Vec<u8>> {
    let store = Store::open_within(r, insecure, false, timeouts)?;
    let (bytes, mt, _) = store.manifest(r.reference()).await?;
    let bytes = if is_index(&mt) {
        let index = Index::parse(&bytes, &r.to_string())?;
        let naiad = |d: &&crate::manifest::Descriptor| {
            d.platform.as_ref().is_some_and(|p| {
                p.matches(platform)
                    && p.os_features
                        .as_ref()
                        .is_some_and(|f| f.iter().any(|x| x == crate::media::NAIAD_OS_FEATURE))
            })
        };
        let d = index.manifests.iter().find(naiad).ok_or_else(|| OciError::NotFound {
            what: format!("a Naiad image for {platform}"),
            image: r.to_string(),
        })?;
        store.manifest(Some(&d.digest)).await?.0
    } else {
        bytes
    };
    let m = Manifest::parse(&bytes, &r.to_string())?;
    let boot = m
        .bootstrap_layer()
        .ok_or_else(|| OciError::invalid(r, "not a Naiad image: no bootstrap layer"))?;
    let wrapped = store.blob_bytes(boot, bootstrap_layer::MAX_BOOTSTRAP_BYTES).await?;
    bootstrap_layer::unwrap(&wrapped, &r.to_string())
}
