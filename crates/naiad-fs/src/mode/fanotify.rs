//! The fanotify mode: the kernel's EROFS mounted straight on the chunk cache's frame files
//! (one sparse file per frame, its chunks at their view offsets; one EROFS device each), each
//! file not yet complete watched by a fanotify pre-content group (`FAN_CLASS_PRE_CONTENT`,
//! `FAN_PRE_ACCESS`, Linux 6.14+).
//!
//! A read of a frame file — EROFS reading its device — first raises an event naming the file
//! range. A worker fetches the chunks covering the range (verified, one fetch per chunk, the
//! same fetcher as the other modes), writes them into the cache, and only then answers
//! `FAN_ALLOW`; if they cannot be fetched it answers a denial with `EIO`, so a hole is never
//! read as data. A fetch fills whole frames, so the file read is complete from then on, and
//! the keeper unwatches it: the kernel reads it like any local file, with nothing in user
//! space. Only reads of frames never read before cost an event.
//!
//! The fetcher's own writes into a watched file raise no event (pre-content events are for
//! reads), so filling never waits on itself.
//!
//! The group must outlive the mount and any crash of this process: closing it lets pending
//! and later reads through unfilled. It is therefore held by a keeper process
//! ([`crate::keeper::fanotify`]), which answers reads of ranges already present itself and
//! forwards the others here; a mount server that dies is replaced by the next one started for
//! the same mount point, which attaches to the keeper, and readers only wait meanwhile.

use crate::fanotify::sys;
use crate::keeper::fanotify::socket_path;
use crate::keeper::proto::{FrameReg, Msg, FRAMES_PER_MESSAGE};
use crate::{FsError, Result};
use naiad_format::block_align;
use naiad_format::bootstrap::Bootstrap;
use naiad_storage::cache::FrameFile;
use naiad_storage::lazy::LazyBlob;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

/// Threads answering events (each may wait on the backend).
pub const FANOTIFY_WORKERS: usize = 8;

/// One frame of the mount: its cache file and that file's identity as the keeper names it,
/// its blob, the view range its chunks span, and whether it was complete when the mount was
/// made.
struct MountedFrame {
    file: Arc<FrameFile>,
    dev: u64,
    ino: u64,
    blob: usize,
    span: std::ops::Range<u64>,
    complete: bool,
}

struct Shared {
    blobs: Vec<Arc<LazyBlob>>,
    /// Blob of each frame file, by (dev, ino).
    blob_of: HashMap<(u64, u64), usize>,
    /// The connection to the keeper (writes; a clone reads).
    keeper: Mutex<UnixStream>,
}

/// One event to answer: the keeper's id for it, the blob, the range.
struct Job {
    id: i32,
    blob: usize,
    offset: u64,
    count: u64,
}

/// A mounted image in fanotify mode.
pub struct FanotifyMount {
    mountpoint: PathBuf,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    mounted: bool,
}

