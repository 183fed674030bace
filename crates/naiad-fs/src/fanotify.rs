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
//! ([`crate::fanotify_keeper`]), which answers reads of ranges already present itself and
//! forwards the others here; a mount server that dies is replaced by the next one started for
//! the same mount point, which attaches to the keeper, and readers only wait meanwhile.

use crate::fanotify_keeper::{i32_at, recv, send, socket_path, u64_at};
use crate::{FsError, Result};
use naiad_format::block_align;
use naiad_format::bootstrap::Bootstrap;
use naiad_format::extension::ChunkRecord;
use naiad_storage::chunk_cache::{CachedBlob, ChunkCache, FrameFile};
use naiad_storage::fetcher::{chunks_starting_in, Fetcher, FrameIndex, Readahead};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

// Linux uapi (linux/fanotify.h) values the libc crate does not have yet.
const FAN_PRE_ACCESS: u64 = 0x0010_0000;
const FAN_UNLIMITED_QUEUE: u32 = 0x10;
const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;
const FAN_ERRNO_SHIFT: u32 = 24;
const FANOTIFY_METADATA_VERSION: u8 = 3;
/// Size of `struct fanotify_event_metadata`.
const METADATA_LEN: usize = 24;

/// Threads answering events (each may wait on the backend).
pub const FANOTIFY_WORKERS: usize = 8;

/// One blob of the image.
struct Watched {
    blob: Arc<CachedBlob>,
    /// The image's chunks of this blob, by view offset.
    chunks: Vec<ChunkRecord>,
    frames: Arc<FrameIndex>,
    ra: Readahead,
}

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
    files: Vec<Watched>,
    /// Blob of each frame file, by (dev, ino).
    blob_of: HashMap<(u64, u64), usize>,
    fetcher: Arc<Fetcher>,
    /// The connection to the keeper (writes; a clone reads).
    keeper: Mutex<UnixStream>,
}

/// One event to answer: the keeper's id for it, the file, the range.
struct Job {
    id: i32,
    file: usize,
    offset: u64,
    count: u64,
}

/// A mounted image in fanotify mode.
pub struct FanotifyMount {
    mountpoint: PathBuf,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    mounted: bool,
    pub fetcher: Arc<Fetcher>,
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn fan_init() -> std::io::Result<OwnedFd> {
    let flags = libc::FAN_CLASS_PRE_CONTENT | libc::FAN_CLOEXEC | FAN_UNLIMITED_QUEUE;
    // Event fds are opened read-write: the group's own writes never raise events through them.
    let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDWR | libc::O_LARGEFILE) as u32) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a new fd this function owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn fan_mark(group: &OwnedFd, add: bool, path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = if add { libc::FAN_MARK_ADD } else { libc::FAN_MARK_REMOVE };
    // SAFETY: valid fd and NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(group.as_raw_fd(), flags, FAN_PRE_ACCESS, libc::AT_FDCWD, c.as_ptr())
    };
    if r < 0 {
        return Err(errno());
    }
    Ok(())
}

/// Removes the group's mark of the file `fd` refers to.
pub(crate) fn fan_unmark_fd(group: &OwnedFd, fd: RawFd) -> std::io::Result<()> {
    // SAFETY: valid fds; a null path means the file `fd` itself.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_REMOVE,
            FAN_PRE_ACCESS,
            fd,
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(errno());
    }
    Ok(())
}

/// Answers the event whose fd is `fd`: allow, or deny with EIO.
pub(crate) fn respond(group: &OwnedFd, fd: RawFd, allow: bool) {
    let response = if allow {
        libc::FAN_ALLOW
    } else {
        libc::FAN_DENY | ((libc::EIO as u32) << FAN_ERRNO_SHIFT)
    };
    let r = libc::fanotify_response { fd, response };
    // SAFETY: writes a plain struct to the group fd.
    let n = unsafe {
        libc::write(
            group.as_raw_fd(),
            (&r as *const libc::fanotify_response).cast(),
            std::mem::size_of::<libc::fanotify_response>(),
        )
    };
    if n < 0 {
        tracing::error!(error = %errno(), "answering a fanotify event failed");
    }
}

