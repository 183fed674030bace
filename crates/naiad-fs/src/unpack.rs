//! Writing an image's tree out: to a directory (every entry type and all metadata, sparse
//! holes kept) or to a tar stream (PAX records for nanosecond mtimes and xattrs).
//!
//! The output directory must be new or empty. Entries are created with `O_EXCL` and
//! `O_NOFOLLOW` semantics under directories this code made itself, so a hostile image cannot
//! make it write outside the output directory.

use crate::{FsError, Result};
use naiad_format::bootstrap::{Bootstrap, ChunkSlot, Inode};
use naiad_storage::blob_store::{BlobDirs, ChunkReader};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Counts of what an unpack wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UnpackSummary {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Opens the chunk reader for an image's blobs.
pub fn chunk_reader(bs: &Bootstrap, dirs: &BlobDirs) -> Result<ChunkReader> {
    let ext = bs.extension();
    let digests: Vec<_> = ext.blobs.iter().map(|b| b.digest).collect();
    Ok(ChunkReader::open(dirs, &digests, ext.digester)?)
}

/// Calls `each(offset, data)` for every stored chunk of a regular file, in order; holes are
/// skipped. Every chunk is verified before it is handed out.
pub fn for_each_chunk(
    bs: &Bootstrap,
    reader: &mut ChunkReader,
    ino: &Inode,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let cs = ino.chunk_size();
    for i in 0..ino.chunk_count() {
        if let ChunkSlot::Data(rec) = bs.chunk(ino, i)? {
            let data = reader.chunk(rec)?;
            each(i * cs, data)?;
        }
    }
    Ok(())
}

const SPARSE_BLOCK_BYTES: usize = 4096;

/// Writes `data` at `off`, leaving 4 KiB blocks of zeros as holes.
fn write_sparse(f: &File, off: u64, data: &[u8], path: &Path) -> Result<()> {
    let zero = [0u8; SPARSE_BLOCK_BYTES];
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + SPARSE_BLOCK_BYTES).min(data.len());
        let is_zero = end - pos == SPARSE_BLOCK_BYTES && data[pos..end] == zero;
        match (is_zero, start) {
            (true, Some(s)) => {
                f.write_all_at(&data[s..pos], off + s as u64).map_err(FsError::io(path))?;
                start = None;
            }
            (false, None) => start = Some(pos),
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = start {
        f.write_all_at(&data[s..], off + s as u64).map_err(FsError::io(path))?;
    }
    Ok(())
}

fn join(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel.strip_prefix(b"/").unwrap_or(rel)))
}

/// Unpacks the image into `out`, which must not exist or be empty.
pub fn unpack_to_dir(bs: &Bootstrap, dirs: &BlobDirs, out: &Path) -> Result<UnpackSummary> {
    match std::fs::read_dir(out) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(FsError::Invalid(format!("{} is not empty", out.display())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(FsError::io(out))?
        }
        Err(e) => return Err(FsError::Io { path: out.into(), cause: e }),
    }
    let mut reader = chunk_reader(bs, dirs)?;
    let mut first_path: HashMap<u64, PathBuf> = HashMap::new();
    let mut dirs_meta: Vec<(PathBuf, Inode)> = Vec::new();
    let mut sum = UnpackSummary::default();
    bs.walk(|rel, _ty, ino| -> Result<()> {
        sum.entries += 1;
        let path = join(out, rel);
        if ino.is_dir() {
            if !rel.is_empty() {
                std::fs::create_dir(&path).map_err(FsError::io(&path))?;
            }
            dirs_meta.push((path, ino.clone()));
            return Ok(());
        }
        if let Some(first) = first_path.get(&ino.nid) {
            std::fs::hard_link(first, &path).map_err(FsError::io(&path))?;
            return Ok(());
        }
        match ino.type_bits() {
            0o100000 => {
                sum.files += 1;
                sum.bytes += ino.size;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags_nofollow()
                    .open(&path)
                    .map_err(FsError::io(&path))?;
                for_each_chunk(bs, &mut reader, ino, |off, data| {
                    write_sparse(&f, off, data, &path)
                })
                .map_err(|e| e.at(rel))?;
                f.set_len(ino.size).map_err(FsError::io(&path))?;
            }
            0o120000 => {
                let target = bs.symlink_target(ino)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(FsError::io(&path))?;
            }
            ty => {
                let ft = match ty {
                    0o020000 => FileType::CharacterDevice,
                    0o060000 => FileType::BlockDevice,
                    0o010000 => FileType::Fifo,
                    _ => FileType::Socket,
                };
                let (major, minor) = ino.rdev();
                let dev = if matches!(ft, FileType::CharacterDevice | FileType::BlockDevice) {
                    rustix::fs::makedev(major, minor)
                } else {
                    0
                };
                rustix::fs::mknodat(CWD, &path, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| FsError::Io { path: path.clone(), cause: e.into() })?;
            }
        }
        apply_meta(bs, &path, ino)?;
        if ino.nlink > 1 {
            first_path.insert(ino.nid, path);
        }
        Ok(())
    })?;
    // Directories last, deepest first, so that creating children does not change their mtime.
    for (path, ino) in dirs_meta.iter().rev() {
        apply_meta(bs, path, ino)?;
    }
    Ok(sum)
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
    }
}

