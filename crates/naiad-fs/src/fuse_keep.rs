//! FUSE connections that outlive their server: a daemon restart or crash must not break
//! the mounts (and the containers on them).
//!
//! A FUSE connection lives as long as one process holds its `/dev/fuse` descriptor. At
//! mount time the server hands a copy to a small keeper process (`naiad fuse-keeper`, in its
//! own session), which does nothing but hold it, and exits within a second of the
//! connection's end (the mount is gone). When the server dies, reads on the mount wait in
//! the kernel's queue instead of failing. The next server copies the descriptor back from the keeper
//! (`pidfd_getfd`) and serves it; it asks the kernel to send again the requests the dead
//! server had read but not answered (`FUSE_NOTIFY_RESEND`, Linux 6.9), so no reader is
//! left waiting.
//!
//! The FUSE library (fuser) only starts a session with the INIT handshake, which the kernel
//! does once per connection. So an adopted connection is served through a socket pair: the
//! library gets one end, told INIT by us; two shuttle threads carry each request from the
//! real descriptor to it and each reply back (one message each way, boundaries kept by
//! `SOCK_SEQPACKET`). That costs a copy per message, only on adopted connections: the next
//! fresh mount is direct again.

use crate::{FsError, Result};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a mount's keeper listens: `RUNTIME_DIR/fuse-<hash of the FUSE mountpoint>.sock`.
pub fn socket_path(runtime_dir: &Path, fuse_mountpoint: &Path) -> PathBuf {
    crate::fanotify_keeper::keeper_socket(runtime_dir, "fuse", fuse_mountpoint)
}

/// What a running server needs to hand its connection to a keeper.
#[derive(Clone, Debug)]
pub struct Keep {
    pub runtime_dir: PathBuf,
    /// The `naiad` executable (`naiad fuse-keeper`).
    pub exe: PathBuf,
}

/// The keeper: holds `fd` (a `/dev/fuse` descriptor) until its connection ends; answers each
/// connection on `socket` with `P`, its pid and the descriptor's number.
pub fn run_keeper(fd: i32, socket: &Path) -> Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(FsError::io(socket))?;
    let _ = std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    let pid = std::process::id();
    // Leaving, the socket file is removed only if it is still this keeper's: the mount point
    // may have been mounted again meanwhile, with a new keeper on the same path.
    let ino = || std::fs::metadata(socket).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    let ours = ino();
    let leave = || {
        if ino() == ours {
            let _ = std::fs::remove_file(socket);
        }
    };
    loop {
        // Only the socket is waited on. Waiting on the FUSE descriptor too would put this
        // process on the wait queue every request of the connection wakes: a wake-up here,
        // on another CPU, per request (fuse mode's warm re-reads through the daemon measured
        // 1.34x as fast without it). Whether the connection has ended is
        // asked without waiting (a zero timeout registers no waiter), once a second.
        let mut sock =
            [libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one valid pollfd entry.
        let n = unsafe { libc::poll(sock.as_mut_ptr(), 1, 1000) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(FsError::Io { path: socket.into(), cause: e });
        }
        let mut conn = [libc::pollfd { fd, events: 0, revents: 0 }];
        // SAFETY: one valid pollfd entry.
        unsafe { libc::poll(conn.as_mut_ptr(), 1, 0) };
        // The connection was aborted or its mount is gone: nothing left to keep.
        if conn[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            leave();
            return Ok(());
        }
        if sock[0].revents & libc::POLLIN != 0 {
            if let Ok((mut s, _)) = listener.accept() {
                let mut m = vec![b'P'];
                m.extend_from_slice(&pid.to_le_bytes());
                m.extend_from_slice(&fd.to_le_bytes());
                let _ = s.write_all(&m);
            }
        }
    }
}

/// Starts a keeper for the connection `fuse_fd` of the mount at `fuse_mountpoint`.
pub fn start_keeper(keep: &Keep, fuse_fd: BorrowedFd<'_>, fuse_mountpoint: &Path) -> Result<()> {
    let sock = socket_path(&keep.runtime_dir, fuse_mountpoint);
    std::fs::create_dir_all(&keep.runtime_dir).map_err(FsError::io(&keep.runtime_dir))?;
    let raw = fuse_fd.as_raw_fd();
    let mut cmd = std::process::Command::new(&keep.exe);
    cmd.args(["fuse-keeper", "--fd", &raw.to_string(), "--socket"])
        .arg(&sock)
        .arg("--mountpoint")
        .arg(fuse_mountpoint);
    crate::fanotify::spawn_keeper(cmd, vec![raw], &sock, "fuse keeper").map(drop)
}

/// Whether a keeper holds the connection of the FUSE mount at `fuse_mountpoint`.
pub fn keeper_alive(runtime_dir: &Path, fuse_mountpoint: &Path) -> bool {
    UnixStream::connect(socket_path(runtime_dir, fuse_mountpoint)).is_ok()
}

