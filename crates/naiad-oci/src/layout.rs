//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`), read and
//! written. Tags are the `org.opencontainers.image.ref.name` annotation of `index.json`
//! entries. Blobs and `index.json` are written under temporary names and renamed, so a
//! reader never sees a partial file.

use crate::manifest::{digest_hex, sha256_digest, Descriptor, Index};
use crate::media::{ANN_REF_NAME, OCI_INDEX};
use crate::{OciError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An OCI layout on disk.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// Opens an existing layout.
    pub fn open(dir: &Path) -> Result<Self> {
        let marker = dir.join("oci-layout");
        if !marker.is_file() {
            return Err(OciError::NotFound {
                what: "OCI layout (no oci-layout file)".into(),
                image: dir.display().to_string(),
            });
        }
        Ok(Layout { dir: dir.to_path_buf() })
    }

    /// Opens a layout, creating an empty one if the directory has none.
    pub fn create(dir: &Path) -> Result<Self> {
        let l = Layout::deferred(dir);
        l.ensure_created()?;
        Ok(l)
    }

    /// A layout that is created on disk only when something is first written to it, so a
    /// conversion that fails early leaves nothing behind.
    pub fn deferred(dir: &Path) -> Self {
        Layout { dir: dir.to_path_buf() }
    }

    fn ensure_created(&self) -> Result<()> {
        if self.dir.join("oci-layout").is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(self.dir.join("blobs/sha256"))
            .map_err(OciError::io(self.dir.display()))?;
        self.write_atomic(&self.dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        self.write_index(&Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: Vec::new(),
            annotations: None,
        })
    }

    fn name(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(digest_hex(digest, &self.name())?))
    }

    /// The layout's `index.json`.
    pub fn index(&self) -> Result<Index> {
        let p = self.dir.join("index.json");
        let bytes = std::fs::read(&p).map_err(OciError::io(p.display()))?;
        Index::parse(&bytes, &self.name())
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let bytes = serde_json::to_vec(index).expect("index serializes");
        self.write_atomic(&self.dir.join("index.json"), &bytes)
    }

    /// Finds the descriptor for a tag or digest (or the only entry when `None`).
    pub fn resolve(&self, reference: Option<&str>) -> Result<Descriptor> {
        let index = self.index()?;
        let found: Option<&Descriptor> = match reference {
            Some(r) if r.starts_with("sha256:") => index.manifests.iter().find(|d| d.digest == r),
            Some(tag) => index.manifests.iter().find(|d| {
                d.annotations.as_ref().and_then(|a| a.get(ANN_REF_NAME)).is_some_and(|t| t == tag)
            }),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => {
                return Err(OciError::invalid(
                    self.name(),
                    "the layout holds several images: name one with :TAG",
                ))
            }
        };
        if let Some(d) = found {
            return Ok(d.clone());
        }
        match reference {
            // A manifest that only an index in the layout names (a platform's manifest).
            Some(digest) if digest.starts_with("sha256:") => {
                let path = self.blob_path(digest)?;
                let bytes = match std::fs::metadata(&path) {
                    Ok(md) if md.len() <= crate::manifest::MAX_MANIFEST_BYTES as u64 => {
                        std::fs::read(&path).map_err(OciError::io(path.display()))?
                    }
                    Ok(_) => {
                        return Err(OciError::invalid(
                            self.name(),
                            format!("{digest} is too large to be a manifest"),
                        ))
                    }
                    Err(_) => {
                        return Err(OciError::NotFound {
                            what: format!("manifest {digest}"),
                            image: self.name(),
                        })
                    }
                };
                let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    OciError::invalid(self.name(), format!("{digest} is not a manifest: {e}"))
                })?;
                let media_type = match v.get("mediaType").and_then(|m| m.as_str()) {
                    Some(m) => m.to_string(),
                    None if v.get("manifests").is_some() => OCI_INDEX.to_string(),
                    None => crate::media::OCI_MANIFEST.to_string(),
                };
                Ok(Descriptor {
                    media_type,
                    digest: digest.to_string(),
                    size: bytes.len() as u64,
                    annotations: None,
                    platform: None,
                    urls: None,
                })
            }
            _ => Err(OciError::NotFound {
                what: format!("tag {}", reference.unwrap_or("")),
                image: self.name(),
            }),
        }
    }

    /// Whether a blob is present.
    pub fn has_blob(&self, digest: &str) -> Result<bool> {
        Ok(self.blob_path(digest)?.is_file())
    }

    /// Stores bytes as a blob (their digest must be `digest`).
    pub fn put_blob_bytes(&self, bytes: &[u8], digest: &str) -> Result<()> {
        self.ensure_created()?;
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(OciError::Digest {
                what: format!("blob for {}", self.name()),
                expected: digest.into(),
                actual,
            });
        }
        let path = self.blob_path(digest)?;
        if path.is_file() {
            return Ok(());
        }
        self.write_atomic(&path, bytes)
    }

    /// Stores a file as a blob, by hardlink when possible, else by copy.
    pub fn put_blob_file(&self, src: &Path, digest: &str) -> Result<()> {
        self.ensure_created()?;
        let path = self.blob_path(digest)?;
        if path.is_file() {
            return Ok(());
        }
        let tmp = tmp_name(&path);
        if std::fs::hard_link(src, &tmp).is_err() {
            std::fs::copy(src, &tmp).map_err(OciError::io(src.display()))?;
        }
        std::fs::rename(&tmp, &path).map_err(OciError::io(path.display()))
    }

    /// Stores a manifest or index and, with a tag, points the tag at it.
    pub fn put_manifest(
        &self,
        bytes: &[u8],
        media_type: &str,
        tag: Option<&str>,
    ) -> Result<Descriptor> {
        self.ensure_created()?;
        let digest = sha256_digest(bytes);
        self.put_blob_bytes(bytes, &digest)?;
        let mut desc = Descriptor {
            media_type: media_type.into(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            annotations: None,
            platform: None,
            urls: None,
        };
        let mut index = self.index()?;
        if let Some(tag) = tag {
            index.manifests.retain(|d| {
                d.annotations.as_ref().and_then(|a| a.get(ANN_REF_NAME)).is_none_or(|t| t != tag)
            });
            desc.annotations = Some(BTreeMap::from([(ANN_REF_NAME.to_string(), tag.to_string())]));
            index.manifests.push(desc.clone());
            self.write_index(&index)?;
        }
        Ok(desc)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = tmp_name(path);
        std::fs::write(&tmp, bytes).map_err(OciError::io(tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(OciError::io(path.display()))
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
