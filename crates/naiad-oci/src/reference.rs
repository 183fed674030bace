//! Image references with skopeo-style transports: `docker://host[:port]/repo:tag`,
//! `docker://host[:port]/repo@sha256:...`, and `oci:DIR[:tag]` (an OCI image layout).

use crate::{OciError, Result};
use std::fmt;
use std::path::PathBuf;

/// Where an image is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// In a registry.
    Registry {
        /// `host[:port]`.
        registry: String,
        repository: String,
        /// A tag, or a digest (`sha256:...`).
        reference: String,
    },
    /// In an OCI image layout directory.
    Layout {
        dir: PathBuf,
        /// A tag (the `org.opencontainers.image.ref.name` annotation) or a digest; `None`
        /// means the layout's only image.
        reference: Option<String>,
    },
}

impl ImageRef {
    /// Parses `docker://...` or `oci:...`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad =
            |detail: &str| OciError::Reference { reference: s.to_string(), detail: detail.into() };
        if let Some(rest) = s.strip_prefix("docker://") {
            let (host, path) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected docker://HOST/REPO[:TAG|@DIGEST]"))?;
            if host.is_empty() || path.is_empty() {
                return Err(bad("expected docker://HOST/REPO[:TAG|@DIGEST]"));
            }
            let (repo, reference) = if let Some((repo, digest)) = path.split_once('@') {
                if !digest.starts_with("sha256:")
                    || digest.len() != 71
                    || !digest[7..].bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(bad("a digest must be sha256: followed by 64 hex digits"));
                }
                (repo, digest.to_string())
            } else {
                match path.rsplit_once(':') {
                    Some((repo, tag)) if !tag.contains('/') => (repo, tag.to_string()),
                    _ => (path, "latest".to_string()),
                }
            };
            let valid_repo = !repo.is_empty()
                && repo.split('/').all(|c| {
                    !c.is_empty()
                        && c.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                        })
                });
            if !valid_repo {
                return Err(bad(
                    "repository names are lower-case letters, digits, '.', '_', '-' and '/'",
                ));
            }
            if reference.is_empty() || reference.len() > 128 {
                return Err(bad("bad tag"));
            }
            return Ok(ImageRef::Registry {
                registry: host.to_string(),
                repository: repo.to_string(),
                reference,
            });
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(bad("expected oci:DIR[:TAG]"));
            }
            // The tag is what follows the last ':' after the last '/'.
            let slash = rest.rfind('/').map_or(0, |i| i + 1);
            return Ok(match rest[slash..].find(':') {
                Some(i) if !rest[slash + i + 1..].is_empty() => ImageRef::Layout {
                    dir: PathBuf::from(&rest[..slash + i]),
                    reference: Some(rest[slash + i + 1..].to_string()),
                },
                _ => ImageRef::Layout {
                    dir: PathBuf::from(rest.trim_end_matches(':')),
                    reference: None,
                },
            });
        }
        Err(bad("use docker://HOST/REPO[:TAG] or oci:DIR[:TAG]"))
    }

    /// The same image at another tag or digest.
    pub fn with_reference(&self, reference: &str) -> ImageRef {
        match self {
            ImageRef::Registry { registry, repository, .. } => ImageRef::Registry {
                registry: registry.clone(),
                repository: repository.clone(),
                reference: reference.to_string(),
            },
            ImageRef::Layout { dir, .. } => {
                ImageRef::Layout { dir: dir.clone(), reference: Some(reference.to_string()) }
            }
        }
    }

    /// The tag or digest.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ImageRef::Registry { reference, .. } => Some(reference),
            ImageRef::Layout { reference, .. } => reference.as_deref(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry { registry, repository, reference }
                if reference.starts_with("sha256:") =>
            {
                write!(f, "docker://{registry}/{repository}@{reference}")
            }
            ImageRef::Registry { registry, repository, reference } => {
                write!(f, "docker://{registry}/{repository}:{reference}")
            }
            ImageRef::Layout { dir, reference: Some(r) } => write!(f, "oci:{}:{r}", dir.display()),
            ImageRef::Layout { dir, reference: None } => write!(f, "oci:{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_skopeo() {
        let r = ImageRef::parse("docker://127.0.0.1:5000/lib/busybox:1.36").unwrap();
        assert_eq!(
            r,
            ImageRef::Registry {
                registry: "127.0.0.1:5000".into(),
                repository: "lib/busybox".into(),
                reference: "1.36".into()
            }
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("docker://reg.io/x@{d}")).unwrap();
        assert_eq!(r.reference(), Some(d.as_str()));
        assert_eq!(ImageRef::parse("docker://reg.io/x").unwrap().reference(), Some("latest"));
        assert_eq!(
            ImageRef::parse("oci:/tmp/lay:v1").unwrap(),
            ImageRef::Layout { dir: "/tmp/lay".into(), reference: Some("v1".into()) }
        );
        assert_eq!(
            ImageRef::parse("oci:rel/dir").unwrap(),
            ImageRef::Layout { dir: "rel/dir".into(), reference: None }
        );
        for bad in [
            "busybox",
            "docker://",
            "docker://host",
            "docker://host/UPPER",
            "docker://h/x@sha256:12",
            "oci:",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
