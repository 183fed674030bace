//! The fanotify system calls and structures the fanotify mode uses (`linux/fanotify.h`): a
//! pre-content group, marks on files, events with their file range, answers. rustix has no
//! fanotify wrappers: these are the crate's only calls of it through libc.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

// Linux uapi values the libc crate does not have yet.
const FAN_PRE_ACCESS: u64 = 0x0010_0000;
const FAN_UNLIMITED_QUEUE: u32 = 0x10;
const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;
const FAN_ERRNO_SHIFT: u32 = 24;
const FANOTIFY_METADATA_VERSION: u8 = 3;

/// `struct fanotify_event_metadata`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct EventMetadata {
    event_len: u32,
    vers: u8,
    reserved: u8,
    metadata_len: u16,
    mask: u64,
    fd: i32,
    pid: i32,
}

/// `struct fanotify_event_info_header`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct InfoHeader {
    info_type: u8,
    pad: u8,
    len: u16,
}

/// `struct fanotify_event_info_range`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct InfoRange {
    hdr: InfoHeader,
    pad: u32,
    offset: u64,
    count: u64,
}

/// `struct fanotify_response`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Response {
    fd: i32,
    response: u32,
}

const _: () = assert!(
    std::mem::size_of::<EventMetadata>() == 24
        && std::mem::size_of::<InfoRange>() == 24
        && std::mem::size_of::<Response>() == 8
);

/// A new pre-content group. Event descriptors are opened read-write: the group's own writes
/// through them never raise events.
pub fn init() -> std::io::Result<OwnedFd> {
    let flags = libc::FAN_CLASS_PRE_CONTENT | libc::FAN_CLOEXEC | FAN_UNLIMITED_QUEUE;
    // SAFETY: a plain syscall with constant arguments; the result is checked.
    let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDWR | libc::O_LARGEFILE) as u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds (or removes) the group's pre-access mark on the file at `path`.
pub fn mark(group: BorrowedFd<'_>, add: bool, path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = if add { libc::FAN_MARK_ADD } else { libc::FAN_MARK_REMOVE };
    // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
    let r = unsafe {
        libc::fanotify_mark(group.as_raw_fd(), flags, FAN_PRE_ACCESS, libc::AT_FDCWD, c.as_ptr())
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the group's mark of the file `file` refers to.
pub fn unmark(group: BorrowedFd<'_>, file: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: valid descriptors; a null path means the file `file` itself.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_REMOVE,
            FAN_PRE_ACCESS,
            file.as_raw_fd(),
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Answers the event whose descriptor is `event`: allow, or deny with EIO.
pub fn respond(group: BorrowedFd<'_>, event: BorrowedFd<'_>, allow: bool) {
    let response = if allow {
        libc::FAN_ALLOW
    } else {
        libc::FAN_DENY | ((libc::EIO as u32) << FAN_ERRNO_SHIFT)
    };
    let r = Response { fd: event.as_raw_fd(), response };
    if let Err(e) = rustix::io::write(group, r.as_bytes()) {
        tracing::error!(error = %e, "answering a fanotify event failed");
    }
}

/// An event read from a group: the descriptor the kernel opened for it and the file range,
/// if the event carries one.
pub struct Event {
    pub fd: OwnedFd,
    pub range: Option<(u64, u64)>,
}

/// Reads the events waiting on `group` (one read; call when it is readable).
pub fn read_events(group: impl AsFd, buf: &mut [u8]) -> Vec<Event> {
    let n = match rustix::io::read(group, &mut *buf) {
        Ok(n) => n,
        Err(_) => return Vec::new(),
    };
    parse_events(&buf[..n], |fd| {
        // SAFETY: the kernel opened this descriptor for this process in the read above; it is
        // owned from here, once (each event names its own).
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
    .into_iter()
    .map(Event::from)
    .collect()
}

/// The events in `buf`, each descriptor handed to `own`. Stops at a malformed event.
fn parse_events<T>(buf: &[u8], mut own: impl FnMut(i32) -> T) -> Vec<EventOf<T>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Ok((m, _)) = EventMetadata::read_from_prefix(&buf[at..]) {
        let event_len = m.event_len as usize;
        if event_len < std::mem::size_of::<EventMetadata>()
            || event_len > buf.len() - at
            || m.vers != FANOTIFY_METADATA_VERSION
        {
            tracing::error!(event_len, version = m.vers, "malformed fanotify event");
            break;
        }
        let ev = &buf[at..at + event_len];
        at += event_len;
        if m.fd < 0 {
            continue; // a queue overflow notice: no descriptor, nothing to answer
        }
        let mut range = None;
        let mut i = m.metadata_len as usize;
        while let Some(Ok((h, _))) = ev.get(i..).map(InfoHeader::read_from_prefix) {
            let len = h.len as usize;
            if len < std::mem::size_of::<InfoHeader>() || i + len > event_len {
                break;
            }
            if h.info_type == FAN_EVENT_INFO_TYPE_RANGE {
                if let Ok((r, _)) = InfoRange::read_from_prefix(&ev[i..i + len]) {
                    range = Some((r.offset, r.count));
                }
            }
            i += len;
        }
        out.push(EventOf { fd: own(m.fd), range });
    }
    out
}

/// [`Event`] with any owner of the descriptor (the tests use plain numbers).
struct EventOf<T> {
    fd: T,
    range: Option<(u64, u64)>,
}

impl From<EventOf<OwnedFd>> for Event {
    fn from(e: EventOf<OwnedFd>) -> Event {
        Event { fd: e.fd, range: e.range }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(fd: i32, range: Option<(u64, u64)>) -> Vec<u8> {
        let info = range.map(|(offset, count)| InfoRange {
            hdr: InfoHeader { info_type: FAN_EVENT_INFO_TYPE_RANGE, pad: 0, len: 24 },
            pad: 0,
            offset,
            count,
        });
        let len = 24 + if info.is_some() { 24 } else { 0 };
        let m = EventMetadata {
            event_len: len,
            vers: FANOTIFY_METADATA_VERSION,
            reserved: 0,
            metadata_len: 24,
            mask: FAN_PRE_ACCESS,
            fd,
            pid: 1,
        };
        let mut b = m.as_bytes().to_vec();
        if let Some(i) = info {
            b.extend_from_slice(i.as_bytes());
        }
        b
    }

    #[test]
    fn events_are_parsed_with_their_ranges_and_bad_ones_stop_the_parse() {
        let mut buf = event(7, Some((4096, 8192)));
        buf.extend(event(-1, None)); // an overflow notice: skipped
        buf.extend(event(9, None));
        let got = parse_events(&buf, |fd| fd);
        assert_eq!(
            got.iter().map(|e| (e.fd, e.range)).collect::<Vec<_>>(),
            vec![(7, Some((4096, 8192))), (9, None)]
        );
        let mut bad = event(3, None);
        bad[4] = 2; // another metadata version
        assert!(parse_events(&bad, |fd| fd).is_empty());
        let mut short = event(3, Some((0, 1)));
        short.truncate(30); // event_len past the buffer
        assert!(parse_events(&short, |fd| fd).is_empty());
        let mut loop_info = event(4, Some((0, 1)));
        loop_info[24 + 2] = 0; // an info header of length 0 must not loop
        assert_eq!(parse_events(&loop_info, |fd| fd).len(), 1);
    }
}
