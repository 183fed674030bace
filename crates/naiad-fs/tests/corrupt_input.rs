//! Property: corrupted or hostile bootstraps and blobs never make the readers panic, hang or
//! write outside their output; corruption is always reported.
//!
//! A small image is built once; each case mutates it (bit flips, overwritten words,
//! truncation), optionally re-seals the bootstrap's digest the way an attacker would, and
//! runs everything that reads an image: `check` with blobs, `Bootstrap::open`, a full walk
//! reading every inode, xattr, symlink and chunk, and `unpack_to_dir` into a fresh directory.

use naiad_builder::{build, BuildOptions, Source};
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::extension;
use naiad_storage::blob_store::BlobDirs;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

struct Image {
    _dir: tempfile::TempDir,
    out: PathBuf,
    bootstrap: Vec<u8>,
    blob_name: String,
    blob: Vec<u8>,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // Statics are never dropped: keep the image under the target dir, not in /tmp.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        for i in 0..30u32 {
            std::fs::write(
                src.join(format!("d/f{i}")),
                i.to_le_bytes().repeat(100 + i as usize * 50),
            )
            .unwrap();
        }
        std::fs::write(
            src.join("big"),
            (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        std::os::unix::fs::symlink("d/f1", src.join("link")).unwrap();
        xattr::set(src.join("d/f2"), "user.k", b"value").unwrap();
        let out = dir.path().join("out");
        let opts = BuildOptions { chunk_size: 64 << 10, ..BuildOptions::default() };
        build(Source::Dir(src), opts, &out).unwrap();
        let bootstrap = std::fs::read(out.join("bootstrap")).unwrap();
        let blob_path = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap() != "bootstrap")
            .unwrap();
        Image {
            blob_name: blob_path.file_name().unwrap().to_string_lossy().into_owned(),
            blob: std::fs::read(&blob_path).unwrap(),
            _dir: dir,
            out,
            bootstrap,
        }
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Word { at: usize, value: u32 },
    Truncate { keep: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        3 => (any::<usize>(), prop_oneof![Just(0u32), Just(u32::MAX), Just(0x8000_0000), any::<u32>()]).prop_map(|(at, value)| Mutation::Word { at, value }),
        1 => any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    if n < 8 {
        return;
    }
    match *m {
        Mutation::Flip { at, bit } => bytes[at % n] ^= 1 << bit,
        Mutation::Word { at, value } => {
            let at = (at % n.saturating_sub(4).max(1)) & !3;
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        Mutation::Truncate { keep } => bytes.truncate(keep % n),
    }
}

/// Reads everything an image holds; errors are fine, panics are not.
fn read_everything(bytes: Vec<u8>, blobs: &BlobDirs, scratch: &Path) {
    let Ok(bs) = Bootstrap::open(bytes) else { return };
    let _ = bs.walk(|_, _, ino| -> naiad_format::Result<()> {
        let _ = bs.xattrs(ino);
        if ino.is_symlink() {
            let _ = bs.symlink_target(ino);
        }
        for i in 0..ino.chunk_count().min(10_000) {
            if let Ok(ChunkSlot::Data(_)) = bs.chunk(ino, i) {}
        }
        Ok(())
    });
    let out = scratch.join("unpacked");
    let _ = naiad_fs::unpack::unpack_to_dir(&bs, blobs, &out);
    // Whatever happened, nothing was written next to the output directory.
    let names: Vec<_> =
        std::fs::read_dir(scratch).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| n == "unpacked" || n == "blobs"), "unexpected files: {names:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn corrupt_bootstraps_are_reported_and_never_panic(muts in proptest::collection::vec(mutation(), 1..4), reseal in any::<bool>()) {
        let img = image();
        let mut bytes = img.bootstrap.clone();
        for m in &muts {
            apply(&mut bytes, m);
        }
        prop_assume!(bytes != img.bootstrap);
        let dirs = BlobDirs::new(vec![img.out.clone()]);
        if !reseal {
            let report = naiad_fs::check::check(bytes.clone(), Some(&dirs));
            prop_assert!(!report.ok(), "corruption not reported: {muts:?}");
        } else if bytes.len() >= extension::TRAILER_SIZE_BYTES as usize {
            // An attacker who recomputes the digest: the structure must still be checked.
            extension::seal(&mut bytes);
            let _ = naiad_fs::check::check(bytes.clone(), Some(&dirs));
        }
        let scratch = tempfile::tempdir().unwrap();
        read_everything(bytes, &dirs, scratch.path());
    }

    #[test]
    fn corrupt_blobs_are_reported_and_never_panic(muts in proptest::collection::vec(mutation(), 1..3)) {
        let img = image();
        let mut blob = img.blob.clone();
        for m in &muts {
            apply(&mut blob, m);
        }
        prop_assume!(blob != img.blob);
        let scratch = tempfile::tempdir().unwrap();
        let blobs = scratch.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        std::fs::write(blobs.join(&img.blob_name), &blob).unwrap();
        let dirs = BlobDirs::new(vec![blobs]);
        let report = naiad_fs::check::check(img.bootstrap.clone(), Some(&dirs));
        prop_assert!(!report.ok(), "blob corruption not reported: {muts:?}");
        prop_assert!(report.problems.iter().any(|p| p.contains(&img.blob_name)), "problems do not name the blob: {:?}", report.problems);
        read_everything(img.bootstrap.clone(), &dirs, scratch.path());
    }
}
