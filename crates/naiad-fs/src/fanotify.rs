//! The fanotify mode: the kernel's EROFS mounted straight on the chunk cache's data files
//! (sparse, in the blob's uncompressed-view layout), each file not yet complete watched by a
//! fanotify pre-content group (`FAN_CLASS_PRE_CONTENT`, `FAN_PRE_ACCESS`, Linux 6.14+).
//!
//! A read of a data file — EROFS reading its device — first raises an event naming the file
//! range. A worker fetches the chunks covering the range (verified, one fetch per chunk, the
//! same fetcher as the other modes), writes them into the cache file, and only then answers
//! `FAN_ALLOW`; if they cannot be fetched it answers a denial with `EIO`, so a hole is never
//! read as data. Nothing sits on the data path once data is cached but the event round trip,
//! and a file whose whole view is present is unwatched: from then on the kernel reads it like
//! any local file.
//!
//! The fetcher's own writes into a watched file raise no event (pre-content events are for
//! reads), so filling never waits on itself.
//!
//! The group must outlive the mount: closing it lets pending and later reads through
//! unfilled. Unmounting therefore unmounts EROFS first; a mount that cannot be unmounted
//! (files still open in it) is detached and served until the process exits.

use crate::{FsError, Result};
use naiad_format::block_align;
use naiad_format::bootstrap::Bootstrap;
use naiad_format::extension::ChunkRecord;
use naiad_storage::chunk_cache::{CachedBlob, ChunkCache};
use naiad_storage::fetcher::{chunks_starting_in, Fetcher, FrameIndex, Readahead};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// One watched cache file.
struct Watched {
    blob: Arc<CachedBlob>,
    /// The image's chunks of this blob, by view offset.
    chunks: Vec<ChunkRecord>,
    frames: Arc<FrameIndex>,
    ra: Readahead,
    /// Identity of the data file, to map an event's fd to it.
    dev: u64,
    ino: u64,
    /// Whether the fanotify mark is still on.
    marked: AtomicBool,
}

struct Shared {
    group: OwnedFd,
    files: Vec<Watched>,
    fetcher: Arc<Fetcher>,
    stop: AtomicBool,
}

