//! Both lazy read paths show exactly the source tree: kernel mode (EROFS over the blob-view
//! FUSE files) and fuse mode (the whole filesystem in user space), data fetched on demand
//! through the chunk cache. Needs root.

use crate::support as common;

use common::tree::make_tree;
use common::*;
use naiad_format::bootstrap::Bootstrap;
use naiad_storage::backend::LocalBackend;
use naiad_storage::blob_store::BlobDirs;
use naiad_storage::cache::ChunkCache;
use naiad_storage::fetch::{Fetcher, DEFAULT_MERGE_LIMIT_BYTES};
use naiad_storage::lazy::LazyBlob;
use std::sync::atomic::Ordering;
use std::sync::Arc;

struct Image {
    dir: tempfile::TempDir,
    bs: Arc<Bootstrap>,
}

fn image() -> Image {
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("src"), false);
    naiad_ok(args!["build", dir.path().join("src"), "-o", dir.path().join("out")]);
    let bs = Arc::new(
        Bootstrap::open(std::fs::read(dir.path().join("out/bootstrap")).unwrap()).unwrap(),
    );
    Image { dir, bs }
}

fn fetcher(img: &Image) -> Arc<Fetcher> {
    let backend = Arc::new(LocalBackend::new(BlobDirs::new(vec![img.dir.path().join("out")])));
    Arc::new(Fetcher::new(backend, img.bs.extension().digester, DEFAULT_MERGE_LIMIT_BYTES))
}

/// Writes are refused with EROFS (fuse mode answers no OPEN at all: the read-only mount
/// itself must refuse them), and the file is unchanged.
fn assert_read_only(mnt: &std::path::Path) {
    let f = mnt.join("files/one_chunk");
    let before = std::fs::read(&f).unwrap();
    let err = std::fs::OpenOptions::new().write(true).open(&f).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "open for writing: {err}");
    let err = std::fs::File::create(mnt.join("new")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "create: {err}");
    assert_eq!(std::fs::read(&f).unwrap(), before);
}

#[test]
fn kernel_mode_shows_the_source_tree() {
    require!(Root);
    let img = image();
    let cache = ChunkCache::open(&img.dir.path().join("cache")).unwrap();
    let f = fetcher(&img);
    let mnt = img.dir.path().join("mnt");
    let m = naiad_fs::mode::kernel::mount_kernel_mode(
        &img.dir.path().join("out/bootstrap"),
        &img.bs,
        LazyBlob::for_image(img.bs.extension(), &cache, &f).unwrap(),
        &img.dir.path().join("views"),
        &mnt,
        None,
        Default::default(),
    )
    .unwrap();
    let _g = MountGuard(mnt.clone());
    assert_same_tree(
        "kernel mode",
        &snapshot(&img.dir.path().join("src")),
        &snapshot(&mnt),
        Skip::default(),
    );
    assert!(f.stats.verify_failures.load(Ordering::SeqCst) == 0);
    assert_read_only(&mnt);
    m.unmount().unwrap();
}

#[test]
fn fuse_mode_shows_the_source_tree() {
    require!(Root);
    fuse_mode_check(false);
}

/// The same through FUSE over io_uring, where this kernel has it: every request but INIT
/// and FORGET comes through the ring (cold reads fetching, listings, lookups, xattrs,
/// symlinks, statfs, 16 concurrent readers).
#[test]
fn fuse_mode_over_io_uring_shows_the_source_tree() {
    require!(Root, FuseRing);
    fuse_mode_check(true);
}

fn fuse_mode_check(ring: bool) {
    assert!(is_root(), "mounting needs root");
    let img = image();
    let cache = ChunkCache::open(&img.dir.path().join("cache")).unwrap();
    let f = fetcher(&img);
    let blobs = LazyBlob::for_image(img.bs.extension(), &cache, &f).unwrap();
    let mnt = img.dir.path().join("mnt");
    let fs = naiad_fs::mode::fuse::ImageFs::new(img.bs.clone(), blobs);
    let mut session = if ring {
        mount_fuse_ring(fs, &mnt)
    } else {
        naiad_fs::mode::fuse::mount_fuse_mode(fs, &mnt, None, Default::default()).unwrap()
    };
    let _g = MountGuard(mnt.clone());
    // Nothing is fetched to list the tree.
    let _ = std::fs::read_dir(mnt.join("many")).unwrap().count();
    assert_eq!(f.stats.requests.load(Ordering::SeqCst), 0);
    let want = Arc::new(std::fs::read(img.dir.path().join("src/files/multi_chunk")).unwrap());
    random_readers(&mnt.join("files/multi_chunk"), &want);
    assert_same_tree(
        "fuse mode",
        &snapshot(&img.dir.path().join("src")),
        &snapshot(&mnt),
        Skip::default(),
    );
    assert_read_only(&mnt);
    let st = rustix::fs::statvfs(&mnt).unwrap();
    let view_blocks: u64 = img.bs.extension().blobs.iter().map(|b| b.view_size).sum::<u64>() / 4096;
    assert_eq!((st.f_bsize, st.f_blocks, st.f_namemax), (4096, view_blocks, 255));
    assert!(f.stats.verify_failures.load(Ordering::SeqCst) == 0);
    session.stop().unwrap();
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!(" {} ", mnt.display())),
        "still mounted"
    );
}

#[test]
fn the_prefetch_list_is_fetched_before_any_read() {
    require!(Root);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/hot"), noise(3 << 20, 1)).unwrap();
    std::fs::write(src.join("cold"), noise(5 << 20, 2)).unwrap();
    let list = dir.path().join("prefetch.txt");
    std::fs::write(&list, "/app\n").unwrap();
    let out = dir.path().join("out");
    naiad_ok(args!["build", src, "-o", out, "--prefetch-list", list]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let cache = dir.path().join("cache");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["mount"])
        .arg(out.join("bootstrap"))
        .arg(&mnt)
        .arg("--blob-dir")
        .arg(&out)
        .args(["--mode", "kernel", "--cache-dir"])
        .arg(&cache)
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .spawn()
        .unwrap();
    let _g = MountGuard(mnt.clone());
    // Without reading anything, the hot file's 3 MiB arrive; the cold file's 5 MiB do not.
    let started = std::time::Instant::now();
    let present = loop {
        let ls: serde_json::Value =
            serde_json::from_str(&naiad_ok(args!["cache", "ls", "--cache-dir", cache, "--json"]))
                .unwrap();
        let present: u64 =
            ls.as_array().unwrap().iter().map(|e| e["present_bytes"].as_u64().unwrap()).sum();
        if present >= 3 << 20 || started.elapsed() > std::time::Duration::from_secs(20) {
            break present;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!((3 << 20..5 << 20).contains(&present), "present after prefetch: {present}");
    assert_eq!(std::fs::read(mnt.join("app/hot")).unwrap(), noise(3 << 20, 1));
    naiad_ok(args!["umount", mnt]);
    let mut child = child;
    assert!(child.wait().unwrap().success());
}
