//! Reads an OCI layer tar (plain, gzip or zstd, told apart by their magic bytes) into the
//! tree containerd would unpack from it: members are read as Go's `archive/tar` reads them
//! ([`crate::tar_reader`]: PAX and GNU long names, PAX nanosecond mtimes, `SCHILY.xattr.*`,
//! GNU sparse files in every format), every entry type containerd applies, and the OCI
//! whiteouts. Every path is checked by the [`TreeBuilder`]. `trusted.*` xattrs are dropped
//! (containerd does not set them; a layer must never hand overlayfs `trusted.overlay.*`).

use crate::chunk_pipeline::{ChunkData, ChunkJob, Pipeline};
use crate::tar_reader::{typeflag, Member, TarError, TarReader};
use crate::tree_builder::{file_node, TreeBuilder, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::{BuildError, Result};
use naiad_format::tree::{Meta, Node, NodeKind, Xattr};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

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

/// Adds every member of one layer.
pub fn add_layer(
    reader: impl Read,
    layer_name: &str,
    tb: &mut TreeBuilder,
    pipe: &mut Pipeline,
    opts: &LayerOptions,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let mut tar = TarReader::new(reader);
    let mut layer = Layer { name: layer_name, tb, pipe, opts, dropped_trusted: 0, dropped_user: 0 };
    while let Some(m) = tar.next_member().map_err(|e| tar_error(e, layer_name))? {
        layer.add_member(&mut tar, m, warnings)?;
    }
    // Read to the end so that the decompressor checks its trailer (gzip CRC and length,
    // zstd checksum): a layer cut short after its last entry is still an error.
    let mut stream = tar.into_inner();
    std::io::copy(&mut stream, &mut std::io::sink()).map_err(|cause| BuildError::Read {
        context: format!("layer {layer_name}: layer stream is damaged after its last entry"),
        cause,
    })?;
    if stream.padded() {
        warnings.push(format!("layer {layer_name}: the tar stream ends without the padding of its last entry (read as containerd reads it)"));
    }
    if layer.dropped_trusted > 0 {
        warnings.push(format!(
            "layer {layer_name}: {} trusted.* xattr(s) dropped: containerd does not set them from a layer, and a layer may not hand overlayfs trusted.overlay.* attributes",
            layer.dropped_trusted
        ));
    }
    if layer.dropped_user > 0 {
        warnings.push(format!(
            "layer {layer_name}: {} user.* xattr(s) on entries other than files and directories dropped (Linux refuses them there; containerd skips them)",
            layer.dropped_user
        ));
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

/// The error of a tar member that could not be read, in the words of [`BuildError`].
fn tar_error(e: TarError, layer_name: &str) -> BuildError {
    match e {
        TarError::Io(cause) => BuildError::Read {
            context: format!("layer {layer_name}: unreadable tar stream"),
            cause,
        },
        TarError::Header { offset, member: Some(name), detail } => BuildError::Entry {
            source_name: format!("layer {layer_name}"),
            entry: String::from_utf8_lossy(&name).into_owned(),
            detail: format!("{detail} (tar header at byte {offset})"),
        },
        TarError::Header { offset, member: None, detail } => BuildError::Layer {
            layer: layer_name.into(),
            detail: format!("tar header at byte {offset}: {detail}"),
        },
    }
}

/// One layer being added.
struct Layer<'a> {
    name: &'a str,
    tb: &'a mut TreeBuilder,
    pipe: &'a mut Pipeline,
    opts: &'a LayerOptions,
    /// `trusted.*` xattrs left out.
    dropped_trusted: u64,
    /// `user.*` xattrs of entries that cannot have them, left out.
    dropped_user: u64,
}

impl Layer<'_> {
    /// Adds one member (its data read from `tar`).
    fn add_member<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        m: Member,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let layer_name = self.name;
        let name = String::from_utf8_lossy(&m.name).into_owned();
        let bad = |detail: String| BuildError::Entry {
            source_name: format!("layer {layer_name}"),
            entry: name.clone(),
            detail,
        };
        if m.typeflag == typeflag::PAX_GLOBAL {
            return Ok(());
        }
        let comps = TreeBuilder::split_path(&m.name).map_err(&bad)?;
        // Whiteouts.
        if let Some((last, dirs)) = comps.split_last().filter(|_| !self.opts.keep_whiteouts) {
            if *last == OPAQUE_MARKER {
                return self.tb.opaque(dirs).map_err(&bad);
            }
            if let Some(target) = last.strip_prefix(WHITEOUT_PREFIX) {
                if target.starts_with(WHITEOUT_PREFIX) {
                    warnings.push(format!(
                        "layer {layer_name}: {name}: unknown whiteout marker skipped"
                    ));
                    return Ok(());
                }
                return self.tb.whiteout(dirs, target).map_err(&bad);
            }
        }
        let meta = self.member_meta(&m).map_err(&bad)?;
        let link = || -> Result<Vec<u8>, String> {
            if m.link.is_empty() {
                Err("link with an empty target".into())
            } else {
                Ok(m.link.clone())
            }
        };
        let dev = || -> Result<(u32, u32), String> {
            let n =
                |v: i64| u32::try_from(v).map_err(|_| format!("device number {v} out of range"));
            Ok((n(m.devmajor)?, n(m.devminor)?))
        };
        let node = match m.typeflag {
            typeflag::REG | typeflag::CONT | typeflag::GNU_SPARSE => {
                if m.sparse.is_some() && m.size > MAX_SPARSE_FILE_BYTES {
                    return Err(bad(format!(
                        "sparse file claims {} bytes, more than the {MAX_SPARSE_FILE_BYTES} allowed",
                        m.size
                    )));
                }
                file_node(meta, m.size)
            }
            typeflag::DIR => Node { meta, kind: NodeKind::Dir(BTreeMap::new()) },
            typeflag::SYMLINK => Node { meta, kind: NodeKind::Symlink(link().map_err(&bad)?) },
            typeflag::CHAR => {
                let (major, minor) = dev().map_err(&bad)?;
                Node { meta, kind: NodeKind::CharDev { major, minor } }
            }
            typeflag::BLOCK => {
                let (major, minor) = dev().map_err(&bad)?;
                Node { meta, kind: NodeKind::BlockDev { major, minor } }
            }
            typeflag::FIFO => Node { meta, kind: NodeKind::Fifo },
            typeflag::LINK => {
                let target = link().map_err(&bad)?;
                let tcomps = TreeBuilder::split_path(&target)
                    .map_err(|d| bad(format!("hardlink target: {d}")))?;
                self.tb.hardlink(&comps, &tcomps).map_err(&bad)?;
                return Ok(());
            }
            other => {
                return Err(bad(format!("unsupported tar entry type {:?}", char::from(other))))
            }
        };
        let is_file = matches!(node.kind, NodeKind::File(_));
        let id = self.tb.insert(&comps, node).map_err(&bad)?;
        if is_file {
            let chunk_size = self.opts.chunk_size;
            push_member(tar, &m, id, chunk_size, self.pipe).map_err(|e| match e {
                BuildError::Io { cause, .. } => BuildError::Read {
                    context: format!("layer {layer_name}: entry {name:?}: data unreadable"),
                    cause,
                },
                e => e,
            })?;
        }
        Ok(())
    }

    /// Mode, ids, mtime and xattrs as containerd sets them from the member.
    fn member_meta(&mut self, m: &Member) -> Result<Meta, String> {
        let mut xattrs = Vec::new();
        let file_or_dir = matches!(
            m.typeflag,
            typeflag::REG | typeflag::CONT | typeflag::GNU_SPARSE | typeflag::DIR
        );
        for (name, value) in &m.xattrs {
            let shown = String::from_utf8_lossy(name);
            if name.starts_with(b"trusted.") {
                tracing::debug!(layer = self.name, entry = %String::from_utf8_lossy(&m.name), xattr = %shown, "trusted.* xattr of a tar layer dropped");
                self.dropped_trusted += 1;
                continue;
            }
            if name.starts_with(b"user.") && !file_or_dir {
                self.dropped_user += 1;
                continue;
            }
            if naiad_format::writer::split_xattr_name(name).is_err() {
                return Err(format!("xattr {shown:?} is in a namespace EROFS cannot store"));
            }
            xattrs.push(Xattr { name: name.clone(), value: value.clone() });
        }
        xattrs.sort();
        Ok(Meta {
            perm: (m.mode & 0o7777) as u32,
            uid: owner_id(m.uid, "uid")?,
            gid: owner_id(m.gid, "gid")?,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
            xattrs,
        })
    }
}

