//! Target `tar_layer`: the input is a layer (plain tar, gzip or zstd, told apart by its first
//! bytes, as the converter reads it) built with [`naiad_builder::build`] into a fresh
//! temporary directory.
//!
//! Cross-checks:
//! * whatever the layer holds (`../`, absolute paths, links out of the tree, ...) and whether
//!   the build succeeds or fails, nothing is written next to the output directory, and the
//!   output directory holds only `bootstrap` and blobs named by their sha256 (no temporary
//!   file is left behind);
//! * an image the builder wrote opens, and a walk reads every entry of it without an error:
//!   the builder never writes what its own reader refuses; every blob's TOC decodes.
//!
//! The same bytes also go through [`naiad_oci::bootstrap_layer::unwrap`], the other tar the
//! project reads from a registry.

use naiad_builder::tar_source::decompress_layer;
use naiad_builder::{build, BuildOptions, Source};
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::digest::{sha256, to_hex};
use std::io::Cursor;
use std::path::Path;

/// Chunk size of the builds: the smallest, so that small inputs make files of several chunks.
pub const CHUNK_SIZE_BYTES: u32 = naiad_format::MIN_CHUNK_SIZE_BYTES;
/// Frame size of the builds: small, so that small inputs make blobs of several frames.
pub const FRAME_SIZE_BYTES: u32 = 16 << 10;

/// The harness.
pub fn run(data: &[u8]) {
    let scratch =
        tempfile::Builder::new().prefix("naiad-fuzz-tar").tempdir().expect("a temporary directory");
    let out = scratch.path().join("out");
    let opts = BuildOptions {
        chunk_size: CHUNK_SIZE_BYTES,
        frame_size: FRAME_SIZE_BYTES,
        ..BuildOptions::default()
    };
    let built = decompress_layer(Box::new(Cursor::new(data.to_vec())), "fuzz")
        .and_then(|reader| build(Source::Stream { reader, name: "fuzz".into() }, opts, &out));
    check_outputs(scratch.path(), &out);
    if built.is_ok() {
        read_image(&out);
    }
    let _ = naiad_oci::bootstrap_layer::unwrap(data, "fuzz");
}

/// Only `out` next to it; only the bootstrap and sealed blobs in it.
fn check_outputs(scratch: &Path, out: &Path) {
    let names = |dir: &Path| -> Vec<String> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| {
                    e.expect("a readable directory entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    };
    let beside = names(scratch);
    assert!(
        beside.iter().all(|n| n == "out"),
        "the build wrote next to its output directory: {beside:?}"
    );
    for name in names(out) {
        if name == naiad_builder::image::BOOTSTRAP_FILE_NAME {
            continue;
        }
        let is_digest = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(is_digest, "unexpected file {name:?} in the output directory");
        let bytes = std::fs::read(out.join(&name)).expect("a readable blob");
        assert_eq!(to_hex(&sha256(&bytes)), name, "a blob is not named by its digest");
        if let Err(e) = crate::blob_toc::decode(&bytes) {
            panic!("blob {name} written by the builder has a TOC that does not decode: {e}");
        }
    }
}

/// Opens the image the builder wrote and reads every entry; any error is a finding.
fn read_image(out: &Path) {
    let bytes = std::fs::read(out.join(naiad_builder::image::BOOTSTRAP_FILE_NAME))
        .expect("a successful build writes its bootstrap");
    let bs = Bootstrap::open(bytes)
        .unwrap_or_else(|e| panic!("the builder wrote a bootstrap its reader refuses: {e}"));
    let walked = bs.walk(|path, _, ino| -> naiad_format::Result<()> {
        let at = |e: naiad_format::FormatError| e.at_path(path);
        bs.xattrs(ino).map_err(at)?;
        if ino.is_symlink() {
            bs.symlink_target(ino).map_err(at)?;
        }
        for i in 0..ino.chunk_count() {
            if let ChunkSlot::Data(rec) = bs.chunk(ino, i).map_err(at)? {
                let blob = &bs.extension().blobs[rec.blob_index as usize];
                assert!(
                    out.join(to_hex(&blob.digest)).exists(),
                    "a chunk of {:?} names a blob that was not written",
                    String::from_utf8_lossy(path)
                );
            }
        }
        Ok(())
    });
    if let Err(e) = walked {
        panic!("the builder wrote an image whose walk fails: {e}");
    }
}
