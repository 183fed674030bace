//! FUSE over io_uring (Linux 6.14+, `CONFIG_FUSE_IO_URING`, on when the `fuse.enable_uring`
//! module parameter is): the kernel queues each request on the queue of the CPU its reader
//! runs on, and a server thread pinned to that CPU answers it. Reader and server then wake
//! each other on one CPU, where /dev/fuse's single queue wakes whichever thread waits on any
//! CPU: on a VM whose idle vCPUs halt, that cross-CPU wake-up was the largest cost of a
//! warm FUSE read (docs/design-notes.md, "What a warm read costs here").
//!
//! The INIT handshake still goes through /dev/fuse (the library does it; the filesystem's
//! `init` asks for `FUSE_OVER_IO_URING` through [`RingInit`]), and so do FORGETs and
//! INTERRUPTs. Every other request goes through the ring once each CPU's queue has an
//! entry. Each entry is a header buffer (`fuse_uring_req_header`: the in/out header, the
//! opcode's fixed argument, the payload size) and a payload buffer; a REGISTER hands both
//! to the kernel, which completes it with a request in them; the answer is written in
//! place and committed by a COMMIT_AND_FETCH, which waits for the next one.
//!
//! The kernel's `FUSE_NOTIFY_RESEND` covers /dev/fuse's queues only, not the ring's: a
//! server that dies with ring requests in hand leaves their readers waiting. So only mounts
//! that are not handed over on a restart (no keeper) use the ring.

#![allow(unsafe_code)]

use super::abi::{
    InHeader, OutHeader, UringCmdReq, UringReqHeader, URING_CMD_COMMIT_AND_FETCH,
    URING_CMD_REGISTER, URING_HEADER_SIZE,
};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Server threads per CPU queue, each pinned to that CPU: a thread blocked on a backend
/// fetch does not hold up the CPU's other readers. Four (measured, 2 CPUs), fewer on big
/// machines, at least two: every thread holds a payload buffer.
fn threads_per_queue(cpus: usize) -> usize {
    (16 / cpus.max(1)).clamp(2, 4)
}

/// Ring entries (requests in hand at once) per thread. One: a second would wait behind a
/// backend fetch of the first even when its own data is cached.
const ENTRIES_PER_THREAD: usize = 1;
/// Largest request or reply payload: the connection's `max_write` and `max_pages` are set
/// to this, and each entry's payload buffer has this size.
pub const MAX_PAYLOAD: u32 = 128 << 10;

/// One request taken from the ring.
pub struct RingRequest<'a> {
    pub opcode: u32,
    pub nodeid: u64,
    /// The opcode's fixed argument (`fuse_read_in`, ...), zero-padded to 128 bytes.
    pub op_in: &'a [u8],
    /// Bytes of variable argument (a name, ...) at the start of the payload buffer.
    pub payload_len: usize,
}

impl RingRequest<'_> {
    /// The opcode's fixed argument as a `T` (`fuse_read_in`, ...); zeros past what the
    /// kernel sent.
    pub fn arg<T: FromBytes + KnownLayout + Immutable>(&self) -> T {
        T::read_from_prefix(self.op_in).map(|(t, _)| t).unwrap_or_else(|_| T::new_zeroed())
    }
}

/// A filesystem that answers requests from the ring. `payload` holds the request's variable
/// argument (`payload_len` bytes) and receives the reply: read what you need before writing.
/// Returns the reply's length, or a positive errno. FORGET and INTERRUPT never come here.
pub trait RingHandler: Send + Sync + 'static {
    fn handle(&self, req: &RingRequest<'_>, payload: &mut [u8]) -> Result<usize, i32>;
}

/// What a filesystem's `init` needs to ask for the ring: set `wanted` before mounting;
/// `granted` says whether the kernel agreed.
#[derive(Clone, Default)]
pub struct RingInit {
    wanted: Arc<AtomicBool>,
    granted: Arc<AtomicBool>,
}

impl RingInit {
    /// Called from the filesystem's `init`: asks for the ring when wanted and offered.
    pub fn negotiate(&self, config: &mut fuser::KernelConfig) {
        if !self.wanted.load(Ordering::Acquire) {
            return;
        }
        // Every entry needs a payload buffer of the connection's largest message.
        // (A kernel offering less readahead than this keeps its own, which is smaller.)
        let _ = config.set_max_readahead(MAX_PAYLOAD);
        if config.set_max_write(MAX_PAYLOAD).is_ok() {
            let ok = config.add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING).is_ok();
            self.granted.store(ok, Ordering::Release);
        }
    }

    /// Asks for the ring at the next INIT.
    pub fn want(&self) {
        self.wanted.store(true, Ordering::Release);
    }

    /// Whether the kernel agreed to the ring at INIT.
    pub fn granted(&self) -> bool {
        self.granted.load(Ordering::Acquire)
    }
}