/// The owner containerd gives a file for a tar uid or gid: -1 and 4294967295 are the
/// "leave as it is" value of `lchown`, so the file keeps the owner it was created with,
/// containerd's own (root, 0). Other values outside 32 bits (which the kernel would
/// truncate) are refused.
fn owner_id(v: i64, what: &str) -> Result<u32, String> {
    match v {
        -1 | 0xffff_ffff => Ok(0),
        0..0xffff_ffff => Ok(v as u32),
        _ => Err(format!("{what} does not fit 32 bits ({v})")),
    }
}

/// Reads a member's file data into the pipeline, chunk by chunk; a chunk that lies wholly
/// in a hole of a sparse file is passed on as zeros.
fn push_member<R: Read>(
    tar: &mut TarReader<R>,
    m: &Member,
    node: usize,
    chunk_size: u32,
    pipe: &mut Pipeline,
) -> Result<()> {
    let cs = u64::from(chunk_size);
    let size = m.size;
    let segments = m.sparse.as_deref();
    let mut seg = 0usize;
    let mut index = 0u64;
    while index * cs < size {
        let off = index * cs;
        let len = cs.min(size - off);
        let end = off + len;
        let data = match segments {
            None => {
                let mut buf = vec![0u8; len as usize];
                read_exact(tar, &mut buf, off, size)?;
                ChunkData::Bytes(buf)
            }
            Some(segs) if segs.get(seg).is_none_or(|s| s.offset >= end) => {
                ChunkData::Zeros(len as u32)
            }
            Some(segs) => {
                let mut buf = vec![0u8; len as usize];
                while let Some(s) = segs.get(seg).filter(|s| s.offset < end) {
                    let s_end = s.offset + s.length;
                    let (from, to) = (s.offset.max(off), s_end.min(end));
                    read_exact(
                        tar,
                        &mut buf[(from - off) as usize..(to - off) as usize],
                        from,
                        size,
                    )?;
                    if s_end > end {
                        break;
                    }
                    seg += 1;
                }
                ChunkData::Bytes(buf)
            }
        };
        pipe.push(ChunkJob { node, index, data })?;
        index += 1;
    }
    Ok(())
}

