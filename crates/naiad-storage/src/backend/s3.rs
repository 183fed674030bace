//! Blobs in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, s3s-fs, ...), read with
//! ranged GETs through `object_store`.
//!
//! * A blob is the object `PREFIX/HEX` (`HEX` = its sha256 in lowercase hex), or `HEX` when
//!   the prefix is empty.
//! * Requests are path-style (`ENDPOINT/BUCKET/KEY`), which every S3-compatible server
//!   accepts; plain HTTP only when `insecure` is set (the registry's `--insecure`).
//! * Credentials: an access key and secret (and optionally a session token), or none at all
//!   (unsigned requests, for public buckets). They are never looked up anywhere else (no
//!   instance metadata service), never logged, and never part of an error or of `name()`.
//! * Every attempt has a timeout and retries are bounded (object_store's `RetryConfig`), so a
//!   dead endpoint yields an error within about `attempts * timeout`, never a hang.

use super::{Backend, OwnedRuntime};
use crate::{Result, StorageError};
use naiad_format::digest::{to_hex, Digest32};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStoreExt, RetryConfig};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::Duration;

/// The region used when none is given (S3-compatible servers mostly ignore it, but requests
/// are signed for one).
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// Where blobs live: everything about an S3 source except the credentials, so it can be
/// written into a mount spec, a log or the daemon's saved mount table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Location {
    /// `http(s)://host[:port]`; a bare `host[:port]` means https (http with `insecure`).
    /// None: AWS itself (`https://s3.REGION.amazonaws.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix of the blobs (`a/b` puts a blob at `a/b/HEX`); empty: the bucket's top.
    #[serde(default)]
    pub prefix: String,
    /// [default: us-east-1]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// An access key and its secret. `Debug` never shows the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3Credentials({}, <redacted>{})",
            self.access_key_id,
            if self.session_token.is_some() { ", <token>" } else { "" }
        )
    }
}

/// Credentials given by the program's configuration file, used when the environment has none.
static CONFIGURED_CREDENTIALS: OnceLock<S3Credentials> = OnceLock::new();

impl S3Credentials {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (both set and non-empty), with
    /// `AWS_SESSION_TOKEN` if set.
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(S3Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }

    /// Records the credentials of this process's configuration file (once, at start; a
    /// second call is ignored). They are a process setting rather than part of a mount spec
    /// so that specs, which travel over the admin API and are saved to disk, never hold them.
    pub fn set_configured(c: S3Credentials) {
        let _ = CONFIGURED_CREDENTIALS.set(c);
    }

    /// This process's credentials: the environment's, else the configuration file's, else
    /// none (unsigned requests).
    pub fn resolve() -> Option<Self> {
        Self::from_env().or_else(|| CONFIGURED_CREDENTIALS.get().cloned())
    }
}

/// How to reach a bucket.
#[derive(Clone, Debug)]
pub struct S3Options {
    pub location: S3Location,
    /// None: unsigned requests.
    pub credentials: Option<S3Credentials>,
    /// Allow a plain-HTTP endpoint.
    pub insecure: bool,
    /// Timeout of one request, connection included.
    pub timeout: Duration,
    /// Attempts per read (the first included).
    pub attempts: u32,
}

impl S3Options {
    /// Defaults: this process's credentials ([`S3Credentials::resolve`]), 10 s per request,
    /// 3 attempts, HTTPS only.
    pub fn new(location: S3Location) -> Self {
        S3Options {
            location,
            credentials: S3Credentials::resolve(),
            insecure: false,
            timeout: Duration::from_secs(10),
            attempts: 3,
        }
    }
}

/// A bucket (and key prefix) as a blob backend.
pub struct S3Backend {
    store: AmazonS3,
    rt: OwnedRuntime,
    /// Normalised: no leading, trailing or doubled `/`.
    prefix: String,
    name: String,
    /// Strings that must never appear in an error (the secret, the session token).
    secrets: Vec<String>,
}

