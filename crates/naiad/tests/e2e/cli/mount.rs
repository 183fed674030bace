//! `naiad mount` / `naiad umount` with local blobs (needs root and a kernel with file-backed EROFS).

use crate::support as common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn views_are_written_once_and_reused() {
    require!(Root);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("hello"), b"hello from naiad\n").unwrap();
    fs::write(
        src.join("data"),
        (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let out = tmp.path().join("out");
    naiad_ok(args!["build", src, "-o", out]);
    let bootstrap = out.join("bootstrap");
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");

    naiad_ok(args!["mount", bootstrap, mnt, "--blob-dir", out, "--cache-dir", cache]);
    let guard = MountGuard(mnt.clone());
    assert_eq!(fs::read(mnt.join("hello")).unwrap(), b"hello from naiad\n");
    assert_eq!(fs::read(mnt.join("data")).unwrap(), fs::read(src.join("data")).unwrap());
    let views: Vec<_> = fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(views.len(), 1, "{views:?}");
    let first = fs::metadata(&views[0]).unwrap();
    naiad_ok(args!["umount", mnt]);
    drop(guard);
    assert!(fs::read_dir(&mnt).unwrap().next().is_none(), "mount point is empty again");

    // Second mount: the same view file, not rewritten.
    naiad_ok(args!["mount", bootstrap, mnt, "--blob-dir", out, "--cache-dir", cache]);
    let guard = MountGuard(mnt.clone());
    let second = fs::metadata(&views[0]).unwrap();
    assert_eq!(
        (first.ino(), first.mtime(), first.mtime_nsec()),
        (second.ino(), second.mtime(), second.mtime_nsec())
    );
    assert_eq!(fs::read(mnt.join("hello")).unwrap(), b"hello from naiad\n");
    naiad_ok(args!["umount", mnt]);
    drop(guard);
}

#[test]
fn a_corrupt_blob_is_refused_before_mounting() {
    require!(Root);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), vec![42u8; 100_000]).unwrap();
    let out = tmp.path().join("out");
    naiad_ok(args!["build", src, "-o", out]);
    let blob = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap() != "bootstrap")
        .unwrap();
    let mut bytes = fs::read(&blob).unwrap();
    bytes[10] ^= 0x40;
    fs::write(&blob, bytes).unwrap();
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");
    let res =
        naiad(args!["mount", out.join("bootstrap"), mnt, "--blob-dir", out, "--cache-dir", cache]);
    let _guard = MountGuard(mnt.clone());
    assert!(!res.status.success(), "mounted a corrupt blob");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains(blob.file_name().unwrap().to_str().unwrap()),
        "error names the blob: {err}"
    );
    // Nothing half-written is left in the cache to be trusted later.
    assert!(fs::read_dir(&cache).unwrap().next().is_none(), "cache holds leftovers");
}
