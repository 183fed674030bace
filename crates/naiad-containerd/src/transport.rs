//! gRPC over unix sockets: a client channel and a server, both tonic's.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server, Uri};

/// The URI a unix-socket channel is built on. gRPC needs one for the `:authority` and
/// `:scheme` pseudo-headers, but it is never resolved: the connector dials the socket.
const UNIX_DUMMY_URI: &str = "http://localhost";

/// File mode of a socket made by [`bind_unix`]: only its owner (root, for containerd and
/// its plugins) may connect.
pub const SOCKET_MODE: u32 = 0o600;

/// Opens a gRPC client channel to the server listening on the unix socket `socket` (e.g.
/// `/run/containerd/containerd.sock`).
///
/// Connects before returning, so a missing or dead socket fails here. The channel redials
/// the same path if the connection breaks later (e.g. containerd restarts).
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::from_static(UNIX_DUMMY_URI)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// Binds a unix socket at `socket` for a gRPC server and makes it [`SOCKET_MODE`].
///
/// A socket file already at that path (left by an earlier run) is removed first; any other
/// kind of file there is an `AlreadyExists` error, never removed. Must be called inside a
/// tokio runtime. The socket briefly has the process umask's mode before it is narrowed, so
/// its directory should not be writable or listable by others.
pub fn bind_unix(socket: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(socket)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", socket.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Ok(listener)
}

/// Serves `routes` (e.g. `Routes::new(SnapshotsServer::new(my_snapshotter))`) on `listener`
/// (from [`bind_unix`]) until `shutdown` completes, then lets in-flight calls finish, removes
/// the socket file and returns.
///
/// For server settings beyond tonic's defaults (concurrency limits, timeouts), build a
/// `tonic::transport::Server` yourself and serve it with
/// `serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)`.
pub async fn serve_unix<F>(
    listener: UnixListener,
    routes: Routes,
    shutdown: F,
) -> Result<(), tonic::transport::Error>
where
    F: Future<Output = ()>,
{
    let path =
        listener.local_addr().ok().and_then(|addr| addr.as_pathname().map(Path::to_path_buf));
    let served = Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Some(path) = path {
        // Best effort: a socket left behind is removed by the next `bind_unix` anyway.
        let _ = std::fs::remove_file(path);
    }
    served
}
