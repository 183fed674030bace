//! The admin API: JSON over a unix socket (mode 0600, owned by the daemon's user).
//!
//! | method and path | body | does |
//! |---|---|---|
//! | `GET /v1/status` | | daemon facts |
//! | `GET /v1/mounts` | | every mount with its counters |
//! | `POST /v1/mounts` | [`MountSpec`] | mounts lazily |
//! | `DELETE /v1/mounts` | `{"mountpoint": ...}` | unmounts |
//! | `POST /v1/prefetch` | `{"mountpoint": ..., "all": bool, "rate": bytes/s}` | starts a prefetch |
//! | `GET /metrics` | | Prometheus text |

use crate::spec::MountSpec;
use crate::table::Mounts;
use crate::{DaemonError, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use naiad_storage::cache::ChunkCache;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Shared daemon state.
pub struct Daemon {
    pub mounts: Mounts,
    pub cache: Arc<ChunkCache>,
    pub runtime_dir: PathBuf,
}

/// What `GET /v1/status` says of the daemon.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    /// Mounts it serves.
    pub mounts: usize,
    pub cache_dir: PathBuf,
}

/// One mount as the API shows it.
#[derive(Serialize, Deserialize, Debug)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub source: String,
    pub mode: crate::spec::Mode,
    pub backend: String,
    pub requests: u64,
    pub bytes_fetched: u64,
    pub chunks_fetched: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub verify_failures: u64,
    pub fetch_errors: u64,
    pub prefetch_done: u64,
    pub prefetch_total: u64,
}

fn info(m: &crate::mount::ActiveMount) -> MountInfo {
    let s = &m.fetcher.stats;
    let p = m.prefetch.lock().expect("prefetch lock").clone();
    MountInfo {
        mountpoint: m.spec.mountpoint.clone(),
        source: m.spec.source.clone(),
        mode: m.spec.mode,
        backend: m.backend.clone(),
        requests: s.requests.load(Ordering::Relaxed),
        bytes_fetched: s.bytes_fetched.load(Ordering::Relaxed),
        chunks_fetched: s.chunks_fetched.load(Ordering::Relaxed),
        cache_hits: s.hits.load(Ordering::Relaxed),
        cache_misses: s.misses.load(Ordering::Relaxed),
        verify_failures: s.verify_failures.load(Ordering::Relaxed),
        fetch_errors: s.errors.load(Ordering::Relaxed),
        prefetch_done: p.as_ref().map_or(0, |p| p.chunks_done.load(Ordering::Relaxed)),
        prefetch_total: p.as_ref().map_or(0, |p| p.chunks_total.load(Ordering::Relaxed)),
    }
}

/// Body of `DELETE /v1/mounts`.
#[derive(Serialize, Deserialize)]
pub struct UnmountRequest {
    pub mountpoint: PathBuf,
}

