//! The bootstraps the kernel mounts: a kept bootstrap is written once and never rewritten
//! while a mount may read it, and is removed once no mount uses it.

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
    let mut daemon = start_daemon(work);
    let sock = work.join("run/api.sock");
    let run = work.join("run");
    let mut modes = vec!["kernel", "fuse"];
    if naiad_fs::fanotify::supported(&std::env::temp_dir()).is_ok() {
        modes.insert(0, "fanotify");
    }
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
    let _ = daemon.kill();
    let _ = daemon.wait();
}
