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
//! Protocol: [`super::proto::Msg`], over `RUNTIME_DIR/fan-<hash of the mount point>.sock`.
//!
//! Writers: a write into a watched file raises a pre-content event too, unless it goes
//! through a descriptor opened before the file was watched. The first worker opens the files
//! before watching them and hands those descriptors to the keeper with the group; every later
//! worker takes its copies from the keeper (`pidfd_getfd`) before it writes anything.

use super::proto::{FrameReg, Msg, WriterFd};
use crate::fanotify::sys;
use naiad_storage::cache::PresenceMap;
use rustix::event::{PollFd, PollFlags};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the keeper keeps polling for events without sleeping after one arrives. A reader
/// that raises an event while the keeper sleeps must wake it, and on a virtual machine whose
/// other CPU is halted that wake-up costs about as much as everything else the event does:
/// polling through bursts of reads made warm re-reads of many small files 1.2-1.35x as fast
/// (bench/lazy.sh). Outside bursts it costs nothing; within one, at most one CPU.
const SPIN: Duration = Duration::from_micros(200);

/// The socket of the keeper of the mount at `mountpoint`.
pub fn socket_path(runtime_dir: &Path, mountpoint: &Path) -> PathBuf {
    super::socket(runtime_dir, "fan", mountpoint)
}

/// Whether a keeper serves the mount at `mountpoint` (a worker may attach to it).
pub fn keeper_alive(runtime_dir: &Path, mountpoint: &Path) -> bool {
    UnixStream::connect(socket_path(runtime_dir, mountpoint)).is_ok()
}

/// A blob's presence map, read from its file: the worker's fills set the bits.
struct Blob {
    map: std::fs::File,
    view_size: u64,
    /// The cache entry's file, locked shared: the entry is in use for as long as this keeper
    /// answers from its map, also while no worker is attached, so no `cache gc` or removal
    /// in another process takes the files the mount reads away (a new entry's files would
    /// then be filled while the kernel reads the old, unlinked ones).
    _entry: std::fs::File,
}

/// Opens and locks (shared) the entry file beside the presence map `map_path`.
fn lock_entry(map_path: &Path) -> std::io::Result<std::fs::File> {
    use naiad_storage::cache::{ENTRY_SUFFIX, MAP_SUFFIX};
    let name = map_path.to_string_lossy();
    let stem = name.strip_suffix(MAP_SUFFIX).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a presence map's path")
    })?;
    let entry = std::fs::File::open(format!("{stem}{ENTRY_SUFFIX}"))?;
    rustix::fs::flock(&entry, rustix::fs::FlockOperation::LockShared)?;
    Ok(entry)
}

impl Blob {
    /// Whether every block of the range is marked present in the map.
    fn present(&self, offset: u64, count: u64) -> bool {
        PresenceMap::file_has(&self.map, self.view_size, offset, count)
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
        sys::respond(self.group.as_fd(), p.fd.as_fd(), allow);
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
        match sys::unmark(self.group.as_fd(), p.fd.as_fd()) {
            Ok(()) => r.marked = false,
            Err(e) => eprintln!("naiad fanotify-keeper: unwatching a complete frame: {e}"),
        }
    }

