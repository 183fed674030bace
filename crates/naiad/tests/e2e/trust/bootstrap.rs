//! The bootstraps the kernel mounts: only metadata Naiad validated reaches the kernel's
//! EROFS parser; a kept bootstrap is written once and never rewritten while a mount may read
//! it, and is removed once no mount uses it.

use crate::support as common;

use common::registry::*;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn kept(run: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(run.join("bootstraps")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_kept_bootstrap_is_written_once_and_removed_with_its_last_mount() {
    require!(Root);
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let layout = work.join("bb");
    busybox_oci_layout(&layout, "1");
    let naiad_layout = work.join("naiad");
    naiad_ok(args![
        "convert",
        format!("oci:{}:1", layout.display()),
        format!("oci:{}:1", naiad_layout.display())
    ]);
    skopeo_copy(&format!("oci:{}:1", naiad_layout.display()), &reg.docker_ref("naiad/bb:1"), None);
    let image = reg.docker_ref("naiad/bb:1");
    let daemon = super::Daemon::start(work);
    let sock = daemon.sock.clone();
    let run = work.join("run");
    let modes = super::lazy_modes();
    let mnts: Vec<PathBuf> = modes.iter().map(|m| work.join(format!("mnt-{m}"))).collect();
    let mut first: Option<(PathBuf, u64, i64, i64)> = None;
    for (mode, mnt) in modes.iter().zip(&mnts) {
        std::fs::create_dir_all(mnt).unwrap();
        naiad_ok(args!["ctl", "--api", sock, "mount", image, mnt, "--insecure", "--mode", mode]);
        assert_eq!(
            std::fs::read(mnt.join("bin/busybox")).unwrap(),
            std::fs::read("/bin/busybox").unwrap(),
            "{mode}"
        );
        let files = kept(&run);
        assert_eq!(files.len(), 1, "{mode}: one kept bootstrap for one image: {files:?}");
        let md = std::fs::metadata(&files[0]).unwrap();
        let now = (files[0].clone(), md.ino(), md.mtime_nsec(), md.ctime_nsec());
        match &first {
            None => first = Some(now),
            // Mounting the same image again, while the kernel may be reading the kept file
            // for the first mount (fanotify mode mounts it directly), leaves it as it was.
            Some(f) => assert_eq!(&now, f, "{mode}: the kept bootstrap was written again"),
        }
    }
    for (i, mnt) in mnts.iter().enumerate() {
        naiad_ok(args!["ctl", "--api", sock, "umount", mnt]);
        let left = kept(&run).len();
        let want = usize::from(i + 1 < mnts.len());
        assert_eq!(left, want, "after {} of {} unmounts", i + 1, mnts.len());
    }
}

/// Edits of a valid bootstrap that Naiad's writer never makes, each with the phrase its
/// refusal must hold: a superblock field the writer leaves zero, and a file inode whose
/// layout is compressed (the kernel would parse it; Naiad does not read such inodes).
fn hostile_edits(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    use naiad_format::bootstrap::Bootstrap;
    use naiad_format::erofs::{SuperBlock, SUPER_OFFSET_BYTES};
    let bs = Bootstrap::open(bytes.to_vec()).unwrap();
    let erofs = bs.bytes()[..bs.erofs_len() as usize].to_vec();
    let ext = bs.extension().clone();
    let mut packed = erofs.clone();
    let at = SUPER_OFFSET_BYTES as usize + std::mem::offset_of!(SuperBlock, packed_nid);
    packed[at..at + 8].copy_from_slice(&5u64.to_le_bytes());
    let mut compressed = erofs;
    let ino = bs.lookup(b"/f").unwrap();
    let at = ino.offset(&bs) as usize;
    let format = u16::from_le_bytes([compressed[at], compressed[at + 1]]);
    compressed[at..at + 2].copy_from_slice(&((format & !0b1110) | (1 << 1)).to_le_bytes());
    vec![
        ("packed_nid", super::reseal(packed, ext.clone()), "packed_nid"),
        ("compressed layout", super::reseal(compressed, ext), "/f"),
    ]
}

#[test]
fn metadata_naiad_does_not_write_never_reaches_the_kernel() {
    require!(Root);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), noise(100_000, 5)).unwrap();
    let img = work.join("img");
    naiad_ok(args!["build", src, "-o", img]);
    let good = std::fs::read(img.join("bootstrap")).unwrap();
    let daemon = super::Daemon::start(work);
    let sock = daemon.sock.clone();
    for (what, bytes, phrase) in hostile_edits(&good) {
        // Well formed as far as opening goes: the checks before a mount must catch it.
        naiad_format::bootstrap::Bootstrap::open(bytes.clone()).expect(what);
        let boot = work.join(format!("{}.boot", what.replace(' ', "-")));
        std::fs::write(&boot, &bytes).unwrap();
        for mode in ["local", "kernel", "fuse", "fanotify"] {
            let mnt = work.join(format!("mnt-{}-{mode}", what.replace(' ', "-")));
            std::fs::create_dir_all(&mnt).unwrap();
            let out = if mode == "local" {
                naiad(args![
                    "mount",
                    boot,
                    mnt,
                    "--blob-dir",
                    img,
                    "--mode",
                    "local",
                    "--cache-dir",
                    work.join("cache")
                ])
            } else {
                naiad(args![
                    "ctl",
                    "--api",
                    sock,
                    "mount",
                    boot,
                    mnt,
                    "--blob-dir",
                    img,
                    "--mode",
                    mode
                ])
            };
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what}, {mode}: mounted");
            if mode != "fanotify" || naiad_fs::fanotify::supported(&std::env::temp_dir()).is_ok() {
                assert!(err.contains(phrase), "{what}, {mode}: {err}");
            }
            let mounted = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(mnt.to_str().unwrap());
            assert!(!mounted, "{what}, {mode}: something is mounted");
        }
    }
}
