//! The short fuzzing run CI keeps: every committed seed (`fuzz/corpus/<target>/`) and every
//! input that once made a target fail (`fuzz/regressions/<target>/`) goes through the same
//! harness the cargo-fuzz target runs, without libFuzzer.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted (none if it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `target` on every input of `dir`; returns how many there were.
fn replay(target: &str, dir: &Path) -> usize {
    let (_, harness) =
        naiad_fuzz::TARGETS.iter().find(|(name, _)| *name == target).expect("a known target");
    let files = inputs(dir);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "{target}: {} makes the harness fail", file.display());
    }
    files.len()
}

fn replay_target(target: &str) {
    let seeds = replay(target, &fuzz_dir().join("corpus").join(target));
    assert!(seeds > 0, "{target}: no seed in fuzz/corpus/{target} (run fuzz/seed.sh)");
    replay(target, &fuzz_dir().join("regressions").join(target));
}

#[test]
fn bootstrap_corpus_and_regressions() {
    replay_target("bootstrap");
}

#[test]
fn blob_toc_corpus_and_regressions() {
    replay_target("blob_toc");
}

#[test]
fn tar_layer_corpus_and_regressions() {
    replay_target("tar_layer");
}

#[test]
fn manifest_corpus_and_regressions() {
    replay_target("manifest");
}

#[test]
fn every_fuzz_target_has_a_harness_and_a_test() {
    let mut targets: Vec<String> = inputs(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    targets.sort();
    let mut known: Vec<String> = naiad_fuzz::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    known.sort();
    assert_eq!(targets, known);
}

/// The premise of the bootstrap target: a mutation is refused by the digest as given, and
/// reaches the parser once resealed.
#[test]
fn resealed_bootstraps_reach_the_parser() {
    use naiad_format::bootstrap::Bootstrap;
    use naiad_format::{erofs::SUPER_OFFSET_BYTES, extension, FormatError};
    let mut bytes = std::fs::read(fuzz_dir().join("corpus/bootstrap/dir-none")).unwrap();
    Bootstrap::open(bytes.clone()).unwrap();
    bytes[SUPER_OFFSET_BYTES as usize] ^= 1;
    assert!(matches!(Bootstrap::open(bytes.clone()), Err(FormatError::DigestMismatch { .. })));
    extension::seal(&mut bytes);
    assert!(matches!(Bootstrap::open(bytes), Err(FormatError::BadMagic { what: "superblock" })));
}

/// The premise of the blob_toc target, likewise for a blob's TOC.
#[test]
fn resealed_blobs_reach_the_toc_parser() {
    use naiad_format::blob::BLOB_TRAILER_SIZE_BYTES;
    use naiad_format::FormatError;
    let mut blob = std::fs::read(fuzz_dir().join("corpus/blob_toc/dir-none-0")).unwrap();
    let toc_len = naiad_fuzz::blob_toc::decode(&blob).unwrap().encode_tail(0).len()
        - BLOB_TRAILER_SIZE_BYTES as usize;
    let toc_at = blob.len() - BLOB_TRAILER_SIZE_BYTES as usize - toc_len;
    blob[toc_at] ^= 1;
    assert!(matches!(naiad_fuzz::blob_toc::decode(&blob), Err(FormatError::DigestMismatch { .. })));
    naiad_fuzz::blob_toc::reseal(&mut blob);
    assert!(matches!(
        naiad_fuzz::blob_toc::decode(&blob),
        Err(FormatError::BadMagic { what: "blob TOC" })
    ));
}
