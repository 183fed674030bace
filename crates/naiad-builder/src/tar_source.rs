//! Reads an OCI layer tar (plain, gzip or zstd, told apart by their magic bytes): every
//! entry type, PAX and GNU long names, PAX nanosecond mtimes, `SCHILY.xattr.*` xattrs, and
//! the OCI whiteouts. Every path is checked by the [`TreeBuilder`].

use crate::chunk_pipeline::{ChunkData, ChunkJob, Pipeline};
use crate::tree_builder::{file_node, TreeBuilder, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::{BuildError, Result};
use naiad_format::tree::{Meta, Node, NodeKind, Xattr};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use tar::EntryType;

/// Largest size a sparse (GNU) entry may claim: its holes are expanded while reading, so an
/// unbounded claim would make the build run for ever.
pub const MAX_SPARSE_FILE_BYTES: u64 = 64 << 30;

/// Opens a layer file and undoes its compression.
pub fn open_layer(path: &Path) -> Result<Box<dyn Read + Send>> {
    let file = std::fs::File::open(path).map_err(BuildError::io(path))?;
    decompress_layer(Box::new(file), &path.display().to_string())
}

/// Undoes a layer stream's compression (gzip, zstd or none), told from its first bytes.
pub fn decompress_layer(reader: Box<dyn Read + Send>, name: &str) -> Result<Box<dyn Read + Send>> {
    let mut r = BufReader::with_capacity(1 << 20, reader);
    let layer = |detail: String| BuildError::Layer { layer: name.into(), detail };
    let head = r.fill_buf().map_err(|cause| BuildError::Read {
        context: format!("layer {name}: unreadable"),
        cause,
    })?;
    Ok(match head {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(|e| layer(e.to_string()))?)
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            return Err(layer(
                "xz-compressed layers cannot be read; use gzip, zstd or plain tar".into(),
            ))
        }
        [b'B', b'Z', b'h', ..] => {
            return Err(layer(
                "bzip2-compressed layers cannot be read; use gzip, zstd or plain tar".into(),
            ))
        }
        _ => Box::new(r),
    })
}

/// The layer stream as the tar reader sees it: counts what it reads, and when the stream
/// ends cleanly (not with an error) inside a 512-byte block after every byte the last entry
/// declared, supplies the zeros of that block. Some writers (umoci 0.4's `insert`) end a
/// layer without padding its last entry; containerd and GNU tar read such layers. Only
/// padding is made up, never a missing data byte, so a file cut short is still an error.
struct PadLastBlock<R> {
    inner: R,
    pos: u64,
    /// Where the current entry's data ends in the stream.
    data_end: std::rc::Rc<std::cell::Cell<u64>>,
    padded: bool,
    pad_left: usize,
}

impl<R: Read> Read for PadLastBlock<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pad_left == 0 {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.pos += n as u64;
                return Ok(n);
            }
            if self.pos.is_multiple_of(512) || self.pos < self.data_end.get() || self.padded {
                return Ok(0);
            }
            self.pad_left = (512 - self.pos % 512) as usize;
            self.padded = true;
        }
        let n = self.pad_left.min(buf.len());
        buf[..n].fill(0);
        self.pad_left -= n;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Adds every entry of one layer.
pub fn add_layer(
    reader: impl Read,
    layer_name: &str,
    tb: &mut TreeBuilder,
    pipe: &mut Pipeline,
    opts: &LayerOptions,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let data_end = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut archive = tar::Archive::new(PadLastBlock {
        inner: reader,
        pos: 0,
        data_end: data_end.clone(),
        padded: false,
        pad_left: 0,
    });
    let entries = archive
        .entries()
        .map_err(|cause| BuildError::Read { context: format!("layer {layer_name}"), cause })?;
    add_entries(entries, layer_name, tb, pipe, opts, warnings, &data_end)?;
    // Read to the end so that the decompressor checks its trailer (gzip CRC and length,
    // zstd checksum): a layer cut short after its last entry is still an error.
    let mut stream = archive.into_inner();
    std::io::copy(&mut stream, &mut std::io::sink()).map_err(|cause| BuildError::Read {
        context: format!("layer {layer_name}: layer stream is damaged after its last entry"),
        cause,
    })?;
    if stream.padded {
        warnings.push(format!("layer {layer_name}: the tar stream ends without the padding of its last entry (read as containerd reads it)"));
    }
    Ok(())
}

