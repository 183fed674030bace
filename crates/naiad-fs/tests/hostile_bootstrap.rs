//! Hostile bootstraps (issue 6): directory cycles, dirents with an out-of-range nid or a name
//! holding `/` or NUL, chunk indexes past the device table or past a blob's view, and chunk
//! records overlapping in a blob's view.
//!
//! Each case edits a valid image the way an attacker would: the bytes are changed, then the
//! per-block checksums and the trailer's SHA-256 are recomputed, so that no digest catches
//! the edit and the parser itself must. Every case must give a clear error from `check` and
//! from `unpack_to_dir`, with nothing written outside the output directory.

use naiad_builder::{build, BuildOptions, Source};
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::extension::{self, Extension};
use naiad_storage::blob_store::BlobDirs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

struct Image {
    _dir: tempfile::TempDir,
    out: PathBuf,
    bootstrap: Vec<u8>,
}

/// `/d/{a,bb,c,e/}` and a 300 KB `/big` in 64 KiB chunks, all in one blob.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        for (name, data) in
            [("a", &b"alpha"[..]), ("bb", b"bravo"), ("c", b"charlie"), ("e/x", b"x-ray")]
        {
            std::fs::write(src.join("d").join(name), data).unwrap();
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let big: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        std::fs::write(src.join("big"), big).unwrap();
        let out = dir.path().join("out");
        let opts = BuildOptions { chunk_size: 64 << 10, ..BuildOptions::default() };
        build(Source::Dir(src), opts, &out).unwrap();
        let bootstrap = std::fs::read(out.join("bootstrap")).unwrap();
        Image { _dir: dir, out, bootstrap }
    })
}

fn open(bytes: &[u8]) -> Bootstrap {
    Bootstrap::open(bytes.to_vec()).unwrap()
}

/// Recomputes the block checksums in the extension and the trailer's SHA-256 after an edit.
fn reseal(bytes: &mut [u8], ext: Option<&Extension>) {
    let t = extension::decode_trailer(bytes).unwrap();
    let (at, len) = (t.ext_offset as usize, t.ext_size as usize);
    let mut ext = ext.cloned().unwrap_or_else(|| Extension::decode(&bytes[at..at + len]).unwrap());
    let erofs_len = ext.block_checksums.len() * 4096;
    ext.block_checksums = bytes[..erofs_len].chunks(4096).map(extension::block_checksum).collect();
    let enc = ext.encode();
    assert_eq!(enc.len(), len, "the edited extension keeps its size");
    bytes[at..at + len].copy_from_slice(&enc);
    extension::seal(bytes);
}

/// Offset in the bootstrap of the directory data of `path` (found as the unique copy of it).
fn dir_data_offset(bytes: &[u8], path: &[u8]) -> usize {
    let bs = open(bytes);
    let ino = bs.lookup(path).unwrap();
    let data = bs.flat_data(&ino).unwrap();
    let hits: Vec<usize> = bytes
        .windows(data.len())
        .enumerate()
        .filter(|(_, w)| *w == data.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "directory data of {:?} found once", String::from_utf8_lossy(path));
    hits[0]
}

/// Offset of the dirent (12 bytes: nid u64, nameoff u16, type, reserved) and of the name of
/// entry `name` of directory `dir`.
fn dirent(bytes: &[u8], dir: &[u8], name: &[u8]) -> (usize, usize) {
    let base = dir_data_offset(bytes, dir);
    let bs = open(bytes);
    let entries = bs.dir_entries(&bs.lookup(dir).unwrap()).unwrap();
    let i = entries.iter().position(|e| e.name == name).unwrap();
    let rec = base + i * 12;
    let nameoff = u16::from_le_bytes([bytes[rec + 8], bytes[rec + 9]]) as usize;
    assert_eq!(&bytes[base + nameoff..base + nameoff + name.len()], name);
    (rec, base + nameoff)
}