/// Whether the kernel lets FUSE servers use io_uring now.
pub fn enabled() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|s| s.trim() == "Y")
}

/// How many queues the kernel makes: one per possible CPU (`num_possible_cpus`, a count;
/// a request goes to the queue numbered as its reader's CPU).
fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let n: usize = s
        .trim()
        .split(',')
        .filter_map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            Some(b.parse::<usize>().ok()?.checked_sub(a.parse::<usize>().ok()?)? + 1)
        })
        .sum();
    n.max(1)
}

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// Rings made before the INIT handshake asks for FUSE over io_uring: once the kernel has
/// agreed, requests wait until every CPU's queue has an entry, so what can fail is done first.
pub struct Prepared {
    rings: Vec<(usize, Ring)>,
}

/// Makes one io_uring per server thread, or says why not.
pub fn prepare() -> std::io::Result<Prepared> {
    let cpus = possible_cpus();
    let per_queue = threads_per_queue(cpus);
    let mut rings = Vec::with_capacity(cpus * per_queue);
    for cpu in 0..cpus {
        for _ in 0..per_queue {
            let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .build((ENTRIES_PER_THREAD * 2) as u32)?;
            rings.push((cpu, ring));
        }
    }
    Ok(Prepared { rings })
}

/// The ring's server threads; they end when the connection does.
pub struct RingServer {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RingServer {
    /// Registers every entry with the kernel and serves requests with `handler`. Returns once
    /// all entries are registered, or with the first error (the kernel then turns the ring
    /// off for the connection and requests go through /dev/fuse).
    pub fn start(
        prepared: Prepared,
        fuse: BorrowedFd<'_>,
        handler: Arc<dyn RingHandler>,
    ) -> std::io::Result<RingServer> {
        let fd: Arc<OwnedFd> = Arc::new(fuse.try_clone_to_owned()?);
        let mut threads = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let n = prepared.rings.len();
        for (cpu, ring) in prepared.rings {
            let (fd, handler, tx) = (fd.clone(), handler.clone(), tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("naiad-ring-{cpu}"))
                    .spawn(move || serve(ring, cpu, &fd, &*handler, &tx))?,
            );
        }
        drop(tx);
        for _ in 0..n {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(std::io::Error::other("a ring thread ended before registering"))
                }
            }
        }
        Ok(RingServer { threads })
    }

    /// Waits for the threads (after the connection has ended).
    pub fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Entry {
    header: Box<UringReqHeader>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    if cpu < rustix::thread::CpuSet::MAX_CPU {
        set.set(cpu);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

/// An `IORING_OP_URING_CMD` on /dev/fuse with `fuse_uring_cmd_req` in its command area.
fn uring_cmd(
    fd: i32,
    cmd_op: u32,
    qid: u16,
    commit_id: u64,
    iov: *const libc::iovec,
    user_data: u64,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    let req = UringCmdReq { commit_id, qid, ..Default::default() };
    cmd[..std::mem::size_of::<UringCmdReq>()].copy_from_slice(req.as_bytes());
    let e = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .addr(Some(iov as u64))
        .build()
        .user_data(user_data);
    // The builder has no `len`; REGISTER wants the iovec count there (the SQE's ABI layout:
    // `len` is the u32 at byte 24).
    // SAFETY: Entry128 is the 128-byte SQE, plain data.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    raw[24..28].copy_from_slice(&2u32.to_le_bytes());
    // SAFETY: the same bytes, one field changed.
    unsafe { std::mem::transmute(raw) }
}

fn serve(
    mut ring: Ring,
    cpu: usize,
    fd: &OwnedFd,
    handler: &dyn RingHandler,
    ready: &std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    pin_to(cpu);
    let qid = cpu as u16;
    let raw = fd.as_fd().as_raw_fd();
    // The kernel may write into an entry's buffers for as long as one of its commands is
    // registered, which only the end of the FUSE connection or the entry's own completion
    // ends, not the end of this thread or of the ring. So the entries are freed only once
    // every one has completed (the loop below ends with none live); on every other return
    // they are left allocated (one entry a thread, on an error path) rather than freed under
    // the kernel.
    let mut entries: std::mem::ManuallyDrop<Vec<Entry>> = std::mem::ManuallyDrop::new(
        (0..ENTRIES_PER_THREAD)
            .map(|_| {
                let mut header = Box::new(UringReqHeader::new_zeroed());
                let mut payload = vec![0u8; MAX_PAYLOAD as usize];
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.as_mut_bytes().as_mut_ptr().cast(),
                        iov_len: URING_HEADER_SIZE,
                    },
                    libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() },
                ]);
                Entry { header, payload, iov }
            })
            .collect(),
    );
    // Register: the kernel completes a REGISTER only when it has a request for the entry,
    // so an error comes back at once and success is silence. Submitted, not waited for.
    for (i, e) in entries.iter().enumerate() {
        let sqe = uring_cmd(raw, URING_CMD_REGISTER, qid, 0, e.iov.as_ptr(), i as u64);
        // SAFETY: the entry's buffers and iovec are boxed (never moved) and freed only once
        // every command holding them has completed (see `entries`).
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            let _ = ready.send(Err(std::io::Error::other("ring submission queue full")));
            return;
        }
    }
    if let Err(e) = ring.submit() {
        let _ = ready.send(Err(e));
        return;
    }
    // A refused REGISTER completes at once with its error. A completion without one is a
    // request already (this thread's entry may have been the last the ring waited for).
    let mut done: Vec<(u64, i32)> =
        ring.completion().map(|c| (c.user_data(), c.result())).collect();
    if let Some(&(_, err)) = done.iter().find(|(_, r)| *r < 0) {
        let _ = ready.send(Err(std::io::Error::from_raw_os_error(-err)));
        return;
    }
    let _ = ready.send(Ok(()));
    let mut live = entries.len();
    while live > 0 {
        if done.is_empty() {
            if let Err(e) = ring.submit_and_wait(1) {
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                tracing::warn!(error = %e, "FUSE ring: io_uring_enter failed");
                return;
            }
            done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        }
        for (i, res) in done.drain(..) {
            let e = &mut entries[i as usize];
            if res < 0 {
                // The connection ended (unmounted, aborted): this entry is done.
                if res != -libc::ENOTCONN && res != -libc::ECANCELED {
                    tracing::warn!(error = %std::io::Error::from_raw_os_error(-res), "FUSE ring entry failed");
                }
                live -= 1;
                continue;
            }
            let commit_id = answer(e, handler);
            let sqe = uring_cmd(raw, URING_CMD_COMMIT_AND_FETCH, qid, commit_id, e.iov.as_ptr(), i);
            // SAFETY: as above; at most ENTRIES_PER_THREAD commands are ever queued, within
            // the ring's size.
            let _ = unsafe { ring.submission().push(&sqe) };
        }
    }
    // Every entry has completed: no command of this thread's holds its buffers any more.
    drop(ring);
    // SAFETY: taken once, here, after the last use of `entries`.
    drop(unsafe { std::mem::ManuallyDrop::take(&mut entries) });
}

