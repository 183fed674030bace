//! Lays a [`Tree`] out as an EROFS image and seals it into a bootstrap.
//!
//! Layout (all offsets from the start of the file, `meta_blkaddr` = 0 so a nid is simply
//! `offset / 32`):
//! ```text
//! 0     .. 1024   zero
//! 1024  .. 1152   superblock
//! 1152  ..        device table, one 128-byte slot per blob
//! ..              inodes in breadth-first order (root first), each followed by its inline
//!                 xattrs and then its inline tail (directories, symlinks) or chunk indexes
//! ..              whole blocks of directory and symlink data that did not fit inline
//! ..              Naiad extension, trailer
//! ```
//! Directory and symlink tails go inline whenever inode + xattrs + tail fit in one block
//! (the kernel requires an inline tail not to cross a block boundary); that saves a 4 KiB
//! block per small directory or symlink.

use crate::erofs::*;
use crate::extension::{self, block_checksum, Extension};
use crate::tree::{NodeId, NodeKind, Tree, ROOT};
use crate::{FormatError, Result, BLOCK_SIZE_BITS, BLOCK_SIZE_BYTES};
use std::collections::VecDeque;
use zerocopy::IntoBytes;

/// Most blobs one image may reference (the root nid must fit in 16 bits after the device table).
pub const MAX_BLOBS: usize = 4096;

const BS: u64 = BLOCK_SIZE_BYTES;

struct Entry {
    name: Vec<u8>,
    node: NodeId,
}

/// Per-inode layout decided before serialization.
struct Slot {
    node: NodeId,
    parent: NodeId,
    nid: u64,
    nlink: u32,
    xattrs: Vec<u8>,
    xattr_icount: u16,
    layout: u16,
    size: u64,
    /// For directories: entries sorted by name (with `.` and `..`) and the entry index each
    /// block starts at.
    dir: Vec<Entry>,
    dir_blocks: Vec<usize>,
    /// Whole blocks of data stored in the data area, and where.
    full_blocks: u64,
    raw_blkaddr: u32,
}

