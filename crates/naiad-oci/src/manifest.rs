//! OCI manifests, indexes and descriptors (Docker v2 schema 2 reads the same way).
//! Parsing is bounded: manifests are size-limited before they are read, and every digest
//! must be a well-formed sha256.

use crate::{OciError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Most layers (or index entries) accepted.
pub const MAX_ENTRIES: usize = 1000;
/// Largest config blob accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// A platform of an index entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`.
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// Whether this platform is the one a user named (`linux/amd64`, `linux/arm64/v8`).
    pub fn matches(&self, wanted: &str) -> bool {
        let mut parts = wanted.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(self.os.as_str())
            && arch == Some(self.architecture.as_str())
            && variant.is_none_or(|v| self.variant.as_deref() == Some(v))
    }
}

/// An image manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (or Docker manifest list).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Checks that a digest is `sha256:` and 64 lower-case hex digits; returns the hex part.
pub fn digest_hex<'a>(digest: &'a str, image: &str) -> Result<&'a str> {
    match digest.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(h)
        }
        _ => Err(OciError::invalid(image, format!("unsupported or malformed digest {digest:?}"))),
    }
}

fn check_descriptor(d: &Descriptor, image: &str) -> Result<()> {
    digest_hex(&d.digest, image)?;
    if d.size > 1 << 40 {
        return Err(OciError::invalid(
            image,
            format!("descriptor {} claims {} bytes", d.digest, d.size),
        ));
    }
    Ok(())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(naiad_format::digest::sha256(bytes)))
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(bytes: &[u8], image: &str) -> Result<Self> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(OciError::invalid(image, "manifest is larger than 4 MiB"));
        }
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| OciError::invalid(image, format!("manifest does not parse: {e}")))?;
        if m.schema_version != 2 {
            return Err(OciError::invalid(
                image,
                format!("manifest schema version {}", m.schema_version),
            ));
        }
        if m.layers.len() > MAX_ENTRIES {
            return Err(OciError::invalid(
                image,
                format!("manifest has {} layers, at most {MAX_ENTRIES} accepted", m.layers.len()),
            ));
        }
        check_descriptor(&m.config, image)?;
        if m.config.size > MAX_CONFIG_BYTES {
            return Err(OciError::invalid(image, "config is larger than 16 MiB"));
        }
        for l in &m.layers {
            check_descriptor(l, image)?;
        }
        Ok(m)
    }

    /// The bootstrap layer of a Naiad manifest.
    pub fn bootstrap_layer(&self) -> Option<&Descriptor> {
        self.layers.iter().rev().find(|l| {
            l.annotations
                .as_ref()
                .is_some_and(|a| a.get(crate::media::ANN_BOOTSTRAP).is_some_and(|v| v == "true"))
        })
    }
}

