//! Reading a bootstrap: the EROFS structures and the Naiad extension, from untrusted bytes.
//!
//! [`Bootstrap::open`] checks the trailer's digest first, so a bootstrap that was corrupted
//! in storage or in transit is refused before anything else is read. Every accessor still
//! bounds-checks what it reads, so a bootstrap whose digest was recomputed by an attacker can
//! make these functions return errors but never panic, loop forever or allocate without bound.

use crate::erofs::*;
use crate::error::slice;
use crate::extension::{self, ChunkRecord, Extension};
use crate::{FormatError, Result, BLOCK_SIZE_BITS, BLOCK_SIZE_BYTES};
use std::collections::HashSet;
use zerocopy::FromBytes;

const BS: u64 = BLOCK_SIZE_BYTES;

/// A parsed bootstrap. Holds the bytes; everything else is read from them on demand.
#[derive(Debug)]
pub struct Bootstrap {
    bytes: Vec<u8>,
    /// Length of the EROFS area (`sb.blocks * 4096`).
    erofs_len: u64,
    meta_base: u64,
    root_nid: u64,
    ext: Extension,
}

/// A decoded inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub nid: u64,
    /// Type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub nlink: u32,
    /// Sequential inode number stored in the inode.
    pub ino: u32,
    layout: u16,
    i_u: u32,
    /// Bytes taken by the inode header itself (32 or 64).
    header_size: u64,
    xattr_size: u64,
}

impl Inode {
    /// The `S_IFMT` bits.
    pub fn type_bits(&self) -> u32 {
        self.mode & 0o170000
    }
    pub fn is_dir(&self) -> bool {
        self.type_bits() == 0o040000
    }
    pub fn is_reg(&self) -> bool {
        self.type_bits() == 0o100000
    }
    pub fn is_symlink(&self) -> bool {
        self.type_bits() == 0o120000
    }
    /// `(major, minor)` for character and block devices.
    pub fn rdev(&self) -> (u32, u32) {
        decode_dev(self.i_u)
    }
    /// Whether the file's data is described by chunk indexes.
    pub fn is_chunk_based(&self) -> bool {
        self.layout == LAYOUT_CHUNK_BASED
    }
    /// Byte offset of the inode in the bootstrap.
    pub fn offset(&self, bs: &Bootstrap) -> u64 {
        bs.meta_base + self.nid * ISLOT_SIZE_BYTES
    }
    /// Bytes of metadata the inode occupies (header, xattrs, inline data or chunk indexes),
    /// as a range of the bootstrap: used to say which inodes a damaged block holds.
    pub fn metadata_range(&self, bs: &Bootstrap) -> std::ops::Range<u64> {
        let start = self.offset(bs);
        let body = start + self.header_size + self.xattr_size;
        let end = match self.layout {
            LAYOUT_FLAT_INLINE => body + self.size % BS,
            LAYOUT_CHUNK_BASED => {
                align8(body) + CHUNK_INDEX_SIZE_BYTES * self.size.div_ceil(self.chunk_size())
            }
            _ => body,
        };
        start..end
    }
    /// Whole blocks of data this inode keeps in the data area (directories, long symlinks).
    pub fn data_blocks(&self) -> std::ops::Range<u64> {
        match self.layout {
            LAYOUT_FLAT_PLAIN if self.size > 0 && !self.is_device_like() => {
                u64::from(self.i_u)..u64::from(self.i_u) + self.size.div_ceil(BS)
            }
            LAYOUT_FLAT_INLINE if self.size >= BS => {
                u64::from(self.i_u)..u64::from(self.i_u) + self.size / BS
            }
            _ => 0..0,
        }
    }
    fn is_device_like(&self) -> bool {
        matches!(self.type_bits(), 0o020000 | 0o060000 | 0o010000 | 0o140000)
    }
    /// Chunk size of a chunk-based file.
    pub fn chunk_size(&self) -> u64 {
        BS << (self.i_u as u16 & CHUNK_FORMAT_BLKBITS_MASK)
    }
    /// Number of chunk index entries of a chunk-based file.
    pub fn chunk_count(&self) -> u64 {
        if self.is_chunk_based() {
            self.size.div_ceil(self.chunk_size())
        } else {
            0
        }
    }
}

