//! The trust boundary between images: hostile images, and what one can never do to another
//! that shares a node's daemon and cache.

use naiad_format::extension::{self, block_checksum, Extension};
use naiad_format::BLOCK_SIZE_BYTES;

/// A bootstrap of the EROFS part `img` and the extension `ext`, with the block checksums and
/// the trailer's digest made to agree (what a hostile image does; it needs no key).
pub fn reseal(mut img: Vec<u8>, mut ext: Extension) -> Vec<u8> {
    ext.block_checksums = img.chunks(BLOCK_SIZE_BYTES as usize).map(block_checksum).collect();
    let ext_bytes = ext.encode();
    let ext_offset = img.len() as u64;
    img.extend_from_slice(&ext_bytes);
    img.extend_from_slice(&extension::encode_trailer(ext_offset, ext_bytes.len() as u64));
    extension::seal(&mut img);
    img
}
mod api;
mod bootstrap;
mod cache;
mod exposure;
mod network;
mod sockets;
