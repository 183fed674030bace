//! The admin API's requests: a mount point must be an empty directory unless forced, and of
//! concurrent mounts of one path exactly one wins, its mount untouched.

use crate::support as common;

use common::*;
use std::path::Path;

/// An image of one file `f`, built under `work`.
fn image(work: &Path) -> std::path::PathBuf {
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), noise(50_000, 7)).unwrap();
    let out = work.join("img");
    naiad_ok(args!["build", src, "-o", out]);
    out
}

/// How many mounts the kernel has at `mnt`.
fn mounts_at(mnt: &Path) -> usize {
    let at = mnt.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(at))
        .count()
}

#[test]
fn a_mount_point_must_be_an_empty_directory_unless_forced() {
    require!(Root);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let img = image(work);
    let daemon = super::Daemon::start(work);
    let sock = daemon.sock.clone();
    let mount = |mnt: &Path, extra: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = ["ctl", "--api"].map(Into::into).to_vec();
        a.push(sock.clone().into());
        a.extend(["mount".into(), img.join("bootstrap").into(), mnt.into()]);
        a.extend(["--blob-dir".into(), img.clone().into(), "--mode".into(), "fuse".into()]);
        a.extend(extra.iter().map(Into::into));
        naiad(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>())
    };
    let full = work.join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("precious"), b"keep").unwrap();
    let out = mount(&full, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not empty"), "{err}");
    assert_eq!(mounts_at(&full), 0);
    let file = work.join("file");
    std::fs::write(&file, b"x").unwrap();
    for (target, why) in [(&file, "not a directory"), (&work.join("missing"), "No such file")] {
        let out = mount(target, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{}: {err}", target.display());
    }
    // Forced, it mounts over what is there, which comes back after.
    let out = mount(&full, &["--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(full.join("f")).unwrap(), noise(50_000, 7));
    naiad_ok(args!["ctl", "--api", sock, "umount", full]);
    assert_eq!(std::fs::read(full.join("precious")).unwrap(), b"keep");
}

#[test]
fn of_concurrent_mounts_of_one_path_exactly_one_wins_and_keeps_its_mount() {
    require!(Root);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let img = image(work);
    let daemon = super::Daemon::start(work);
    let sock = daemon.sock.clone();
    for mode in ["fuse", "kernel"] {
        let mnt = work.join(format!("mnt-{mode}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let outs: Vec<std::process::Output> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        naiad(args![
                            "ctl",
                            "--api",
                            sock,
                            "mount",
                            img.join("bootstrap"),
                            mnt,
                            "--blob-dir",
                            img,
                            "--mode",
                            mode
                        ])
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "{mode}: {won} of 4 concurrent mounts succeeded");
        for o in outs.iter().filter(|o| !o.status.success()) {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("409") && err.contains("being mounted"), "{mode}: {err}");
        }
        assert_eq!(mounts_at(&mnt), 1, "{mode}: the kernel's mounts at the path");
        assert_eq!(std::fs::read(mnt.join("f")).unwrap(), noise(50_000, 7), "{mode}");
        naiad_ok(args!["ctl", "--api", sock, "umount", mnt]);
        assert_eq!(mounts_at(&mnt), 0, "{mode}");
    }
}

#[test]
fn a_busy_mount_is_not_unmounted_and_the_caller_is_told() {
    require!(Root);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let img = image(work);
    let daemon = super::Daemon::start(work);
    let sock = daemon.sock.clone();
    let modes = super::lazy_modes();
    for mode in modes {
        let mnt = work.join(format!("busy-{mode}"));
        std::fs::create_dir_all(&mnt).unwrap();
        naiad_ok(args![
            "ctl",
            "--api",
            sock,
            "mount",
            img.join("bootstrap"),
            mnt,
            "--blob-dir",
            img,
            "--mode",
            mode
        ]);
        let open = std::fs::File::open(mnt.join("f")).unwrap();
        let out = naiad(args!["ctl", "--api", sock, "umount", mnt]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("409") && err.contains("busy"),
            "{mode}: {err}"
        );
        // Still mounted, still served, still listed.
        assert_eq!(mounts_at(&mnt), 1, "{mode}");
        std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        assert_eq!(std::fs::read(mnt.join("f")).unwrap(), noise(50_000, 7), "{mode}");
        let list = naiad_ok(args!["ctl", "--api", sock, "list"]);
        assert!(list.contains(mnt.to_str().unwrap()), "{mode}: {list}");
        drop(open);
        naiad_ok(args!["ctl", "--api", sock, "umount", mnt]);
        assert_eq!(mounts_at(&mnt), 0, "{mode}");
    }
}

#[test]
fn a_request_cannot_name_the_bootstrap_nor_a_huge_source() {
    require!(Root);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let img = image(work);
    let daemon = super::Daemon::start(work);
    let client = naiad_daemon::client::DaemonClient::new(&daemon.sock);
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // The bootstrap field is the daemon's record of one it fetched and verified: a request
    // naming one (any file) is refused, and nothing is mounted.
    let spec = naiad_daemon::spec::MountSpec {
        bootstrap: Some(img.join("bootstrap")),
        blob_dirs: vec![img.clone()],
        ..naiad_daemon::spec::MountSpec::new("docker://127.0.0.1:9/some/image:1", &mnt)
    };
    let err = client.mount(&spec).unwrap_err().to_string();
    assert!(err.contains("400") && err.contains("set by the daemon"), "{err}");
    assert_eq!(mounts_at(&mnt), 0);
    // A bootstrap source over the limit is refused before it is read.
    let huge = work.join("huge");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(naiad_oci::bootstrap_layer::MAX_BOOTSTRAP_BYTES + 1)
        .unwrap();
    let spec = naiad_daemon::spec::MountSpec {
        blob_dirs: vec![img.clone()],
        ..naiad_daemon::spec::MountSpec::new(huge.to_str().unwrap(), &mnt)
    };
    let err = client.mount(&spec).unwrap_err().to_string();
    assert!(err.contains("MAX_BOOTSTRAP_BYTES"), "{err}");
}
