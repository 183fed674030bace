//! What keepers and their workers say to each other over a keeper's unix socket.
//!
//! A fanotify keeper and its worker exchange [`Msg`]s, each a frame of a `u32` length (little
//! endian) and a payload whose first byte is the kind; fixed-size records are zerocopy
//! structures, little endian, so the bytes are the same on every host. A FUSE keeper answers
//! each connection with one unframed [`FuseHello`].
//!
//! Worker to fanotify keeper: [`Msg::Blob`] registers a blob (its number, view size, presence
//! map path), [`Msg::Frames`] registers frame files, [`Msg::Go`] ends the registrations (send
//! the pending events), [`Msg::Answer`] answers an event, [`Msg::Bye`] ends the mount. Keeper
//! to worker: [`Msg::Writers`] on connecting (its pid and the descriptors of the watched files
//! opened before the watch), [`Msg::Event`] for a read to fill.

use std::io::{Read, Write};
use std::ops::Range;
use std::path::PathBuf;
use zerocopy::little_endian::{I32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Largest frame accepted: a writer list or a batch of registrations of an image with tens
/// of thousands of frames fits.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Frame registrations per [`Msg::Frames`].
pub const FRAMES_PER_MESSAGE: usize = 1024;

/// A frame file of a mount: its identity (`dev`, `ino`), its blob, the view range its chunks
/// span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameReg {
    pub dev: u64,
    pub ino: u64,
    pub blob: u32,
    pub span: Range<u64>,
}

/// A descriptor the keeper holds of a watched file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterFd {
    pub dev: u64,
    pub ino: u64,
    /// Its number in the keeper (copy it with `pidfd_getfd`).
    pub fd: i32,
}

