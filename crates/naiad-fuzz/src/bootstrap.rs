//! Target `bootstrap`: [`Bootstrap::open`] on the input, then a walk of the whole tree that
//! reads everything a reader can ask for (every inode, directory entry, xattr, symlink
//! target, chunk index, prefetch path), as `naiad check` does, and [`Bootstrap::validate`],
//! what every mount runs before the kernel sees the image.
//!
//! A bootstrap ends with the sha256 of its content, so nearly every mutation would be refused
//! by the digest before the parser looks at anything. When the digest is all that is wrong,
//! the harness reseals the input the way an attacker who rewrites a bootstrap would
//! ([`extension::seal`]) and parses it again: the fuzzer's bytes are in effect the content,
//! and the parser itself is what gets exercised.

use naiad_format::bootstrap::{Bootstrap, ChunkSlot, Inode};
use naiad_format::{extension, FormatError};

/// Chunk indexes looked up per inode. An inode may hold as many indexes as fit in the image,
/// and a hardlinked file is visited once per name: without a cap one input of a few hundred
/// KiB can take minutes (proportional to its size times its names, never unbounded).
pub const MAX_CHUNKS_PER_INODE: u64 = 4096;
/// Paths looked up again with [`Bootstrap::lookup`] after the walk (each lookup reads every
/// directory on the way, so this is quadratic in the depth).
pub const MAX_LOOKUPS: usize = 256;

/// The harness.
pub fn run(data: &[u8]) {
    match Bootstrap::open(data.to_vec()) {
        Ok(bs) => walk(&bs),
        Err(FormatError::DigestMismatch { .. }) => {
            let mut sealed = data.to_vec();
            extension::seal(&mut sealed);
            if let Ok(bs) = Bootstrap::open(sealed) {
                walk(&bs);
            }
        }
        Err(_) => {}
    }
}

/// Reads everything `bs` holds. Errors are expected on hostile input; panics are findings.
/// Cross-checks: a chunk index resolves to a record of the blob it names, and every path the
/// walk visited is found again by [`Bootstrap::lookup`] at the same inode.
pub fn walk(bs: &Bootstrap) {
    let ext = bs.extension();
    let _ = bs.damaged_blocks();
    for (i, blob) in ext.blobs.iter().enumerate() {
        let chunks = ext.blob_chunks(i as u32);
        assert!(
            chunks.iter().all(|c| c.blob_index == i as u32),
            "blob_chunks({i}) holds another blob's chunk"
        );
        for c in chunks {
            assert!(
                c.view_offset + u64::from(c.size) <= blob.view_size,
                "a decoded chunk record lies past its blob's view"
            );
            assert_eq!(
                ext.find_chunk(c.blob_index, c.view_offset),
                Some(c),
                "find_chunk misses a record of the table"
            );
        }
    }
    let mut visited: Vec<(Vec<u8>, u64)> = Vec::new();
    let walked = bs.walk(|path, _ty, ino| -> naiad_format::Result<()> {
        read_inode(bs, ino);
        if visited.len() < MAX_LOOKUPS {
            visited.push((path.to_vec(), ino.nid));
        }
        Ok(())
    });
    if walked.is_ok() {
        for (path, nid) in visited {
            match bs.lookup(&path) {
                Ok(found) => assert_eq!(
                    found.nid,
                    nid,
                    "lookup({:?}) finds another inode than the walk",
                    String::from_utf8_lossy(&path)
                ),
                Err(e) => panic!(
                    "lookup({:?}) fails on a path the walk visited: {e}",
                    String::from_utf8_lossy(&path)
                ),
            }
        }
    }
    for path in &ext.prefetch {
        let _ = bs.lookup(path);
    }
    // What every mount checks first: stricter than the walk, so what it passes walks.
    if bs.validate().is_ok() {
        assert!(walked.is_ok(), "validate passes an image the walk refuses");
    }
    if walked.is_ok() {
        remap(bs);
    }
}