/// How entries of a layer are taken.
#[derive(Clone, Copy, Debug)]
pub struct LayerOptions {
    pub chunk_size: u32,
    /// Store whiteouts as empty files rather than applying them.
    pub keep_whiteouts: bool,
}

fn add_entries<R: Read>(
    entries: tar::Entries<'_, R>,
    layer_name: &str,
    tb: &mut TreeBuilder,
    pipe: &mut Pipeline,
    opts: &LayerOptions,
    warnings: &mut Vec<String>,
    data_end: &std::cell::Cell<u64>,
) -> Result<()> {
    let chunk_size = opts.chunk_size;
    for entry in entries {
        let mut entry = entry.map_err(|cause| BuildError::Read {
            context: format!("layer {layer_name}: unreadable tar header"),
            cause,
        })?;
        data_end.set(
            entry
                .raw_file_position()
                .saturating_add(entry.header().entry_size().unwrap_or(u64::MAX)),
        );
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let bad = |detail: String| BuildError::Entry {
            source_name: format!("layer {layer_name}"),
            entry: name.clone(),
            detail,
        };
        let ty = entry.header().entry_type();
        if matches!(ty, EntryType::XGlobalHeader) {
            continue;
        }
        let comps = TreeBuilder::split_path(&raw_path).map_err(&bad)?;
        // Whiteouts.
        if let Some((last, dirs)) = comps.split_last().filter(|_| !opts.keep_whiteouts) {
            if *last == OPAQUE_MARKER {
                tb.opaque(dirs).map_err(&bad)?;
                continue;
            }
            if let Some(target) = last.strip_prefix(WHITEOUT_PREFIX) {
                if target.starts_with(WHITEOUT_PREFIX) {
                    warnings.push(format!(
                        "layer {layer_name}: {name}: unknown whiteout marker skipped"
                    ));
                } else {
                    tb.whiteout(dirs, target).map_err(&bad)?;
                }
                continue;
            }
        }
        check_size_field(entry.header()).map_err(&bad)?;
        let meta = entry_meta(&mut entry).map_err(&bad)?;
        let header = entry.header();
        let dev = || -> Result<(u32, u32), String> {
            let major = header
                .device_major()
                .map_err(|e| e.to_string())?
                .ok_or("device without numbers")?;
            let minor = header
                .device_minor()
                .map_err(|e| e.to_string())?
                .ok_or("device without numbers")?;
            Ok((major, minor))
        };
        let link = || -> Result<Vec<u8>, String> {
            let l = entry.link_name_bytes().ok_or("link without a target")?.into_owned();
            if l.is_empty() {
                Err("link with an empty target".into())
            } else {
                Ok(l)
            }
        };
        let node = match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                if ty == EntryType::GNUSparse && size > MAX_SPARSE_FILE_BYTES {
                    return Err(bad(format!("sparse file claims {size} bytes, more than the {MAX_SPARSE_FILE_BYTES} allowed")));
                }
                file_node(meta, size)
            }
            EntryType::Directory => Node { meta, kind: NodeKind::Dir(BTreeMap::new()) },
            EntryType::Symlink => Node { meta, kind: NodeKind::Symlink(link().map_err(&bad)?) },
            EntryType::Char => {
                let (major, minor) = dev().map_err(&bad)?;
                Node { meta, kind: NodeKind::CharDev { major, minor } }
            }
            EntryType::Block => {
                let (major, minor) = dev().map_err(&bad)?;
                Node { meta, kind: NodeKind::BlockDev { major, minor } }
            }
            EntryType::Fifo => Node { meta, kind: NodeKind::Fifo },
            EntryType::Link => {
                let target = link().map_err(&bad)?;
                let tcomps = TreeBuilder::split_path(&target)
                    .map_err(|d| bad(format!("hardlink target: {d}")))?;
                tb.hardlink(&comps, &tcomps).map_err(&bad)?;
                continue;
            }
            other => return Err(bad(format!("unsupported tar entry type {:?}", other))),
        };
        let is_file = matches!(node.kind, NodeKind::File(_));
        let size = match &node.kind {
            NodeKind::File(f) => f.size,
            _ => 0,
        };
        let id = tb.insert(&comps, node).map_err(&bad)?;
        if is_file {
            push_stream(&mut entry, size, id, chunk_size, pipe).map_err(|e| match e {
                BuildError::Io { cause, .. } => BuildError::Read {
                    context: format!("layer {layer_name}: entry {name:?}: data unreadable"),
                    cause,
                },
                e => e,
            })?;
        }
    }
    Ok(())
}