/// Offset of chunk index `index` of the file at `path` (advise u16, device_id u16,
/// blkaddr u32), found as the unique place holding it.
fn chunk_index(bytes: &[u8], path: &[u8], index: u64) -> usize {
    let bs = open(bytes);
    let ino = bs.lookup(path).unwrap();
    let ChunkSlot::Data(rec) = bs.chunk(&ino, index).unwrap() else {
        panic!("chunk {index} is a hole")
    };
    let mut want = vec![0, 0];
    want.extend((rec.blob_index as u16 + 1).to_le_bytes());
    want.extend(((rec.view_offset / 4096) as u32).to_le_bytes());
    let erofs = &bytes[..bs.erofs_len() as usize];
    let hits: Vec<usize> = erofs
        .windows(8)
        .enumerate()
        .filter(|(i, w)| i % 8 == 0 && *w == want.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "chunk index {index} found once");
    hits[0]
}

/// `check` (with blobs) reports a problem holding `phrase`; opening gives either that error
/// or a bootstrap whose unpack fails with it; nothing lands outside the output dir.
fn expect_refused(bytes: Vec<u8>, phrase: &str) {
    let img = image();
    let dirs = BlobDirs::new(vec![img.out.clone()]);
    let report = naiad_fs::check::check(bytes.clone(), Some(&dirs));
    assert!(!report.ok(), "check accepted the hostile bootstrap");
    assert!(
        report.problems.iter().any(|p| p.contains(phrase)),
        "check problems lack {phrase:?}: {:?}",
        report.problems
    );
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out");
    match Bootstrap::open(bytes) {
        Err(e) => assert!(e.to_string().contains(phrase), "open: {e}"),
        Ok(bs) => {
            let err = naiad_fs::unpack::unpack_to_dir(&bs, &dirs, &out)
                .expect_err("unpack accepted the hostile bootstrap");
            assert!(err.to_string().contains(phrase), "unpack: {err}");
            let mut tar = Vec::new();
            let err = naiad_fs::unpack::unpack_to_tar(&bs, &dirs, &mut tar)
                .expect_err("unpack --tar accepted the hostile bootstrap");
            assert!(err.to_string().contains(phrase), "unpack to tar: {err}");
        }
    }
    let names: Vec<_> =
        std::fs::read_dir(scratch.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| n == "out"), "written next to the output: {names:?}");
    assert_only_under(&out, &out);
}

/// Every path under `dir` has a plain name and is a real child of `root` (no symlink or
/// name leads out).
fn assert_only_under(dir: &Path, root: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd {
        let e = e.unwrap();
        let p = e.path();
        let name = e.file_name();
        assert!(!name.as_encoded_bytes().contains(&b'/') && !name.as_encoded_bytes().contains(&0));
        assert!(p.starts_with(root));
        if e.file_type().unwrap().is_dir() {
            assert_only_under(&p, root);
        }
    }
}

#[test]
fn control_image_is_valid_and_reseal_is_neutral() {
    let img = image();
    let mut bytes = img.bootstrap.clone();
    reseal(&mut bytes, None);
    assert_eq!(bytes, img.bootstrap);
    let dirs = BlobDirs::new(vec![img.out.clone()]);
    let report = naiad_fs::check::check(bytes, Some(&dirs));
    assert!(report.ok(), "{:?}", report.problems);
}

/// A subdirectory entry pointing back at the root, or at its own parent: a cycle.
#[test]
fn directory_cycle_is_refused() {
    let img = image();
    let bs = open(&img.bootstrap);
    for target in [bs.root_nid(), bs.lookup(b"/d").unwrap().nid] {
        let mut bytes = img.bootstrap.clone();
        let (rec, _) = dirent(&bytes, b"/d", b"e");
        bytes[rec..rec + 8].copy_from_slice(&target.to_le_bytes());
        reseal(&mut bytes, None);
        expect_refused(bytes, "reached twice (cycle or directory hardlink)");
    }
}

/// A dirent whose nid lies past the image, or overflows the offset computation.
#[test]
fn dirent_nid_out_of_range_is_refused() {
    let img = image();
    for (nid, phrase) in [
        (1u64 << 40, "inode is truncated"),
        (u64::MAX, "out of range"),
        (u64::MAX / 32, "inode is truncated"),
    ] {
        let mut bytes = img.bootstrap.clone();
        let (rec, _) = dirent(&bytes, b"/d", b"a");
        bytes[rec..rec + 8].copy_from_slice(&nid.to_le_bytes());
        reseal(&mut bytes, None);
        expect_refused(bytes, phrase);
    }
}

