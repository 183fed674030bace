//! A copy of a bootstrap's EROFS part whose chunk indexes name other devices: the image a
//! lazy mount gives the kernel when the data of a blob lies in several files (the chunk
//! cache keeps one file per frame, each holding its chunks at their view offsets).
//!
//! Block addresses stay what they are (every device is addressed like the blob's view); only
//! each chunk index's device number changes, chosen per chunk by the caller, and the device
//! table is replaced by one slot per new device. The table may need more room than the
//! original has, so the whole original image moves up by whole blocks to make it: with
//! `meta_blkaddr` raised by as much, every nid stays valid, and the only other addresses
//! in the image, the data blocks of directories and long symlinks, move by the same amount.

use crate::bootstrap::{Bootstrap, ChunkSlot};
use crate::erofs::*;
use crate::extension::ChunkRecord;
use crate::{FormatError, Result, BLOCK_SIZE_BYTES};
use zerocopy::{FromBytes, IntoBytes};

/// Where the new device table starts: the first 128-byte slot after the superblock.
const DEVT_OFFSET_BYTES: u64 = SUPER_OFFSET_BYTES + 128;
/// Most devices a table can hold: its slot offset is a 16-bit count of slots, and a chunk
/// index names its device in 16 bits.
pub const MAX_DEVICES: usize =
    (u16::MAX as usize) - (DEVT_OFFSET_BYTES / DEVT_SLOT_SIZE_BYTES) as usize;

/// One device of the remapped image: the tag the kernel shows for it (at most 64 bytes; the
/// path itself is given at mount) and its size in blocks.
#[derive(Clone, Debug)]
pub struct Device {
    pub tag: String,
    pub blocks: u32,
}

/// The EROFS image of `bs` with `devices` as its device table and every stored chunk on the
/// device `device_of` names for its record (1-based, as in chunk indexes).
pub fn remap_devices(
    bs: &Bootstrap,
    devices: &[Device],
    mut device_of: impl FnMut(&ChunkRecord) -> u16,
) -> Result<Vec<u8>> {
    if devices.is_empty() || devices.len() > MAX_DEVICES {
        return Err(FormatError::invalid(
            "device table",
            format!("{} devices (1 to {MAX_DEVICES})", devices.len()),
        ));
    }
    let erofs = &bs.bytes()[..bs.erofs_len() as usize];
    let table_end = DEVT_OFFSET_BYTES + devices.len() as u64 * DEVT_SLOT_SIZE_BYTES;
    let shift_blocks = table_end.div_ceil(BLOCK_SIZE_BYTES);
    let shift = (shift_blocks * BLOCK_SIZE_BYTES) as usize;
    let mut out = vec![0u8; shift + erofs.len()];
    out[shift..].copy_from_slice(erofs);
    let sb_at = SUPER_OFFSET_BYTES as usize;
    let mut sb = SuperBlock::read_from_bytes(&erofs[sb_at..sb_at + 128])
        .map_err(|_| FormatError::invalid("superblock", "unreadable"))?;
    let add = |v: u32| {
        v.checked_add(shift_blocks as u32)
            .ok_or_else(|| FormatError::invalid("superblock", "image too large to move"))
    };
    sb.blocks = add(sb.blocks.get())?.into();
    sb.meta_blkaddr = add(sb.meta_blkaddr.get())?.into();
    if sb.xattr_blkaddr.get() != 0 {
        sb.xattr_blkaddr = add(sb.xattr_blkaddr.get())?.into();
    }
    // No superblock checksum: the kernel would check it over the changed block.
    sb.feature_compat = (sb.feature_compat.get() & !FEATURE_COMPAT_SB_CHKSUM).into();
    sb.feature_incompat = (sb.feature_incompat.get() | FEATURE_INCOMPAT_DEVICE_TABLE).into();
    sb.extra_devices = (devices.len() as u16).into();
    sb.devt_slotoff = ((DEVT_OFFSET_BYTES / DEVT_SLOT_SIZE_BYTES) as u16).into();
    out[sb_at..sb_at + 128].copy_from_slice(sb.as_bytes());
    for (i, d) in devices.iter().enumerate() {
        let mut slot = DeviceSlot {
            tag: [0; 64],
            blocks: d.blocks.into(),
            mapped_blkaddr: 0.into(),
            reserved: [0; 56],
        };
        let tag = d.tag.as_bytes();
        slot.tag[..tag.len().min(64)].copy_from_slice(&tag[..tag.len().min(64)]);
        let at = (DEVT_OFFSET_BYTES + i as u64 * DEVT_SLOT_SIZE_BYTES) as usize;
        out[at..at + DEVT_SLOT_SIZE_BYTES as usize].copy_from_slice(slot.as_bytes());
    }
    let mut seen = std::collections::HashSet::new();
    bs.walk(|_, _, ino| -> Result<()> {
        if !seen.insert(ino.nid) {
            return Ok(()); // a hardlink: patched already
        }
        let inode_at = ino.offset(bs) as usize + shift;
        if (ino.is_dir() || ino.is_symlink()) && !ino.data_blocks().is_empty() {
            let at = inode_at + I_U_OFFSET_BYTES;
            let v = u32::from_le_bytes(out[at..at + 4].try_into().expect("4 bytes"));
            out[at..at + 4].copy_from_slice(&add(v)?.to_le_bytes());
        }
        for index in 0..ino.chunk_count() {
            let ChunkSlot::Data(rec) = bs.chunk(ino, index)? else { continue };
            let dev = device_of(rec);
            if dev == 0 || usize::from(dev) > devices.len() {
                return Err(FormatError::invalid(
                    "device map",
                    format!("nid {} chunk {index}: device {dev} of {}", ino.nid, devices.len()),
                ));
            }
            let at = bs.chunk_index_offset(ino, index) as usize + shift + 2;
            out[at..at + 2].copy_from_slice(&dev.to_le_bytes());
        }
        Ok(())
    })?;
    Ok(out)
}