/// One message between a fanotify keeper and its worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Blob { blob: u32, view_size: u64, map_path: PathBuf },
    Frames(Vec<FrameReg>),
    Go,
    Answer { id: i32, allow: bool },
    Bye,
    Writers { pid: u32, fds: Vec<WriterFd> },
    Event { id: i32, dev: u64, ino: u64, offset: u64, count: u64 },
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct BlobHead {
    blob: U32,
    view_size: U64,
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct FrameRec {
    dev: U64,
    ino: U64,
    blob: U32,
    start: U64,
    end: U64,
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct AnswerRec {
    id: I32,
    allow: u8,
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct WritersHead {
    pid: U32,
    count: U32,
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct WriterRec {
    dev: U64,
    ino: U64,
    fd: I32,
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct EventRec {
    id: I32,
    dev: U64,
    ino: U64,
    offset: U64,
    count: U64,
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Reads a `T` from the start of `b`: the rest, or an error naming the message.
fn take<'a, T: FromBytes + KnownLayout + Immutable>(
    b: &'a [u8],
    what: &str,
) -> std::io::Result<(T, &'a [u8])> {
    T::read_from_prefix(b).map_err(|_| bad(format!("keeper message {what}: truncated")))
}

/// Every `T` in `b`, which must hold a whole number of them.
fn records<T: FromBytes + KnownLayout + Immutable>(
    b: &[u8],
    what: &str,
) -> std::io::Result<Vec<T>> {
    let n = std::mem::size_of::<T>();
    if !b.len().is_multiple_of(n) {
        return Err(bad(format!(
            "keeper message {what}: {} bytes is not a number of records",
            b.len()
        )));
    }
    b.chunks_exact(n).map(|r| take::<T>(r, what).map(|(t, _)| t)).collect()
}

impl Msg {
    /// The payload (kind byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut m = Vec::new();
        match self {
            Msg::Blob { blob, view_size, map_path } => {
                m.push(b'R');
                m.extend_from_slice(
                    BlobHead { blob: (*blob).into(), view_size: (*view_size).into() }.as_bytes(),
                );
                m.extend_from_slice(map_path.as_os_str().as_encoded_bytes());
            }
            Msg::Frames(frames) => {
                m.push(b'F');
                for f in frames {
                    let r = FrameRec {
                        dev: f.dev.into(),
                        ino: f.ino.into(),
                        blob: f.blob.into(),
                        start: f.span.start.into(),
                        end: f.span.end.into(),
                    };
                    m.extend_from_slice(r.as_bytes());
                }
            }
            Msg::Go => m.push(b'G'),
            Msg::Answer { id, allow } => {
                m.push(b'A');
                m.extend_from_slice(
                    AnswerRec { id: (*id).into(), allow: u8::from(*allow) }.as_bytes(),
                );
            }
            Msg::Bye => m.push(b'B'),
            Msg::Writers { pid, fds } => {
                m.push(b'P');
                m.extend_from_slice(
                    WritersHead { pid: (*pid).into(), count: (fds.len() as u32).into() }.as_bytes(),
                );
                for w in fds {
                    m.extend_from_slice(
                        WriterRec { dev: w.dev.into(), ino: w.ino.into(), fd: w.fd.into() }
                            .as_bytes(),
                    );
                }
            }
            Msg::Event { id, dev, ino, offset, count } => {
                m.push(b'E');
                let r = EventRec {
                    id: (*id).into(),
                    dev: (*dev).into(),
                    ino: (*ino).into(),
                    offset: (*offset).into(),
                    count: (*count).into(),
                };
                m.extend_from_slice(r.as_bytes());
            }
        }
        m
    }

    /// A payload read back; an error names what does not parse.
    pub fn decode(b: &[u8]) -> std::io::Result<Msg> {
        let (&kind, rest) = b.split_first().ok_or_else(|| bad("empty keeper message"))?;
        Ok(match kind {
            b'R' => {
                let (h, path) = take::<BlobHead>(rest, "R")?;
                let map_path = PathBuf::from(std::ffi::OsStr::from_bytes(path));
                Msg::Blob { blob: h.blob.get(), view_size: h.view_size.get(), map_path }
            }
            b'F' => Msg::Frames(
                records::<FrameRec>(rest, "F")?
                    .into_iter()
                    .map(|r| FrameReg {
                        dev: r.dev.get(),
                        ino: r.ino.get(),
                        blob: r.blob.get(),
                        span: r.start.get()..r.end.get().max(r.start.get()),
                    })
                    .collect(),
            ),
            b'G' => Msg::Go,
            b'A' => {
                let (a, _) = take::<AnswerRec>(rest, "A")?;
                Msg::Answer { id: a.id.get(), allow: a.allow == 1 }
            }
            b'B' => Msg::Bye,
            b'P' => {
                let (h, recs) = take::<WritersHead>(rest, "P")?;
                let fds: Vec<WriterFd> = records::<WriterRec>(recs, "P")?
                    .into_iter()
                    .map(|r| WriterFd { dev: r.dev.get(), ino: r.ino.get(), fd: r.fd.get() })
                    .collect();
                if fds.len() != h.count.get() as usize {
                    return Err(bad(format!(
                        "keeper message P: says {} writers, holds {}",
                        h.count.get(),
                        fds.len()
                    )));
                }
                Msg::Writers { pid: h.pid.get(), fds }
            }
            b'E' => {
                let (e, _) = take::<EventRec>(rest, "E")?;
                Msg::Event {
                    id: e.id.get(),
                    dev: e.dev.get(),
                    ino: e.ino.get(),
                    offset: e.offset.get(),
                    count: e.count.get(),
                }
            }
            k => return Err(bad(format!("unknown keeper message kind {k:#04x}"))),
        })
    }

    /// Writes the message as one frame.
    pub fn send(&self, s: &mut impl Write) -> std::io::Result<()> {
        let payload = self.encode();
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        s.write_all(&frame)
    }

    /// Reads one frame and decodes it.
    pub fn recv(s: &mut impl Read) -> std::io::Result<Msg> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME_BYTES {
            return Err(bad(format!("bad keeper frame length {len}")));
        }
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf)?;
        Msg::decode(&buf)
    }
}

/// What a FUSE keeper sends each client: its pid and the number of the `/dev/fuse`
/// descriptor it holds.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct FuseHello {
    kind: u8,
    pid: U32,
    fd: I32,
}

impl FuseHello {
    pub fn new(pid: u32, fd: i32) -> Self {
        FuseHello { kind: b'P', pid: pid.into(), fd: fd.into() }
    }

    pub fn pid(&self) -> u32 {
        self.pid.get()
    }

    pub fn fd(&self) -> i32 {
        self.fd.get()
    }

    /// Reads one from `s`.
    pub fn recv(s: &mut impl Read) -> std::io::Result<FuseHello> {
        let mut b = [0u8; std::mem::size_of::<FuseHello>()];
        s.read_exact(&mut b)?;
        let (h, _) = take::<FuseHello>(&b, "P")?;
        if h.kind != b'P' {
            return Err(bad("not a FUSE keeper's answer"));
        }
        Ok(h)
    }
}

use std::os::unix::ffi::OsStrExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_bad_ones_are_errors() {
        let msgs = [
            Msg::Blob { blob: 3, view_size: 1 << 40, map_path: "/var/cache/x.present".into() },
            Msg::Frames(vec![
                FrameReg { dev: 1, ino: u64::MAX, blob: 0, span: 4096..8192 },
                FrameReg { dev: 2, ino: 7, blob: 9, span: 0..0 },
            ]),
            Msg::Go,
            Msg::Answer { id: 17, allow: true },
            Msg::Answer { id: -1, allow: false },
            Msg::Bye,
            Msg::Writers { pid: 42, fds: vec![WriterFd { dev: 5, ino: 6, fd: 12 }] },
            Msg::Event { id: 8, dev: 1, ino: 2, offset: 3, count: u64::MAX },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            m.send(&mut wire).unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            assert_eq!(&Msg::recv(&mut r).unwrap(), m);
        }
        assert!(r.is_empty());
        // The byte layout the protocol has always had: kind, then fixed records.
        let e = Msg::Event { id: 1, dev: 2, ino: 3, offset: 4, count: 5 }.encode();
        assert_eq!((e.len(), e[0], e[1], e[5], e[29]), (37, b'E', 1, 2, 5));
        assert_eq!(
            Msg::Frames(vec![FrameReg { dev: 0, ino: 0, blob: 0, span: 0..1 }]).encode().len(),
            37
        );
        // Truncated, padded, unknown, lying about its count, too long: errors.
        for bad in
            [&e[..20], &[b'F', 0, 0][..], &[b'Z'][..], &[b'P', 1, 0, 0, 0, 1, 0, 0, 0][..], &[][..]]
        {
            assert!(Msg::decode(bad).is_err(), "{bad:?}");
        }
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
        assert!(Msg::recv(&mut &huge[..]).is_err());
        let hello = FuseHello::new(77, 9);
        let back = FuseHello::recv(&mut hello.as_bytes()).unwrap();
        assert_eq!((back.pid(), back.fd(), hello.as_bytes().len()), (77, 9, 9));
        assert!(FuseHello::recv(&mut &[b'X'; 9][..]).is_err());
    }
}