impl S3Backend {
    /// Checks the location and builds the client; makes no request.
    pub fn new(opts: S3Options) -> Result<Self> {
        let loc = &opts.location;
        let endpoint = loc.endpoint.as_deref().map(|e| endpoint_url(e, opts.insecure)).transpose();
        let region = loc
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_S3_REGION.into());
        let shown = match &endpoint {
            Ok(Some(e)) => e.clone(),
            _ => format!("https://s3.{region}.amazonaws.com"),
        };
        let prefix = loc.prefix.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/");
        let name = format!(
            "s3 {shown} bucket {}{}",
            loc.bucket,
            if prefix.is_empty() { String::new() } else { format!(" prefix {prefix}") }
        );
        let fail = |detail: String| StorageError::Backend { backend: name.clone(), detail };
        let endpoint = endpoint.map_err(&fail)?;
        if loc.bucket.is_empty() || loc.bucket.contains('/') {
            return Err(fail(format!("bad bucket name {:?}", loc.bucket)));
        }
        if !prefix.is_empty() {
            ObjectPath::parse(&prefix)
                .map_err(|e| fail(format!("bad key prefix {:?}: {e}", loc.prefix)))?;
        }
        super::check_bounds(opts.timeout, opts.attempts).map_err(&fail)?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let attempts = opts.attempts.max(1);
        let client = ClientOptions::new()
            .with_timeout(opts.timeout)
            .with_connect_timeout(opts.timeout)
            .with_allow_http(opts.insecure);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: attempts as usize - 1,
            retry_timeout: opts.timeout * attempts,
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&loc.bucket)
            .with_region(&region)
            .with_virtual_hosted_style_request(false)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(e) = &endpoint {
            b = b.with_endpoint(e);
        }
        let mut secrets = Vec::new();
        match &opts.credentials {
            Some(c) => {
                b = b
                    .with_access_key_id(&c.access_key_id)
                    .with_secret_access_key(&c.secret_access_key);
                secrets.push(c.secret_access_key.clone());
                if let Some(t) = &c.session_token {
                    b = b.with_token(t);
                    secrets.push(t.clone());
                }
            }
            None => b = b.with_skip_signature(true),
        }
        let store = b.build().map_err(|e| fail(redact(&e.to_string(), &secrets)))?;
        let rt = OwnedRuntime::new("naiad-s3").map_err(|e| fail(e.to_string()))?;
        Ok(S3Backend { store, rt, prefix, name, secrets })
    }

    /// The object key of a blob.
    pub fn key(&self, digest: &Digest32) -> String {
        if self.prefix.is_empty() {
            to_hex(digest)
        } else {
            format!("{}/{}", self.prefix, to_hex(digest))
        }
    }

    fn fail(&self, detail: String) -> StorageError {
        StorageError::Backend { backend: self.name.clone(), detail: redact(&detail, &self.secrets) }
    }

    /// Stores a blob (for tools and tests that fill a bucket); `data` should hash to `digest`.
    pub fn put(&self, digest: &Digest32, data: Vec<u8>) -> Result<()> {
        let key = self.key(digest);
        let path = ObjectPath::from(key.as_str());
        self.rt
            .block_on(self.store.put(&path, data.into()))
            .map_err(|e| self.fail(format!("writing object {key}: {}", error_text(&e))))?;
        Ok(())
    }
}

impl Backend for S3Backend {
    fn read(&self, digest: &Digest32, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(digest);
        let path = ObjectPath::from(key.as_str());
        let end = offset
            .checked_add(len)
            .ok_or_else(|| self.fail(format!("object {key}: range {offset}+{len} overflows")))?;
        match self.rt.block_on(self.store.get_range(&path, offset..end)) {
            Ok(bytes) if bytes.len() as u64 == len => Ok(bytes.to_vec()),
            Ok(bytes) => Err(self
                .fail(format!("object {key}: asked {len} bytes at {offset}, got {}", bytes.len()))),
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::BlobMissing {
                digest: to_hex(digest),
                dirs: format!("{} (object key {key})", self.name),
            }),
            Err(
                e @ (object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }),
            ) => {
                // The response body is not shown: an S3 error may echo the signed request.
                let code =
                    s3_error_code(&e.to_string()).map(|c| format!(": {c}")).unwrap_or_default();
                Err(self.fail(format!(
                    "object {key}: access denied{code} (check the credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or [s3] in the config file)"
                )))
            }
            Err(e) => Err(self.fail(format!("object {key} at {offset}+{len}: {}", error_text(&e)))),
        }
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// A full endpoint URL from `ep`: a bare `host[:port]` gets https (http when insecure);
/// plain HTTP needs `insecure`; credentials or a path in the URL are refused.
fn endpoint_url(ep: &str, insecure: bool) -> std::result::Result<String, String> {
    let full = if ep.contains("://") {
        ep.to_string()
    } else {
        format!("{}://{ep}", if insecure { "http" } else { "https" })
    };
    let url = reqwest::Url::parse(&full).map_err(|e| format!("endpoint is not a URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the endpoint URL must not hold credentials (give them in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the config file)".into());
    }
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => return Err(format!("endpoint {full} is plain HTTP; allow it with --insecure")),
        other => return Err(format!("endpoint scheme {other}: not http or https")),
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!(
            "endpoint {full}: give only scheme, host and port (the bucket and prefix are separate)"
        ));
    }
    Ok(full.trim_end_matches('/').to_string())
}

