//! The FUSE keeper (`naiad fuse-keeper`): holds a copy of a FUSE connection's `/dev/fuse`
//! descriptor, so that the connection outlives its server. It does nothing but hold it and
//! tell each client its pid and the descriptor's number ([`FuseHello`]); a new server copies the
//! descriptor back with `pidfd_getfd` ([`take_from_keeper`]). It exits within a second of the
//! connection's end (the mount is gone). See [`crate::fuse::adopt`] for serving an adopted
//! connection.

use super::proto::FuseHello;
use super::Keep;
use crate::{FsError, Result};
use rustix::event::{PollFd, PollFlags};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zerocopy::IntoBytes;

/// Where a mount's keeper listens: `RUNTIME_DIR/fuse-<hash of the FUSE mountpoint>.sock`.
pub fn socket_path(runtime_dir: &Path, fuse_mountpoint: &Path) -> PathBuf {
    super::socket(runtime_dir, "fuse", fuse_mountpoint)
}

/// The keeper: holds `fd` (a `/dev/fuse` descriptor) until its connection ends; answers each
/// connection on `socket` with its pid and the descriptor's number.
pub fn run(fd: OwnedFd, socket: &Path) -> Result<()> {
    let listener = crate::socket::bind_private(socket, crate::socket::Replace::AnySocket)
        .map_err(FsError::io(socket))?;
    let hello = FuseHello::new(std::process::id(), fd.as_raw_fd());
    // Leaving, the socket file is removed only if it is still this keeper's: the mount point
    // may have been mounted again meanwhile, with a new keeper on the same path.
    let ino = || std::fs::metadata(socket).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    let ours = ino();
    let leave = || {
        if ino() == ours {
            let _ = std::fs::remove_file(socket);
        }
    };
    let second = rustix::fs::Timespec { tv_sec: 1, tv_nsec: 0 };
    let zero = rustix::fs::Timespec { tv_sec: 0, tv_nsec: 0 };
    loop {
        // Only the socket is waited on. Waiting on the FUSE descriptor too would put this
        // process on the wait queue every request of the connection wakes: a wake-up here,
        // on another CPU, per request (fuse mode's warm re-reads through the daemon measured
        // 1.34x as fast without it). Whether the connection has ended is asked without
        // waiting (a zero timeout registers no waiter), once a second.
        let mut sock = [PollFd::new(&listener, PollFlags::IN)];
        match rustix::event::poll(&mut sock, Some(&second)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(FsError::Io { path: socket.into(), cause: e.into() }),
        }
        let mut conn = [PollFd::new(&fd, PollFlags::empty())];
        let _ = rustix::event::poll(&mut conn, Some(&zero));
        // The connection was aborted or its mount is gone: nothing left to keep.
        if conn[0].revents().intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
            leave();
            return Ok(());
        }
        if sock[0].revents().contains(PollFlags::IN) {
            if let Ok((mut s, _)) = listener.accept() {
                if crate::socket::peer_trusted(&s) {
                    let _ = s.write_all(hello.as_bytes());
                }
            }
        }
    }
}

/// Starts a keeper for the connection `fuse_fd` of the mount at `fuse_mountpoint`.
pub fn start_keeper(keep: &Keep, fuse_fd: BorrowedFd<'_>, fuse_mountpoint: &Path) -> Result<()> {
    let sock = socket_path(&keep.runtime_dir, fuse_mountpoint);
    std::fs::create_dir_all(&keep.runtime_dir).map_err(FsError::io(&keep.runtime_dir))?;
    let mut cmd = std::process::Command::new(&keep.exe);
    cmd.args(["fuse-keeper", "--fd", &fuse_fd.as_raw_fd().to_string(), "--socket"])
        .arg(&sock)
        .arg("--mountpoint")
        .arg(fuse_mountpoint);
    super::spawn::spawn_keeper(cmd, &[fuse_fd.as_fd()], &sock, "fuse keeper").map(drop)
}

/// Whether a keeper holds the connection of the FUSE mount at `fuse_mountpoint`.
pub fn keeper_alive(runtime_dir: &Path, fuse_mountpoint: &Path) -> bool {
    UnixStream::connect(socket_path(runtime_dir, fuse_mountpoint)).is_ok()
}

/// The descriptor a live keeper holds for `fuse_mountpoint`, copied into this process.
pub fn take_from_keeper(runtime_dir: &Path, fuse_mountpoint: &Path) -> Option<OwnedFd> {
    let mut s = UnixStream::connect(socket_path(runtime_dir, fuse_mountpoint)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let hello = FuseHello::recv(&mut s).ok()?;
    super::spawn::copy_fd(hello.pid(), hello.fd()).ok()
}