/// What a lazy mount gives the kernel: the image remapped to a device per frame. Cross-checks
/// the copy: the superblock moved the metadata by the room the new device table took, and
/// every chunk index names its frame's device at the same block address.
fn remap(bs: &Bootstrap) {
    use naiad_format::remap::{remap_devices, Device};
    let ext = bs.extension();
    let mut ids = std::collections::BTreeMap::new();
    for c in &ext.chunks {
        let next = ids.len() + 1;
        ids.entry((c.blob_index, c.compressed_offset)).or_insert(next);
    }
    if ids.is_empty() || ids.len() > naiad_format::remap::MAX_DEVICES {
        return;
    }
    let devices: Vec<Device> =
        ids.keys().map(|(b, f)| Device { tag: format!("{b}-{f:x}"), blocks: 1 }).collect();
    let id = |c: &naiad_format::extension::ChunkRecord| {
        ids.get(&(c.blob_index, c.compressed_offset)).map_or(0, |&i| i as u16)
    };
    let Ok(out) = remap_devices(bs, &devices, id) else { return };
    // Superblock fields (at 1024): meta_blkaddr at 40, extra_devices at 86, devt_slotoff at 88.
    let u32_at = |b: &[u8], at: usize| {
        u32::from_le_bytes(b[1024 + at..1028 + at].try_into().expect("4 bytes"))
    };
    let u16_at = |b: &[u8], at: usize| {
        u16::from_le_bytes(b[1024 + at..1026 + at].try_into().expect("2 bytes"))
    };
    let shift =
        u64::from(u32_at(&out, 40) - u32_at(bs.bytes(), 40)) * naiad_format::BLOCK_SIZE_BYTES;
    assert_eq!(
        out.len() as u64,
        bs.erofs_len() + shift,
        "the copy is the image moved up by the new table's room"
    );
    assert_eq!(usize::from(u16_at(&out, 86)), devices.len());
    assert!(
        u64::from(u16_at(&out, 88)) * 128 + devices.len() as u64 * 128 <= shift,
        "the device table overlaps the moved image"
    );
    let _ = bs.walk(|_, _, ino| -> naiad_format::Result<()> {
        for i in 0..ino.chunk_count().min(MAX_CHUNKS_PER_INODE) {
            if let Ok(ChunkSlot::Data(rec)) = bs.chunk(ino, i) {
                let at = bs.chunk_index_offset(ino, i) as usize;
                let (was, now) =
                    (&bs.bytes()[at..at + 8], &out[at + shift as usize..at + shift as usize + 8]);
                assert_eq!(
                    u16::from_le_bytes([now[2], now[3]]),
                    id(rec),
                    "nid {} chunk {i}: not its frame's device",
                    ino.nid
                );
                assert_eq!(
                    (&was[..2], &was[4..]),
                    (&now[..2], &now[4..]),
                    "nid {} chunk {i}: the block address changed",
                    ino.nid
                );
            }
        }
        Ok(())
    });
}

fn read_inode(bs: &Bootstrap, ino: &Inode) {
    let _ = (ino.metadata_range(bs), ino.data_blocks(), ino.rdev());
    let _ = bs.xattrs(ino);
    if ino.is_symlink() {
        let _ = bs.symlink_target(ino);
    }
    if ino.is_dir() || ino.is_symlink() {
        let _ = bs.flat_data(ino);
    }
    if ino.is_reg() {
        for i in 0..ino.chunk_count().min(MAX_CHUNKS_PER_INODE) {
            match bs.chunk(ino, i) {
                Ok(ChunkSlot::Data(rec)) => {
                    let blob = bs.extension().blobs.get(rec.blob_index as usize);
                    assert!(
                        blob.is_some(),
                        "chunk {i} of nid {} names blob {} of {}",
                        ino.nid,
                        rec.blob_index,
                        bs.extension().blobs.len()
                    );
                }
                Ok(ChunkSlot::Hole) => {}
                Err(_) => break,
            }
        }
    }
}