/// One event to answer: the fd the kernel opened for it, the file, the range.
struct Job {
    fd: OwnedFd,
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

fn fan_mark(group: &OwnedFd, add: bool, path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = if add { libc::FAN_MARK_ADD } else { libc::FAN_MARK_REMOVE };
    // SAFETY: valid fd and NUL-terminated path.
    let r = unsafe { libc::fanotify_mark(group.as_raw_fd(), flags, FAN_PRE_ACCESS, libc::AT_FDCWD, c.as_ptr()) };
    if r < 0 {
        return Err(errno());
    }
    Ok(())
}

/// Answers the event whose fd is `fd`: allow, or deny with EIO.
fn respond(group: &OwnedFd, fd: RawFd, allow: bool) {
    let response = if allow { libc::FAN_ALLOW } else { libc::FAN_DENY | ((libc::EIO as u32) << FAN_ERRNO_SHIFT) };
    let r = libc::fanotify_response { fd, response };
    // SAFETY: writes a plain struct to the group fd.
    let n = unsafe { libc::write(group.as_raw_fd(), (&r as *const libc::fanotify_response).cast(), std::mem::size_of::<libc::fanotify_response>()) };
    if n < 0 {
        tracing::error!(error = %errno(), "answering a fanotify event failed");
    }
}

/// Whether this kernel can run the fanotify mode on files in `dir`: pre-content events
/// (Linux 6.14+, CONFIG_FANOTIFY_ACCESS_PERMISSIONS) and file-backed EROFS (6.12+). The error
/// says what is missing.
pub fn supported(dir: &Path) -> std::result::Result<(), String> {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| l.split_whitespace().last() == Some("erofs")) {
        // The module may just not be loaded yet; mounting will load it if it exists.
        if !Path::new("/sys/module/erofs").exists() && std::fs::read_dir("/lib/modules").map(|mut d| d.next().is_none()).unwrap_or(true) {
            return Err("the kernel has no EROFS".into());
        }
    }
    let group = fan_init().map_err(|e| format!("fanotify permission events are unavailable ({e}; needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS and CAP_SYS_ADMIN)"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let probe = tempfile_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let r = fan_mark(&group, true, &probe);
    let _ = std::fs::remove_file(&probe);
    r.map_err(|e| format!("this kernel has no fanotify pre-content events ({e}; Linux 6.14 or later, on a filesystem that supports them)"))
}

fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    let p = dir.join(format!(".fanotify-probe-{}", std::process::id()));
    std::fs::File::create(&p)?;
    Ok(p)
}

/// Mounts `bootstrap_path` (parsed as `bs`) at `mountpoint` on the cache files of its blobs,
/// filled through `fetcher` as they are read.
pub fn mount_fanotify_mode(bootstrap_path: &Path, bs: &Bootstrap, cache: &ChunkCache, fetcher: Arc<Fetcher>, mountpoint: &Path) -> Result<FanotifyMount> {
    let ext = bs.extension();
    let group = fan_init().map_err(|e| FsError::Invalid(format!("fanotify_init: {e}")))?;
    let mut files = Vec::new();
    let mut devices = Vec::new();
    for (i, b) in ext.blobs.iter().enumerate() {
        let blob = cache.blob(&b.digest, b.view_size)?;
        let md = std::fs::metadata(blob.data_path()).map_err(FsError::io(blob.data_path()))?;
        let chunks = ext.blob_chunks(i as u32).to_vec();
        let frames = Arc::new(FrameIndex::new(chunks.clone()));
        // The mark goes on before EROFS opens the file: whether a file raises pre-content
        // events is settled when it is opened.
        let marked = !blob.is_complete();
        if marked {
            fan_mark(&group, true, blob.data_path()).map_err(|e| FsError::Invalid(format!("watching {}: {e}", blob.data_path().display())))?;
        }
        devices.push(blob.data_path().to_path_buf());
        files.push(Watched { blob, chunks, frames, ra: Readahead::default(), dev: md.dev(), ino: md.ino(), marked: AtomicBool::new(marked) });
    }
    let shared = Arc::new(Shared { group, files, fetcher: fetcher.clone(), stop: AtomicBool::new(false) });
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut threads = Vec::new();
    let spawn_err = |e: std::io::Error| FsError::Io { path: mountpoint.into(), cause: e };
    for i in 0..FANOTIFY_WORKERS {
        let (s, rx) = (shared.clone(), rx.clone());
        threads.push(std::thread::Builder::new().name(format!("naiad-fan-{i}")).spawn(move || worker(&s, &rx)).map_err(spawn_err)?);
    }
    let s = shared.clone();
    threads.push(std::thread::Builder::new().name("naiad-fan-listen".into()).spawn(move || listen(&s, tx)).map_err(spawn_err)?);
    let mut m = FanotifyMount { mountpoint: mountpoint.into(), shared, threads, mounted: false, fetcher };
    std::fs::create_dir_all(mountpoint).map_err(FsError::io(mountpoint))?;
    crate::kernel::mount_erofs(bootstrap_path, &devices, mountpoint)?;
    m.mounted = true;
    Ok(m)
}

/// Reads events and hands them to the workers until stopped.
fn listen(s: &Shared, tx: mpsc::Sender<Job>) {
    let mut buf = vec![0u8; 64 << 10];
    while !s.stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd: s.group.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 100) };
        if r <= 0 {
            continue;
        }
        // SAFETY: reads into a buffer we own.
        let n = unsafe { libc::read(s.group.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let mut at = 0usize;
        while at + METADATA_LEN <= n as usize {
            let ev = &buf[at..n as usize];
            let event_len = u32::from_ne_bytes(ev[0..4].try_into().expect("4 bytes")) as usize;
            if event_len < METADATA_LEN || event_len > ev.len() || ev[4] != FANOTIFY_METADATA_VERSION {
                tracing::error!(event_len, version = ev[4], "malformed fanotify event");
                break;
            }
            let metadata_len = u16::from_ne_bytes(ev[6..8].try_into().expect("2 bytes")) as usize;
            let fd = i32::from_ne_bytes(ev[16..20].try_into().expect("4 bytes"));
            at += event_len;
            if fd < 0 {
                continue; // queue overflow notice: no fd, nothing to answer
            }
            // SAFETY: the kernel opened this fd for us; we own it from here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // The range record, if any (absent: the whole file).
            let mut range = None;
            let mut i = metadata_len;
            while i + 4 <= event_len {
                let (kind, len) = (ev[i], u16::from_ne_bytes(ev[i + 2..i + 4].try_into().expect("2 bytes")) as usize);
                if len < 4 || i + len > event_len {
                    break;
                }
                if kind == FAN_EVENT_INFO_TYPE_RANGE && len >= 24 {
                    let offset = u64::from_ne_bytes(ev[i + 8..i + 16].try_into().expect("8 bytes"));
                    let count = u64::from_ne_bytes(ev[i + 16..i + 24].try_into().expect("8 bytes"));
                    range = Some((offset, count));
                }
                i += len;
            }
            let Some(file) = file_of(s, &fd) else {
                respond(&s.group, fd.as_raw_fd(), true); // not one of ours (a mark being removed)
                continue;
            };
            let (offset, count) = range.unwrap_or((0, s.files[file].blob.view_size()));
            if let Err(mpsc::SendError(job)) = tx.send(Job { fd, file, offset, count }) {
                respond(&s.group, job.fd.as_raw_fd(), false);
            }
        }
    }
}