/// Whether this kernel can run the fanotify mode on files in `dir`: pre-content events
/// (Linux 6.14+, CONFIG_FANOTIFY_ACCESS_PERMISSIONS) and file-backed EROFS (6.12+). The error
/// says what is missing.
pub fn supported(dir: &Path) -> std::result::Result<(), String> {
    if !crate::kernel::has_erofs() {
        return Err("the kernel has no EROFS".into());
    }
    let group = fan_init().map_err(|e| format!("fanotify permission events are unavailable ({e}; needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS and CAP_SYS_ADMIN)"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let probe = tempfile_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let r = fan_mark(&group, true, &probe);
    let _ = std::fs::remove_file(&probe);
    r.map_err(|e| format!("this kernel has no fanotify pre-content events ({e}; Linux 6.14 or later, on a filesystem that supports them)"))
}

fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Unique per call: threads of one process may probe at once.
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = dir.join(format!(".fanotify-probe-{}-{n}", std::process::id()));
    std::fs::File::create(&p)?;
    Ok(p)
}

/// An event read from a group: the fd the kernel opened for it and the file range, if the
/// event carries one.
pub(crate) struct RawEvent {
    pub fd: OwnedFd,
    pub range: Option<(u64, u64)>,
}

/// Reads the events waiting on `group` (one read; call when it is readable).
pub(crate) fn read_events(group: &OwnedFd, buf: &mut [u8]) -> Vec<RawEvent> {
    // SAFETY: reads into a buffer we own.
    let n = unsafe { libc::read(group.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let mut out = Vec::new();
    if n <= 0 {
        return out;
    }
    let buf = &buf[..n as usize];
    let mut at = 0usize;
    while at + METADATA_LEN <= buf.len() {
        let ev = &buf[at..];
        let event_len = u32::from_ne_bytes(ev[0..4].try_into().expect("4 bytes")) as usize;
        if event_len < METADATA_LEN || event_len > ev.len() || ev[4] != FANOTIFY_METADATA_VERSION {
            tracing::error!(event_len, version = ev[4], "malformed fanotify event");
            break;
        }
        let metadata_len = u16::from_ne_bytes(ev[6..8].try_into().expect("2 bytes")) as usize;
        let fd = i32::from_ne_bytes(ev[16..20].try_into().expect("4 bytes"));
        at += event_len;
        if fd < 0 {
            continue; // a queue overflow notice: no fd, nothing to answer
        }
        let mut range = None;
        let mut i = metadata_len;
        while i + 4 <= event_len {
            let (kind, len) =
                (ev[i], u16::from_ne_bytes(ev[i + 2..i + 4].try_into().expect("2 bytes")) as usize);
            if len < 4 || i + len > event_len {
                break;
            }
            if kind == FAN_EVENT_INFO_TYPE_RANGE && len >= 24 {
                range = Some((
                    u64::from_ne_bytes(ev[i + 8..i + 16].try_into().expect("8 bytes")),
                    u64::from_ne_bytes(ev[i + 16..i + 24].try_into().expect("8 bytes")),
                ));
            }
            i += len;
        }
        // SAFETY: the kernel opened this fd for us; it is owned from here.
        out.push(RawEvent { fd: unsafe { OwnedFd::from_raw_fd(fd) }, range });
    }
    out
}

/// Whether a keeper serves the mount at `mountpoint` (a worker may attach to it).
pub fn keeper_alive(runtime_dir: &Path, mountpoint: &Path) -> bool {
    UnixStream::connect(socket_path(runtime_dir, mountpoint)).is_ok()
}

/// Mounts `bootstrap_path` (parsed as `bs`) at `mountpoint` on the cache files of its blobs,
/// filled through `fetcher` as they are read. The group goes to a keeper process started from
/// `keeper_exe` (`naiad fanotify-keeper`), its socket in `runtime_dir`. If a keeper already
/// serves `mountpoint` (its previous server died), this attaches to it instead: the image is
/// mounted already, and the reads waiting are answered now.
pub fn mount_fanotify_mode(
    bootstrap_path: &Path,
    bs: &Bootstrap,
    cache: &ChunkCache,
    fetcher: Arc<Fetcher>,
    mountpoint: &Path,
    runtime_dir: &Path,
    keeper_exe: &Path,
) -> Result<FanotifyMount> {
    let t0 = std::time::Instant::now();
    let ext = bs.extension();
    let mut files = Vec::new();
    for (i, b) in ext.blobs.iter().enumerate() {
        let blob = cache.blob(&b.digest, b.view_size)?;
        let chunks = ext.blob_chunks(i as u32).to_vec();
        let index = Arc::new(FrameIndex::new(chunks.clone()));
        files.push(Watched { blob, chunks, frames: index, ra: Readahead::default() });
    }
    let sock = socket_path(runtime_dir, mountpoint);
    let attach =
        UnixStream::connect(&sock).ok().filter(|_| crate::kernel::is_erofs_mounted(mountpoint));
    let attached = attach.is_some();
    // The remapped bootstrap (a walk of the tree) is made while the frame files are opened.
    let (plan, frames) = std::thread::scope(|scope| {
        let plan = (!attached).then(|| {
            scope.spawn(|| {
                let blobs: Vec<_> = files
                    .iter()
                    .map(|w| crate::devices::BlobDevices {
                        blob: &w.blob,
                        frames: &w.frames,
                        view: None,
                    })
                    .collect();
                crate::devices::plan(bs, &blobs, |_, _| true)
            })
        });
        let frames = frame_files(&files);
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
    for (i, f) in files.iter().enumerate() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(i as u32).to_le_bytes());
        m.extend_from_slice(&f.blob.view_size().to_le_bytes());
        m.extend_from_slice(f.blob.map_path().as_os_str().as_encoded_bytes());
        send(&mut w, &m).map_err(io)?;
    }
    for batch in frames.chunks(FRAMES_PER_MESSAGE) {
        let mut m = vec![b'F'];
        for f in batch {
            m.extend_from_slice(&f.dev.to_le_bytes());
            m.extend_from_slice(&f.ino.to_le_bytes());
            m.extend_from_slice(&(f.blob as u32).to_le_bytes());
            m.extend_from_slice(&f.span.start.to_le_bytes());
            m.extend_from_slice(&f.span.end.to_le_bytes());
        }
        send(&mut w, &m).map_err(io)?;
    }
    send(&mut w, b"G").map_err(io)?;
    let blob_of = frames.iter().map(|f| ((f.dev, f.ino), f.blob)).collect();
    let shared =
        Arc::new(Shared { files, blob_of, fetcher: fetcher.clone(), keeper: Mutex::new(w) });
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
    let mut m = FanotifyMount {
        mountpoint: mountpoint.into(),
        shared,
        threads,
        mounted: attached,
        fetcher,
    };
    if let Some(plan) = plan {
        std::fs::create_dir_all(mountpoint).map_err(FsError::io(mountpoint))?;
        let scratch = sock.with_extension("erofs");
        crate::devices::mount(&plan, bootstrap_path, &scratch, mountpoint)?;
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
fn frame_files(files: &[Watched]) -> Result<Vec<MountedFrame>> {
    let mut frames = Vec::new();
    for (i, w) in files.iter().enumerate() {
        for f in w.frames.frames() {
            let file = w.blob.frame(f[0].compressed_offset)?;
            let md = file.metadata().map_err(FsError::io(file.path()))?;
            let span = f.iter().map(|c| c.view_offset).min().unwrap_or(0)
                ..f.iter()
                    .map(|c| c.view_offset + block_align(u64::from(c.size)))
                    .max()
                    .unwrap_or(0);
            frames.push(MountedFrame {
                file,
                dev: md.dev(),
                ino: md.ino(),
                blob: i,
                span,
                complete: w.blob.all_present(f),
            });
        }
    }
    Ok(frames)
}

/// Frame registrations per message to the keeper (36 bytes each).
const FRAMES_PER_MESSAGE: usize = 1024;

/// Reads the keeper's `P` frame and makes every frame's fills write through the keeper's
/// descriptor of its file (copied with `pidfd_getfd`), which raises no event. Frames the
/// keeper has no descriptor for were complete when the image was mounted: never watched.
fn take_writers(
    stream: &UnixStream,
    frames: &[MountedFrame],
    attached: bool,
) -> std::io::Result<()> {
    let mut r = stream.try_clone()?;
    r.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let f = recv(&mut r)?;
    r.set_read_timeout(None)?;
    if f[0] != b'P' || f.len() < 9 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "no writer list"));
    }
    if !attached {
        return Ok(());
    }
    let pid = u32::from_le_bytes(f[1..5].try_into().expect("4 bytes"));
    let n = u32::from_le_bytes(f[5..9].try_into().expect("4 bytes")) as usize;
    let by_id: HashMap<(u64, u64), &MountedFrame> =
        frames.iter().map(|fr| ((fr.dev, fr.ino), fr)).collect();
    for i in 0..n {
        let at = 9 + i * 20;
        let (dev, ino, fd) = (u64_at(&f, at), u64_at(&f, at + 8), i32_at(&f, at + 16));
        let Some(fr) = by_id.get(&(dev, ino)) else { continue };
        let file = std::fs::File::from(copy_fd(pid, fd)?);
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
    let group = fan_init().map_err(|e| FsError::Invalid(format!("fanotify_init: {e}")))?;
    let mut writers = Vec::new();
    for file in frames.iter().filter(|f| !f.complete).map(|f| &f.file) {
        // The marks go on before EROFS opens the files: whether a file raises pre-content
        // events is settled when it is opened.
        fan_mark(&group, true, file.path())
            .map_err(|e| FsError::Invalid(format!("watching {}: {e}", file.path().display())))?;
        // Opened before the watch (above, with the cache entry): writes through these raise
        // no event. The keeper keeps them for later workers.
        writers.push(file.writer_fd().as_raw_fd());
    }
    std::fs::create_dir_all(runtime_dir).map_err(FsError::io(runtime_dir))?;
    let raw = group.as_raw_fd();
    let list = writers.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(",");
    let mut cmd = std::process::Command::new(keeper_exe);
    cmd.args([
        "fanotify-keeper",
        "--group-fd",
        &raw.to_string(),
        "--writer-fds",
        &list,
        "--socket",
    ])
    .arg(sock)
    .arg("--mountpoint")
    .arg(mountpoint);
    let s =
        spawn_keeper(cmd, std::iter::once(raw).chain(writers).collect(), sock, "fanotify keeper")?;
    drop(group);
    Ok(s)
}

/// Starts a keeper process (`cmd`) in its own session (a signal to our process group does
/// not reach it) with `fds` kept open across exec, its stderr in `sock`.log; returns once it
/// accepts connections on `sock`.
pub(crate) fn spawn_keeper(
    mut cmd: std::process::Command,
    fds: Vec<i32>,
    sock: &Path,
    what: &str,
) -> Result<UnixStream> {
    let _ = std::fs::remove_file(sock);
    let log = std::fs::File::create(sock.with_extension("log"))
        .map_err(FsError::io(sock.with_extension("log")))?;
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(log);
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let exe = cmd.get_program().to_owned();
    let mut child = cmd.spawn().map_err(|e| FsError::Io { path: exe.into(), cause: e })?;
    let started = std::time::Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            // Reap it if it exits later (it is in its own session; nobody else waits for it).
            std::thread::spawn(move || child.wait());
            return Ok(s);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(FsError::Invalid(format!(
                "the {what} exited ({status}); see {}",
                sock.with_extension("log").display()
            )));
        }
        if started.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.kill();
            return Err(FsError::Invalid(format!("the {what} did not start within 10 s")));
        }
        // It starts in a few milliseconds: a mount waits for it.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A copy of descriptor `fd` of process `pid` (`pidfd_getfd`; needs the right to ptrace it).
pub(crate) fn copy_fd(pid: u32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls; the results are checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(errno());
    }
    // SAFETY: a new fd owned here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: as above.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(errno());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// Reads the keeper's events and hands them to the workers until the connection ends.
fn listen(s: &Shared, mut stream: UnixStream, tx: mpsc::Sender<Job>) {
    loop {
        let f = match recv(&mut stream) {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(error = %e, "keeper connection ended");
                }
                return;
            }
        };
        if f[0] != b'E' {
            continue;
        }
        let (id, dev, ino, offset, count) =
            (i32_at(&f, 1), u64_at(&f, 5), u64_at(&f, 13), u64_at(&f, 21), u64_at(&f, 29));
        match s.blob_of.get(&(dev, ino)).copied() {
            Some(file) => {
                let count = if count == u64::MAX { s.files[file].blob.view_size() } else { count };
                if tx.send(Job { id, file, offset, count }).is_err() {
                    return;
                }
            }
            None => answer(s, id, true), // not a file of this mount (cannot happen: the keeper asks per file)
        }
    }
}