impl Index {
    /// Parses and validates an index.
    pub fn parse(bytes: &[u8], image: &str) -> Result<Self> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(OciError::invalid(image, "index is larger than 4 MiB"));
        }
        let i: Index = serde_json::from_slice(bytes)
            .map_err(|e| OciError::invalid(image, format!("index does not parse: {e}")))?;
        if i.manifests.len() > MAX_ENTRIES {
            return Err(OciError::invalid(
                image,
                format!("index has {} entries, at most {MAX_ENTRIES} accepted", i.manifests.len()),
            ));
        }
        for m in &i.manifests {
            check_descriptor(m, image)?;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_manifests_are_refused() {
        let d = format!("sha256:{}", "0".repeat(64));
        let layer = format!(r#"{{"mediaType":"x","digest":"{d}","size":1}}"#);
        let many = vec![layer.as_str(); MAX_ENTRIES + 1].join(",");
        let m = format!(r#"{{"schemaVersion":2,"config":{layer},"layers":[{many}]}}"#);
        assert!(Manifest::parse(m.as_bytes(), "t").unwrap_err().to_string().contains("layers"));
        let bad = r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"md5:00","size":1},"layers":[]}"#;
        assert!(Manifest::parse(bad.as_bytes(), "t").unwrap_err().to_string().contains("digest"));
        let huge = format!(
            r#"{{"schemaVersion":2,"config":{layer},"layers":[{{"mediaType":"x","digest":"{d}","size":9999999999999999}}]}}"#
        );
        assert!(Manifest::parse(huge.as_bytes(), "t").is_err());
        assert!(Manifest::parse(b"{", "t").is_err());
        let ok = format!(r#"{{"schemaVersion":2,"config":{layer},"layers":[{layer}]}}"#);
        assert_eq!(Manifest::parse(ok.as_bytes(), "t").unwrap().layers.len(), 1);
    }

    fn layers_json(n: usize, size: &str) -> String {
        let d = format!("sha256:{}", "a".repeat(64));
        let layer = format!(r#"{{"mediaType":"x","digest":"{d}","size":{size}}}"#);
        vec![layer.as_str(); n].join(",")
    }

    fn manifest_json(layers: &str) -> String {
        let d = format!("sha256:{}", "a".repeat(64));
        format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":1}},"layers":[{layers}]}}"#
        )
    }

    /// Issue 6: 100000 layers is refused by the size bound before any parsing; a count past
    /// the limit that fits in 4 MiB is refused by the count bound.
    #[test]
    fn huge_layer_counts_are_refused() {
        let m = manifest_json(&layers_json(100_000, "1"));
        assert!(m.len() > MAX_MANIFEST_BYTES);
        let e = Manifest::parse(m.as_bytes(), "img").unwrap_err().to_string();
        assert!(e.contains("img") && e.contains("manifest is larger than 4 MiB"), "{e}");
        let m = manifest_json(&layers_json(30_000, "1"));
        assert!(m.len() <= MAX_MANIFEST_BYTES);
        let e = Manifest::parse(m.as_bytes(), "img").unwrap_err().to_string();
        assert!(e.contains("manifest has 30000 layers, at most 1000 accepted"), "{e}");
        // 100000 tiny non-descriptors: a parse error at the first, not a 100000-entry list.
        let m = manifest_json(&vec!["{}"; 100_000].join(","));
        assert!(m.len() <= MAX_MANIFEST_BYTES);
        let e = Manifest::parse(m.as_bytes(), "img").unwrap_err().to_string();
        assert!(e.contains("manifest does not parse") && e.contains("missing field"), "{e}");
        // The same bounds for an index.
        let i = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, layers_json(100_000, "1"));
        assert!(Index::parse(i.as_bytes(), "img")
            .unwrap_err()
            .to_string()
            .contains("index is larger than 4 MiB"));
        let i = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, layers_json(30_000, "1"));
        assert!(Index::parse(i.as_bytes(), "img")
            .unwrap_err()
            .to_string()
            .contains("index has 30000 entries, at most 1000 accepted"));
    }

    /// Issue 6: a layer claiming u64::MAX bytes, 2^64, a negative or fractional size.
    #[test]
    fn huge_or_negative_layer_sizes_are_refused() {
        let cases = [
            (u64::MAX.to_string(), "claims 18446744073709551615 bytes"),
            (((1u64 << 40) + 1).to_string(), "claims 1099511627777 bytes"),
            ("18446744073709551616".to_string(), "does not parse"),
            ("-1".to_string(), "does not parse"),
            ("-9223372036854775808".to_string(), "does not parse"),
            ("1e30".to_string(), "does not parse"),
            ("1.5".to_string(), "does not parse"),
            ("\"12\"".to_string(), "does not parse"),
        ];
        for (size, phrase) in cases {
            let m = manifest_json(&layers_json(1, &size));
            let e = Manifest::parse(m.as_bytes(), "img").unwrap_err().to_string();
            assert!(e.contains(phrase), "size {size}: {e}");
            let i = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, layers_json(1, &size));
            let e = Index::parse(i.as_bytes(), "img").unwrap_err().to_string();
            assert!(e.contains(phrase), "index entry size {size}: {e}");
        }
        // The largest accepted size is 1 TiB; a config past 16 MiB is refused.
        assert_eq!(
            Manifest::parse(
                manifest_json(&layers_json(1, &(1u64 << 40).to_string())).as_bytes(),
                "img"
            )
            .unwrap()
            .layers[0]
                .size,
            1 << 40
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":{}}},"layers":[]}}"#,
            MAX_CONFIG_BYTES + 1
        );
        assert!(Manifest::parse(m.as_bytes(), "img")
            .unwrap_err()
            .to_string()
            .contains("config is larger than 16 MiB"));
    }

    #[test]
    fn platforms_match_user_names() {
        let p = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            os_version: None,
            os_features: None,
            variant: Some("v8".into()),
        };
        assert!(p.matches("linux/arm64"));
        assert!(p.matches("linux/arm64/v8"));
        assert!(!p.matches("linux/amd64"));
        assert_eq!(p.name(), "linux/arm64/v8");
    }
}
