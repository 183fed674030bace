//! Local sockets: the admin API's and the keepers' are 0600, serve only root (or the daemon's
//! own uid) even when their mode is opened up, and the daemon never removes what is not a
//! socket at its API path.

use crate::support as common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a connection to `sock` made as user `nobody` gets back after sending `hello`: the
/// bytes read until the server closes or goes quiet for a second (an error to connect is
/// returned as such).
fn as_nobody(sock: &Path, hello: &'static [u8]) -> std::io::Result<Vec<u8>> {
    let sock = sock.to_path_buf();
    std::thread::spawn(move || {
        // Credentials are per thread at the system call level: only this thread changes.
        let nobody = rustix::process::Uid::from_raw(65534);
        rustix::thread::set_thread_res_uid(nobody, nobody, nobody).unwrap();
        let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let _ = s.write_all(hello);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if got.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(got)
                }
                Err(_) => return Ok(got),
            }
        }
    })
    .join()
    .unwrap()
}

/// Opens `dir` and every directory above it up to `top` to everyone (so that only the
/// socket's own mode and the server's check stand in the way), and `sock` itself.
fn open_up(top: &Path, sock: &Path) {
    let mut d = sock.parent().unwrap().to_path_buf();
    loop {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        if d == top {
            break;
        }
        d = d.parent().unwrap().to_path_buf();
    }
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

#[test]
fn the_admin_socket_is_private_serves_only_root_and_never_replaces_a_file() {
    require!(Root);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let sock = work.join("run/api.sock");
    // A file at the API path is not removed: the daemon refuses to start.
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    std::fs::write(&sock, b"not a socket").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["daemon", "--api"])
        .arg(&sock)
        .arg("--cache-dir")
        .arg(work.join("cache"))
        .arg("--runtime-dir")
        .arg(work.join("run"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            kill9(&mut child);
            panic!("the daemon started over a file at its API path");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
    std::fs::remove_file(&sock).unwrap();

    let mut daemon = start_daemon(work);
    assert_eq!(mode_of(&sock), 0o600);
    let status = b"GET /v1/status HTTP/1.0\r\n\r\n";
    let denied = as_nobody(&sock, status);
    assert!(denied.is_err(), "another user could connect to a 0600 socket: {denied:?}");
    open_up(work, &sock);
    let got = as_nobody(&sock, status).unwrap();
    assert!(got.is_empty(), "another user was answered: {}", String::from_utf8_lossy(&got));
    // Root still is.
    let root = naiad_ok(args!["ctl", "--api", sock, "status"]);
    assert!(root.contains("version"), "{root}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// The keeper sockets of the daemon's mounts: `fan-*.sock` (fanotify mode) and `fuse-*.sock`
/// (the FUSE connections of kernel and fuse mode).
fn keeper_sockets(run: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            (n.starts_with("fan-") || n.starts_with("fuse-")) && n.ends_with(".sock")
        })
        .collect()
}

#[test]
fn keeper_sockets_are_private_and_serve_only_root() {
    require!(Root);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), noise(100_000, 3)).unwrap();
    let out = work.join("img");
    naiad_ok(args!["build", src, "-o", out]);
    let mut daemon = start_daemon(work);
    let sock = work.join("run/api.sock");
    let mut modes = vec!["fuse"];
    if naiad_fs::fanotify::supported(&std::env::temp_dir()).is_ok() {
        modes.push("fanotify");
    }
    for mode in &modes {
        let mnt = work.join(format!("mnt-{mode}"));
        std::fs::create_dir_all(&mnt).unwrap();
        naiad_ok(args![
            "ctl",
            "--api",
            sock,
            "mount",
            out.join("bootstrap"),
            mnt,
            "--blob-dir",
            out,
            "--mode",
            mode
        ]);
    }
    let keepers = keeper_sockets(&work.join("run"));
    assert_eq!(keepers.len(), modes.len(), "{keepers:?}");
    for k in &keepers {
        assert_eq!(mode_of(k), 0o600, "{}", k.display());
        assert!(as_nobody(k, b"").is_err(), "{}: another user could connect", k.display());
        open_up(work, k);
        let got = as_nobody(k, b"").unwrap();
        assert!(got.is_empty(), "{}: another user was answered ({} bytes)", k.display(), got.len());
    }
    // The mounts still serve, through their keepers, after the daemon is killed and back.
    kill9(&mut daemon);
    let mut daemon = start_daemon(work);
    for mode in &modes {
        let mnt = work.join(format!("mnt-{mode}"));
        assert_eq!(std::fs::read(mnt.join("f")).unwrap(), noise(100_000, 3), "{mode}");
        naiad_ok(args!["ctl", "--api", sock, "umount", mnt]);
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}