fn answer(s: &Shared, id: i32, allow: bool) {
    let mut m = vec![b'A'];
    m.extend_from_slice(&id.to_le_bytes());
    m.push(u8::from(allow));
    if let Err(e) = send(&mut *s.keeper.lock().expect("keeper lock"), &m) {
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
        let ok = fill(s, &job);
        answer(s, job.id, ok);
    }
}

/// Makes the chunks under the event's range present; false if they cannot be.
fn fill(s: &Shared, job: &Job) -> bool {
    let w = &s.files[job.file];
    let end = job.offset.saturating_add(job.count).min(w.blob.view_size());
    if job.offset >= end || w.blob.is_present(job.offset, end - job.offset) {
        return true;
    }
    let first =
        w.chunks.partition_point(|c| c.view_offset + block_align(u64::from(c.size)) <= job.offset);
    let wanted: Vec<ChunkRecord> =
        w.chunks[first..].iter().take_while(|c| c.view_offset < end).copied().collect();
    // The whole frames of these chunks are being filled: the reader's next miss comes after
    // them (reads of what they hold are answered by the keeper, unseen here).
    let filled_to = w.frames.frames_end(&wanted).unwrap_or(end);
    if let Some(ahead) = w.ra.on_read(job.offset, end.max(filled_to), true) {
        let chunks = chunks_starting_in(&w.chunks, ahead).to_vec();
        if let Some(to) = w.frames.frames_end(&chunks) {
            w.ra.fetched_to(to);
        }
        s.fetcher.fetch_ahead(w.blob.clone(), chunks, Some(w.frames.clone()));
    }
    // Blocks no chunk covers hold no file data: EROFS reads them only as padding.
    match s.fetcher.ensure_with(&w.blob, &wanted, Some(&w.frames)) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(blob = %naiad_format::digest::to_hex(w.blob.digest()), offset = job.offset, count = job.count, error = %e, "read failed");
            false
        }
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
            let r = crate::kernel::umount(&self.mountpoint);
            let r = if r.is_err() && !crate::kernel::is_erofs_mounted(&self.mountpoint) {
                Ok(())
            } else {
                r
            };
            match r {
                Ok(()) => {
                    self.mounted = false;
                    if send(&mut *self.shared.keeper.lock().expect("keeper lock"), b"B").is_ok() {
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