fn align8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub nid: u64,
    pub file_type: u8,
}

/// Where chunk `index` of a file lives.
#[derive(Clone, Copy, Debug)]
pub enum ChunkSlot<'a> {
    /// A hole: reads as zeros.
    Hole,
    /// Stored chunk: its record in the extension.
    Data(&'a ChunkRecord),
}

impl Bootstrap {
    /// Parses a bootstrap after checking its digest.
    pub fn open(bytes: Vec<u8>) -> Result<Self> {
        extension::verify_seal(&bytes)?;
        Self::open_unverified(bytes)
    }

    /// Parses a bootstrap without checking its digest (for `check`, which reports the digest
    /// separately and then looks for the damage, and for fuzzing).
    pub fn open_unverified(bytes: Vec<u8>) -> Result<Self> {
        let trailer = extension::decode_trailer(&bytes)?;
        let ext_bytes = slice(&bytes, trailer.ext_offset, trailer.ext_size, "extension")?;
        let ext = Extension::decode(ext_bytes)?;
        let sb_bytes = slice(&bytes, SUPER_OFFSET_BYTES, 128, "superblock")?;
        let sb = SuperBlock::read_from_bytes(sb_bytes)
            .map_err(|_| FormatError::invalid("superblock", "unreadable"))?;
        if sb.magic.get() != SUPER_MAGIC {
            return Err(FormatError::BadMagic { what: "superblock" });
        }
        if sb.blkszbits != BLOCK_SIZE_BITS {
            return Err(FormatError::unsupported("block size", format!("2^{}", sb.blkszbits)));
        }
        let known = FEATURE_INCOMPAT_CHUNKED_FILE
            | FEATURE_INCOMPAT_DEVICE_TABLE
            | FEATURE_INCOMPAT_ZERO_PADDING;
        let incompat = sb.feature_incompat.get();
        if incompat & !known != 0 {
            return Err(FormatError::unsupported(
                "EROFS features",
                format!("{:#x}", incompat & !known),
            ));
        }
        let erofs_len = u64::from(sb.blocks.get()) * BS;
        if erofs_len > trailer.ext_offset || erofs_len < BS {
            return Err(FormatError::invalid(
                "superblock",
                format!("{} blocks do not fit before the extension", sb.blocks.get()),
            ));
        }
        let meta_base = u64::from(sb.meta_blkaddr.get()) * BS;
        if meta_base >= erofs_len {
            return Err(FormatError::invalid("superblock", "metadata area outside the image"));
        }
        // Device table: one slot per blob, tags must name the blob table's digests.
        let ndev = if incompat & FEATURE_INCOMPAT_DEVICE_TABLE != 0 {
            usize::from(sb.extra_devices.get())
        } else {
            0
        };
        if ndev != ext.blobs.len() {
            return Err(FormatError::invalid(
                "device table",
                format!("{ndev} devices but {} blobs", ext.blobs.len()),
            ));
        }
        let devt = u64::from(sb.devt_slotoff.get()) * DEVT_SLOT_SIZE_BYTES;
        for (i, blob) in ext.blobs.iter().enumerate() {
            let raw = slice(
                &bytes[..erofs_len as usize],
                devt + i as u64 * DEVT_SLOT_SIZE_BYTES,
                DEVT_SLOT_SIZE_BYTES,
                "device table",
            )?;
            let slot = DeviceSlot::read_from_bytes(raw)
                .map_err(|_| FormatError::invalid("device table", "unreadable"))?;
            if slot.tag[..] != hex::encode(blob.digest).as_bytes()[..]
                || u64::from(slot.blocks.get()) * BS != blob.view_size
            {
                return Err(FormatError::invalid(
                    "device table",
                    format!("device {} does not match blob {}", i + 1, hex::encode(blob.digest)),
                ));
            }
        }
        if ext.block_checksums.len() as u64 != erofs_len / BS {
            return Err(FormatError::invalid(
                "extension",
                "block checksum count does not match the image size",
            ));
        }
        let bs =
            Bootstrap { bytes, erofs_len, meta_base, root_nid: u64::from(sb.root_nid.get()), ext };
        let root = bs.inode(bs.root_nid)?;
        if !root.is_dir() {
            return Err(FormatError::invalid("root inode", "not a directory"));
        }
        Ok(bs)
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Length of the EROFS part of the bootstrap.
    pub fn erofs_len(&self) -> u64 {
        self.erofs_len
    }
    /// The Naiad extension.
    pub fn extension(&self) -> &Extension {
        &self.ext
    }
    /// nid of the root directory.
    pub fn root_nid(&self) -> u64 {
        self.root_nid
    }

    /// Indexes of the EROFS blocks whose stored checksum does not match their bytes.
    pub fn damaged_blocks(&self) -> Vec<u64> {
        self.bytes[..self.erofs_len as usize]
            .chunks(BS as usize)
            .zip(&self.ext.block_checksums)
            .enumerate()
            .filter(|(_, (b, &sum))| extension::block_checksum(b) != sum)
            .map(|(i, _)| i as u64)
            .collect()
    }

    fn erofs(&self) -> &[u8] {
        &self.bytes[..self.erofs_len as usize]
    }

    /// Reads and validates the inode at `nid`.
    pub fn inode(&self, nid: u64) -> Result<Inode> {
        let off = nid
            .checked_mul(ISLOT_SIZE_BYTES)
            .and_then(|o| o.checked_add(self.meta_base))
            .ok_or_else(|| FormatError::invalid("inode", format!("nid {nid} out of range")))?;
        let bad = |d: String| FormatError::invalid("inode", format!("nid {nid}: {d}"));
        let head = slice(self.erofs(), off, 2, "inode")?;
        let format = u16::from_le_bytes([head[0], head[1]]);
        let layout = (format >> 1) & 0x7;
        let mut ino = if format & 1 == 1 {
            let raw = slice(self.erofs(), off, INODE_EXTENDED_SIZE_BYTES, "inode")?;
            let d = InodeExtended::read_from_bytes(raw).map_err(|_| bad("unreadable".into()))?;
            Inode {
                nid,
                mode: u32::from(d.i_mode.get()),
                uid: d.i_uid.get(),
                gid: d.i_gid.get(),
                size: d.i_size.get(),
                mtime: d.i_mtime.get() as i64,
                mtime_nsec: d.i_mtime_nsec.get(),
                nlink: d.i_nlink.get(),
                ino: d.i_ino.get(),
                layout,
                i_u: d.i_u.get(),
                header_size: INODE_EXTENDED_SIZE_BYTES,
                xattr_size: xattr_ibody_size(d.i_xattr_icount.get()),
            }
        } else {
            let raw = slice(self.erofs(), off, INODE_COMPACT_SIZE_BYTES, "inode")?;
            let d = InodeCompact::read_from_bytes(raw).map_err(|_| bad("unreadable".into()))?;
            Inode {
                nid,
                mode: u32::from(d.i_mode.get()),
                uid: u32::from(d.i_uid.get()),
                gid: u32::from(d.i_gid.get()),
                size: u64::from(d.i_size.get()),
                mtime: i64::from(d.i_mtime.get()),
                mtime_nsec: 0,
                nlink: u32::from(d.i_nlink.get()),
                ino: d.i_ino.get(),
                layout,
                i_u: d.i_u.get(),
                header_size: INODE_COMPACT_SIZE_BYTES,
                xattr_size: xattr_ibody_size(d.i_xattr_icount.get()),
            }
        };
        if format & !0xF != 0 {
            return Err(bad(format!("unknown i_format bits {format:#x}")));
        }
        if ino.mtime_nsec >= 1_000_000_000 {
            return Err(bad("mtime nanoseconds out of range".into()));
        }
        if ino.uid == u32::MAX || ino.gid == u32::MAX {
            return Err(bad("uid or gid 4294967295 is not a valid id".into()));
        }
        let ty = ino.type_bits();
        match (ty, layout) {
            (0o100000, LAYOUT_FLAT_PLAIN) if ino.size == 0 => {}
            (0o100000, LAYOUT_CHUNK_BASED) => {
                let fmt = ino.i_u as u16;
                if fmt & CHUNK_FORMAT_INDEXES == 0
                    || fmt & !(CHUNK_FORMAT_INDEXES | CHUNK_FORMAT_BLKBITS_MASK) != 0
                {
                    return Err(bad(format!("unsupported chunk format {fmt:#x}")));
                }
                if fmt & CHUNK_FORMAT_BLKBITS_MASK > 12 {
                    return Err(bad("chunk size over 16 MiB".into()));
                }
            }
            (0o040000 | 0o120000, LAYOUT_FLAT_PLAIN | LAYOUT_FLAT_INLINE) => {
                if ino.size > self.erofs_len {
                    return Err(bad(format!("size {} larger than the image", ino.size)));
                }
                if ty == 0o120000 && (ino.size == 0 || ino.size >= 4096) {
                    return Err(bad(format!("symlink length {}", ino.size)));
                }
                if ty == 0o040000 && ino.size == 0 {
                    return Err(bad("empty directory data".into()));
                }
            }
            (0o020000 | 0o060000 | 0o010000 | 0o140000, LAYOUT_FLAT_PLAIN) if ino.size == 0 => {
                if matches!(ty, 0o010000 | 0o140000) {
                    ino.i_u = 0;
                }
            }
            (0o100000, _) => {
                return Err(bad(format!("regular file layout {layout} with size {}", ino.size)))
            }
            (0o040000 | 0o120000 | 0o020000 | 0o060000 | 0o010000 | 0o140000, _) => {
                return Err(bad(format!("layout {layout} not valid for mode {:o}", ino.mode)))
            }
            _ => return Err(bad(format!("unknown file type in mode {:o}", ino.mode))),
        }
        let r = ino.metadata_range(self);
        if r.end > self.erofs_len {
            return Err(bad("inode body extends past the image".into()));
        }
        if layout == LAYOUT_FLAT_INLINE && ino.size % BS != 0 {
            let tail_start = off + ino.header_size + ino.xattr_size;
            if tail_start % BS + ino.size % BS > BS {
                return Err(bad("inline data crosses a block boundary".into()));
            }
        }
        let blocks = ino.data_blocks();
        if blocks.end > self.erofs_len / BS || (layout == LAYOUT_FLAT_INLINE && ino.size % BS == 0)
        {
            return Err(bad("data blocks outside the image".into()));
        }
        Ok(ino)
    }

    /// The whole data of a directory or symlink (bounded by the image size).
    pub fn flat_data(&self, ino: &Inode) -> Result<Vec<u8>> {
        if !(ino.is_dir() || ino.is_symlink()) {
            return Err(FormatError::invalid(
                "inode",
                format!("nid {}: not a directory or symlink", ino.nid),
            ));
        }
        let mut out = Vec::with_capacity(ino.size as usize);
        let blocks = ino.data_blocks();
        if !blocks.is_empty() {
            let whole = (blocks.end - blocks.start) * BS;
            let take = whole.min(ino.size);
            out.extend_from_slice(slice(self.erofs(), blocks.start * BS, take, "file data")?);
        }
        if ino.layout == LAYOUT_FLAT_INLINE {
            let tail = ino.size % BS;
            let at = ino.offset(self) + ino.header_size + ino.xattr_size;
            out.extend_from_slice(slice(self.erofs(), at, tail, "inline data")?);
        }
        if out.len() as u64 != ino.size {
            return Err(FormatError::invalid(
                "inode",
                format!("nid {}: data shorter than its size", ino.nid),
            ));
        }
        Ok(out)
    }

    /// The target of a symlink.
    pub fn symlink_target(&self, ino: &Inode) -> Result<Vec<u8>> {
        let t = self.flat_data(ino)?;
        if t.contains(&0) {
            return Err(FormatError::invalid(
                "symlink",
                format!("nid {}: target holds NUL", ino.nid),
            ));
        }
        Ok(t)
    }

    /// The entries of a directory, including `.` and `..`, in on-disk (sorted) order.
    pub fn dir_entries(&self, ino: &Inode) -> Result<Vec<DirEntry>> {
        if !ino.is_dir() {
            return Err(FormatError::invalid("inode", format!("nid {}: not a directory", ino.nid)));
        }
        let data = self.flat_data(ino)?;
        let bad = |d: String| FormatError::invalid("directory", format!("nid {}: {d}", ino.nid));
        let mut out: Vec<DirEntry> = Vec::new();
        for (bi, block) in data.chunks(BS as usize).enumerate() {
            let first = Dirent::read_from_prefix(block)
                .map_err(|_| bad(format!("block {bi} too short")))?
                .0;
            let n0 = u64::from(first.nameoff.get());
            if n0 < DIRENT_SIZE_BYTES || n0 % DIRENT_SIZE_BYTES != 0 || n0 >= block.len() as u64 {
                return Err(bad(format!("block {bi}: bad first name offset {n0}")));
            }
            let count = (n0 / DIRENT_SIZE_BYTES) as usize;
            for i in 0..count {
                let d = Dirent::read_from_prefix(&block[i * 12..])
                    .map_err(|_| bad("short entry".into()))?
                    .0;
                let start = u64::from(d.nameoff.get());
                let end = if i + 1 < count {
                    u64::from(
                        Dirent::read_from_prefix(&block[(i + 1) * 12..])
                            .map_err(|_| bad("short entry".into()))?
                            .0
                            .nameoff
                            .get(),
                    )
                } else {
                    let rest = &block[start.min(block.len() as u64) as usize..];
                    start + rest.iter().position(|&c| c == 0).unwrap_or(rest.len()) as u64
                };
                if start < n0 || end <= start || end > block.len() as u64 {
                    return Err(bad(format!("block {bi} entry {i}: name offsets out of order")));
                }
                let name = &block[start as usize..end as usize];
                if name.len() > MAX_NAME_LEN || name.contains(&b'/') || name.contains(&0) {
                    return Err(bad(format!(
                        "entry {:?}: invalid name",
                        String::from_utf8_lossy(name)
                    )));
                }
                if let Some(prev) = out.last() {
                    if prev.name.as_slice() >= name {
                        return Err(bad(format!(
                            "entry {:?}: names not sorted or duplicated",
                            String::from_utf8_lossy(name)
                        )));
                    }
                }
                out.push(DirEntry {
                    name: name.to_vec(),
                    nid: d.nid.get(),
                    file_type: d.file_type,
                });
            }
        }
        let dot = out.iter().find(|e| e.name == b".");
        if dot.map(|e| e.nid) != Some(ino.nid) || !out.iter().any(|e| e.name == b"..") {
            return Err(bad("missing or wrong '.' / '..' entries".into()));
        }
        Ok(out)
    }

    /// The inode's extended attributes as `(full name, value)`, in on-disk order.
    pub fn xattrs(&self, ino: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if ino.xattr_size == 0 {
            return Ok(Vec::new());
        }
        let at = ino.offset(self) + ino.header_size;
        let area = slice(self.erofs(), at, ino.xattr_size, "xattrs")?;
        let bad = |d: &str| FormatError::invalid("xattrs", format!("nid {}: {d}", ino.nid));
        let hdr = XattrIbodyHeader::read_from_prefix(area).map_err(|_| bad("short header"))?.0;
        if hdr.h_shared_count != 0 {
            return Err(FormatError::unsupported(
                "xattrs",
                format!("nid {}: shared xattrs", ino.nid),
            ));
        }
        let mut pos = 12usize;
        let mut out = Vec::new();
        while pos < area.len() {
            let e = XattrEntry::read_from_prefix(&area[pos..]).map_err(|_| bad("short entry"))?.0;
            let name_len = usize::from(e.e_name_len);
            let val_len = usize::from(e.e_value_size.get());
            let body = slice(area, pos as u64 + 4, (name_len + val_len) as u64, "xattr entry")?;
            let prefix = XATTR_PREFIXES
                .iter()
                .find(|(i, _)| *i == e.e_name_index)
                .ok_or_else(|| bad("unknown name index"))?
                .1;
            let mut name = prefix.to_vec();
            name.extend_from_slice(&body[..name_len]);
            if name_len == 0 && !matches!(e.e_name_index, 2 | 3) {
                return Err(bad("empty name"));
            }
            out.push((name, body[name_len..].to_vec()));
            pos += (4 + name_len + val_len).div_ceil(4) * 4;
        }
        Ok(out)
    }

    /// Where chunk `index` of a chunk-based file lives. Checks the device, the address and
    /// that the chunk record covers exactly this part of the file.
    pub fn chunk(&self, ino: &Inode, index: u64) -> Result<ChunkSlot<'_>> {
        let bad = |d: String| {
            FormatError::invalid("chunk index", format!("nid {} chunk {index}: {d}", ino.nid))
        };
        if !ino.is_chunk_based() || index >= ino.chunk_count() {
            return Err(bad("no such chunk".into()));
        }
        let at = self.chunk_index_offset(ino, index);
        let raw = ChunkIndex::read_from_bytes(slice(self.erofs(), at, 8, "chunk index")?)
            .map_err(|_| bad("unreadable".into()))?;
        let blk = raw.blkaddr.get();
        if blk == NULL_ADDR {
            return Ok(ChunkSlot::Hole);
        }
        let dev = raw.device_id.get();
        if dev == 0 || usize::from(dev) > self.ext.blobs.len() {
            return Err(bad(format!("device {dev} not in the device table")));
        }
        let blob = u32::from(dev - 1);
        let view_offset = u64::from(blk) * BS;
        let rec = self
            .ext
            .find_chunk(blob, view_offset)
            .ok_or_else(|| bad(format!("no chunk record at blob {blob} offset {view_offset}")))?;
        let cs = ino.chunk_size();
        let want = (ino.size - index * cs).min(cs);
        if u64::from(rec.size) != want {
            return Err(bad(format!("chunk record holds {} bytes, file needs {want}", rec.size)));
        }
        Ok(ChunkSlot::Data(rec))
    }