/// A dirent name holding `/` (`b/`, `/b`) or NUL (`b\0`): refused, never written.
#[test]
fn dirent_name_with_slash_or_nul_is_refused() {
    let img = image();
    for name in [&b"b/"[..], b"/b", b"b\0", b"\0b"] {
        let mut bytes = img.bootstrap.clone();
        let (_, at) = dirent(&bytes, b"/d", b"bb");
        bytes[at..at + 2].copy_from_slice(name);
        reseal(&mut bytes, None);
        expect_refused(bytes, "invalid name");
    }
}

/// A chunk index naming a device past the table (2 of 1, 0xffff), device 0, or a block past
/// the blob's view.
#[test]
fn chunk_index_past_the_device_is_refused() {
    let img = image();
    let view_blocks = (open(&img.bootstrap).extension().blobs[0].view_size / 4096) as u32;
    let cases: [(u16, Option<u32>, &str); 4] = [
        (2, None, "device 2 not in the device table"),
        (0xffff, None, "device 65535 not in the device table"),
        (0, None, "device 0 not in the device table"),
        (1, Some(view_blocks + 16), "no chunk record"),
    ];
    for (dev, blk, phrase) in cases {
        let mut bytes = img.bootstrap.clone();
        let at = chunk_index(&bytes, b"/big", 1);
        bytes[at + 2..at + 4].copy_from_slice(&dev.to_le_bytes());
        if let Some(b) = blk {
            bytes[at + 4..at + 8].copy_from_slice(&b.to_le_bytes());
        }
        reseal(&mut bytes, None);
        expect_refused(bytes, phrase);
    }
}

/// Overlapping chunks: a chunk index pointing into the middle of another chunk, and chunk
/// records that overlap (or coincide) in the blob's view.
#[test]
fn overlapping_chunks_are_refused() {
    let img = image();
    // An index one block into chunk 0's data: no chunk starts there.
    let mut bytes = img.bootstrap.clone();
    let at = chunk_index(&bytes, b"/big", 1);
    let blk0 =
        u32::from_le_bytes(bytes[chunk_index(&bytes, b"/big", 0) + 4..][..4].try_into().unwrap());
    bytes[at + 4..at + 8].copy_from_slice(&(blk0 + 1).to_le_bytes());
    reseal(&mut bytes, None);
    expect_refused(bytes, "no chunk record");

    // Records: the second starts inside the first, or at the same place.
    let ext = open(&img.bootstrap).extension().clone();
    let first = ext.chunks.iter().position(|c| c.size > 8192).unwrap();
    assert!(
        first + 1 < ext.chunks.len()
            && ext.chunks[first + 1].blob_index == ext.chunks[first].blob_index
    );
    for shift in [4096u64, 0] {
        let mut e = ext.clone();
        e.chunks[first + 1].view_offset = e.chunks[first].view_offset + shift;
        let mut bytes = img.bootstrap.clone();
        reseal(&mut bytes, Some(&e));
        expect_refused(bytes, "not sorted or overlaps the previous chunk");
    }
}

/// Sizes a record declares are bounded before memory or a request is spent on them: a blob's
/// view (its presence bitmap is one bit per block), all views together, a compressed frame
/// (one backend request, buffered whole).
#[test]
fn declared_sizes_over_the_limits_are_refused() {
    let img = image();
    let ext = open(&img.bootstrap).extension().clone();
    let mut e = ext.clone();
    e.blobs[0].view_size = 16 << 40;
    let mut bytes = img.bootstrap.clone();
    reseal(&mut bytes, Some(&e));
    expect_refused(bytes, "over the limit MAX_BLOB_VIEW_SIZE_BYTES");

    let mut e = ext.clone();
    e.blobs[0].compressed_size = u64::MAX;
    e.chunks[0].compressed_size = u32::MAX;
    let mut bytes = img.bootstrap.clone();
    reseal(&mut bytes, Some(&e));
    expect_refused(bytes, "over the limit MAX_COMPRESSED_FRAME_SIZE_BYTES");
}
