//! Lazy mounts from S3-compatible storage: a real `s3s-fs` server on 127.0.0.1 (installed by
//! `scripts/install-deps.sh`), the blobs placed as objects `PREFIX/HEX` in its bucket (s3s-fs
//! serves a plain directory), `naiad mount BOOTSTRAP --s3-*` in both modes and `naiad ctl
//! mount` through the daemon; and the failures: wrong credentials, a dead or frozen server, a
//! missing object. Needs root.

use crate::support as common;

use common::tree::make_tree;
use common::*;
use naiad_format::bootstrap::Bootstrap;
use naiad_format::digest::to_hex;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "naiad-test";
const PREFIX: &str = "images/naiad";
const ACCESS_KEY: &str = "naiadtestkey";
const SECRET_KEY: &str = "naiad-test-secret-4f9c2e";

/// An `s3s-fs` server on 127.0.0.1 serving a temporary directory, with access key
/// authentication. Killed (and reaped) on drop.
struct S3Server {
    port: u16,
    child: Option<Child>,
    root: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server on a free port and waits until it accepts connections.
    fn start() -> S3Server {
        let dir = tempfile::Builder::new().prefix("naiad-s3").tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let mut s = S3Server {
            port: 0,
            child: None,
            log_path: dir.path().join("s3s-fs.log"),
            root,
            _dir: dir,
        };
        // The port is found by binding port 0 and closing it: another process may take it
        // first, so try a few.
        for _ in 0..3 {
            s.port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if s.spawn() {
                return s;
            }
        }
        panic!("s3s-fs did not start:\n{}", s.log());
    }

    /// Runs the server on `self.port`; whether it came up.
    fn spawn(&mut self) -> bool {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        let mut child = Command::new("s3s-fs")
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run s3s-fs: {e} (install it with scripts/install-deps.sh)")
            });
        let started = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "s3s-fs did not listen within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and root.
    fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "s3s-fs did not restart:\n{}", self.log());
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let c = self.child.as_ref().expect("running");
        rustix::process::kill_process(rustix::process::Pid::from_child(c), sig).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Where the object `PREFIX/HEX` of the bucket lives on disk.
    fn object_path(&self, hex: &str) -> PathBuf {
        self.root.join(BUCKET).join(PREFIX).join(hex)
    }
}

/// A child process killed if the test ends before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test tree built into `dir/out`, its blobs copied into the bucket.
struct Image {
    dir: tempfile::TempDir,
    blobs: Vec<String>,
}

impl Image {
    fn bootstrap(&self) -> PathBuf {
        self.dir.path().join("out/bootstrap")
    }
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
}

fn image(s3: &S3Server) -> Image {
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("src"), false);
    naiad_ok(args!["build", dir.path().join("src"), "-o", dir.path().join("out")]);
    let bs = Bootstrap::open(std::fs::read(dir.path().join("out/bootstrap")).unwrap()).unwrap();
    let blobs: Vec<String> = bs.extension().blobs.iter().map(|b| to_hex(&b.digest)).collect();
    for hex in &blobs {
        let obj = s3.object_path(hex);
        std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
        std::fs::copy(dir.path().join("out").join(hex), &obj).unwrap();
    }
    Image { dir, blobs }
}