fn file_of(s: &Shared, fd: &OwnedFd) -> Option<usize> {
    let st = rustix::fs::fstat(fd).ok()?;
    s.files.iter().position(|w| w.dev == st.st_dev && w.ino == st.st_ino)
}

fn worker(s: &Shared, rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = match rx.lock().expect("job queue").recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let ok = fill(s, &job);
        respond(&s.group, job.fd.as_raw_fd(), ok);
        let w = &s.files[job.file];
        if ok && w.blob.is_complete() && w.marked.swap(false, Ordering::AcqRel) {
            // Everything is here: the kernel may read this file without asking from now on.
            if let Err(e) = fan_mark(&s.group, false, w.blob.data_path()) {
                tracing::warn!(file = %w.blob.data_path().display(), error = %e, "unwatching a complete blob failed");
            }
        }
    }
}

/// Makes the chunks under the event's range present; false if they cannot be.
fn fill(s: &Shared, job: &Job) -> bool {
    let w = &s.files[job.file];
    let end = job.offset.saturating_add(job.count).min(w.blob.view_size());
    if job.offset >= end || w.blob.is_present(job.offset, end - job.offset) {
        return true;
    }
    let first = w.chunks.partition_point(|c| c.view_offset + block_align(u64::from(c.size)) <= job.offset);
    let wanted: Vec<ChunkRecord> = w.chunks[first..].iter().take_while(|c| c.view_offset < end).copied().collect();
    if let Some(ahead) = w.ra.on_read(job.offset, end) {
        s.fetcher.fetch_ahead(w.blob.clone(), chunks_starting_in(&w.chunks, ahead).to_vec(), Some(w.frames.clone()));
    }
    // Blocks no chunk covers hold no file data: EROFS reads them only as padding.
    match s.fetcher.ensure_with(&w.blob, &wanted, Some(&w.frames)) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(blob = %w.blob.data_path().display(), offset = job.offset, count = job.count, error = %e, "read failed");
            false
        }
    }
}

impl FanotifyMount {
    /// Unmounts the image, then stops answering events. An image that cannot be unmounted
    /// (files open in it) is detached instead, and its reads are answered for as long as this
    /// process lives: closing the group would let them read holes.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.mounted {
            if crate::kernel::umount(&self.mountpoint).is_err() {
                let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
                self.mounted = false;
                std::mem::forget(std::mem::take(&mut self.threads));
                std::mem::forget(self.shared.clone());
                return Ok(());
            }
            self.mounted = false;
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        Ok(())
    }
}

impl Drop for FanotifyMount {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
