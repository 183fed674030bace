//! The fanotify keeper: a small process that holds a fanotify-mode mount's group, so that the
//! process that fills the cache (the mount server or the daemon, "the worker") can crash or
//! be restarted without a single read going through unfilled or failing.
//!
//! Closing a pre-content group lets every pending and later read through, and a read of a
//! range not yet filled would then see the sparse file's zeros. So the group never lives in
//! the worker: the worker creates it, marks the files, and hands it to the keeper, started as
//! its own session (`naiad fanotify-keeper`), which is the only reader of its events. The
//! keeper answers a read of a range already present itself (from the cache's presence map,
//! whose bits are set only once the data is on disk) and forwards the others to the worker
//! over a unix socket (`RUNTIME_DIR/fan-<hash of the mount point>.sock`); the worker fills the
//! range and sends the answer back, which the keeper writes to the group.
//!
//! What happens when:
//! * the worker dies: reads of present ranges go on being answered by the keeper; reads of
//!   missing ranges (and those the worker was filling) wait. The next worker started for the
//!   same mount point (a restarted daemon restoring its mounts, or `naiad mount` again)
//!   connects, and the keeper sends it every event still unanswered. Readers see a delay.
//! * the worker unmounts cleanly: it tells the keeper, which closes the group and exits.
//! * the worker cannot unmount (files open): it leaves the keeper running; the mount's reads
//!   wait for the next worker.
//! * the mount goes away without the worker (`umount` by hand after a crash): the keeper
//!   notices within seconds and exits.
//! * the keeper itself is killed: the group closes; the worker sees its socket close and
//!   reports it. It does nothing else, so it has nothing to crash on.
//!
//! Unwatching: every file is one frame of a blob (its chunks at their view offsets). When the
//! keeper allows a read and the frame's whole span is present, it removes the file's mark:
//! from then on the kernel reads that file without asking anyone. Frames filled ahead of any
//! reader (readahead, prefetch) cost one event, answered here, and are unwatched then.
//!
//! Protocol: frames of `u32` length (little endian) then the payload, whose first byte is the
//! kind. Worker to keeper: `R` register a blob (its number, view size, presence map path),
//! `F` register frame files (per file: dev, ino, blob number, start and end of its span in
//! the view), `G` go (registrations done; send pending events), `A` answer (event id, allow),
//! `B` bye. Keeper to worker: `P` on connecting (its pid and the fd numbers of the writers,
//! see below), `E` event (id, dev, ino, offset, count).
//!
//! Writers: a write into a watched file raises a pre-content event too, unless it goes
//! through a descriptor opened before the file was watched. The first worker opens the files
//! before watching them and hands those descriptors to the keeper with the group; every later
//! worker takes its copies from the keeper (`pidfd_getfd`) before it writes anything.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Block size of the presence map (one bit per block).
const BLOCK: u64 = naiad_format::BLOCK_SIZE_BYTES;

/// How long the keeper keeps polling for events without sleeping after one arrives. A reader
/// that raises an event while the keeper sleeps must wake it, and on a virtual machine whose
/// other CPU is halted that wake-up costs about as much as everything else the event does:
/// polling through bursts of reads made warm re-reads of many small files 1.2-1.35x as fast
/// (bench/lazy.sh). Outside bursts it costs nothing; within one, at most one CPU.
const SPIN: Duration = Duration::from_micros(200);

/// The socket of the keeper of the mount at `mountpoint`.
pub fn socket_path(runtime_dir: &Path, mountpoint: &Path) -> PathBuf {
    keeper_socket(runtime_dir, "fan", mountpoint)
}

/// `RUNTIME_DIR/<prefix>-<hash of mountpoint>.sock`: where a keeper of that mount listens.
pub(crate) fn keeper_socket(runtime_dir: &Path, prefix: &str, mountpoint: &Path) -> PathBuf {
    runtime_dir.join(format!("{prefix}-{}.sock", crate::kernel::mount_tag(mountpoint)))
}

/// Writes one frame.
pub(crate) fn send(s: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    s.write_all(&frame)
}

/// Largest frame accepted: a writer list or a batch of registrations of an image with tens
/// of thousands of frames fits.
const MAX_FRAME_BYTES: usize = 16 << 20;

/// Reads one frame.
pub(crate) fn recv(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |x| u64::from_le_bytes(x.try_into().expect("8 bytes")))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |x| u32::from_le_bytes(x.try_into().expect("4 bytes")))
}

pub(crate) fn i32_at(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4).map_or(-1, |x| i32::from_le_bytes(x.try_into().expect("4 bytes")))
}

