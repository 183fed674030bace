//! A repository in an OCI registry, through `oci-client`: anonymous, basic or bearer-token
//! auth (credentials from the docker config), plain HTTP only with `insecure`, and bounded
//! retries with backoff for transient failures (5xx, 429, connection errors).
//!
//! No registry can hold a caller for ever: every connection has [`Timeouts::connect`], every
//! answer may pause at most [`Timeouts::read`], a request (manifest, token, HEAD) must be
//! complete within [`Timeouts::request`], and a blob within [`Timeouts::for_blob`] of its size.

use crate::manifest::Descriptor;
use crate::{OciError, Result};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::time::Duration;

/// Attempts per request (the first try included).
pub const ATTEMPTS: u32 = 4;
/// First backoff delay; doubled after each failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait for a connection to a registry (TCP and TLS).
pub const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Longest a registry may stay silent in the middle of an answer.
pub const READ_TIMEOUT_SECS: u64 = 30;
/// Longest one request (a manifest, a token, a HEAD) may take, its whole body included.
pub const REQUEST_TIMEOUT_SECS: u64 = 60;
/// Slowest average rate a blob may arrive at, beyond one request's time.
pub const MIN_BLOB_RATE_BYTES_PER_SEC: u64 = 64 << 10;

/// How long a registry may take: see the module's doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub request: Duration,
    pub min_blob_rate_bytes_per_sec: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(CONNECT_TIMEOUT_SECS),
            read: Duration::from_secs(READ_TIMEOUT_SECS),
            request: Duration::from_secs(REQUEST_TIMEOUT_SECS),
            min_blob_rate_bytes_per_sec: MIN_BLOB_RATE_BYTES_PER_SEC,
        }
    }
}

impl Timeouts {
    /// Every limit at most `request` (a mount's `timeout_secs`): a request must be complete
    /// within it, and so must each connection and each pause.
    pub fn within(request: Duration) -> Self {
        let d = Timeouts::default();
        Timeouts { connect: d.connect.min(request), read: d.read.min(request), request, ..d }
    }

    /// How long a blob of `size` bytes may take: one request's time, plus its size at
    /// [`Timeouts::min_blob_rate_bytes_per_sec`].
    pub fn for_blob(&self, size: u64) -> Duration {
        self.request + Duration::from_secs(size / self.min_blob_rate_bytes_per_sec.max(1))
    }
}

/// The error of a request not complete within `limit`.
fn timed_out(image: String, what: &str, limit: Duration) -> OciError {
    OciError::Registry {
        image,
        detail: format!(
            "{what}: timed out: the registry did not answer completely within {} s",
            limit.as_secs()
        ),
        // Asking again would only take as long again.
        transient: false,
    }
}

/// One repository of one registry.
pub struct Repo {
    client: Client,
    auth: RegistryAuth,
    registry: String,
    repository: String,
    timeouts: Timeouts,
    insecure: bool,
    /// For manifests, read with a bound as they arrive (oci-client reads a whole body).
    http: reqwest::Client,
    /// The pull token, once asked for (`None` inside: the registry needs none).
    token: tokio::sync::Mutex<Option<Option<String>>>,
}

impl Repo {
    /// Connects (lazily) to `registry/repository`, with the default [`Timeouts`].
    pub fn new(registry: &str, repository: &str, insecure: bool) -> Self {
        Repo::with_timeouts(registry, repository, insecure, Timeouts::default())
    }