/// Mounts `bootstrap_path` (parsed as `bs`) at `mountpoint` on the cache files of its blobs
/// (`blobs`, by blob index), filled as they are read. The group goes to a keeper process
/// started from `keeper_exe` (`naiad fanotify-keeper`), its socket in `runtime_dir`. If a
/// keeper already serves `mountpoint` (its previous server died), this attaches to it
/// instead: the image is mounted already, and the reads waiting are answered now.
pub fn mount_fanotify_mode(
    bootstrap_path: &Path,
    bs: &Bootstrap,
    blobs: Vec<Arc<LazyBlob>>,
    mountpoint: &Path,
    runtime_dir: &Path,
    keeper_exe: &Path,
    exposure: crate::erofs_mount::Exposure,
) -> Result<FanotifyMount> {
    let t0 = std::time::Instant::now();
    let sock = socket_path(runtime_dir, mountpoint);
    let attach = UnixStream::connect(&sock)
        .ok()
        .filter(|_| crate::erofs_mount::is_erofs_mounted(mountpoint));
    let attached = attach.is_some();
    // The remapped bootstrap (a walk of the tree) is made while the frame files are opened.
    let (plan, frames) = std::thread::scope(|scope| {
        let plan = (!attached).then(|| {
            scope.spawn(|| {
                let devs: Vec<_> = blobs
                    .iter()
                    .map(|b| crate::devices::BlobDevices {
                        blob: b.cached(),
                        frames: b.frames(),
                        view: None,
                    })
                    .collect();
                crate::devices::plan(bs, &devs, |_, _| true)
            })
        });
        let frames = frame_files(&blobs);
        let plan = plan.map(|h| h.join().expect("planning panicked")).transpose();
        (plan, frames)
    });
    let (plan, frames) = (plan?, frames?);
    let stream = match attach {
        Some(s) => s,
        None => start_keeper(&frames, mountpoint, runtime_dir, keeper_exe, &sock)?,
    };
    let io = |e: std::io::Error| FsError::Io { path: sock.clone(), cause: e };
    // A keeper started here holds copies of this process's own pre-watch descriptors; one
    // attached to must hand over its copies.
    take_writers(&stream, &frames, attached)
        .map_err(|e| FsError::Invalid(format!("fanotify keeper {}: {e}", sock.display())))?;
    let mut w = stream.try_clone().map_err(io)?;
    for (i, b) in blobs.iter().enumerate() {
        let m = Msg::Blob {
            blob: i as u32,
            view_size: b.view_size(),
            map_path: b.cached().map_path().to_path_buf(),
        };
        m.send(&mut w).map_err(io)?;
    }
    for batch in frames.chunks(FRAMES_PER_MESSAGE) {
        let regs = batch
            .iter()
            .map(|f| FrameReg { dev: f.dev, ino: f.ino, blob: f.blob as u32, span: f.span.clone() })
            .collect();
        Msg::Frames(regs).send(&mut w).map_err(io)?;
    }
    Msg::Go.send(&mut w).map_err(io)?;
    let blob_of = frames.iter().map(|f| ((f.dev, f.ino), f.blob)).collect();
    let shared = Arc::new(Shared { blobs, blob_of, keeper: Mutex::new(w) });
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut threads = Vec::new();
    let spawn_err = |e: std::io::Error| FsError::Io { path: mountpoint.into(), cause: e };
    for i in 0..FANOTIFY_WORKERS {
        let (s, rx) = (shared.clone(), rx.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("naiad-fan-{i}"))
                .spawn(move || worker(&s, &rx))
                .map_err(spawn_err)?,
        );
    }
    let s = shared.clone();
    threads.push(
        std::thread::Builder::new()
            .name("naiad-fan-listen".into())
            .spawn(move || listen(&s, stream, tx))
            .map_err(spawn_err)?,
    );
    let mut m = FanotifyMount { mountpoint: mountpoint.into(), shared, threads, mounted: attached };
    if let Some(plan) = plan {
        std::fs::create_dir_all(mountpoint).map_err(FsError::io(mountpoint))?;
        let scratch = sock.with_extension("erofs");
        crate::devices::mount(&plan, bootstrap_path, &scratch, mountpoint, exposure)?;
        m.mounted = true;
    }
    tracing::debug!(
        frame_files = m.shared.blob_of.len(),
        ms = t0.elapsed().as_millis() as u64,
        "fanotify mode set up"
    );
    Ok(m)
}

/// Opens (and creates) the frame file of every frame of the image, before any watch (see
/// `start_keeper`).
fn frame_files(blobs: &[Arc<LazyBlob>]) -> Result<Vec<MountedFrame>> {
    let mut frames = Vec::new();
    for (i, b) in blobs.iter().enumerate() {
        for f in b.frames().frames() {
            let file = b.cached().frame(f[0].compressed_offset)?;
            let md = file.metadata().map_err(FsError::io(file.path()))?;
            let start = f.iter().map(|c| c.view_offset).min().unwrap_or(0);
            let end =
                f.iter().map(|c| c.view_offset + block_align(u64::from(c.size))).max().unwrap_or(0);
            let complete = b.cached().all_present(f);
            frames.push(MountedFrame {
                file,
                dev: md.dev(),
                ino: md.ino(),
                blob: i,
                span: start..end,
                complete,
            });
        }
    }
    Ok(frames)
}

/// Reads the keeper's writer list and makes every frame's fills write through the keeper's
/// descriptor of its file (copied with `pidfd_getfd`), which raises no event. Frames the
/// keeper has no descriptor for were complete when the image was mounted: never watched.
fn take_writers(
    stream: &UnixStream,
    frames: &[MountedFrame],
    attached: bool,
) -> std::io::Result<()> {
    let mut r = stream.try_clone()?;
    r.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let m = Msg::recv(&mut r)?;
    r.set_read_timeout(None)?;
    let Msg::Writers { pid, fds } = m else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "no writer list"));
    };
    if !attached {
        return Ok(());
    }
    let by_id: HashMap<(u64, u64), &MountedFrame> =
        frames.iter().map(|fr| ((fr.dev, fr.ino), fr)).collect();
    for w in fds {
        let Some(fr) = by_id.get(&(w.dev, w.ino)) else { continue };
        let file = std::fs::File::from(crate::keeper::spawn::copy_fd(pid, w.fd)?);
        fr.file.set_writer(file);
    }
    Ok(())
}

