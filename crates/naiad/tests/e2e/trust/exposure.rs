//! An image mounted on the host is `nosuid,nodev` unless asked otherwise: a hostile image's
//! setuid binaries and device nodes are inert there. (The snapshotter's container root
//! filesystems allow both; see the containerd tests.)

use crate::support as common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The per-mount options the kernel shows for the mount at `mnt` (the top one).
fn mount_options(mnt: &Path) -> Vec<String> {
    let at = mnt.to_str().unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(at))
        .unwrap_or_else(|| panic!("nothing mounted at {at}"));
    line.split(' ').nth(5).unwrap().split(',').map(String::from).collect()
}

#[test]
fn images_mount_nosuid_nodev_on_the_host_unless_allowed() {
    require!(Root);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let src = work.join("src");
    std::fs::create_dir_all(src.join("dev")).unwrap();
    std::fs::copy("/bin/busybox", src.join("su")).unwrap();
    std::fs::set_permissions(src.join("su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("dev/mem"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 1),
    )
    .unwrap();
    let img = work.join("img");
    naiad_ok(args!["build", src, "-o", img]);
    let mut modes = super::lazy_modes();
    modes.insert(0, "local");
    let daemon = super::Daemon::start(work);
    let sock = daemon.sock.clone();
    for mode in &modes {
        for allow in [false, true] {
            let flags: &[&str] = if allow { &["--allow-setuid", "--allow-devices"] } else { &[] };
            let what = format!("{mode}{}", if allow { ", allowed" } else { "" });
            // `naiad mount` on the host, and (lazy modes) the daemon's `ctl mount`.
            let mut ways = vec!["mount"];
            if *mode != "local" {
                ways.push("ctl");
            }
            for way in ways {
                let mnt = work.join(format!("mnt-{mode}-{allow}-{way}"));
                std::fs::create_dir_all(&mnt).unwrap();
                let mut a: Vec<std::ffi::OsString> = Vec::new();
                if way == "ctl" {
                    a.extend(["ctl".into(), "--api".into(), sock.clone().into()]);
                }
                a.extend(["mount".into(), img.join("bootstrap").into(), mnt.clone().into()]);
                a.extend([
                    "--blob-dir".into(),
                    img.clone().into(),
                    "--mode".into(),
                    (*mode).into(),
                ]);
                if way == "mount" {
                    a.extend(["--cache-dir".into(), work.join("cache").into()]);
                    a.extend(["--runtime-dir".into(), work.join("run").into()]);
                    if *mode != "local" {
                        a.push("--daemon".into());
                    }
                }
                a.extend(flags.iter().map(Into::into));
                naiad_ok(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
                let _g = MountGuard(mnt.clone());
                let opts = mount_options(&mnt);
                for o in ["nosuid", "nodev"] {
                    assert_eq!(opts.iter().any(|x| x == o), !allow, "{what} via {way}: {opts:?}");
                }
                assert!(opts.iter().any(|x| x == "ro"), "{what} via {way}: {opts:?}");
                // The bits and the node are there either way; only their effect differs.
                let md = std::fs::metadata(mnt.join("su")).unwrap();
                assert_eq!(md.permissions().mode() & 0o7777, 0o4755, "{what}");
                if way == "ctl" {
                    naiad_ok(args!["ctl", "--api", sock, "umount", mnt]);
                } else {
                    naiad_ok(args!["umount", mnt]);
                }
            }
        }
    }
}