/// Writes the bootstrap for `tree`. `ext.block_checksums` is ignored and recomputed.
pub fn write_bootstrap(tree: &Tree, ext: &Extension) -> Result<Vec<u8>> {
    if ext.blobs.len() > MAX_BLOBS {
        return Err(FormatError::invalid(
            "image",
            format!("{} blobs, at most {MAX_BLOBS} allowed", ext.blobs.len()),
        ));
    }
    let chunk_bits = ext.chunk_size.trailing_zeros() as u16 - u16::from(BLOCK_SIZE_BITS);
    let mut slots = collect(tree)?;
    let index_of: std::collections::HashMap<NodeId, usize> =
        slots.iter().enumerate().map(|(i, s)| (s.node, i)).collect();

    // Pass 1: sizes, layouts and places in the metadata area.
    let devt_off = SUPER_OFFSET_BYTES + 128;
    let mut cursor =
        align(devt_off + DEVT_SLOT_SIZE_BYTES * ext.blobs.len() as u64, ISLOT_SIZE_BYTES);
    for slot in slots.iter_mut() {
        let node = &tree.nodes[slot.node];
        let (xattrs, icount) = encode_xattrs(&node.meta.xattrs)?;
        slot.xattrs = xattrs;
        slot.xattr_icount = icount;
        let head = INODE_EXTENDED_SIZE_BYTES + slot.xattrs.len() as u64;
        let mut tail = 0;
        match &node.kind {
            NodeKind::Dir(_) => {
                let (size, blocks) = plan_dir(&slot.dir);
                slot.size = size;
                slot.dir_blocks = blocks;
            }
            NodeKind::Symlink(target) => {
                if target.is_empty() || target.len() >= 4096 || target.contains(&0) {
                    return Err(FormatError::invalid(
                        "symlink",
                        "target must be 1..4095 bytes without NUL",
                    ));
                }
                slot.size = target.len() as u64;
            }
            NodeKind::File(f) => {
                slot.size = f.size;
                let want = f.size.div_ceil(u64::from(ext.chunk_size));
                if f.chunks.len() as u64 != want {
                    return Err(FormatError::invalid(
                        "file",
                        format!(
                            "{} chunk entries for size {}, expected {want}",
                            f.chunks.len(),
                            f.size
                        ),
                    ));
                }
            }
            _ => {}
        }
        let inline_data = matches!(node.kind, NodeKind::Dir(_) | NodeKind::Symlink(_));
        let total = if let NodeKind::File(f) = &node.kind {
            if f.size == 0 {
                slot.layout = LAYOUT_FLAT_PLAIN;
                head
            } else {
                slot.layout = LAYOUT_CHUNK_BASED;
                align(head, CHUNK_INDEX_SIZE_BYTES) + CHUNK_INDEX_SIZE_BYTES * f.chunks.len() as u64
            }
        } else if inline_data && slot.size > 0 {
            tail = slot.size % BS;
            if tail > 0 && head + tail <= BS {
                slot.layout = LAYOUT_FLAT_INLINE;
                slot.full_blocks = slot.size / BS;
                head + tail
            } else {
                slot.layout = LAYOUT_FLAT_PLAIN;
                slot.full_blocks = slot.size.div_ceil(BS);
                tail = 0;
                head
            }
        } else {
            slot.layout = LAYOUT_FLAT_PLAIN;
            head
        };
        // Keep the inode header, and an inline tail with everything before it, in one block.
        let in_block = cursor % BS;
        if in_block + INODE_EXTENDED_SIZE_BYTES > BS || (tail > 0 && in_block + total > BS) {
            cursor = align(cursor, BS);
        }
        slot.nid = cursor / ISLOT_SIZE_BYTES;
        cursor = align(cursor + total, ISLOT_SIZE_BYTES);
    }
    let root_nid = slots[0].nid;
    if root_nid > u64::from(u16::MAX) {
        return Err(FormatError::invalid("image", "root inode does not fit a 16-bit nid"));
    }
    let mut next_block = cursor.div_ceil(BS);
    for slot in slots.iter_mut() {
        if slot.full_blocks > 0 {
            slot.raw_blkaddr = u32::try_from(next_block)
                .map_err(|_| FormatError::invalid("image", "too many blocks"))?;
            next_block += slot.full_blocks;
        } else {
            slot.raw_blkaddr = NULL_ADDR;
        }
    }
    let blocks =
        u32::try_from(next_block).map_err(|_| FormatError::invalid("image", "too many blocks"))?;

    // Pass 2: serialize.
    let mut img = vec![0u8; (next_block * BS) as usize];
    let mut incompat = FEATURE_INCOMPAT_CHUNKED_FILE;
    if !ext.blobs.is_empty() {
        incompat |= FEATURE_INCOMPAT_DEVICE_TABLE;
    }
    let sb = SuperBlock {
        magic: SUPER_MAGIC.into(),
        checksum: 0.into(),
        feature_compat: 0.into(),
        blkszbits: BLOCK_SIZE_BITS,
        sb_extslots: 0,
        root_nid: (root_nid as u16).into(),
        inos: (slots.len() as u64).into(),
        build_time: 0.into(),
        build_time_nsec: 0.into(),
        blocks: blocks.into(),
        meta_blkaddr: 0.into(),
        xattr_blkaddr: 0.into(),
        uuid: [0; 16],
        volume_name: [0; 16],
        feature_incompat: incompat.into(),
        available_compr_algs: 0.into(),
        extra_devices: (ext.blobs.len() as u16).into(),
        devt_slotoff: ((devt_off / DEVT_SLOT_SIZE_BYTES) as u16).into(),
        dirblkbits: 0,
        xattr_prefix_count: 0,
        xattr_prefix_start: 0.into(),
        packed_nid: 0.into(),
        xattr_filter_reserved: 0,
        reserved2: [0; 23],
    };
    put(&mut img, SUPER_OFFSET_BYTES, sb.as_bytes());
    for (i, b) in ext.blobs.iter().enumerate() {
        let mut tag = [0u8; 64];
        tag.copy_from_slice(hex::encode(b.digest).as_bytes());
        let slot = DeviceSlot {
            tag,
            blocks: u32::try_from(b.view_size / BS)
                .map_err(|_| FormatError::invalid("blob", "uncompressed view larger than 16 TiB"))?
                .into(),
            mapped_blkaddr: 0.into(),
            reserved: [0; 56],
        };
        put(&mut img, devt_off + DEVT_SLOT_SIZE_BYTES * i as u64, slot.as_bytes());
    }
    for (ino, slot) in slots.iter().enumerate() {
        let node = &tree.nodes[slot.node];
        let i_u = match &node.kind {
            NodeKind::File(f) if f.size > 0 => u32::from(CHUNK_FORMAT_INDEXES | chunk_bits),
            NodeKind::CharDev { major, minor } | NodeKind::BlockDev { major, minor } => {
                encode_dev(*major, *minor)
            }
            NodeKind::Fifo | NodeKind::Socket => 0,
            _ => slot.raw_blkaddr,
        };
        let inode = InodeExtended {
            i_format: (1 | (slot.layout << 1)).into(),
            i_xattr_icount: slot.xattr_icount.into(),
            i_mode: ((node.kind.type_bits() | (node.meta.perm & 0o7777)) as u16).into(),
            i_reserved: 0.into(),
            i_size: slot.size.into(),
            i_u: i_u.into(),
            i_ino: (ino as u32 + 1).into(),
            i_uid: node.meta.uid.into(),
            i_gid: node.meta.gid.into(),
            i_mtime: (node.meta.mtime as u64).into(),
            i_mtime_nsec: node.meta.mtime_nsec.into(),
            i_nlink: slot.nlink.into(),
            i_reserved2: [0; 16],
        };
        let base = slot.nid * ISLOT_SIZE_BYTES;
        put(&mut img, base, inode.as_bytes());
        put(&mut img, base + INODE_EXTENDED_SIZE_BYTES, &slot.xattrs);
        let after = base + INODE_EXTENDED_SIZE_BYTES + slot.xattrs.len() as u64;
        let data: Vec<u8> = match &node.kind {
            NodeKind::Dir(_) => render_dir(slot, &slots, &index_of, tree),
            NodeKind::Symlink(t) => t.clone(),
            NodeKind::File(f) if f.size > 0 => {
                let mut pos = align(after, CHUNK_INDEX_SIZE_BYTES);
                for c in &f.chunks {
                    let idx = match c {
                        None => ChunkIndex {
                            advise: 0.into(),
                            device_id: 0.into(),
                            blkaddr: NULL_ADDR.into(),
                        },
                        Some(a) => {
                            if a.blob as usize >= ext.blobs.len() || a.view_offset % BS != 0 {
                                return Err(FormatError::invalid(
                                    "file",
                                    "chunk address outside the blob table",
                                ));
                            }
                            let blk = u32::try_from(a.view_offset / BS)
                                .ok()
                                .filter(|b| *b != NULL_ADDR)
                                .ok_or_else(|| {
                                    FormatError::invalid("file", "chunk beyond 16 TiB of view")
                                })?;
                            ChunkIndex {
                                advise: 0.into(),
                                device_id: ((a.blob + 1) as u16).into(),
                                blkaddr: blk.into(),
                            }
                        }
                    };
                    put(&mut img, pos, idx.as_bytes());
                    pos += CHUNK_INDEX_SIZE_BYTES;
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        if !data.is_empty() {
            let whole = (slot.full_blocks * BS).min(data.len() as u64) as usize;
            if slot.full_blocks > 0 {
                put(&mut img, u64::from(slot.raw_blkaddr) * BS, &data[..whole]);
            }
            if slot.layout == LAYOUT_FLAT_INLINE {
                put(&mut img, after, &data[whole..]);
            }
        }
    }

    let mut ext = ext.clone();
    ext.block_checksums = img.chunks(BS as usize).map(block_checksum).collect();
    let ext_bytes = ext.encode();
    let ext_offset = img.len() as u64;
    img.extend_from_slice(&ext_bytes);
    img.extend_from_slice(&extension::encode_trailer(ext_offset, ext_bytes.len() as u64));
    extension::seal(&mut img);
    Ok(img)
}

fn align(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn put(img: &mut [u8], off: u64, bytes: &[u8]) {
    img[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
}

/// Visits the reachable tree breadth first, giving each node one slot (hardlinks share it)
/// and counting links.
fn collect(tree: &Tree) -> Result<Vec<Slot>> {
    let mut slot_of = vec![usize::MAX; tree.nodes.len()];
    let mut slots: Vec<Slot> = Vec::new();
    let mut queue = VecDeque::new();
    let new_slot = |node, parent| Slot {
        node,
        parent,
        nid: 0,
        nlink: 0,
        xattrs: Vec::new(),
        xattr_icount: 0,
        layout: 0,
        size: 0,
        dir: Vec::new(),
        dir_blocks: Vec::new(),
        full_blocks: 0,
        raw_blkaddr: 0,
    };
    if tree.children(ROOT).is_none() {
        return Err(FormatError::invalid("tree", "root is not a directory"));
    }
    slot_of[ROOT] = 0;
    slots.push(new_slot(ROOT, ROOT));
    queue.push_back(ROOT);
    while let Some(dir) = queue.pop_front() {
        let children = tree.children(dir).expect("queued nodes are directories");
        let dir_slot = slot_of[dir];
        let mut entries = Vec::with_capacity(children.len() + 2);
        entries.push(Entry { name: b".".to_vec(), node: dir });
        entries.push(Entry { name: b"..".to_vec(), node: slots[dir_slot].parent });
        let mut subdirs = 0u32;
        for (name, &child) in children {
            validate_name(name)?;
            let Some(node) = tree.nodes.get(child) else {
                return Err(FormatError::invalid(
                    "tree",
                    format!("entry {:?} points to a missing node", String::from_utf8_lossy(name)),
                ));
            };
            let is_dir = matches!(node.kind, NodeKind::Dir(_));
            if slot_of[child] == usize::MAX {
                slot_of[child] = slots.len();
                slots.push(new_slot(child, dir));
                if is_dir {
                    queue.push_back(child);
                }
            } else if is_dir {
                return Err(FormatError::invalid(
                    "tree",
                    format!(
                        "directory {:?} has more than one parent",
                        String::from_utf8_lossy(name)
                    ),
                ));
            }
            if is_dir {
                subdirs += 1;
            } else {
                slots[slot_of[child]].nlink += 1;
            }
            entries.push(Entry { name: name.clone(), node: child });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        slots[dir_slot].nlink = 2 + subdirs;
        slots[dir_slot].dir = entries;
    }
    Ok(slots)
}

fn validate_name(name: &[u8]) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == b"."
        || name == b".."
        || name.contains(&b'/')
        || name.contains(&0)
    {
        return Err(FormatError::invalid(
            "name",
            format!("{:?} is not a valid file name", String::from_utf8_lossy(name)),
        ));
    }
    Ok(())
}

/// Splits sorted entries into directory blocks; returns the directory size and the entry
/// index each block starts at.
fn plan_dir(entries: &[Entry]) -> (u64, Vec<usize>) {
    let mut starts = vec![0usize];
    let mut used = 0u64;
    let mut blocks_before = 0u64;
    for (i, e) in entries.iter().enumerate() {
        let need = DIRENT_SIZE_BYTES + e.name.len() as u64;
        if used + need > BS {
            starts.push(i);
            blocks_before += 1;
            used = 0;
        }
        used += need;
    }
    (blocks_before * BS + used, starts)
}

fn render_dir(
    slot: &Slot,
    slots: &[Slot],
    index_of: &std::collections::HashMap<NodeId, usize>,
    tree: &Tree,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(slot.size as usize);
    for (b, &start) in slot.dir_blocks.iter().enumerate() {
        let end = slot.dir_blocks.get(b + 1).copied().unwrap_or(slot.dir.len());
        let entries = &slot.dir[start..end];
        let block_start = out.len();
        let mut nameoff = DIRENT_SIZE_BYTES * entries.len() as u64;
        for e in entries {
            let target = &slots[index_of[&e.node]];
            let d = Dirent {
                nid: target.nid.into(),
                nameoff: (nameoff as u16).into(),
                file_type: file_type_of_mode(tree.nodes[e.node].kind.type_bits()),
                reserved: 0,
            };
            out.extend_from_slice(d.as_bytes());
            nameoff += e.name.len() as u64;
        }
        for e in entries {
            out.extend_from_slice(&e.name);
        }
        if end < slot.dir.len() {
            out.resize(block_start + BS as usize, 0);
        }
    }
    debug_assert_eq!(out.len() as u64, slot.size);
    out
}

/// Encodes inline xattrs; returns the bytes and `i_xattr_icount`.
fn encode_xattrs(xattrs: &[crate::tree::Xattr]) -> Result<(Vec<u8>, u16)> {
    if xattrs.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let mut out = vec![0u8; 12];
    for x in xattrs {
        let (index, suffix) = split_xattr_name(&x.name)?;
        if x.value.len() > usize::from(u16::MAX) {
            return Err(FormatError::invalid(
                "xattr",
                format!("value of {} is over 64 KiB", String::from_utf8_lossy(&x.name)),
            ));
        }
        let e = XattrEntry {
            e_name_len: suffix.len() as u8,
            e_name_index: index,
            e_value_size: (x.value.len() as u16).into(),
        };
        out.extend_from_slice(e.as_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(&x.value);
        out.resize(align(out.len() as u64, 4) as usize, 0);
    }
    let icount = (out.len() as u64 - 12) / 4 + 1;
    let icount = u16::try_from(icount)
        .map_err(|_| FormatError::invalid("xattr", "xattrs of one inode exceed 256 KiB"))?;
    Ok((out, icount))
}

/// Splits a full xattr name into its EROFS name index and the stored suffix.
pub fn split_xattr_name(name: &[u8]) -> Result<(u8, &[u8])> {
    // Longest prefix first: the posix ACL names are whole names.
    for &(index, prefix) in XATTR_PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            let exact = index == 2 || index == 3;
            if (exact && !rest.is_empty()) || (!exact && rest.is_empty()) || rest.len() > 255 {
                continue;
            }
            return Ok((index, rest));
        }
    }
    Err(FormatError::unsupported(
        "xattr",
        format!(
            "name {:?} is outside the user, trusted, security and posix ACL namespaces",
            String::from_utf8_lossy(name)
        ),
    ))
}
