//! Target `bootstrap`: [`Bootstrap::open`] on the input, then a walk of the whole tree that
//! reads everything a reader can ask for (every inode, directory entry, xattr, symlink
//! target, chunk index, prefetch path), as `naiad check` does.
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
        assert!(chunks.iter().all(|c| c.blob_index == i as u32), "blob_chunks({i}) holds another blob's chunk");
        for c in chunks {
            assert!(c.view_offset + u64::from(c.size) <= blob.view_size, "a decoded chunk record lies past its blob's view");
            assert_eq!(ext.find_chunk(c.blob_index, c.view_offset), Some(c), "find_chunk misses a record of the table");
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
                Ok(found) => assert_eq!(found.nid, nid, "lookup({:?}) finds another inode than the walk", String::from_utf8_lossy(&path)),
                Err(e) => panic!("lookup({:?}) fails on a path the walk visited: {e}", String::from_utf8_lossy(&path)),
            }
        }
    }
    for path in &ext.prefetch {
        let _ = bs.lookup(path);
    }
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
                    assert!(blob.is_some(), "chunk {i} of nid {} names blob {} of {}", ino.nid, rec.blob_index, bs.extension().blobs.len());
                }
                Ok(ChunkSlot::Hole) => {}
                Err(_) => break,
            }
        }
    }
}