    fn forward(&mut self, id: i32) {
        let (Some(w), true) = (self.worker.as_mut(), self.ready) else { return };
        let Some(p) = self.pending.get(&id) else { return };
        let m = Msg::Event { id, dev: p.dev, ino: p.ino, offset: p.offset, count: p.count };
        if m.send(w).is_err() {
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
        for ev in sys::read_events(&self.group, buf) {
            let Ok(st) = rustix::fs::fstat(&ev.fd) else {
                sys::respond(self.group.as_fd(), ev.fd.as_fd(), false);
                continue;
            };
            let id = std::os::fd::AsRawFd::as_raw_fd(&ev.fd);
            let count = ev.range.map_or(u64::MAX, |r| r.1);
            let offset = ev.range.map_or(0, |r| r.0);
            self.pending
                .insert(id, Pending { fd: ev.fd, dev: st.st_dev, ino: st.st_ino, offset, count });
            self.dispatch(id);
        }
    }

    /// Handles one message from the worker; false on bye.
    fn on_msg(&mut self, m: Msg) -> bool {
        match m {
            Msg::Blob { blob, view_size, map_path } => {
                match lock_entry(&map_path).and_then(|e| Ok((e, std::fs::File::open(&map_path)?))) {
                    Ok((entry, map)) => {
                        self.blobs.insert(blob, Blob { map, view_size, _entry: entry });
                    }
                    Err(e) => eprintln!("naiad fanotify-keeper: {}: {e}", map_path.display()),
                }
            }
            Msg::Frames(frames) => {
                for FrameReg { dev, ino, blob, span } in frames {
                    // A worker attaching registers again: what was unwatched stays so.
                    let marked = self.files.get(&(dev, ino)).is_none_or(|r| r.marked);
                    self.files.insert((dev, ino), Registered { blob, span, marked });
                }
            }
            Msg::Go => {
                self.ready = true;
                let ids: Vec<i32> = self.pending.keys().copied().collect();
                for id in ids {
                    self.dispatch(id);
                }
            }
            Msg::Answer { id, allow } => self.answer(id, allow),
            Msg::Bye => return false,
            Msg::Writers { .. } | Msg::Event { .. } => {}
        }
        true
    }

    /// The message a worker gets on connecting: this process's pid and its writers.
    fn writers_msg(&self) -> Msg {
        let fds = self
            .writers
            .iter()
            .map(|(dev, ino, fd)| WriterFd {
                dev: *dev,
                ino: *ino,
                fd: std::os::fd::AsRawFd::as_raw_fd(fd),
            })
            .collect();
        Msg::Writers { pid: std::process::id(), fds }
    }
}

/// Runs the keeper of `group` (inherited from the worker) for the mount at `mountpoint`,
/// serving workers on `socket`, until a worker says bye or the mount is gone. `writers` are
/// inherited descriptors of the watched files, opened before the watch.
pub fn run(
    group: OwnedFd,
    writers: Vec<OwnedFd>,
    socket: &Path,
    mountpoint: &Path,
) -> std::io::Result<()> {
    let writers = writers
        .into_iter()
        .map(|fd| {
            let st = rustix::fs::fstat(&fd)?;
            Ok((st.st_dev, st.st_ino, fd))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let listener = crate::socket::bind_private(socket, crate::socket::Replace::AnySocket)?;
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
    let second = rustix::fs::Timespec { tv_sec: 1, tv_nsec: 0 };
    let zero = rustix::fs::Timespec { tv_sec: 0, tv_nsec: 0 };
    loop {
        let (group_ready, listener_ready, worker_ready) = {
            let mut fds =
                vec![PollFd::new(&k.group, PollFlags::IN), PollFd::new(&listener, PollFlags::IN)];
            if let Some(w) = &k.worker {
                fds.push(PollFd::new(w, PollFlags::IN));
            }
            let timeout = if last_event.elapsed() < SPIN { &zero } else { &second };
            // An interrupted wait leaves every revents empty: the loop comes round again.
            let _ = rustix::event::poll(&mut fds, Some(timeout));
            let ready = |i: usize| fds.get(i).is_some_and(|f| !f.revents().is_empty());
            (ready(0), ready(1), ready(2))
        };
        if group_ready {
            k.read_events(&mut buf);
            last_event = Instant::now();
        }
        if listener_ready {
            if let Ok((mut s, _)) = listener.accept() {
                // A new worker replaces the old one; it takes the writers and registers its
                // files again. Only root or the keeper's own uid may be one.
                if crate::socket::peer_trusted(&s) && k.writers_msg().send(&mut s).is_ok() {
                    k.worker = Some(s);
                    k.ready = false;
                }
            }
        }
        if worker_ready {
            match k.worker.as_mut().map(Msg::recv) {
                Some(Ok(m)) => {
                    if !k.on_msg(m) {
                        break;
                    }
                }
                _ => {
                    k.worker = None;
                    k.ready = false;
                }
            }
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            last_check = Instant::now();
            let mounted = crate::erofs_mount::is_erofs_mounted(mountpoint);
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
