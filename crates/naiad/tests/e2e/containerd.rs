//! End to end with the real containerd and runc: `naiad pull` into a private containerd,
//! `ctr run --snapshotter naiad`, restarts of the snapshotter under a running container,
//! and image removal. Needs root (mounts, containers); skips otherwise.

use crate::support as common;

use common::containerd::{Containerd, Snapshotter};
use common::registry::{busybox_oci_layout, run_ok, skopeo_copy, Registry};
use common::{naiad_ok, noise};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Size of the file the containers never read.
const BIG: usize = 24 << 20;

/// The busybox test image (`/bin/*`, `/data/hello.txt` = "hello from layer 2\n", no
/// `/etc/hostname`) plus a third layer holding `/data/big.bin` (BIG incompressible bytes)
/// and `/data/small.txt`, pushed as `app:v1` and converted to the Naiad image `app:naiad`.
/// Returns the two references as containerd names them (`HOST/app:TAG`).
fn push_images(reg: &Registry, work: &Path) -> (String, String) {
    let layout = work.join("layout");
    busybox_oci_layout(&layout, "v1");
    let image = format!("{}:v1", layout.display());
    let bundle = work.join("bundle");
    run_ok(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    std::fs::write(bundle.join("rootfs/data/big.bin"), noise(BIG, 7)).unwrap();
    std::fs::write(bundle.join("rootfs/data/small.txt"), "small file\n").unwrap();
    run_ok(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
    std::fs::remove_dir_all(&bundle).unwrap();
    skopeo_copy(&format!("oci:{image}"), &reg.docker_ref("app:v1"), None);
    naiad_ok(&[
        OsStr::new("convert"),
        OsStr::new("--insecure"),
        OsStr::new(&reg.docker_ref("app:v1")),
        OsStr::new(&reg.docker_ref("app:naiad")),
    ]);
    (format!("{}/app:v1", reg.addr), format!("{}/app:naiad", reg.addr))
}

fn pull(ctd: &Containerd, reference: &str) -> serde_json::Value {
    let out = naiad_ok(&[
        OsStr::new("pull"),
        OsStr::new("--containerd-socket"),
        ctd.socket.as_os_str(),
        OsStr::new("--insecure"),
        OsStr::new("--json"),
        OsStr::new(reference),
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("naiad pull --json printed {out:?}: {e}"))
}

struct Env {
    _reg: Registry,
    // Dropped in this order: containers and containerd first, then the snapshotter and its
    // daemon, then the directory.
    ctd: Containerd,
    sn: Snapshotter,
    _dir: tempfile::TempDir,
    plain: String,
    naiad: String,
}

fn setup() -> Env {
    let reg = Registry::start(None);
    let dir = tempfile::Builder::new().prefix("naiad-ctd").tempdir().unwrap();
    let (plain, naiad) = push_images(&reg, dir.path());
    let sn = Snapshotter::start(&dir.path().join("sn"), &reg.addr);
    let ctd = Containerd::start(&dir.path().join("ctd"), &sn.socket);
    Env { _reg: reg, ctd, sn, _dir: dir, plain, naiad }
}

#[test]
fn naiad_and_plain_images_run_from_naiad_pull() {
    require!(Root, Containerd);
    let env = setup();
    let (ctd, sn) = (&env.ctd, &env.sn);

    // The Naiad image: nothing downloaded by the pull, every layer served by the snapshotter.
    let r = pull(ctd, &env.naiad);
    assert_eq!(r["naiad"], true, "{r}");
    assert_eq!(r["layers_unpacked"], 0, "{r}");
    assert_eq!(r["bytes_downloaded"], 0, "{r}");
    assert_eq!(sn.image_mounts().len(), 1, "one lazy mount for the image");
    let out = env.ctd.run_container(
        &env.naiad,
        "n1",
        &[
            "/bin/sh",
            "-c",
            "cat /data/hello.txt /data/small.txt; ls /etc; echo new > /data/new; cat /data/new",
        ],
    );
    assert_eq!(
        out, "hello from layer 2\nsmall file\nnew\n",
        "the whiteout of /etc/hostname holds and the rootfs is writable"
    );
    // Only part of the blobs was fetched: not the big file nobody read.
    let fetched = sn.metric_sum("naiad_backend_bytes_total");
    assert!(
        fetched > 0.0 && fetched < (BIG / 2) as f64,
        "fetched {fetched} bytes of an image holding a {BIG}-byte file never read"
    );
    // The container's writes went to its own layer: a second container sees the image as it is.
    let out = env.ctd.run_container(
        &env.naiad,
        "n2",
        &["/bin/sh", "-c", "cat /data/new 2>&1; busybox md5sum /data/big.bin"],
    );
    let expected = md5_hex(&noise(BIG, 7));
    assert!(out.starts_with("cat: can't open '/data/new'"), "{out}");
    assert!(
        out.contains(&expected),
        "big.bin read through the container has md5 {expected}: {out}"
    );

    // A plain OCI image through the same snapshotter: downloaded and unpacked layer by layer.
    let r = pull(ctd, &env.plain);
    assert_eq!(r["naiad"], false, "{r}");
    assert_eq!(r["layers_unpacked"], 3, "{r}");
    assert!(r["bytes_downloaded"].as_u64().unwrap() > BIG as u64, "{r}");
    let out = env.ctd.run_container(
        &env.plain,
        "p1",
        &[
            "/bin/sh",
            "-c",
            "cat /data/hello.txt /data/small.txt; ls /etc; busybox md5sum /data/big.bin",
        ],
    );
    assert_eq!(out, format!("hello from layer 2\nsmall file\n{expected}  /data/big.bin\n"));
    // Pulling again changes nothing and downloads nothing.
    let r = pull(ctd, &env.plain);
    assert_eq!(
        (r["layers_unpacked"].as_u64(), r["bytes_downloaded"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    let r = pull(ctd, &env.naiad);
    assert_eq!(r["layers_unpacked"], 0, "{r}");
    assert_eq!(sn.image_mounts().len(), 1);
}

#[test]
fn a_running_container_survives_snapshotter_restarts() {
    require!(Root, Containerd);
    let mut env = setup();
    pull(&env.ctd, &env.naiad);
    let snaps_before = env.ctd.ctr_ok(&["snapshots", "--snapshotter", "naiad", "ls"]);
    // A container that reads its files in a loop, recording each result in a host directory.
    let out_dir = env.ctd.dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut args = env.ctd.run_args("reader");
    args.extend([
        "-d".into(),
        "--snapshotter".into(),
        "naiad".into(),
        "--mount".into(),
        format!("type=bind,src={},dst=/out,options=rbind:rw", out_dir.display()),
        env.naiad.clone(),
        "reader".into(),
        "/bin/sh".into(),
        "-c".into(),
        "while true; do if cat /data/hello.txt /data/small.txt > /dev/null; then echo ok >> /out/log; else echo FAIL >> /out/log; fi; done".into(),
    ]);
    env.ctd.ctr_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let lines = || std::fs::read_to_string(out_dir.join("log")).unwrap_or_default();
    wait_for(|| lines().lines().count() > 10, "the reader to start");

    for round in 0..2 {
        env.sn.kill();
        let before = lines().lines().count();
        wait_for(|| lines().lines().count() > before + 50, "reads while the snapshotter is down");
        env.sn.restart();
        // containerd redials a proxy plugin with a backoff of up to a few seconds: until then
        // its calls fail at once ("connection refused"), as for any restarted plugin.
        wait_for(
            || env.ctd.ctr(&["snapshots", "--snapshotter", "naiad", "ls"]).status.success(),
            "containerd to reconnect",
        );
        // New containers start, with the state the last snapshotter left.
        let out = env.ctd.run_container(
            &env.naiad,
            &format!("after{round}"),
            &["/bin/cat", "/data/hello.txt"],
        );
        assert_eq!(out, "hello from layer 2\n");
    }
    // The restarted snapshotter still knows every snapshot; plain images go on working too.
    let snaps = env.ctd.ctr_ok(&["snapshots", "--snapshotter", "naiad", "ls"]);
    let committed = |l: &str| {
        l.lines()
            .filter(|l| l.ends_with("Committed") || l.trim_end().ends_with("Committed"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(committed(&snaps), committed(&snaps_before), "the image's snapshots after restarts");
    pull(&env.ctd, &env.plain);
    assert_eq!(
        env.ctd.run_container(&env.plain, "plain-after", &["/bin/cat", "/data/small.txt"]),
        "small file\n"
    );

    let log = lines();
    assert!(
        !log.contains("FAIL"),
        "the reader saw errors: {} of {}",
        log.matches("FAIL").count(),
        log.lines().count()
    );
    assert_eq!(env.sn.image_mounts().len(), 1, "the lazy mount was neither lost nor doubled");
}

#[test]
fn removing_an_image_removes_its_mounts_and_cache() {
    require!(Root, Containerd);
    let env = setup();
    pull(&env.ctd, &env.naiad);
    assert_eq!(
        env.ctd.run_container(&env.naiad, "c1", &["/bin/cat", "/data/small.txt"]),
        "small file\n"
    );
    let cache = env.sn.root.join("cache");
    let cached = |suffix: &str| {
        std::fs::read_dir(&cache)
            .map(|rd| {
                rd.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(suffix)).count()
            })
            .unwrap_or(0)
    };
    assert!(cached(".blob") > 0, "the container's reads were cached");
    assert_eq!(env.sn.image_mounts().len(), 1);

    env.ctd.ctr_ok(&["images", "rm", "--sync", &env.naiad]);
    wait_for(|| env.sn.image_mounts().is_empty(), "the lazy mount to go");
    assert_eq!(
        cached(".blob"),
        0,
        "cache entries left: {:?}",
        std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.file_name()).collect::<Vec<_>>()
    );
    let snaps = env.ctd.ctr_ok(&["snapshots", "--snapshotter", "naiad", "ls"]);
    assert_eq!(snaps.lines().count(), 1, "only the header is left: {snaps}");
    assert_eq!(
        std::fs::read_dir(env.sn.root.join("images")).unwrap().count(),
        0,
        "mountpoint directories left"
    );
    // And it can be pulled and run again.
    pull(&env.ctd, &env.naiad);
    assert_eq!(
        env.ctd.run_container(&env.naiad, "c2", &["/bin/cat", "/data/hello.txt"]),
        "hello from layer 2\n"
    );
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn md5_hex(data: &[u8]) -> String {
    let mut c = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}
