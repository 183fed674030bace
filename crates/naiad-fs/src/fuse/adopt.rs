//! Serving a FUSE connection that outlives its server: a daemon restart or crash must not break
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

use super::abi::{op, InHeader, InitIn, OutHeader, NOTIFY_RESEND};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use zerocopy::IntoBytes;

/// Serves `fs` on `real`, a connection whose INIT handshake an earlier server did.
pub fn adopt<FS: fuser::Filesystem>(
    fs: FS,
    real: OwnedFd,
    n_threads: usize,
) -> std::io::Result<Adopted> {
    let (ours, lib) = seqpacket_pair()?;
    for fd in [&ours, &lib] {
        // Big enough for any reply (a read is at most 256 pages) in one message.
        rustix::net::sockopt::set_socket_send_buffer_size_force(fd, 8 << 20)?;
        rustix::net::sockopt::set_socket_recv_buffer_size_force(fd, 8 << 20)?;
    }
    // The INIT the library waits for. Its answer is read and dropped below: the kernel
    // settled the connection's parameters with the first server.
    let len = (std::mem::size_of::<InHeader>() + std::mem::size_of::<InitIn>()) as u32;
    let head = InHeader { len, opcode: op::INIT, unique: 1, ..Default::default() };
    let body = InitIn { major: 7, minor: 40, max_readahead: 128 << 10, ..Default::default() };
    let init = [head.as_bytes(), body.as_bytes()].concat();
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
    let resend =
        OutHeader { len: std::mem::size_of::<OutHeader>() as u32, error: NOTIFY_RESEND, unique: 0 };
    if let Err(e) = write_msg(real.as_fd(), resend.as_bytes()) {
        tracing::warn!("FUSE_NOTIFY_RESEND: {e} (requests the old server had taken are lost; Linux 6.9 or later resends them)");
    }
    Ok(Adopted { session: Some(session), threads: vec![down, up] })
}

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
    let _ = rustix::net::shutdown(ours, rustix::net::Shutdown::Both);
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
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn read_msg(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<usize> {
    Ok(rustix::io::read(fd, buf)?)
}

fn write_msg(fd: BorrowedFd<'_>, msg: &[u8]) -> std::io::Result<()> {
    loop {
        match rustix::io::write(fd, msg) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
