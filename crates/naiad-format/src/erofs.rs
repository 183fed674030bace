//! EROFS on-disk structures, as the Linux kernel (`fs/erofs/erofs_fs.h`) and erofs-utils read
//! them. Only what Naiad writes is modelled: 4 KiB blocks, uncompressed flat and chunk-based
//! inodes, inline xattrs and the device table.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Byte offset of the superblock in the image.
pub const SUPER_OFFSET_BYTES: u64 = 1024;
/// Superblock magic.
pub const SUPER_MAGIC: u32 = 0xE0F5_E1E2;
/// Size of one device table slot.
pub const DEVT_SLOT_SIZE_BYTES: u64 = 128;
/// Inode slots are this many bytes: a nid times this is the inode's offset in the metadata area.
pub const ISLOT_SIZE_BYTES: u64 = 32;
/// Size of a compact inode.
pub const INODE_COMPACT_SIZE_BYTES: u64 = 32;
/// Size of an extended inode.
pub const INODE_EXTENDED_SIZE_BYTES: u64 = 64;
/// Size of one directory entry record (names follow the records).
pub const DIRENT_SIZE_BYTES: u64 = 12;
/// Size of one chunk index entry.
pub const CHUNK_INDEX_SIZE_BYTES: u64 = 8;
/// Block address meaning "no block": a hole in a chunk-based file.
pub const NULL_ADDR: u32 = u32::MAX;
/// Longest name a directory entry may hold.
pub const MAX_NAME_LEN: usize = 255;

/// Incompat feature: chunk-based files.
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x0000_0004;
/// Incompat feature: the device table is present.
pub const FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 0x0000_0008;
/// Incompat feature: zero padding for compressed data (harmless for uncompressed images).
pub const FEATURE_INCOMPAT_ZERO_PADDING: u32 = 0x0000_0001;
/// Compat feature: per-inode mtime in compact inodes.
pub const FEATURE_COMPAT_MTIME: u32 = 0x0000_0002;
/// Feature bit: the superblock carries a CRC32C checksum.
pub const FEATURE_COMPAT_SB_CHKSUM: u32 = 0x0000_0001;
/// Offset of `i_u` (raw block address, rdev or chunk format) in both inode forms.
pub const I_U_OFFSET_BYTES: usize = 16;

/// Data layouts (bits 1..3 of `i_format`).
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
/// Whole blocks at `raw_blkaddr`, tail inline right after the inode and its xattrs.
pub const LAYOUT_FLAT_INLINE: u16 = 2;
/// Data described by chunk indexes.
pub const LAYOUT_CHUNK_BASED: u16 = 4;

/// `chunk_info.format`: mask of the chunk size bits (chunk size = block size << bits).
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x001F;
/// `chunk_info.format`: indexes are 8-byte `ChunkIndex` entries (with a device id).
pub const CHUNK_FORMAT_INDEXES: u16 = 0x0020;

/// Directory entry file types.
pub mod file_type {
    pub const UNKNOWN: u8 = 0;
    pub const REG: u8 = 1;
    pub const DIR: u8 = 2;
    pub const CHRDEV: u8 = 3;
    pub const BLKDEV: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SOCK: u8 = 6;
    pub const SYMLINK: u8 = 7;
}

/// xattr name indexes: the prefix an on-disk xattr name is stored without.
pub const XATTR_PREFIXES: &[(u8, &[u8])] = &[
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (6, b"security."),
];

/// The superblock, at [`SUPER_OFFSET_BYTES`].
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperBlock {
    pub magic: U32,
    pub checksum: U32,
    pub feature_compat: U32,
    pub blkszbits: u8,
    pub sb_extslots: u8,
    pub root_nid: U16,
    pub inos: U64,
    pub build_time: U64,
    pub build_time_nsec: U32,
    pub blocks: U32,
    pub meta_blkaddr: U32,
    pub xattr_blkaddr: U32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: U32,
    pub available_compr_algs: U16,
    pub extra_devices: U16,
    pub devt_slotoff: U16,
    pub dirblkbits: u8,
    pub xattr_prefix_count: u8,
    pub xattr_prefix_start: U32,
    pub packed_nid: U64,
    pub xattr_filter_reserved: u8,
    pub reserved2: [u8; 23],
}