/// Refuses size fields the tar crate would misread: base-256 numbers that are negative or
/// wider than 64 bits (it keeps only the low 8 bytes and drops the sign).
fn check_size_field(h: &tar::Header) -> Result<(), String> {
    let raw = &h.as_old().size;
    if raw[0] & 0x80 != 0 {
        if raw[0] & 0x40 != 0 {
            return Err("negative size in the tar header".into());
        }
        if raw[0] & 0x3f != 0 || raw[1..4].iter().any(|&b| b != 0) {
            return Err("size in the tar header does not fit 64 bits".into());
        }
    }
    Ok(())
}

/// Reads `size` bytes of an entry into the pipeline; a short stream is an error.
fn push_stream(
    r: &mut impl Read,
    size: u64,
    node: usize,
    chunk_size: u32,
    pipe: &mut Pipeline,
) -> Result<()> {
    let cs = u64::from(chunk_size);
    let mut index = 0u64;
    while index * cs < size {
        let len = cs.min(size - index * cs) as usize;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match r.read(&mut buf[got..]) {
                Ok(0) => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "layer ends after {} of the {size} bytes the entry claims",
                            index * cs + got as u64
                        ),
                    );
                    return Err(BuildError::Io { path: "".into(), cause: e });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BuildError::Io { path: "".into(), cause: e }),
            }
        }
        pipe.push(ChunkJob { node, index, data: ChunkData::Bytes(buf) })?;
        index += 1;
    }
    Ok(())
}

/// Mode, ids, mtime (PAX `mtime` with its fraction when present) and `SCHILY.xattr.*`.
fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, String> {
    let h = entry.header();
    let mode = h.mode().map_err(|e| format!("bad mode: {e}"))?;
    let uid = u32::try_from(h.uid().map_err(|e| format!("bad uid: {e}"))?)
        .map_err(|_| "uid does not fit 32 bits".to_string())?;
    let gid = u32::try_from(h.gid().map_err(|e| format!("bad gid: {e}"))?)
        .map_err(|_| "gid does not fit 32 bits".to_string())?;
    if uid == u32::MAX || gid == u32::MAX {
        return Err("uid or gid 4294967295 is not a valid id".into());
    }
    let mut mtime = i64::try_from(h.mtime().map_err(|e| format!("bad mtime: {e}"))?)
        .map_err(|_| "mtime out of range".to_string())?;
    let mut mtime_nsec = 0;
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(|e| format!("bad PAX header: {e}"))? {
        for ext in exts {
            let ext = ext.map_err(|e| format!("bad PAX record: {e}"))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                (mtime, mtime_nsec) = parse_pax_time(ext.value_bytes()).ok_or("bad PAX mtime")?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if naiad_format::writer::split_xattr_name(name).is_err() {
                    return Err(format!(
                        "xattr {:?} is in a namespace EROFS cannot store",
                        String::from_utf8_lossy(name)
                    ));
                }
                xattrs.push(Xattr { name: name.to_vec(), value: ext.value_bytes().to_vec() });
            } else if key == b"size" {
                // The tar reader quietly falls back to the header's size when this does not
                // parse; a layer claiming a size it cannot state is refused instead.
                std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or("bad PAX size")?;
            } else if matches!(key, b"uid" | b"gid") {
                let v: u64 = std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad PAX uid/gid")?;
                if v > u64::from(u32::MAX) {
                    return Err("PAX uid/gid does not fit 32 bits".into());
                }
            }
        }
    }
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.name == b.name);
    Ok(Meta { perm: mode & 0o7777, uid, gid, mtime, mtime_nsec, xattrs })
}

/// Parses a PAX time: `[-]seconds[.fraction]`.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if !neg {
        return Some((secs, nsec));
    }
    // -1.25 is 1.25 s before the epoch: seconds -2, nanoseconds 750000000.
    if nsec == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nsec))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pax_time;

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        assert_eq!(parse_pax_time(b"1700000000.123456789"), Some((1_700_000_000, 123_456_789)));
        assert_eq!(parse_pax_time(b"5"), Some((5, 0)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"1.5e3"), None);
        assert_eq!(parse_pax_time(b""), None);
    }
}