/// Creates the group, watches the frame files not complete yet, and starts a keeper holding
/// it; returns the connection to the keeper.
fn start_keeper(
    frames: &[MountedFrame],
    mountpoint: &Path,
    runtime_dir: &Path,
    keeper_exe: &Path,
    sock: &Path,
) -> Result<UnixStream> {
    let group = sys::init().map_err(|e| FsError::Invalid(format!("fanotify_init: {e}")))?;
    let mut writers: Vec<BorrowedFd<'_>> = Vec::new();
    for file in frames.iter().filter(|f| !f.complete).map(|f| &f.file) {
        // The marks go on before EROFS opens the files: whether a file raises pre-content
        // events is settled when it is opened.
        sys::mark(group.as_fd(), true, file.path())
            .map_err(|e| FsError::Invalid(format!("watching {}: {e}", file.path().display())))?;
        // Opened before the watch (above, with the cache entry): writes through these raise
        // no event. The keeper keeps them for later workers.
        writers.push(file.writer_fd());
    }
    std::fs::create_dir_all(runtime_dir).map_err(FsError::io(runtime_dir))?;
    let list = writers.iter().map(|w| w.as_raw_fd().to_string()).collect::<Vec<_>>().join(",");
    let mut cmd = std::process::Command::new(keeper_exe);
    cmd.args([
        "fanotify-keeper",
        "--group-fd",
        &group.as_raw_fd().to_string(),
        "--writer-fds",
        &list,
        "--socket",
    ])
    .arg(sock)
    .arg("--mountpoint")
    .arg(mountpoint);
    let fds: Vec<BorrowedFd<'_>> = std::iter::once(group.as_fd()).chain(writers).collect();
    crate::keeper::spawn::spawn_keeper(cmd, &fds, sock, "fanotify keeper")
}

/// Reads the keeper's events and hands them to the workers until the connection ends.
fn listen(s: &Shared, mut stream: UnixStream, tx: mpsc::Sender<Job>) {
    loop {
        let m = match Msg::recv(&mut stream) {
            Ok(m) => m,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(error = %e, "keeper connection ended");
                }
                return;
            }
        };
        let Msg::Event { id, dev, ino, offset, count } = m else { continue };
        match s.blob_of.get(&(dev, ino)).copied() {
            Some(blob) => {
                let count = if count == u64::MAX { s.blobs[blob].view_size() } else { count };
                if tx.send(Job { id, blob, offset, count }).is_err() {
                    return;
                }
            }
            None => {
                // Not a file of this mount: the keeper asks only for files registered with
                // it, so this is a keeper out of step (or not ours). Never let an unknown
                // file's read through: a denied read is an EIO, an allowed one may be zeros.
                tracing::warn!(dev, ino, "an event for a file this mount does not know: denied");
                answer(s, id, false)
            }
        }
    }
}

fn answer(s: &Shared, id: i32, allow: bool) {
    if let Err(e) = (Msg::Answer { id, allow }).send(&mut *s.keeper.lock().expect("keeper lock")) {
        tracing::error!(error = %e, "answering the fanotify keeper failed");
    }
}

fn worker(s: &Shared, rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = match rx.lock().expect("job queue").recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        // The keeper unwatches the frame file once its whole frame is present.
        let b = &s.blobs[job.blob];
        let ok = match b.fill(job.offset, job.count) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(blob = %naiad_format::digest::to_hex(b.cached().digest()), offset = job.offset, count = job.count, error = %e, "read failed");
                false
            }
        };
        answer(s, job.id, ok);
    }
}

impl FanotifyMount {
    /// Unmounts the image, then tells the keeper to close the group. An image that cannot be
    /// unmounted (files open in it) stays mounted with its keeper, and its reads wait for the
    /// next server of this mount point; the error says so.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut result = Ok(());
        if self.mounted {
            // Unmounted already (`naiad umount` ends a mount server that way): just as done.
            let r = crate::erofs_mount::umount(&self.mountpoint);
            let r = if r.is_err() && !crate::erofs_mount::is_erofs_mounted(&self.mountpoint) {
                Ok(())
            } else {
                r
            };
            match r {
                Ok(()) => {
                    self.mounted = false;
                    if Msg::Bye.send(&mut *self.shared.keeper.lock().expect("keeper lock")).is_ok()
                    {
                        // The keeper exits (closing its copies of the cache files, so the
                        // cache may evict them): the listener sees the connection end.
                        let started = std::time::Instant::now();
                        while self.threads.last().is_some_and(|t| !t.is_finished())
                            && started.elapsed() < std::time::Duration::from_secs(5)
                        {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(mountpoint = %self.mountpoint.display(), error = %e, "cannot unmount; left mounted, its keeper waits for the next server");
                    result = Err(e);
                }
            }
        }
        let _ = self.shared.keeper.lock().expect("keeper lock").shutdown(std::net::Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        result
    }
}

impl Drop for FanotifyMount {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_for_a_file_the_mount_does_not_know_is_denied() {
        let (keeper_end, worker_end) = UnixStream::pair().unwrap();
        let s = Shared {
            blobs: Vec::new(),
            blob_of: HashMap::new(),
            keeper: Mutex::new(worker_end.try_clone().unwrap()),
        };
        let (tx, rx) = mpsc::channel();
        let mut k = keeper_end;
        Msg::Event { id: 7, dev: 1, ino: 2, offset: 0, count: 4096 }.send(&mut k).unwrap();
        k.shutdown(std::net::Shutdown::Write).unwrap();
        listen(&s, worker_end, tx);
        assert!(rx.try_recv().is_err(), "no job for an unknown file");
        match Msg::recv(&mut k).unwrap() {
            Msg::Answer { id, allow } => assert_eq!((id, allow), (7, false)),
            other => panic!("answered {other:?}"),
        }
    }
}