    /// Connects (lazily) to `registry/repository`, within `timeouts`.
    pub fn with_timeouts(
        registry: &str,
        repository: &str,
        insecure: bool,
        timeouts: Timeouts,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let protocol = if insecure {
            ClientProtocol::HttpsExcept(vec![registry.to_string()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(timeouts.connect),
            read_timeout: Some(timeouts.read),
            ..ClientConfig::default()
        });
        let auth = match naiad_storage::credentials::credentials_for(registry) {
            naiad_storage::credentials::RegistryAuth::Anonymous => RegistryAuth::Anonymous,
            naiad_storage::credentials::RegistryAuth::Basic(u, p) => RegistryAuth::Basic(u, p),
            naiad_storage::credentials::RegistryAuth::Bearer(t) => RegistryAuth::Bearer(t),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .build()
            .unwrap_or_default();
        Repo {
            client,
            auth,
            registry: registry.into(),
            repository: repository.into(),
            timeouts,
            insecure,
            http,
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// Its limits.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Whether both are on the same registry host.
    pub fn same_registry(&self, other: &Repo) -> bool {
        self.registry == other.registry
    }

    /// The repository name.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// `docker://registry/repository`.
    pub fn name(&self) -> String {
        format!("docker://{}/{}", self.registry, self.repository)
    }

    fn reference(&self, tag_or_digest: &str) -> Reference {
        if tag_or_digest.starts_with("sha256:") {
            Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                tag_or_digest.to_string(),
            )
        } else {
            Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag_or_digest.to_string(),
            )
        }
    }

    fn map_err(&self, what: &str, e: OciDistributionError) -> OciError {
        let image = self.name();
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => OciError::Auth {
                image,
                detail: format!(
                    "{what}: the registry refused the credentials (docker config) or requires some"
                ),
            },
            OciDistributionError::ImageManifestNotFoundError(_) => {
                OciError::NotFound { what: what.into(), image }
            }
            OciDistributionError::ServerError { code: 404, .. } => {
                OciError::NotFound { what: what.into(), image }
            }
            OciDistributionError::ServerError { code: 401 | 403, .. } => {
                OciError::Auth { image, detail: format!("{what}: access denied") }
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        format!("{:?}", e.code).as_str(),
                        "ManifestUnknown" | "BlobUnknown" | "NameUnknown"
                    )
                }) =>
            {
                OciError::NotFound { what: what.into(), image }
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(format!("{:?}", e.code).as_str(), "Unauthorized" | "Denied")
                }) =>
            {
                OciError::Auth { image, detail: format!("{what}: access denied") }
            }
            other => {
                let transient = match &other {
                    OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
                    OciDistributionError::RequestError(e) => {
                        e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
                    }
                    OciDistributionError::IoError(e) => OciError::io_is_transient(e),
                    _ => false,
                };
                OciError::Registry { image, detail: format!("{what}: {other}"), transient }
            }
        }
    }

    /// Runs `op` with retries on transient errors, each try within [`Timeouts::request`].
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        self.retry_checked(what, || {
            let answer = op();
            async move { answer.await.map_err(|e| self.map_err(what, e)) }
        })
        .await
    }

    /// [`Repo::retry`] of an operation whose errors are already [`OciError`]s.
    async fn retry_checked<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut delay = FIRST_BACKOFF;
        let mut attempt = 1;
        let limit = self.timeouts.request;
        loop {
            let answer = tokio::time::timeout(limit, op())
                .await
                .map_err(|_| timed_out(self.name(), what, limit))
                .and_then(|r| r);
            match answer {
                Ok(v) => return Ok(v),
                Err(err) => {
                    if attempt >= ATTEMPTS || !err.is_transient() {
                        return Err(err);
                    }
                    tracing::warn!(%err, attempt, "retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// Authenticates for pulling (or pushing) once, so later calls carry the token.
    pub async fn login(&self, push: bool) -> Result<()> {
        let op = if push { RegistryOperation::Push } else { RegistryOperation::Pull };
        let r = self.reference("latest");
        self.retry("authenticate", || self.client.auth(&r, &self.auth, op)).await.map(|_| ())
    }

    /// A manifest or index by tag or digest: bytes, media type, digest.
    pub async fn manifest(&self, reference: &str) -> Result<(Vec<u8>, String, String)> {
        let r = self.reference(reference);
        let accepted = [
            crate::media::OCI_MANIFEST,
            crate::media::OCI_INDEX,
            crate::media::DOCKER_MANIFEST,
            crate::media::DOCKER_LIST,
        ];
        let what = format!("manifest {reference}");
        let bytes = self.retry_checked(&what, || self.fetch_manifest(&what, &r, &accepted)).await?;
        let actual = crate::manifest::sha256_digest(&bytes);
        if reference.starts_with("sha256:") && actual != reference {
            return Err(OciError::Digest {
                what: format!("manifest of {}", self.name()),
                expected: reference.into(),
                actual,
            });
        }
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or_else(|| {
                if bytes.windows(11).any(|w| w == b"\"manifests\"") {
                    crate::media::OCI_INDEX.into()
                } else {
                    crate::media::OCI_MANIFEST.into()
                }
            });
        Ok((bytes.to_vec(), media_type, actual))
    }

    /// The pull token for this repository (asked for once), `None` if it needs none.
    async fn pull_token(&self, r: &Reference) -> Result<Option<String>> {
        let mut token = self.token.lock().await;
        if let Some(t) = &*token {
            return Ok(t.clone());
        }
        let got = self
            .client
            .auth(r, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.map_err("authenticate", e))?;
        *token = Some(got.clone());
        Ok(got)
    }

    /// One GET of a manifest, its body read as it arrives and refused past
    /// [`MAX_MANIFEST_BYTES`](crate::manifest::MAX_MANIFEST_BYTES) (a `Content-Length` over it
    /// is refused before any of the body is read).
    async fn fetch_manifest(
        &self,
        what: &str,
        r: &Reference,
        accepted: &[&str],
    ) -> Result<Vec<u8>> {
        use crate::manifest::MAX_MANIFEST_BYTES;
        let scheme = if self.insecure { "http" } else { "https" };
        let tag = r.digest().or(r.tag()).unwrap_or("latest");
        let url =
            format!("{scheme}://{}/v2/{}/manifests/{tag}", r.resolve_registry(), self.repository);
        let mut req = self.http.get(&url).header(http::header::ACCEPT, accepted.join(", "));
        req = match (self.pull_token(r).await?, &self.auth) {
            (Some(token), _) => req.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => req.basic_auth(user, Some(password)),
            (None, _) => req,
        };
        let sent = |e: reqwest::Error| self.request_error(what, e);
        let mut answer = req.send().await.map_err(sent)?;
        self.check_status(what, answer.status())?;
        let too_big = || {
            OciError::invalid(
                self.name(),
                format!("{what}: larger than MAX_MANIFEST_BYTES ({MAX_MANIFEST_BYTES} bytes)"),
            )
        };
        if answer.content_length().is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        while let Some(piece) = answer.chunk().await.map_err(sent)? {
            if bytes.len() + piece.len() > MAX_MANIFEST_BYTES {
                return Err(too_big());
            }
            bytes.extend_from_slice(&piece);
        }
        Ok(bytes)
    }

    /// The error of a manifest request that failed on the way (never naming its URL).
    fn request_error(&self, what: &str, e: reqwest::Error) -> OciError {
        let transient = e.is_connect() || e.is_timeout() || e.is_request() || e.is_body();
        let detail = format!("{what}: {}", e.without_url());
        OciError::Registry { image: self.name(), detail, transient }
    }

    /// The error an answer's status means, if it is not a success.
    fn check_status(&self, what: &str, status: reqwest::StatusCode) -> Result<()> {
        let image = self.name();
        match status.as_u16() {
            200..=299 => Ok(()),
            404 => Err(OciError::NotFound { what: what.into(), image }),
            401 | 403 => Err(OciError::Auth { image, detail: format!("{what}: access denied") }),
            code => Err(OciError::Registry {
                image,
                detail: format!("{what}: the registry answered {status}"),
                transient: code >= 500 || code == 429,
            }),
        }
    }

    /// Streams a blob: each item is a piece of its bytes (not yet verified).
    pub async fn blob_stream(
        &self,
        desc: &Descriptor,
    ) -> Result<futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>> {
        let r = self.reference("latest");
        self.client.store_auth_if_needed(&self.registry, &self.auth).await;
        let digest = desc.digest.as_str();
        let s = self
            .retry(&format!("blob {digest}"), || self.client.pull_blob_stream(&r, digest))
            .await?;
        Ok(s.stream.boxed())
    }

    /// Whether a blob exists (HEAD).
    pub async fn has_blob(&self, digest: &str) -> Result<bool> {
        let r = self.reference("latest");
        self.retry(&format!("blob {digest}"), || self.client.blob_exists(&r, digest)).await
    }

    /// Mounts a blob from another repository of the same registry; false if the registry
    /// did not mount it (the caller then uploads it).
    pub async fn mount_from(&self, from_repository: &str, digest: &str) -> bool {
        let r = self.reference("latest");
        let src = Reference::with_tag(
            self.registry.clone(),
            from_repository.to_string(),
            "latest".into(),
        );
        let mounted =
            tokio::time::timeout(self.timeouts.request, self.client.mount_blob(&r, &src, digest));
        matches!(mounted.await, Ok(Ok(_))) && self.has_blob(digest).await.unwrap_or(false)
    }

    /// Uploads a file as a blob (streamed, 8 MiB pieces).
    pub async fn put_blob_file(
        &self,
        path: &std::path::Path,
        digest: &str,
        size: u64,
    ) -> Result<()> {
        let r = self.reference("latest");
        let mut delay = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let file = tokio::fs::File::open(path).await.map_err(OciError::io(path.display()))?;
            let stream = futures_util::stream::unfold(file, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 8 << 20];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(bytes::Bytes::from(buf)), f))
                    }
                    Err(e) => {
                        Some((Err(OciDistributionError::GenericError(Some(e.to_string()))), f))
                    }
                }
            });
            let what = format!("upload of blob {digest}");
            let limit = self.timeouts.for_blob(size);
            let pushed = tokio::time::timeout(
                limit,
                self.client.push_blob_stream(&r, stream, digest, Some(size)),
            )
            .await
            .map_err(|_| timed_out(self.name(), &what, limit));
            match pushed.and_then(|r| r.map_err(|e| self.map_err(&what, e))) {
                Ok(_) => return Ok(()),
                Err(err) => {
                    if attempt == ATTEMPTS || !err.is_transient() {
                        return Err(err);
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Uploads bytes as a blob.
    pub async fn put_blob_bytes(&self, bytes: Vec<u8>, digest: &str) -> Result<()> {
        let r = self.reference("latest");
        let data = bytes::Bytes::from(bytes);
        self.retry(&format!("upload of blob {digest}"), || {
            self.client.push_blob(&r, data.clone(), digest)
        })
        .await
        .map(|_| ())
    }

    /// Uploads a manifest or index under a tag (or by digest).
    pub async fn put_manifest(
        &self,
        bytes: &[u8],
        media_type: &str,
        reference: &str,
    ) -> Result<()> {
        let r = self.reference(reference);
        let body = bytes::Bytes::copy_from_slice(bytes);
        let ct = reqwest_header(media_type);
        self.retry(&format!("upload of manifest {reference}"), || {
            self.client.push_manifest_raw(&r, body.clone(), ct.clone())
        })
        .await
        .map(|_| ())
    }
}

fn reqwest_header(v: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(v).expect("media types are valid header values")
}