/// Answers the request in `e` in place; returns its commit id.
fn answer(e: &mut Entry, handler: &dyn RingHandler) -> u64 {
    let h = &mut *e.header;
    let head = InHeader::read_from_prefix(&h.in_out).map(|(h, _)| h).unwrap_or_default();
    let commit_id = h.ent.commit_id;
    let payload_len = (h.ent.payload_sz as usize).min(e.payload.len());
    let req =
        RingRequest { opcode: head.opcode, nodeid: head.nodeid, op_in: &h.op_in, payload_len };
    // A panic answers EIO: the reader must not wait for ever on a request no thread holds.
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler.handle(&req, &mut e.payload)
    }));
    let (error, len) = match res {
        Ok(Ok(n)) => (0i32, n.min(e.payload.len())),
        Ok(Err(errno)) => (-errno, 0),
        Err(_) => {
            tracing::error!(
                opcode = head.opcode,
                nodeid = head.nodeid,
                "FUSE ring handler panicked; answered EIO"
            );
            (-libc::EIO, 0)
        }
    };
    let out = OutHeader {
        len: (std::mem::size_of::<OutHeader>() + len) as u32,
        error,
        unique: head.unique,
    };
    let _ = out.write_to_prefix(&mut h.in_out[..]);
    h.ent.payload_sz = len as u32;
    commit_id
}