/// A blob's presence map.
struct Blob {
    map: std::fs::File,
    view_size: u64,
}

impl Blob {
    /// Whether every block of the range is marked present in the map.
    fn present(&self, offset: u64, count: u64) -> bool {
        let end = offset.saturating_add(count).min(self.view_size);
        if offset >= end {
            return true;
        }
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let mut words = vec![0u8; ((last / 64 - first / 64 + 1) * 8) as usize];
        if self.map.read_exact_at(&mut words, first / 64 * 8).is_err() {
            return false;
        }
        (first..=last).all(|b| {
            let w = ((b / 64 - first / 64) * 8) as usize;
            u64::from_le_bytes(words[w..w + 8].try_into().expect("8 bytes")) & (1 << (b % 64)) != 0
        })
    }
}

/// A watched frame file.
struct Registered {
    blob: u32,
    /// The view range its frame's chunks span.
    span: std::ops::Range<u64>,
    marked: bool,
}

struct Pending {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    offset: u64,
    count: u64,
}

struct Keeper {
    group: OwnedFd,
    /// Descriptors of the watched files opened before they were watched, by (dev, ino):
    /// writes through them raise no event. Handed to each worker (by `pidfd_getfd`).
    writers: Vec<(u64, u64, OwnedFd)>,
    blobs: HashMap<u32, Blob>,
    files: HashMap<(u64, u64), Registered>,
    pending: BTreeMap<i32, Pending>,
    worker: Option<UnixStream>,
    ready: bool,
}

impl Keeper {
    fn answer(&mut self, id: i32, allow: bool) {
        let Some(p) = self.pending.remove(&id) else { return };
        if allow {
            self.unwatch_if_complete(&p);
        }
        crate::fanotify::respond(&self.group, p.fd.as_raw_fd(), allow);
    }

    /// Unwatches the event's file if its whole frame is present: the kernel may read it
    /// without asking from now on.
    fn unwatch_if_complete(&mut self, p: &Pending) {
        let Some(r) = self.files.get_mut(&(p.dev, p.ino)) else { return };
        if !r.marked
            || !self
                .blobs
                .get(&r.blob)
                .is_some_and(|b| b.present(r.span.start, r.span.end - r.span.start))
        {
            return;
        }
        match crate::fanotify::fan_unmark_fd(&self.group, p.fd.as_raw_fd()) {
            Ok(()) => r.marked = false,
            Err(e) => eprintln!("naiad fanotify-keeper: unwatching a complete frame: {e}"),
        }
    }

    fn forward(&mut self, id: i32) {
        let (Some(w), true) = (self.worker.as_mut(), self.ready) else { return };
        let Some(p) = self.pending.get(&id) else { return };
        let mut m = vec![b'E'];
        m.extend_from_slice(&id.to_le_bytes());
        for v in [p.dev, p.ino, p.offset, p.count] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        if send(w, &m).is_err() {
            self.worker = None;
        }
    }

    /// Answers what the map shows present; forwards the rest.
    fn dispatch(&mut self, id: i32) {
        let Some(p) = self.pending.get(&id) else { return };
        let present = match self.files.get(&(p.dev, p.ino)) {
            Some(f) => self.blobs.get(&f.blob).is_some_and(|b| b.present(p.offset, p.count)),
            None => return, // registered later (a worker attaching): held until then
        };
        if present {
            self.answer(id, true);
        } else {
            self.forward(id);
        }
    }

    fn read_events(&mut self, buf: &mut [u8]) {
        for ev in crate::fanotify::read_events(&self.group, buf) {
            let Ok(st) = rustix::fs::fstat(&ev.fd) else {
                crate::fanotify::respond(&self.group, ev.fd.as_raw_fd(), false);
                continue;
            };
            let id = ev.fd.as_raw_fd();
            let count = ev.range.map_or(u64::MAX, |r| r.1);
            self.pending.insert(
                id,
                Pending {
                    fd: ev.fd,
                    dev: st.st_dev,
                    ino: st.st_ino,
                    offset: ev.range.map_or(0, |r| r.0),
                    count,
                },
            );
            self.dispatch(id);
        }
    }