/// The descriptor a live keeper holds for `fuse_mountpoint`, copied into this process.
pub fn take_from_keeper(runtime_dir: &Path, fuse_mountpoint: &Path) -> Option<OwnedFd> {
    let sock = socket_path(runtime_dir, fuse_mountpoint);
    let mut s = UnixStream::connect(&sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut m = [0u8; 9];
    s.read_exact(&mut m).ok()?;
    if m[0] != b'P' {
        return None;
    }
    let pid = u32::from_le_bytes(m[1..5].try_into().expect("4 bytes"));
    let fd = i32::from_le_bytes(m[5..9].try_into().expect("4 bytes"));
    crate::fanotify::copy_fd(pid, fd).ok()
}

/// Serves `fs` on `real`, a connection whose INIT handshake an earlier server did.
pub fn adopt<FS: fuser::Filesystem>(
    fs: FS,
    real: OwnedFd,
    n_threads: usize,
) -> std::io::Result<Adopted> {
    let (ours, lib) = seqpacket_pair()?;
    for fd in [&ours, &lib] {
        // Big enough for any reply (a read is at most 256 pages) in one message.
        let size: libc::c_int = 8 << 20;
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // SAFETY: a valid socket and option value.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    4,
                )
            };
        }
    }
    // The INIT the library waits for. Its answer is read and dropped below: the kernel
    // settled the connection's parameters with the first server.
    let mut init = Vec::with_capacity(104);
    for v in [104u32, FUSE_INIT] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    init.extend_from_slice(&1u64.to_le_bytes()); // unique
    init.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    init.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
    for v in [7u32, 40, 128 << 10, 0, 0] {
        init.extend_from_slice(&v.to_le_bytes()); // major, minor, max_readahead, flags, flags2
    }
    init.extend_from_slice(&[0u8; 44]);
    write_msg(ours.as_fd(), &init)?;
    let mut config = fuser::Config::default();
    config.n_threads = Some(n_threads);
    let session = fuser::Session::from_fd(fs, lib, fuser::SessionACL::All, config)?;
    let mut buf = vec![0u8; 4096];
    read_msg(ours.as_fd(), &mut buf)?; // the INIT reply
    let session = session.spawn()?;
    let real = Arc::new(real);
    let ours = Arc::new(ours);
    let (r, o) = (real.clone(), ours.clone());
    let down = std::thread::Builder::new()
        .name("naiad-fuse-in".into())
        .spawn(move || shuttle_requests(&r, &o))?;
    let (r, o) = (real.clone(), ours.clone());
    let up = std::thread::Builder::new()
        .name("naiad-fuse-out".into())
        .spawn(move || shuttle_replies(&o, &r))?;
    // Requests the dead server had read but not answered: the kernel queues them again.
    let mut resend = Vec::with_capacity(16);
    resend.extend_from_slice(&16u32.to_le_bytes());
    resend.extend_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    resend.extend_from_slice(&0u64.to_le_bytes());
    if let Err(e) = write_msg(real.as_fd(), &resend) {
        tracing::warn!("FUSE_NOTIFY_RESEND: {e} (requests the old server had taken are lost; Linux 6.9 or later resends them)");
    }
    Ok(Adopted { session: Some(session), threads: vec![down, up] })
}

const FUSE_INIT: u32 = 26;
const FUSE_NOTIFY_RESEND: i32 = 7;
/// A read buffer the kernel accepts: at least the largest write request (fuser's max_write
/// of 16 MiB) plus headers.
const READ_BUFFER: usize = (16 << 20) + 4096;

/// An adopted connection being served; dropping it ends the session (the caller unmounts
/// first, which ends the connection).
pub struct Adopted {
    session: Option<fuser::BackgroundSession>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Adopted {
    fn drop(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(s) = self.session.take() {
            let _ = s.guard.join();
        }
    }
}

fn shuttle_requests(real: &OwnedFd, ours: &OwnedFd) {
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        match read_msg(real.as_fd(), &mut buf) {
            Ok(n) => {
                if write_msg(ours.as_fd(), &buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT)
                ) =>
            {
                continue
            }
            // ENODEV: the connection ended (unmounted).
            Err(_) => break,
        }
    }
    // The library's threads see the end of their socket and stop; so does the reply shuttle.
    // SAFETY: a valid socket.
    unsafe { libc::shutdown(ours.as_raw_fd(), libc::SHUT_RDWR) };
}