/// Body of `POST /v1/prefetch`.
#[derive(Serialize, Deserialize)]
pub struct PrefetchRequest {
    pub mountpoint: PathBuf,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub rate: Option<u64>,
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        let code = match e {
            DaemonError::NotMounted(_) => StatusCode::NOT_FOUND,
            DaemonError::Conflict(_) => StatusCode::CONFLICT,
            DaemonError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

fn absolute(p: &Path) -> std::result::Result<PathBuf, ApiError> {
    std::path::absolute(p).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn status(State(d): State<Arc<Daemon>>) -> Json<DaemonStatus> {
    d.mounts.reap();
    Json(DaemonStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        mounts: d.mounts.all().len(),
        cache_dir: d.cache.dir().to_path_buf(),
    })
}

async fn list(State(d): State<Arc<Daemon>>) -> Json<Vec<MountInfo>> {
    d.mounts.reap();
    Json(d.mounts.all().iter().map(|m| info(m)).collect())
}

async fn do_mount(
    State(d): State<Arc<Daemon>>,
    Json(spec): Json<MountSpec>,
) -> std::result::Result<(StatusCode, Json<MountInfo>), ApiError> {
    if spec.bootstrap.is_some() {
        // The daemon's own record of a bootstrap it fetched and verified: a client naming a
        // file there could mount any bootstrap under an image's name.
        return Err(DaemonError::Invalid(
            "bootstrap: set by the daemon for the images it fetches, not by a request".into(),
        )
        .into());
    }
    let spec = MountSpec { mountpoint: absolute(&spec.mountpoint)?, ..spec };
    let claim = d.mounts.claim(&spec.mountpoint)?;
    check_target(&spec.mountpoint, spec.force)?;
    let m = crate::mount::mount(spec, d.cache.clone(), &d.runtime_dir, true).await?;
    let m = d.mounts.insert(claim, m);
    Ok((StatusCode::CREATED, Json(info(&m))))
}

/// A mount point must be an existing directory, and empty unless `force`: mounting over
/// `/etc` or a user's files by mistake (or by a request that means harm) hides them.
fn check_target(mountpoint: &Path, force: bool) -> Result<(), DaemonError> {
    let md = std::fs::metadata(mountpoint).map_err(DaemonError::io(mountpoint.display()))?;
    if !md.is_dir() {
        return Err(DaemonError::Invalid(format!(
            "{}: the mount point is not a directory",
            mountpoint.display()
        )));
    }
    let mut entries =
        std::fs::read_dir(mountpoint).map_err(DaemonError::io(mountpoint.display()))?;
    if !force && entries.next().is_some() {
        return Err(DaemonError::Invalid(format!(
            "{}: the mount point is not empty (force to mount over what it holds)",
            mountpoint.display()
        )));
    }
    Ok(())
}

async fn do_umount(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<UnmountRequest>,
) -> std::result::Result<StatusCode, ApiError> {
    let mp = absolute(&req.mountpoint)?;
    tokio::task::spawn_blocking(move || d.mounts.remove(&mp))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(StatusCode::OK)
}

async fn prefetch(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<PrefetchRequest>,
) -> std::result::Result<StatusCode, ApiError> {
    let mp = absolute(&req.mountpoint)?;
    let m = d.mounts.get(&mp).ok_or_else(|| DaemonError::NotMounted(mp.display().to_string()))?;
    m.start_prefetch(naiad_fs::prefetch::PrefetchPlan {
        everything: req.all,
        rate_bytes_per_sec: req.rate,
    });
    Ok(StatusCode::ACCEPTED)
}

async fn metrics(State(d): State<Arc<Daemon>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], crate::metrics::render(&d.mounts, &d.cache))
}

/// The API's routes.
pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/mounts", get(list).post(do_mount).delete(do_umount))
        .route("/v1/prefetch", post(prefetch))
        .route("/metrics", get(metrics))
        .with_state(d)
}

/// Serves the API on `socket` until `shutdown` completes, then unmounts everything.
pub async fn serve(
    d: Arc<Daemon>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let io = || DaemonError::io(socket.display());
    let listener = naiad_fs::socket::bind_private(socket, naiad_fs::socket::Replace::DeadSocket)
        .map_err(io())?;
    listener.set_nonblocking(true).map_err(io())?;
    let listener = TrustedPeers(tokio::net::UnixListener::from_std(listener).map_err(io())?);
    let app = router(d.clone());
    let r = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = std::fs::remove_file(socket);
    let mounts = d.clone();
    let _ = tokio::task::spawn_blocking(move || mounts.mounts.clear()).await;
    r.map_err(DaemonError::io(socket.display()))
}

/// The API's listener: connections from anyone but root and the daemon's own uid are closed
/// unanswered (the socket is 0600 too; this holds if its mode is ever changed).
struct TrustedPeers(tokio::net::UnixListener);

impl axum::serve::Listener for TrustedPeers {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, addr)) if naiad_fs::socket::peer_trusted(&s) => return (s, addr),
                Ok((s, _)) => {
                    let uid = s.peer_cred().map(|c| c.uid()).ok();
                    tracing::warn!(?uid, "admin API: a connection from another user, closed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