/// `naiad mount BOOTSTRAP MNT --s3-*` in the foreground with `secret` in its environment (and
/// no other AWS variables), its output in `work/mount.log`; returns once the tree shows.
fn spawn_mount(img: &Image, s3: &S3Server, work: &Path, mode: &str, secret: &str) -> Child {
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let log = std::fs::File::create(work.join("mount.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_naiad"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("mount")
        .arg(img.bootstrap())
        .arg(&mnt)
        .args([
            "--mode",
            mode,
            "--s3-endpoint",
            &s3.endpoint(),
            "--s3-bucket",
            BUCKET,
            "--s3-prefix",
            PREFIX,
            "--insecure",
            "--no-prefetch",
        ])
        .args(["--timeout", "1", "--cache-dir"])
        .arg(work.join("cache"))
        .arg("--runtime-dir")
        .arg(work.join("run"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !mnt.join("files/tiny").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("naiad mount exited ({status}):\n{}", read_log(work));
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the mount did not come up:\n{}",
            read_log(work)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn read_log(work: &Path) -> String {
    std::fs::read_to_string(work.join("mount.log")).unwrap_or_default()
}

/// Unmounts and waits for the mount process to end; returns its log.
fn umount(mut child: Child, work: &Path) -> String {
    naiad_ok(args!["umount", work.join("mnt")]);
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "naiad mount did not exit after the unmount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success(), "naiad mount failed:\n{}", read_log(work));
    read_log(work)
}

fn read_errno(path: &Path) -> Option<i32> {
    std::fs::read(path).err().and_then(|e| e.raw_os_error())
}

#[test]
fn both_modes_serve_the_tree_from_s3() {
    require!(Root);
    let s3 = S3Server::start();
    let img = image(&s3);
    for mode in ["fanotify", "kernel", "fuse"] {
        let work = img.dir.path().join(mode);
        let child = spawn_mount(&img, &s3, &work, mode, SECRET_KEY);
        let mnt = work.join("mnt");
        let _g = MountGuard(mnt.clone());
        assert_eq!(std::fs::read(mnt.join("files/tiny")).unwrap(), b"x", "{mode}");
        assert_same_tree(
            &format!("{mode} mode from S3"),
            &snapshot(&img.src()),
            &snapshot(&mnt),
            Skip::default(),
        );
        let log = umount(child, &work);
        assert!(!log.contains(SECRET_KEY), "{mode}: the secret is in the log:\n{log}");
    }
}

#[test]
fn the_daemon_mounts_from_s3_fetching_only_what_is_read_with_credentials_from_its_config_file() {
    use std::os::unix::fs::PermissionsExt;
    require!(Root);
    let s3 = S3Server::start();
    let img = image(&s3);
    let dir = img.dir.path();
    // The daemon's credentials are in its config file; ctl has none and sends none.
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!("[s3]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sock = dir.join("run/api.sock");
    let daemon_log = dir.join("daemon.log");
    let daemon = Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["daemon", "--config"])
        .arg(&config)
        .arg("--api")
        .arg(&sock)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .stderr(std::fs::File::create(&daemon_log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = KillOnDrop(daemon);
    let daemon = &mut daemon.0;
    let started = Instant::now();
    while !sock.exists() {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon exited: {}",
            std::fs::read_to_string(&daemon_log).unwrap()
        );
        assert!(started.elapsed() < Duration::from_secs(20), "daemon socket did not appear");
        std::thread::sleep(Duration::from_millis(25));
    }
    let ctl = |args: &[&std::ffi::OsStr]| {
        naiad_ok(&[args!["ctl", "--config", "/dev/null", "--api", sock], args].concat())
    };
    let endpoint = s3.endpoint();
    let blob_bytes: u64 =
        img.blobs.iter().map(|h| std::fs::metadata(s3.object_path(h)).unwrap().len()).sum();
    let mut listed = String::new();
    for mode in ["fanotify", "kernel", "fuse"] {
        let mnt = dir.join(format!("mnt-{mode}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let _g = MountGuard(mnt.clone());
        ctl(args![
            "mount",
            img.bootstrap(),
            mnt,
            "--mode",
            mode,
            "--s3-endpoint",
            endpoint,
            "--s3-bucket",
            BUCKET,
            "--s3-prefix",
            PREFIX,
            "--insecure",
            "--no-prefetch"
        ]);
        let fetched = || -> u64 {
            let list: serde_json::Value = serde_json::from_str(&ctl(args!["list"])).unwrap();
            list.as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountpoint"] == mnt.to_str().unwrap())
                .unwrap()["bytes_fetched"]
                .as_u64()
                .unwrap()
        };
        // One small file: its bytes, and only a small part of the blobs came over.
        assert_eq!(std::fs::read(mnt.join("files/tiny")).unwrap(), b"x", "{mode}");
        let after_one = fetched();
        assert!(
            after_one > 0 && after_one * 2 < blob_bytes,
            "{mode}: fetched {after_one} of {blob_bytes} blob bytes for one small file"
        );
        assert_eq!(
            std::fs::read(mnt.join("files/multi_chunk")).unwrap(),
            std::fs::read(img.src().join("files/multi_chunk")).unwrap(),
            "{mode}"
        );
        assert!(fetched() > after_one, "{mode}");
        let list = ctl(args!["list"]);
        let parsed: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(
            parsed[0]["backend"],
            format!("s3 {endpoint} bucket {BUCKET} prefix {PREFIX}"),
            "{list}"
        );
        listed += &list;
        // The mount table the daemon saves for a restart has the location, not the secret.
        let saved = std::fs::read_to_string(dir.join("run/daemon-mounts.json")).unwrap();
        assert!(saved.contains(PREFIX) && !saved.contains(SECRET_KEY), "{saved}");
        ctl(args!["umount", mnt]);
        // Unused now: evicted, so the next mode fetches afresh.
        naiad_ok(args!["cache", "gc", "--cache-dir", dir.join("cache")]);
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(daemon),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    let log = std::fs::read_to_string(&daemon_log).unwrap();
    assert!(
        !listed.contains(SECRET_KEY) && !log.contains(SECRET_KEY),
        "the secret leaked:\n{listed}\n{log}"
    );
    let mnt = dir.join("mnt");
    // S3 flags make no sense with an image reference or blob directories.
    let out = naiad(args!["mount", "docker://127.0.0.1:1/a:b", mnt, "--s3-bucket", BUCKET]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("bootstrap SOURCE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = naiad(args![
        "mount",
        img.bootstrap(),
        mnt,
        "--s3-bucket",
        BUCKET,
        "--blob-dir",
        dir.join("out")
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not both"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn wrong_credentials_give_eio_and_a_clear_error_without_the_secret() {
    require!(Root);
    let s3 = S3Server::start();
    let img = image(&s3);
    let work = img.dir.path().join("bad");
    let wrong = "not-the-secret-77aa1";
    let child = spawn_mount(&img, &s3, &work, "kernel", wrong);
    let _g = MountGuard(work.join("mnt"));
    assert_eq!(read_errno(&work.join("mnt/files/tiny")), Some(5), "a read with wrong credentials");
    let log = umount(child, &work);
    assert!(
        log.contains(&format!("s3 {} bucket {BUCKET}", s3.endpoint()))
            && log.contains("access denied"),
        "{log}"
    );
    assert!(!log.contains(wrong) && !log.contains(SECRET_KEY), "a secret is in the log:\n{log}");
}

#[test]
fn a_dead_or_frozen_server_gives_eio_in_bounded_time_and_reads_recover() {
    require!(Root);
    let mut s3 = S3Server::start();
    let img = image(&s3);
    let want = std::fs::read(img.src().join("files/multi_chunk")).unwrap();
    for mode in ["fanotify", "kernel", "fuse"] {
        let work = img.dir.path().join(mode);
        let child = spawn_mount(&img, &s3, &work, mode, SECRET_KEY);
        let mnt = work.join("mnt");
        let _g = MountGuard(mnt.clone());
        assert_eq!(std::fs::read(mnt.join("files/tiny")).unwrap(), b"x");
        // Killed: connections are refused.
        s3.kill();
        let started = Instant::now();
        assert_eq!(
            read_errno(&mnt.join("files/multi_chunk")),
            Some(5),
            "{mode}: read with the server dead"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{mode}: EIO took {:?}",
            started.elapsed()
        );
        s3.restart();
        assert!(
            read_when_back(&mnt.join("files/multi_chunk")) == want,
            "{mode}: wrong bytes after the restart"
        );
        // Frozen: connections are accepted and never answered; the request timeout (1 s,
        // three attempts) ends the read.
        s3.signal(rustix::process::Signal::STOP);
        let started = Instant::now();
        assert_eq!(
            read_errno(&mnt.join("files/one_chunk")),
            Some(5),
            "{mode}: read with the server frozen"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{mode}: EIO took {:?}",
            started.elapsed()
        );
        s3.signal(rustix::process::Signal::CONT);
        assert!(
            read_when_back(&mnt.join("files/one_chunk"))
                == std::fs::read(img.src().join("files/one_chunk")).unwrap(),
            "{mode}: after thawing"
        );
        let log = umount(child, &work);
        assert!(
            log.contains(&format!("s3 {} bucket {BUCKET}", s3.endpoint())),
            "{mode}: the errors name the backend:\n{log}"
        );
    }
}

#[test]
fn a_missing_object_is_an_error_naming_its_key() {
    require!(Root);
    let s3 = S3Server::start();
    let img = image(&s3);
    for hex in &img.blobs {
        std::fs::remove_file(s3.object_path(hex)).unwrap();
    }
    let work = img.dir.path().join("missing");
    let child = spawn_mount(&img, &s3, &work, "fuse", SECRET_KEY);
    let _g = MountGuard(work.join("mnt"));
    assert_eq!(read_errno(&work.join("mnt/files/tiny")), Some(5));
    let log = umount(child, &work);
    assert!(
        img.blobs.iter().any(|hex| log.contains(&format!("object key {PREFIX}/{hex}")))
            && log.contains("not found"),
        "{log}"
    );
}