    /// Handles one frame from the worker; false on `B` (bye).
    fn on_frame(&mut self, f: &[u8]) -> bool {
        match f[0] {
            b'R' => {
                let (blob, view_size) = (u32_at(f, 1), u64_at(f, 5));
                let map_path =
                    PathBuf::from(std::ffi::OsStr::from_bytes(f.get(13..).unwrap_or_default()));
                match std::fs::File::open(&map_path) {
                    Ok(map) => {
                        self.blobs.insert(blob, Blob { map, view_size });
                    }
                    Err(e) => eprintln!("naiad fanotify-keeper: {}: {e}", map_path.display()),
                }
            }
            b'F' => {
                for e in f[1..].chunks_exact(36) {
                    let span = u64_at(e, 20)..u64_at(e, 28).max(u64_at(e, 20));
                    let key = (u64_at(e, 0), u64_at(e, 8));
                    // A worker attaching registers again: what was unwatched stays so.
                    let marked = self.files.get(&key).is_none_or(|r| r.marked);
                    self.files.insert(key, Registered { blob: u32_at(e, 16), span, marked });
                }
            }
            b'G' => {
                self.ready = true;
                let ids: Vec<i32> = self.pending.keys().copied().collect();
                for id in ids {
                    self.dispatch(id);
                }
            }
            b'A' => self.answer(i32_at(f, 1), f.get(5) == Some(&1)),
            b'B' => return false,
            _ => {}
        }
        true
    }
}

/// The `P` frame: this process's pid and, per writer descriptor, (dev, ino, fd number).
fn writers_frame(writers: &[(u64, u64, OwnedFd)]) -> Vec<u8> {
    let mut m = vec![b'P'];
    m.extend_from_slice(&std::process::id().to_le_bytes());
    m.extend_from_slice(&(writers.len() as u32).to_le_bytes());
    for (dev, ino, fd) in writers {
        m.extend_from_slice(&dev.to_le_bytes());
        m.extend_from_slice(&ino.to_le_bytes());
        m.extend_from_slice(&fd.as_raw_fd().to_le_bytes());
    }
    m
}

/// Runs the keeper of `group` (an fd number inherited from the worker) for the mount at
/// `mountpoint`, serving workers on `socket`, until a worker says bye or the mount is gone.
/// `writers` are inherited descriptors of the watched files, opened before the watch.
pub fn run(group: i32, writers: &[i32], socket: &Path, mountpoint: &Path) -> std::io::Result<()> {
    // SAFETY: the fds were passed to this process for it to own.
    let group = unsafe { OwnedFd::from_raw_fd(group) };
    let writers = writers
        .iter()
        .map(|&fd| {
            // SAFETY: as above.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let st = rustix::fs::fstat(&fd)?;
            Ok((st.st_dev, st.st_ino, fd))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    let mut k = Keeper {
        group,
        writers,
        blobs: HashMap::new(),
        files: HashMap::new(),
        pending: BTreeMap::new(),
        worker: None,
        ready: false,
    };
    let mut buf = vec![0u8; 64 << 10];
    let (mut seen_mounted, mut last_check, started) = (false, Instant::now(), Instant::now());
    let mut last_event = started.checked_sub(SPIN).unwrap_or(started);
    loop {
        let watch = |fd: i32| libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let mut fds = [
            watch(k.group.as_raw_fd()),
            watch(listener.as_raw_fd()),
            watch(k.worker.as_ref().map_or(-1, |w| w.as_raw_fd())),
        ];
        let nfds = if k.worker.is_some() { 3 } else { 2 };
        let timeout = if last_event.elapsed() < SPIN { 0 } else { 1000 };
        // SAFETY: valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout) };
        if n > 0 {
            if fds[0].revents != 0 {
                k.read_events(&mut buf);
                last_event = Instant::now();
            }
            if fds[1].revents != 0 {
                if let Ok((mut s, _)) = listener.accept() {
                    // A new worker replaces the old one; it takes the writers and registers
                    // its files again.
                    if send(&mut s, &writers_frame(&k.writers)).is_ok() {
                        k.worker = Some(s);
                        k.ready = false;
                    }
                }
            }
            if nfds > 2 && fds[2].revents != 0 {
                let frame = k.worker.as_mut().map(recv);
                match frame {
                    Some(Ok(f)) => {
                        if !k.on_frame(&f) {
                            break;
                        }
                    }
                    _ => {
                        k.worker = None;
                        k.ready = false;
                    }
                }
            }
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            last_check = Instant::now();
            let mounted = crate::kernel::is_erofs_mounted(mountpoint);
            seen_mounted |= mounted;
            // Unmounted by hand after the worker went away (or never mounted at all).
            if !mounted
                && k.worker.is_none()
                && (seen_mounted || started.elapsed() > Duration::from_secs(30))
            {
                break;
            }
        }
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}
