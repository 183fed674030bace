//! A typed client of the admin API ([`crate::api`]): HTTP/1.1 over the daemon's unix socket
//! (hyper), one connection per request, with a time limit on each. `naiad ctl`, the
//! containerd snapshotter and the tests use it; what goes in and out are the API's own types
//! ([`MountSpec`], [`MountInfo`], [`DaemonStatus`]).
//!
//! The calls block. Each runs its request on a small runtime of its own, on a thread of its
//! own, so a caller may be inside an async runtime (a blocking task of one) or not.

use crate::api::{DaemonStatus, MountInfo, PrefetchRequest, UnmountRequest};
use crate::spec::MountSpec;
use crate::{DaemonError, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a request may take, but a mount's.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a mount may take: it fetches the image's manifest and bootstrap first.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest answer read from the daemon.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A client of the daemon listening on one socket.
#[derive(Clone, Debug)]
pub struct DaemonClient {
    socket: PathBuf,
}

impl DaemonClient {
    /// A client of the daemon whose admin socket is `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        DaemonClient { socket: socket.into() }
    }

    /// The socket it talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<DaemonStatus> {
        self.json(Method::GET, "/v1/status", None, REQUEST_TIMEOUT)
    }

    /// `GET /v1/mounts`: every mount with its counters.
    pub fn list(&self) -> Result<Vec<MountInfo>> {
        self.json(Method::GET, "/v1/mounts", None, REQUEST_TIMEOUT)
    }

    /// `POST /v1/mounts`: mounts `spec` lazily.
    pub fn mount(&self, spec: &MountSpec) -> Result<MountInfo> {
        self.json(Method::POST, "/v1/mounts", Some(body(spec)?), MOUNT_TIMEOUT)
    }

    /// `DELETE /v1/mounts`: unmounts `mountpoint`. [`DaemonError::NotMounted`] if nothing is.
    pub fn umount(&self, mountpoint: &Path) -> Result<()> {
        let req = UnmountRequest { mountpoint: mountpoint.to_path_buf() };
        match self.call(Method::DELETE, "/v1/mounts", Some(body(&req)?), REQUEST_TIMEOUT) {
            Err(DaemonError::Api { status: 404, .. }) => {
                Err(DaemonError::NotMounted(mountpoint.display().to_string()))
            }
            r => r.map(drop),
        }
    }

    /// `POST /v1/prefetch`.
    pub fn prefetch(&self, req: &PrefetchRequest) -> Result<()> {
        self.call(Method::POST, "/v1/prefetch", Some(body(req)?), REQUEST_TIMEOUT).map(drop)
    }

    /// `GET /metrics`: Prometheus text.
    pub fn metrics(&self) -> Result<String> {
        let b = self.call(Method::GET, "/metrics", None, REQUEST_TIMEOUT)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| DaemonError::Invalid("the daemon's metrics are not UTF-8".into()))
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T> {
        let b = self.call(method, path, body, timeout)?;
        serde_json::from_slice(&b).map_err(|e| {
            DaemonError::Invalid(format!("the daemon's answer to {path} does not parse: {e}"))
        })
    }

    /// One request; the body of a 2xx answer, else [`DaemonError::Api`].
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes> {
        let (socket, path) = (self.socket.clone(), path.to_string());
        let run = move || -> Result<(StatusCode, Bytes)> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(DaemonError::io("a runtime for the daemon client"))?;
            rt.block_on(async {
                tokio::time::timeout(timeout, request(&socket, method, &path, body)).await.map_err(
                    |_| DaemonError::Io {
                        path: socket.display().to_string(),
                        cause: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "the daemon did not answer {path} within {} s",
                                timeout.as_secs()
                            ),
                        ),
                    },
                )?
            })
        };
        let (status, bytes) = std::thread::Builder::new()
            .name("naiad-client".into())
            .spawn(run)
            .map_err(DaemonError::io("a thread for the daemon client"))?
            .join()
            .map_err(|_| DaemonError::Invalid("the daemon client's request panicked".into()))??;
        if status.is_success() {
            return Ok(bytes);
        }
        #[derive(serde::Deserialize)]
        struct ApiError {
            error: String,
        }
        let message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
        Err(DaemonError::Api { status: status.as_u16(), message })
    }
}

fn body<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| DaemonError::Invalid(e.to_string()))
}

/// Sends one request over a new connection and reads the answer (at most
/// [`MAX_ANSWER_BYTES`]).
async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes)> {
    let io = |e: std::io::Error| DaemonError::Io {
        path: format!("{} (is `naiad daemon` running?)", socket.display()),
        cause: e,
    };
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(io)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| io(std::io::Error::other(e)))?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "naiad")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| DaemonError::Invalid(e.to_string()))?;
    let answer = sender.send_request(req).await.map_err(|e| io(std::io::Error::other(e)))?;
    let status = answer.status();
    let limited = http_body_util::Limited::new(answer.into_body(), MAX_ANSWER_BYTES);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| io(std::io::Error::other(format!("reading the daemon's answer: {e}"))))?
        .to_bytes();
    driver.abort();
    Ok((status, bytes))
}
