//! A FUSE filesystem being served at a mount point: mounted fresh (through /dev/fuse, or FUSE
//! over io_uring where the kernel offers it), or a connection adopted from a keeper after its
//! server died ([`super::adopt`]).

use super::adopt::{adopt, Adopted};
use crate::keeper::fuse::{start_keeper, take_from_keeper};
use crate::keeper::Keep;
use crate::{FsError, Result};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// adopted from a keeper. Dropping it unmounts and stops the server.
pub struct FuseServer {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    adopted: Option<Adopted>,
    ring: Option<super::ring::RingServer>,
}

/// What serving a connection through FUSE over io_uring needs: the filesystem's INIT switch
/// and its ring handler (the same filesystem, shared).
pub type RingParts = (super::ring::RingInit, Arc<dyn super::ring::RingHandler>);

impl FuseServer {
    /// Mounts `fs` at `mountpoint`, or, with `keep`, `may_adopt` and a live keeper for it,
    /// serves the connection the keeper holds (the mount is still in place). A fresh mount's
    /// connection goes to a new keeper when `keep` is given. Returns whether it adopted.
    ///
    /// With `ring`, a mount without a keeper is served through FUSE over io_uring where the
    /// kernel allows it (see [`super::ring`]); with a keeper it is not, since the kernel cannot
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
        if crate::erofs_mount::has_mount(mountpoint, &["fuse", "fuse.naiad"]) {
            let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
        std::fs::create_dir_all(mountpoint).map_err(FsError::io(mountpoint))?;
        config.n_threads = Some(n_threads);
        // The rings are made before INIT asks for them: once the kernel has agreed, every
        // request waits until each CPU's queue has an entry.
        let ring = ring.filter(|_| keep.is_none() && super::ring::enabled()).and_then(|(init, handler)| match super::ring::prepare() {
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
                let r = super::ring::RingServer::start(prepared, session.as_fd(), handler)
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
            if crate::erofs_mount::has_mount(&self.mountpoint, &["fuse", "fuse.naiad"]) {
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
        match crate::erofs_mount::umount(mountpoint) {
            Err(FsError::Io { cause, .. })
                if cause.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Unmounted meanwhile (by the library, or by hand).
            Err(_) if !crate::erofs_mount::has_mount(mountpoint, &["fuse", "fuse.naiad"]) => {
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