/// One device table slot: an extra device (for Naiad, a blob's uncompressed view).
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DeviceSlot {
    /// Naiad stores the blob's sha256 as 64 lower-case hex characters.
    pub tag: [u8; 64],
    pub blocks: U32,
    pub mapped_blkaddr: U32,
    pub reserved: [u8; 56],
}

/// The 32-byte compact inode.
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InodeCompact {
    pub i_format: U16,
    pub i_xattr_icount: U16,
    pub i_mode: U16,
    pub i_nlink: U16,
    pub i_size: U32,
    pub i_mtime: U32,
    pub i_u: U32,
    pub i_ino: U32,
    pub i_uid: U16,
    pub i_gid: U16,
    pub i_reserved2: U32,
}

/// The 64-byte extended inode: 64-bit size, 32-bit ids, nanosecond mtime. Naiad writes only these.
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InodeExtended {
    pub i_format: U16,
    pub i_xattr_icount: U16,
    pub i_mode: U16,
    pub i_reserved: U16,
    pub i_size: U64,
    /// `raw_blkaddr`, `rdev`, or the chunk info (format in the low 16 bits).
    pub i_u: U32,
    pub i_ino: U32,
    pub i_uid: U32,
    pub i_gid: U32,
    pub i_mtime: U64,
    pub i_mtime_nsec: U32,
    pub i_nlink: U32,
    pub i_reserved2: [u8; 16],
}

/// Header of the inline xattr area that follows an inode.
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct XattrIbodyHeader {
    pub h_name_filter: U32,
    pub h_shared_count: u8,
    pub h_reserved2: [u8; 7],
}

/// One xattr entry; name then value follow, the whole padded to 4 bytes.
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct XattrEntry {
    pub e_name_len: u8,
    pub e_name_index: u8,
    pub e_value_size: U16,
}

/// A directory entry record.
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Dirent {
    pub nid: U64,
    pub nameoff: U16,
    pub file_type: u8,
    pub reserved: u8,
}

/// One chunk index entry of a chunk-based inode.
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkIndex {
    pub advise: U16,
    pub device_id: U16,
    pub blkaddr: U32,
}

/// Size of the inline xattr area for a given `i_xattr_icount` (0 means none).
pub fn xattr_ibody_size(icount: u16) -> u64 {
    if icount == 0 {
        0
    } else {
        12 + 4 * (u64::from(icount) - 1)
    }
}

/// Maps a file mode's type bits to a directory entry file type.
pub fn file_type_of_mode(mode: u32) -> u8 {
    match mode & 0o170000 {
        0o100000 => file_type::REG,
        0o040000 => file_type::DIR,
        0o020000 => file_type::CHRDEV,
        0o060000 => file_type::BLKDEV,
        0o010000 => file_type::FIFO,
        0o140000 => file_type::SOCK,
        0o120000 => file_type::SYMLINK,
        _ => file_type::UNKNOWN,
    }
}

/// Encodes a device number the way the kernel's `new_encode_dev` does.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Decodes a device number the way the kernel's `new_decode_dev` does.
pub fn decode_dev(dev: u32) -> (u32, u32) {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<SuperBlock>(), 128);
        assert_eq!(std::mem::size_of::<DeviceSlot>(), 128);
        assert_eq!(std::mem::size_of::<InodeCompact>(), 32);
        assert_eq!(std::mem::size_of::<InodeExtended>(), 64);
        assert_eq!(std::mem::size_of::<XattrIbodyHeader>(), 12);
        assert_eq!(std::mem::size_of::<XattrEntry>(), 4);
        assert_eq!(std::mem::size_of::<Dirent>(), 12);
        assert_eq!(std::mem::size_of::<ChunkIndex>(), 8);
    }

    #[test]
    fn device_numbers_round_trip() {
        for (ma, mi) in [(0, 0), (1, 3), (8, 1), (259, 65536), (4095, 1_048_575)] {
            assert_eq!(decode_dev(encode_dev(ma, mi)), (ma, mi));
        }
    }
}