fn shuttle_replies(ours: &OwnedFd, real: &OwnedFd) {
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        match read_msg(ours.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A reply to a request the kernel gave up on (interrupted) fails: fine.
                let _ = write_msg(real.as_fd(), &buf[..n]);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => break,
        }
    }
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two new descriptors owned from here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_msg(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn write_msg(fd: BorrowedFd<'_>, msg: &[u8]) -> std::io::Result<()> {
    loop {
        // SAFETY: msg is valid for its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        if n >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// A FUSE filesystem being served at `mountpoint`: a session we mounted, or a connection
/// adopted from a keeper. Dropping it unmounts and stops the server.
pub struct FuseServer {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    adopted: Option<Adopted>,
    ring: Option<crate::fuse_ring::RingServer>,
}

/// What serving a connection through FUSE over io_uring needs: the filesystem's INIT switch
/// and its ring handler (the same filesystem, shared).
pub type RingParts = (crate::fuse_ring::RingInit, Arc<dyn crate::fuse_ring::RingHandler>);

impl FuseServer {
    /// Mounts `fs` at `mountpoint`, or, with `keep`, `may_adopt` and a live keeper for it,
    /// serves the connection the keeper holds (the mount is still in place). A fresh mount's
    /// connection goes to a new keeper when `keep` is given. Returns whether it adopted.
    ///
    /// With `ring`, a mount without a keeper is served through FUSE over io_uring where the
    /// kernel allows it (see `fuse_ring`); with a keeper it is not, since the kernel cannot
    /// hand a dead server's ring requests to the next one.
    pub fn start<FS: fuser::Filesystem>(
        fs: FS,
        mountpoint: &Path,
        mut config: fuser::Config,
        n_threads: usize,
        keep: Option<&Keep>,
        may_adopt: bool,
        ring: Option<RingParts>,
    ) -> Result<(FuseServer, bool)> {
        let io = |e: std::io::Error| FsError::Io { path: mountpoint.into(), cause: e };
        if let Some(fd) =
            keep.filter(|_| may_adopt).and_then(|k| take_from_keeper(&k.runtime_dir, mountpoint))
        {
            let adopted = adopt(fs, fd, n_threads).map_err(io)?;
            return Ok((
                FuseServer {
                    mountpoint: mountpoint.into(),
                    session: None,
                    adopted: Some(adopted),
                    ring: None,
                },
                true,
            ));
        }
        // A server killed without a keeper leaves its FUSE mount behind, disconnected:
        // detach it so this mount can take its place.
        if crate::kernel::has_mount(mountpoint, &["fuse", "fuse.naiad"]) {
            let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
        std::fs::create_dir_all(mountpoint).map_err(FsError::io(mountpoint))?;
        config.n_threads = Some(n_threads);
        // The rings are made before INIT asks for them: once the kernel has agreed, every
        // request waits until each CPU's queue has an entry.
        let ring = ring.filter(|_| keep.is_none() && crate::fuse_ring::enabled()).and_then(|(init, handler)| match crate::fuse_ring::prepare() {
            Ok(p) => {
                init.want();
                Some((init, handler, p))
            }
            Err(e) => {
                tracing::warn!(error = %e, "FUSE over io_uring unavailable (io_uring setup failed); serving through /dev/fuse");
                None
            }
        });
        let session = fuser::Session::new(fs, mountpoint, &config).map_err(io)?;
        if let Some(k) = keep {
            start_keeper(k, session.as_fd(), mountpoint)?;
        }
        let ring = match ring {
            Some((init, handler, prepared)) if init.granted() => {
                // A failed registration leaves requests waiting for the ring: give up the
                // mount rather than leave it hanging (the caller sees the error).
                let r = crate::fuse_ring::RingServer::start(prepared, session.as_fd(), handler)
                    .map_err(|e| FsError::Io {
                        path: mountpoint.into(),
                        cause: std::io::Error::new(e.kind(), format!("FUSE over io_uring: {e}")),
                    })?;
                tracing::info!(mountpoint = %mountpoint.display(), "serving through FUSE over io_uring");
                Some(r)
            }
            Some(_) => {
                tracing::info!(mountpoint = %mountpoint.display(), "the kernel did not offer FUSE over io_uring; serving through /dev/fuse");
                None
            }
            None => None,
        };
        let session = session.spawn().map_err(io)?;
        Ok((
            FuseServer {
                mountpoint: mountpoint.into(),
                session: Some(session),
                adopted: None,
                ring,
            },
            false,
        ))
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether requests come through FUSE over io_uring.
    pub fn uses_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Unmounts and waits for the server threads.
    pub fn stop(&mut self) -> Result<()> {
        let mut r = Ok(());
        if let Some(a) = self.adopted.take() {
            // Our session did not mount it: unmount by hand; the connection ends, and with
            // it the shuttles and the library's threads.
            if crate::kernel::has_mount(&self.mountpoint, &["fuse", "fuse.naiad"]) {
                r = umount_settling(&self.mountpoint);
            }
            drop(a);
        }
        if let Some(s) = self.session.take() {
            if s.umount_and_join().is_err() {
                // The library tries once; its threads end once the unmount is done.
                r = umount_settling(&self.mountpoint);
            }
        }
        // The connection has ended: the kernel completes every ring entry with ENOTCONN.
        if let Some(mut ring) = self.ring.take() {
            ring.join();
        }
        r
    }
}

/// Unmounts the FUSE mount at `mountpoint`, waiting up to 2 s while it is busy: an EROFS
/// mount on top of blob views closes its files asynchronously after its own unmount, so the
/// views can be busy for a moment (unmounting them once then left them behind, disconnected,
/// when the server exited).
fn umount_settling(mountpoint: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match crate::kernel::umount(mountpoint) {
            Err(FsError::Io { cause, .. })
                if cause.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Unmounted meanwhile (by the library, or by hand).
            Err(_) if !crate::kernel::has_mount(mountpoint, &["fuse", "fuse.naiad"]) => {
                return Ok(())
            }
            r => return r,
        }
    }
}

impl Drop for FuseServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