/// Ownership, then permissions (chown clears setuid), then xattrs (chown clears
/// `security.capability`), then the mtime; never following a symlink.
fn apply_meta(bs: &Bootstrap, path: &Path, ino: &Inode) -> Result<()> {
    let io = |e: rustix::io::Errno| FsError::Io { path: path.into(), cause: e.into() };
    rustix::fs::chownat(
        CWD,
        path,
        Some(rustix::fs::Uid::from_raw(ino.uid)),
        Some(rustix::fs::Gid::from_raw(ino.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io)?;
    if !ino.is_symlink() {
        rustix::fs::chmodat(CWD, path, Mode::from_raw_mode(ino.mode & 0o7777), AtFlags::empty())
            .map_err(io)?;
    }
    for (name, value) in bs.xattrs(ino)? {
        xattr::set(path, OsStr::from_bytes(&name), &value).map_err(FsError::io(path))?;
    }
    let t = Timespec { tv_sec: ino.mtime, tv_nsec: i64::from(ino.mtime_nsec) as _ };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps { last_access: t, last_modification: t },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io)?;
    Ok(())
}

/// Writes the image as a tar stream to `w`: GNU headers, PAX records for nanosecond mtimes
/// and `SCHILY.xattr.*`, hardlinks as link entries.
pub fn unpack_to_tar(bs: &Bootstrap, dirs: &BlobDirs, w: impl Write) -> Result<UnpackSummary> {
    let mut reader = chunk_reader(bs, dirs)?;
    let mut tar = tar::Builder::new(w);
    tar.follow_symlinks(false);
    let mut first_path: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut sum = UnpackSummary::default();
    let tio = |e: std::io::Error| FsError::Io { path: "tar output".into(), cause: e };
    bs.walk(|rel, _ty, ino| -> Result<()> {
        sum.entries += 1;
        let mut name = if rel.is_empty() { b".".to_vec() } else { [b".", rel].concat() };
        let mut pax: Vec<(String, Vec<u8>)> =
            vec![("mtime".into(), format_pax_time(ino.mtime, ino.mtime_nsec).into_bytes())];
        for (k, v) in bs.xattrs(ino)? {
            pax.push((format!("SCHILY.xattr.{}", String::from_utf8_lossy(&k)), v));
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(ino.mode & 0o7777);
        h.set_uid(u64::from(ino.uid));
        h.set_gid(u64::from(ino.gid));
        h.set_mtime(ino.mtime.max(0) as u64);
        h.set_size(0);
        let mut link_target: Option<Vec<u8>> = None;
        if !ino.is_dir() {
            if let Some(first) = first_path.get(&ino.nid) {
                h.set_entry_type(tar::EntryType::Link);
                link_target = Some(first.clone());
            } else if ino.nlink > 1 {
                first_path.insert(ino.nid, name.clone());
            }
        }
        if link_target.is_none() {
            h.set_entry_type(match ino.type_bits() {
                0o040000 => tar::EntryType::Directory,
                0o100000 => tar::EntryType::Regular,
                0o120000 => tar::EntryType::Symlink,
                0o020000 => tar::EntryType::Char,
                0o060000 => tar::EntryType::Block,
                0o010000 => tar::EntryType::Fifo,
                _ => {
                    // tar has no socket type; like GNU tar, sockets are left out.
                    return Ok(());
                }
            });
        }
        if ino.is_symlink() && link_target.is_none() {
            link_target = Some(bs.symlink_target(ino)?);
        }
        if matches!(ino.type_bits(), 0o020000 | 0o060000) && link_target.is_none() {
            let (ma, mi) = ino.rdev();
            h.set_device_major(ma).map_err(tio)?;
            h.set_device_minor(mi).map_err(tio)?;
        }
        if ino.is_dir() && !rel.is_empty() {
            name.push(b'/');
        }
        let pax_refs: Vec<(&str, &[u8])> =
            pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        tar.append_pax_extensions(pax_refs).map_err(tio)?;
        let path = Path::new(OsStr::from_bytes(&name));
        if let Some(target) = &link_target {
            tar.append_link(&mut h, path, Path::new(OsStr::from_bytes(target))).map_err(tio)?;
        } else if ino.is_reg() {
            sum.files += 1;
            sum.bytes += ino.size;
            h.set_size(ino.size);
            let mut data = FileData {
                bs,
                reader: &mut reader,
                ino,
                pos: 0,
                chunk: Vec::new(),
                chunk_start: 0,
            };
            tar.append_data(&mut h, path, &mut data).map_err(|e| match data_error(&e) {
                Some(msg) => FsError::Invalid(msg).at(rel),
                None => tio(e),
            })?;
        } else {
            tar.append_data(&mut h, path, std::io::empty()).map_err(tio)?;
        }
        Ok(())
    })?;
    tar.into_inner().map_err(tio)?.flush().map_err(tio)?;
    Ok(sum)
}

fn data_error(e: &std::io::Error) -> Option<String> {
    e.get_ref().map(|inner| inner.to_string())
}

fn format_pax_time(secs: i64, nsec: u32) -> String {
    if secs >= 0 || nsec == 0 {
        format!("{secs}.{nsec:09}")
    } else {
        // -2 s + 750000000 ns is -1.25 s.
        format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - nsec)
    }
}

/// A regular file's contents as a `Read`, chunk by chunk, holes as zeros.
struct FileData<'a> {
    bs: &'a Bootstrap,
    reader: &'a mut ChunkReader,
    ino: &'a Inode,
    pos: u64,
    chunk: Vec<u8>,
    chunk_start: u64,
}

impl std::io::Read for FileData<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.ino.size {
            return Ok(0);
        }
        let cs = self.ino.chunk_size();
        let idx = self.pos / cs;
        if self.chunk.is_empty() || self.chunk_start != idx * cs {
            let len = (self.ino.size - idx * cs).min(cs) as usize;
            self.chunk.clear();
            match self.bs.chunk(self.ino, idx).map_err(std::io::Error::other)? {
                ChunkSlot::Hole => self.chunk.resize(len, 0),
                ChunkSlot::Data(rec) => self
                    .chunk
                    .extend_from_slice(self.reader.chunk(rec).map_err(std::io::Error::other)?),
            }
            self.chunk_start = idx * cs;
        }
        let within = (self.pos - self.chunk_start) as usize;
        let n = buf.len().min(self.chunk.len() - within);
        buf[..n].copy_from_slice(&self.chunk[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}