/// Fills `buf` from the member's data (file offset `at` of `size` bytes, for messages).
fn read_exact<R: Read>(tar: &mut TarReader<R>, buf: &mut [u8], at: u64, size: u64) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match tar.read_some(&mut buf[got..]) {
            Ok(0) => {
                let e = std::io::Error::other("the member's data ends before its declared size");
                return Err(BuildError::Io { path: "".into(), cause: e });
            }
            Ok(n) => got += n,
            Err(TarError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let e = std::io::Error::new(
                    e.kind(),
                    format!(
                        "layer ends after {} of the {size} bytes the entry claims",
                        at + got as u64
                    ),
                );
                return Err(BuildError::Io { path: "".into(), cause: e });
            }
            Err(TarError::Io(e)) => return Err(BuildError::Io { path: "".into(), cause: e }),
            Err(TarError::Header { detail, .. }) => {
                return Err(BuildError::Io {
                    path: "".into(),
                    cause: std::io::Error::other(detail),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::owner_id;

    #[test]
    fn owner_ids_follow_containerd() {
        assert_eq!(owner_id(0, "uid"), Ok(0));
        assert_eq!(owner_id(65534, "uid"), Ok(65534));
        assert_eq!(owner_id(4_294_967_294, "uid"), Ok(4_294_967_294));
        assert_eq!(owner_id(4_294_967_295, "uid"), Ok(0));
        assert_eq!(owner_id(-1, "gid"), Ok(0));
        assert!(owner_id(4_294_967_296, "uid").unwrap_err().contains("uid does not fit 32 bits"));
        assert!(owner_id(-2, "gid").is_err());
    }
}
