//! The shared chunk cache: a hostile image that names another image's blob digest, with its
//! own chunk records and a source serving bytes that match them, never changes what the other
//! image reads, in any mode, in one daemon or in separate processes, across daemon restarts,
//! whichever image mounts first.

use crate::support as common;

use common::*;
use naiad_format::bootstrap::Bootstrap;
use naiad_format::digest::{to_hex, Digest32};
use std::path::{Path, PathBuf};

/// Who made an image.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Maker {
    Honest,
    /// The same paths and sizes as the honest image (so the same view size), other bytes.
    SameSizes,
    /// The same paths, other bytes and sizes: other view offsets and view size.
    Resized,
}

/// The files of an image.
fn files(maker: Maker) -> Vec<(&'static str, Vec<u8>)> {
    let (seed, grow) = match maker {
        Maker::Honest => (0, 0),
        Maker::SameSizes => (100, 0),
        Maker::Resized => (200, 5000),
    };
    let conf: &[u8] = if maker == Maker::Honest { b"honest\n" } else { b"hostile config\n" };
    vec![
        ("app/a", noise(200_000 + grow, seed + 1)),
        ("app/b", noise(3 << 20, seed + 2)),
        ("etc/conf", conf.to_vec()),
    ]
}

/// A built image: its bootstrap and the directory serving its blob.
struct Built {
    bootstrap: PathBuf,
    blobs: PathBuf,
}