    /// Byte offset of chunk index `index` of a chunk-based file (unchecked: see
    /// [`Bootstrap::chunk`]).
    pub fn chunk_index_offset(&self, ino: &Inode, index: u64) -> u64 {
        align8(ino.offset(self) + ino.header_size + ino.xattr_size) + index * CHUNK_INDEX_SIZE_BYTES
    }

    /// Visits every entry of the tree depth first in sorted order (the root first, with an
    /// empty path; hardlinked files once per name). Detects directory cycles and directories
    /// reachable twice. `visit` gets the path (`/a/b`), the entry's type from the directory
    /// and the inode. Errors of the walk itself name the path; errors of `visit` pass through.
    pub fn walk<E: From<FormatError>>(
        &self,
        mut visit: impl FnMut(&[u8], u8, &Inode) -> Result<(), E>,
    ) -> Result<(), E> {
        let root = self.inode(self.root_nid)?;
        visit(b"", file_type::DIR, &root)?;
        let mut seen_dirs: HashSet<u64> = HashSet::from([self.root_nid]);
        let mut stack: Vec<(Vec<u8>, u64)> = vec![(Vec::new(), self.root_nid)];
        while let Some((path, nid)) = stack.pop() {
            let dir = self.inode(nid).map_err(|e| e.at_path(&path))?;
            let entries = self.dir_entries(&dir).map_err(|e| e.at_path(&path))?;
            let mut subdirs = Vec::new();
            for e in entries {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let mut p = path.clone();
                p.push(b'/');
                p.extend_from_slice(&e.name);
                let child = self.inode(e.nid).map_err(|err| err.at_path(&p))?;
                if file_type_of_mode(child.mode) != e.file_type {
                    return Err(FormatError::invalid(
                        "directory entry",
                        "file type differs from the inode's",
                    )
                    .at_path(&p)
                    .into());
                }
                visit(&p, e.file_type, &child)?;
                if child.is_dir() {
                    if !seen_dirs.insert(e.nid) {
                        return Err(FormatError::invalid(
                            "directory",
                            "reached twice (cycle or directory hardlink)",
                        )
                        .at_path(&p)
                        .into());
                    }
                    subdirs.push((p, e.nid));
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Checks everything of the image the kernel's EROFS parser will read against what
    /// Naiad's writer emits, beyond what [`Bootstrap::open`] checks: the superblock fields
    /// the writer leaves zero (compat features, extension slots, shared xattr area, xattr
    /// prefixes, packed inode, directory block bits, compression algorithms), and every
    /// reachable inode with its directory entries, inline xattrs, symlink target and chunk
    /// indexes (a layout Naiad does not write, compressed for one, is refused here rather
    /// than reaching the kernel). Run before any mount; errors name the path.
    pub fn validate(&self) -> Result<()> {
        let sb = SuperBlock::read_from_bytes(&self.bytes[SUPER_OFFSET_BYTES as usize..][..128])
            .map_err(|_| FormatError::invalid("superblock", "unreadable"))?;
        let zero = [
            ("feature_compat", u64::from(sb.feature_compat.get())),
            ("sb_extslots", u64::from(sb.sb_extslots)),
            ("xattr_blkaddr", u64::from(sb.xattr_blkaddr.get())),
            ("available_compr_algs", u64::from(sb.available_compr_algs.get())),
            ("dirblkbits", u64::from(sb.dirblkbits)),
            ("xattr_prefix_count", u64::from(sb.xattr_prefix_count)),
            ("xattr_prefix_start", u64::from(sb.xattr_prefix_start.get())),
            ("packed_nid", sb.packed_nid.get()),
        ];
        if let Some((field, v)) = zero.iter().find(|(_, v)| *v != 0) {
            return Err(FormatError::invalid(
                "superblock",
                format!("{field} is {v:#x}; Naiad images have 0 there"),
            ));
        }
        // An inode is checked once, however many names it has: a hardlinked file of many
        // chunks must not cost its chunk count times its names.
        let mut seen = HashSet::new();
        self.walk(|path, _, ino| -> Result<()> {
            if !seen.insert(ino.nid) {
                return Ok(());
            }
            let at = |e: FormatError| e.at_path(path);
            self.xattrs(ino).map_err(at)?;
            if ino.is_symlink() {
                self.symlink_target(ino).map_err(at)?;
            } else if ino.is_reg() && ino.is_chunk_based() {
                for index in 0..ino.chunk_count() {
                    self.chunk(ino, index).map_err(at)?;
                }
            }
            Ok(())
        })
    }

    /// Looks a path (`/a/b`) up without following symlinks.
    pub fn lookup(&self, path: &[u8]) -> Result<Inode> {
        let mut cur = self.inode(self.root_nid)?;
        for comp in path.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
            if !cur.is_dir() {
                return Err(
                    FormatError::invalid("path", "a component is not a directory").at_path(path)
                );
            }
            let entries = self.dir_entries(&cur)?;
            let e = entries
                .binary_search_by(|e| e.name.as_slice().cmp(comp))
                .map_err(|_| FormatError::invalid("path", "no such entry").at_path(path))?;
            cur = self.inode(entries[e].nid)?;
        }
        Ok(cur)
    }
}