/// An error with its causes, one after the other.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// The `<Code>` of an S3 XML error response, if the text holds one.
fn s3_error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
        .filter(|c| c.len() < 64 && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
}

/// `text` with every secret replaced (belt and braces: S3 error bodies can echo requests).
fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), "<redacted>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(endpoint: Option<&str>, prefix: &str) -> S3Location {
        S3Location {
            endpoint: endpoint.map(String::from),
            bucket: "b".into(),
            prefix: prefix.into(),
            region: None,
        }
    }

    fn opts(location: S3Location, insecure: bool) -> S3Options {
        S3Options {
            location,
            credentials: None,
            insecure,
            timeout: Duration::from_secs(1),
            attempts: 1,
        }
    }

    #[test]
    fn keys_are_prefix_slash_hex() {
        let d = [0xab; 32];
        let b = S3Backend::new(opts(loc(Some("http://127.0.0.1:9"), "/a//b/"), true)).unwrap();
        assert_eq!(b.key(&d), format!("a/b/{}", to_hex(&d)));
        assert_eq!(b.name(), "s3 http://127.0.0.1:9 bucket b prefix a/b");
        let b = S3Backend::new(opts(loc(Some("127.0.0.1:9"), ""), true)).unwrap();
        assert_eq!(b.key(&d), to_hex(&d));
        assert_eq!(b.name(), "s3 http://127.0.0.1:9 bucket b");
        let b = S3Backend::new(opts(loc(None, ""), false)).unwrap();
        assert_eq!(b.name(), "s3 https://s3.us-east-1.amazonaws.com bucket b");
    }

    #[test]
    fn bad_endpoints_are_refused_without_echoing_credentials() {
        let e = S3Backend::new(opts(loc(Some("http://127.0.0.1:9"), ""), false))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--insecure"), "{e}");
        let e = S3Backend::new(opts(loc(Some("http://ak:topsecret@127.0.0.1:9"), ""), true))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("must not hold credentials") && !e.contains("topsecret"), "{e}");
        let e = S3Backend::new(opts(loc(Some("https://h/bucket"), ""), false))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("only scheme, host and port"), "{e}");
        let e = S3Backend::new(opts(S3Location { bucket: "a/b".into(), ..loc(None, "") }, false))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("bad bucket name"), "{e}");
    }

    #[test]
    fn secrets_never_show() {
        let c = S3Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "hush".into(),
            session_token: Some("t0k3n".into()),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("AKID") && !shown.contains("hush") && !shown.contains("t0k3n"),
            "{shown}"
        );
        assert_eq!(
            redact("a hush b tok", &["hush".into(), "tok".into()]),
            "a <redacted> b <redacted>"
        );
        assert_eq!(
            s3_error_code("403: <Error><Code>SignatureDoesNotMatch</Code></Error>"),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(s3_error_code("no xml"), None);
    }

    #[test]
    fn a_dead_endpoint_fails_in_bounded_time() {
        let b = S3Backend::new(S3Options {
            attempts: 2,
            ..opts(loc(Some("http://127.0.0.1:9"), "p"), true)
        })
        .unwrap();
        let started = std::time::Instant::now();
        let e = b.read(&[1; 32], 0, 10).unwrap_err().to_string();
        assert!(e.starts_with("s3 http://127.0.0.1:9 bucket b prefix p: object p/0101"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}