fn build(work: &Path, name: &str, maker: Maker) -> Built {
    let src = work.join(format!("{name}-src"));
    for (path, data) in files(maker) {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let out = work.join(name);
    naiad_ok(args!["build", src, "-o", out]);
    Built { bootstrap: out.join("bootstrap"), blobs: out }
}

/// A bootstrap like `bytes` whose only blob is named `digest`: the device table's tag, the
/// extension, the block checksums and the trailer's digest all made to agree, which needs no
/// key. Naiad accepts it as well formed.
fn renamed_blob(bytes: Vec<u8>, digest: &Digest32) -> Vec<u8> {
    let bs = Bootstrap::open(bytes).unwrap();
    let mut ext = bs.extension().clone();
    assert_eq!(ext.blobs.len(), 1);
    let old = to_hex(&ext.blobs[0].digest);
    ext.blobs[0].digest = *digest;
    let mut img = bs.bytes()[..bs.erofs_len() as usize].to_vec();
    let at = img.windows(64).position(|w| w == old.as_bytes()).expect("the device tag");
    img[at..at + 64].copy_from_slice(to_hex(digest).as_bytes());
    let img = super::reseal(img, ext);
    Bootstrap::open(img.clone()).expect("the forged bootstrap is well formed");
    img
}

/// The honest image, and a hostile one (by `maker`) naming the honest blob's digest, its blob
/// directory serving the hostile blob under that name.
fn images(work: &Path, maker: Maker) -> (Built, Built) {
    let honest = build(work, "honest", Maker::Honest);
    let made = build(work, "made", maker);
    let bs = Bootstrap::open(std::fs::read(&honest.bootstrap).unwrap()).unwrap();
    let digest = bs.extension().blobs[0].digest;
    let hostile_bs = Bootstrap::open(std::fs::read(&made.bootstrap).unwrap()).unwrap();
    let hostile = Built { bootstrap: work.join("hostile/bootstrap"), blobs: work.join("hostile") };
    std::fs::create_dir_all(&hostile.blobs).unwrap();
    std::fs::write(
        &hostile.bootstrap,
        renamed_blob(std::fs::read(&made.bootstrap).unwrap(), &digest),
    )
    .unwrap();
    std::fs::copy(
        made.blobs.join(to_hex(&hostile_bs.extension().blobs[0].digest)),
        hostile.blobs.join(to_hex(&digest)),
    )
    .unwrap();
    (honest, hostile)
}

/// Reads `paths` of the image mounted at `mnt`; asserts they are the image's own bytes.
fn assert_reads_its_own(mnt: &Path, maker: Maker, paths: &[&str], what: &str) {
    for (path, want) in files(maker).into_iter().filter(|(p, _)| paths.contains(p)) {
        let got =
            std::fs::read(mnt.join(path)).unwrap_or_else(|e| panic!("{what}: reading {path}: {e}"));
        assert!(
            got == want,
            "{what}: {path} of the {maker:?} image is not its own ({} bytes, {} expected)",
            got.len(),
            want.len()
        );
    }
}

const ALL: [&str; 3] = ["app/a", "app/b", "etc/conf"];

/// One daemon, both images mounted at once. `hostile_first`: the hostile image is mounted and
/// read whole first (its bytes fill the cache before the honest image reads); else the honest
/// image reads some of its files, the hostile one reads all, and the honest one the rest.
fn one_daemon(mode: &str, maker: Maker, hostile_first: bool) {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let (honest, hostile) = images(work, maker);
    let mut daemon = super::Daemon::start(work);
    let sock = daemon.sock.clone();
    let mount = |img: &Built, mnt: &Path| {
        std::fs::create_dir_all(mnt).unwrap();
        naiad_ok(args![
            "ctl",
            "--api",
            sock,
            "mount",
            img.bootstrap,
            mnt,
            "--blob-dir",
            img.blobs,
            "--mode",
            mode,
            "--no-prefetch"
        ]);
    };
    let (mh, mx) = (work.join("mnt-honest"), work.join("mnt-hostile"));
    let first = if hostile_first { "hostile" } else { "honest" };
    let what = format!("{mode} mode, {maker:?}, one daemon, {first} first");
    if hostile_first {
        mount(&hostile, &mx);
        assert_reads_its_own(&mx, maker, &ALL, &what);
        mount(&honest, &mh);
        assert_reads_its_own(&mh, Maker::Honest, &ALL, &what);
    } else {
        mount(&honest, &mh);
        assert_reads_its_own(&mh, Maker::Honest, &["etc/conf"], &what);
        mount(&hostile, &mx);
        assert_reads_its_own(&mx, maker, &ALL, &what);
        assert_reads_its_own(&mh, Maker::Honest, &ALL, &what);
    }
    // The disagreement is seen and counted.
    let metrics = naiad_ok(args!["ctl", "--api", sock, "metrics"]);
    assert!(
        metrics.lines().any(|l| l == "naiad_cache_layout_splits_total 1"),
        "{what}: the split is not counted:\n{metrics}"
    );
    // Across a restart (the kill gives the daemon no chance to tidy up): both mounts come
    // back from the daemon's state and its cache, and the honest one still reads its own.
    daemon.kill9_and_restart();
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    let what = format!("{what}, after a daemon restart");
    assert_reads_its_own(&mx, maker, &ALL, &what);
    assert_reads_its_own(&mh, Maker::Honest, &ALL, &what);
    for mnt in [&mh, &mx] {
        naiad_ok(args!["ctl", "--api", sock, "umount", mnt]);
    }
}

#[test]
fn a_hostile_image_naming_another_images_blob_never_changes_its_bytes_in_one_daemon() {
    require!(Root);
    for mode in super::lazy_modes() {
        for maker in [Maker::SameSizes, Maker::Resized] {
            for hostile_first in [true, false] {
                one_daemon(mode, maker, hostile_first);
            }
        }
    }
}

/// Separate `naiad mount` processes sharing one cache directory.
#[test]
fn a_hostile_image_naming_another_images_blob_never_changes_its_bytes_across_processes() {
    require!(Root);
    for (mode, maker) in
        super::lazy_modes().into_iter().flat_map(|m| [(m, Maker::SameSizes), (m, Maker::Resized)])
    {
        let work = tempfile::tempdir().unwrap();
        let work = work.path();
        let _cleanup = BelowGuard(work.to_path_buf());
        let (honest, hostile) = images(work, maker);
        let mount = |img: &Built, mnt: &Path| {
            std::fs::create_dir_all(mnt).unwrap();
            naiad_ok(args![
                "mount",
                img.bootstrap,
                mnt,
                "--blob-dir",
                img.blobs,
                "--mode",
                mode,
                "--no-prefetch",
                "--daemon",
                "--cache-dir",
                work.join("cache"),
                "--runtime-dir",
                work.join("run")
            ]);
            MountGuard(mnt.to_path_buf())
        };
        let (mh, mx) = (work.join("mnt-honest"), work.join("mnt-hostile"));
        let what = format!("{mode} mode, {maker:?}, two processes");
        let gx = mount(&hostile, &mx);
        assert_reads_its_own(&mx, maker, &ALL, &what);
        let gh = mount(&honest, &mh);
        assert_reads_its_own(&mh, Maker::Honest, &ALL, &what);
        // And a fresh process after both are gone, on the cache they left.
        for m in [&mh, &mx] {
            naiad_ok(args!["umount", m]);
        }
        drop((gh, gx));
        wait_unmounted_below(&work.join("run"));
        let _g = mount(&honest, &mh);
        std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        assert_reads_its_own(
            &mh,
            Maker::Honest,
            &ALL,
            &format!("{what}, remounted on the shared cache"),
        );
        naiad_ok(args!["umount", mh]);
        wait_unmounted_below(&work.join("run"));
    }
}

/// Waits until nothing is mounted below `dir` (a background server stops after its unmount).
fn wait_unmounted_below(dir: &Path) {
    let started = std::time::Instant::now();
    while std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(dir.to_str().unwrap()) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "a background server did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A fanotify-mode mount whose daemon is dead is still served by its keeper, from the cache
/// entry's files: `cache gc` in another process must leave that entry alone, and the next
/// daemon goes on filling the very files the kernel reads.
#[test]
fn an_entry_a_keeper_serves_survives_cache_gc_while_its_daemon_is_dead() {
    require!(Root, Fanotify);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let honest = build(work, "honest", Maker::Honest);
    let mut daemon = super::Daemon::start(work);
    let sock = daemon.sock.clone();
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    naiad_ok(args![
        "ctl",
        "--api",
        sock,
        "mount",
        honest.bootstrap,
        mnt,
        "--blob-dir",
        honest.blobs,
        "--mode",
        "fanotify",
        "--no-prefetch"
    ]);
    assert_reads_its_own(&mnt, Maker::Honest, &["etc/conf"], "before the kill");
    daemon.kill9();
    let entries = |what: &str| -> usize {
        let ls: serde_json::Value = serde_json::from_str(&naiad_ok(args![
            "cache",
            "ls",
            "--cache-dir",
            work.join("cache"),
            "--json"
        ]))
        .unwrap();
        let n = ls.as_array().unwrap().len();
        assert!(n > 0 || what.is_empty(), "{what}: {ls}");
        n
    };
    let before = entries("before gc");
    naiad_ok(args!["cache", "gc", "--cache-dir", work.join("cache")]);
    assert_eq!(entries("after gc"), before, "gc removed an entry a keeper serves");
    let _daemon = super::Daemon::start(work);
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    assert_reads_its_own(&mnt, Maker::Honest, &ALL, "after gc and a daemon restart");
    naiad_ok(args!["ctl", "--api", sock, "umount", mnt]);
}
