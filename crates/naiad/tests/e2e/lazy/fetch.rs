//! The lazy read path's storage against a real registry: chunks fetched with Range requests
//! into the chunk cache, verified, byte-exact; authentication; errors for missing blobs and
//! dead registries, within the configured time.

use crate::support as common;

use common::registry::*;
use common::*;
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_oci::reference::ImageRef;
use naiad_storage::backend::{Backend, RegistryBackend, RegistryOptions};
use naiad_storage::cache::ChunkCache;
use naiad_storage::credentials::RegistryAuth;
use naiad_storage::fetch::{Fetcher, DEFAULT_MERGE_LIMIT_BYTES};
use naiad_storage::lazy::LazyBlob;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Converts the busybox test image into `naiad/bb:1` and returns its bootstrap.
fn naiad_image(reg: &Registry, creds: Option<(&str, &str)>) -> (tempfile::TempDir, Bootstrap) {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("bb");
    busybox_oci_layout(&layout, "1");
    let naiad_layout = dir.path().join("naiad");
    naiad_ok(args![
        "convert",
        format!("oci:{}:1", layout.display()),
        format!("oci:{}:1", naiad_layout.display())
    ]);
    skopeo_copy(&format!("oci:{}:1", naiad_layout.display()), &reg.docker_ref("naiad/bb:1"), creds);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fetched = rt
        .block_on(naiad_oci::check::fetch_naiad(
            &ImageRef::parse(&format!("oci:{}:1", naiad_layout.display())).unwrap(),
            false,
            dir.path(),
        ))
        .unwrap();
    let bs = Bootstrap::open(fetched[0].bootstrap.clone()).unwrap();
    (dir, bs)
}

fn options(reg: &Registry, auth: RegistryAuth) -> RegistryOptions {
    RegistryOptions {
        auth,
        insecure: true,
        timeout: Duration::from_secs(2),
        attempts: 2,
        ..RegistryOptions::new(&reg.addr, "naiad/bb")
    }
}

fn busybox_chunks(bs: &Bootstrap) -> Vec<naiad_format::extension::ChunkRecord> {
    let ino = bs.lookup(b"/bin/busybox").unwrap();
    (0..ino.chunk_count())
        .map(|i| match bs.chunk(&ino, i).unwrap() {
            ChunkSlot::Data(r) => *r,
            ChunkSlot::Hole => panic!("hole"),
        })
        .collect()
}

fn read_file_through_cache(
    bs: &Bootstrap,
    backend: Arc<dyn Backend>,
    cache_dir: &std::path::Path,
) -> Vec<u8> {
    let recs = busybox_chunks(bs);
    let ext = bs.extension();
    let cache = ChunkCache::open(cache_dir).unwrap();
    let fetcher = Arc::new(Fetcher::new(backend, ext.digester, DEFAULT_MERGE_LIMIT_BYTES));
    let lazy = LazyBlob::for_image(ext, &cache, &fetcher).unwrap();
    let mut out = Vec::new();
    for r in &recs {
        let blob = lazy[r.blob_index as usize].cached();
        lazy[r.blob_index as usize].ensure(std::slice::from_ref(r)).unwrap();
        let mut buf = vec![0u8; r.size as usize];
        blob.read_at(std::slice::from_ref(r), &mut buf, r.view_offset).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

#[test]
fn chunks_come_from_the_registry_byte_exact() {
    require!(Root);
    let reg = Registry::start(None);
    let (dir, bs) = naiad_image(&reg, None);
    let backend = Arc::new(RegistryBackend::new(options(&reg, RegistryAuth::Anonymous)).unwrap());
    let data = read_file_through_cache(&bs, backend, &dir.path().join("cache"));
    assert_eq!(data, std::fs::read("/bin/busybox").unwrap());
}

#[test]
fn basic_auth_is_used_and_wrong_credentials_are_refused() {
    require!(Root);
    let reg = Registry::start(Some(("naiad", "s3cret")));
    let (dir, bs) = naiad_image(&reg, reg.creds());
    let good = Arc::new(
        RegistryBackend::new(options(&reg, RegistryAuth::Basic("naiad".into(), "s3cret".into())))
            .unwrap(),
    );
    assert_eq!(
        read_file_through_cache(&bs, good, &dir.path().join("cache")),
        std::fs::read("/bin/busybox").unwrap()
    );
    let bad =
        RegistryBackend::new(options(&reg, RegistryAuth::Basic("naiad".into(), "wrong".into())))
            .unwrap();
    let rec = busybox_chunks(&bs)[0];
    let digest = bs.extension().blobs[rec.blob_index as usize].digest;
    let err = bad
        .read(&digest, rec.compressed_offset, u64::from(rec.compressed_size))
        .unwrap_err()
        .to_string();
    assert!(err.contains("authentication failed") || err.contains("denied"), "{err}");
    assert!(!err.contains("s3cret") && !err.contains("wrong"), "credentials leaked: {err}");
}

#[test]
fn missing_blobs_and_dead_registries_are_errors_in_bounded_time() {
    require!(Root);
    let reg = Registry::start(None);
    let (_dir, bs) = naiad_image(&reg, None);
    let backend = RegistryBackend::new(options(&reg, RegistryAuth::Anonymous)).unwrap();
    let err = backend.read(&[0x42; 32], 0, 10).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
    let rec = busybox_chunks(&bs)[0];
    let digest = bs.extension().blobs[rec.blob_index as usize].digest;
    drop(reg); // the registry is gone
    let started = Instant::now();
    let err = backend
        .read(&digest, rec.compressed_offset, u64::from(rec.compressed_size))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gave up after 2 attempts"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn kernel_mode_mount_fetches_only_what_is_read() {
    require!(Root);
    let reg = Registry::start(None);
    let (dir, bs) = naiad_image(&reg, None);
    let boot_path = dir.path().join("bootstrap");
    std::fs::write(&boot_path, bs.bytes()).unwrap();
    let backend = Arc::new(RegistryBackend::new(options(&reg, RegistryAuth::Anonymous)).unwrap());
    let cache = ChunkCache::open(&dir.path().join("cache")).unwrap();
    let fetcher =
        Arc::new(Fetcher::new(backend, bs.extension().digester, DEFAULT_MERGE_LIMIT_BYTES));
    let mnt = dir.path().join("mnt");
    let m = naiad_fs::mode::kernel::mount_kernel_mode(
        &boot_path,
        &bs,
        LazyBlob::for_image(bs.extension(), &cache, &fetcher).unwrap(),
        &dir.path().join("views"),
        &mnt,
        None,
        Default::default(),
    )
    .unwrap();
    let _guard = MountGuard(mnt.clone());
    // Metadata needs no data fetch at all.
    let names: Vec<_> =
        std::fs::read_dir(mnt.join("bin")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().any(|n| n == "busybox"), "{names:?}");
    assert_eq!(
        fetcher.stats.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a directory listing fetched data"
    );
    // One small file: only its frame comes over.
    assert!(std::fs::read_to_string(mnt.join("data/hello.txt")).unwrap().starts_with("hello"));
    let fetched = fetcher.stats.bytes_fetched.load(std::sync::atomic::Ordering::SeqCst);
    let total: u64 = bs.extension().blobs.iter().map(|b| b.compressed_size).sum();
    assert!(
        fetched > 0 && fetched * 10 < total,
        "fetched {fetched} of {total} bytes for one small file"
    );
    // The big file, byte-exact, through the kernel.
    assert_eq!(
        std::fs::read(mnt.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert!(!mnt.join("etc/hostname").exists(), "whiteout applied");
    m.unmount().unwrap();
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none(), "unmounted");
}

/// Runs `naiad mount IMAGE MNT` in the background and waits until the mount serves files.
fn spawn_mount(
    image: &str,
    mnt: &std::path::Path,
    work: &std::path::Path,
    mode: &str,
) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["mount", image])
        .arg(mnt)
        .args(["--insecure", "--mode", mode, "--cache-dir"])
        .arg(work.join("cache"))
        .arg("--runtime-dir")
        .arg(work.join("run"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !mnt.join("data/hello.txt").exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "mount did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn child_running(child: &std::process::Child) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", child.id())).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_exit(mut child: std::process::Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "naiad mount did not exit after the unmount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn naiad_mount_serves_an_image_lazily_in_both_modes() {
    require!(Root);
    let reg = Registry::start(None);
    let (dir, _bs) = naiad_image(&reg, None);
    let image = reg.docker_ref("naiad/bb:1");
    for mode in ["fanotify", "kernel", "fuse"] {
        let work = dir.path().join(mode);
        let mnt = work.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let child = spawn_mount(&image, &mnt, &work, mode);
        let _g = MountGuard(mnt.clone());
        // The server checks its mount every 250 ms: it must still be serving well after that.
        std::thread::sleep(Duration::from_millis(800));
        assert!(child_running(&child), "{mode}: the server stopped on its own");
        assert_eq!(
            std::fs::read(mnt.join("bin/busybox")).unwrap(),
            std::fs::read("/bin/busybox").unwrap(),
            "{mode}"
        );
        assert!(!mnt.join("etc/hostname").exists());
        naiad_ok(args!["umount", mnt]);
        assert!(wait_exit(child).success(), "{mode}: the mount process failed");
        assert!(std::fs::read_dir(&mnt).unwrap().next().is_none(), "{mode}: still mounted");
    }
    // SIGTERM unmounts too; the cache keeps what was fetched.
    let work = dir.path().join("term");
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let child = spawn_mount(&image, &mnt, &work, "kernel");
    let _g = MountGuard(mnt.clone());
    let _ = std::fs::read(mnt.join("bin/busybox")).unwrap();
    // While mounted, the cache entries are in use and gc leaves them.
    let cache_dir = work.join("cache");
    let ls: serde_json::Value =
        serde_json::from_str(&naiad_ok(args!["cache", "ls", "--cache-dir", cache_dir, "--json"]))
            .unwrap();
    assert!(ls.as_array().unwrap().iter().all(|e| e["in_use"] == true), "{ls}");
    let gc: serde_json::Value =
        serde_json::from_str(&naiad_ok(args!["cache", "gc", "--cache-dir", cache_dir, "--json"]))
            .unwrap();
    assert_eq!(gc.as_array().unwrap().len(), 0, "gc evicted a blob in use: {gc}");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(wait_exit(child).success());
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none(), "SIGTERM left the mount");
    let cached = ChunkCache::open(&work.join("cache")).unwrap().list().unwrap();
    assert!(cached.iter().any(|e| e.present_bytes > 0), "{cached:?}");
    assert!(cached.iter().all(|e| !e.in_use));
    let gc: serde_json::Value =
        serde_json::from_str(&naiad_ok(args!["cache", "gc", "--cache-dir", cache_dir, "--json"]))
            .unwrap();
    assert_eq!(gc.as_array().unwrap().len(), cached.len(), "{gc}");
    assert!(ChunkCache::open(&cache_dir).unwrap().list().unwrap().is_empty());
}

#[test]
fn a_dead_registry_gives_eio_in_bounded_time_and_reads_recover() {
    require!(Root);
    let mut reg = Registry::start(None);
    let (dir, bs) = naiad_image(&reg, None);
    let boot_path = dir.path().join("bootstrap");
    std::fs::write(&boot_path, bs.bytes()).unwrap();
    let opts = RegistryOptions {
        timeout: Duration::from_secs(1),
        attempts: 2,
        ..options(&reg, RegistryAuth::Anonymous)
    };
    let backend = Arc::new(RegistryBackend::new(opts).unwrap());
    let cache = ChunkCache::open(&dir.path().join("cache")).unwrap();
    let fetcher =
        Arc::new(Fetcher::new(backend, bs.extension().digester, DEFAULT_MERGE_LIMIT_BYTES));
    let mnt = dir.path().join("mnt");
    let m = naiad_fs::mode::kernel::mount_kernel_mode(
        &boot_path,
        &bs,
        LazyBlob::for_image(bs.extension(), &cache, &fetcher).unwrap(),
        &dir.path().join("views"),
        &mnt,
        None,
        Default::default(),
    )
    .unwrap();
    let _guard = MountGuard(mnt.clone());
    reg.kill();
    let started = Instant::now();
    let err = std::fs::read(mnt.join("bin/busybox")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "expected EIO, got {err}");
    // One file read is several FUSE reads: the first waits out the backend's limit (1 s x 2
    // attempts), the others fail at once.
    assert!(started.elapsed() < Duration::from_secs(5), "EIO took {:?}", started.elapsed());
    assert!(fetcher.stats.errors.load(std::sync::atomic::Ordering::SeqCst) > 0);
    reg.restart();
    // The kernel does not cache the failed pages: the same read succeeds once the fetcher
    // tries the registry again (within its retry delay), and until then fails cleanly.
    assert_eq!(read_when_back(&mnt.join("bin/busybox")), std::fs::read("/bin/busybox").unwrap());
    m.unmount().unwrap();
}

#[test]
fn flipped_bytes_are_caught_and_never_cached() {
    require!(Root);
    let reg = Registry::start(None);
    let (dir, bs) = naiad_image(&reg, None);
    let proxy = common::faulty::FaultyProxy::start(&reg.addr);
    proxy.set(common::faulty::Fault::Flip);
    let opts = RegistryOptions {
        insecure: true,
        timeout: Duration::from_secs(2),
        attempts: 1,
        ..RegistryOptions::new(&proxy.addr, "naiad/bb")
    };
    let fetcher = Arc::new(Fetcher::new(
        Arc::new(RegistryBackend::new(opts).unwrap()),
        bs.extension().digester,
        DEFAULT_MERGE_LIMIT_BYTES,
    ));
    let cache = ChunkCache::open(&dir.path().join("cache")).unwrap();
    let rec = busybox_chunks(&bs)[0];
    let lazy = LazyBlob::for_image(bs.extension(), &cache, &fetcher).unwrap();
    let blob = lazy[rec.blob_index as usize].cached();
    let err = lazy[rec.blob_index as usize].ensure(&[rec]).unwrap_err().to_string();
    assert!(err.contains("digest mismatch") || err.contains("decompression"), "{err}");
    assert_eq!(fetcher.stats.verify_failures.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(!blob.is_present(rec.view_offset, 1), "corrupt data was cached");
}

#[test]
fn the_daemon_serves_mounts_api_and_metrics() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require!(Root);
    let reg = Registry::start(None);
    let (dir, _bs) = naiad_image(&reg, None);
    let sock = dir.path().join("run/api.sock");
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["daemon", "--api"])
        .arg(&sock)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .args(["--cache-limit", "1", "--gc-interval", "1"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !sock.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "daemon socket did not appear");
        std::thread::sleep(Duration::from_millis(25));
    }
    let md = std::fs::metadata(&sock).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "the API socket is private");
    assert_eq!(md.uid(), rustix::process::geteuid().as_raw());
    let ctl = |args: &[&str]| {
        naiad_ok(
            &[&["ctl", "--api", sock.to_str().unwrap()][..], args]
                .concat()
                .iter()
                .map(std::ffi::OsStr::new)
                .collect::<Vec<_>>(),
        )
    };
    let image = reg.docker_ref("naiad/bb:1");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap().to_string();
    let mounted: serde_json::Value =
        serde_json::from_str(&ctl(&["mount", &image, &mnt_s, "--insecure", "--no-prefetch"]))
            .unwrap();
    assert_eq!(mounted["mountpoint"], mnt_s);
    let _g = MountGuard(mnt.clone());
    assert_eq!(
        std::fs::read(mnt.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    let list: serde_json::Value = serde_json::from_str(&ctl(&["list"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(
        list[0]["bytes_fetched"].as_u64().unwrap() > 0
            && list[0]["cache_misses"].as_u64().unwrap() > 0,
        "{list}"
    );
    let metrics = ctl(&["metrics"]);
    for m in [
        "naiad_backend_bytes_total{",
        "naiad_cache_misses_total{",
        "naiad_fetch_duration_seconds_bucket{",
        "naiad_verify_failures_total{",
        "naiad_prefetch_chunks{",
        "naiad_mounts 1",
    ] {
        assert!(metrics.contains(m), "metrics lack {m}:\n{metrics}");
    }
    // Prefetch the rest; it completes.
    ctl(&["prefetch", &mnt_s, "--all"]);
    let started = Instant::now();
    loop {
        let list: serde_json::Value = serde_json::from_str(&ctl(&["list"])).unwrap();
        let (done, total) = (
            list[0]["prefetch_done"].as_u64().unwrap(),
            list[0]["prefetch_total"].as_u64().unwrap(),
        );
        if total > 0 && done == total {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "prefetch did not finish: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
    ctl(&["umount", &mnt_s]);
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none(), "still mounted");
    let out = naiad(args!["ctl", "--api", sock, "umount", mnt]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("nothing is mounted")
    );
    // With the mount gone its blobs are unused: the 1-byte cache limit evicts them.
    let cache_dir = dir.path().join("cache");
    let started = Instant::now();
    while !ChunkCache::open(&cache_dir).unwrap().list().unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "the cache limit was not enforced");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A fuse-mode mount goes away with the daemon.
    ctl(&["mount", &image, &mnt_s, "--insecure", "--mode", "fuse"]);
    assert!(mnt.join("data/hello.txt").exists());
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    assert!(!sock.exists(), "socket left behind");
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none(), "the daemon's mount survived it");
}

#[test]
fn mirrors_are_tried_in_order_before_the_origin() {
    require!(Root);
    let mut origin = Registry::start(None);
    let mirror = Registry::start(None);
    let (dir, _bs) = naiad_image(&origin, None);
    // The mirror holds the same image.
    skopeo_copy(&origin.docker_ref("naiad/bb:1"), &mirror.docker_ref("naiad/bb:1"), None);
    let spec = naiad_daemon::spec::MountSpec {
        mode: naiad_daemon::spec::Mode::Kernel,
        insecure: true,
        timeout_secs: 2,
        prefetch: false,
        // A dead mirror first: it must be skipped.
        mirrors: vec!["127.0.0.1:9".into(), mirror.addr.clone()],
        ..naiad_daemon::spec::MountSpec::new(
            origin.docker_ref("naiad/bb:1"),
            dir.path().join("mnt"),
        )
    };
    let cache = Arc::new(ChunkCache::open(&dir.path().join("cache")).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = rt
        .block_on(naiad_daemon::mount::mount(spec, cache, &dir.path().join("run"), false))
        .unwrap();
    let _g = MountGuard(dir.path().join("mnt"));
    assert!(m.backend.contains(&mirror.addr), "{}", m.backend);
    origin.kill(); // only the mirror can serve data now
    assert_eq!(
        std::fs::read(dir.path().join("mnt/bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    m.unmount();
}

#[test]
fn a_killed_mount_process_can_be_unmounted_and_mounted_again() {
    require!(Root);
    let reg = Registry::start(None);
    let (dir, _bs) = naiad_image(&reg, None);
    let image = reg.docker_ref("naiad/bb:1");
    let work = dir.path().join("k");
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut child = spawn_mount(&image, &mnt, &work, "kernel");
    let _g = MountGuard(mnt.clone());
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = child.wait();
    // Data not cached yet cannot be served now: an error, not zeros and not a hang.
    let err = std::fs::read(mnt.join("bin/busybox")).unwrap_err();
    assert!(matches!(err.raw_os_error(), Some(5) | Some(107)), "{err}");
    naiad_ok(args!["umount", mnt]);
    let child = spawn_mount(&image, &mnt, &work, "kernel");
    assert_eq!(
        std::fs::read(mnt.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    naiad_ok(args!["umount", mnt]);
    assert!(wait_exit(child).success());
}

#[test]
fn a_killed_daemon_brings_its_mounts_back_served_from_its_cache() {
    require!(Root);
    let mut reg = Registry::start(None);
    let (dir, _bs) = naiad_image(&reg, None);
    let image = reg.docker_ref("naiad/bb:1");
    let sock = dir.path().join("run/api.sock");
    let ctl = |args: &[&std::ffi::OsStr]| naiad_ok(&[args!["ctl", "--api", sock], args].concat());
    let mut daemon = start_daemon(dir.path());
    let mnts = [("kernel", dir.path().join("mk")), ("fuse", dir.path().join("mf"))];
    let _guards: Vec<MountGuard> = mnts.iter().map(|(_, m)| MountGuard(m.clone())).collect();
    for (mode, mnt) in &mnts {
        std::fs::create_dir_all(mnt).unwrap();
        ctl(args!["mount", image, mnt, "--insecure", "--no-prefetch", "--mode", mode]);
        assert_eq!(
            std::fs::read(mnt.join("bin/busybox")).unwrap(),
            std::fs::read("/bin/busybox").unwrap(),
            "{mode}"
        );
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = daemon.wait();
    // Both mounts have lost their server: their readers wait for the next one (a keeper
    // holds each FUSE connection), then get the right bytes. (Out of the page cache first,
    // so that the reads reach the mounts.)
    let _cleanup = common::BelowGuard(dir.path().to_path_buf());
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    let waiting: Vec<_> = mnts
        .iter()
        .map(|(_, mnt)| {
            let p = mnt.join("bin/busybox");
            std::thread::spawn(move || std::fs::read(p))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(waiting.iter().all(|t| !t.is_finished()), "a read did not wait for the next daemon");
    // A second daemon on the same runtime directory is refused while one runs; with the old
    // one dead, the next one restores both mounts, even with the registry down: what was read
    // before comes from the cache the dead daemon filled.
    reg.kill();
    let mut daemon = start_daemon(dir.path());
    let mut other = std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["daemon", "--api"])
        .arg(dir.path().join("other.sock"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while other.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = other.kill();
            panic!("a second daemon on the same runtime directory was not refused");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = other.wait_with_output().unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("another naiad daemon (pid "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_str(&ctl(args!["list"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    for t in waiting {
        assert_eq!(
            t.join().unwrap().unwrap(),
            std::fs::read("/bin/busybox").unwrap(),
            "a read waiting across the restart"
        );
    }
    for (mode, mnt) in &mnts {
        assert_eq!(
            std::fs::read(mnt.join("bin/busybox")).unwrap(),
            std::fs::read("/bin/busybox").unwrap(),
            "{mode} after restart"
        );
    }
    let list: serde_json::Value = serde_json::from_str(&ctl(args!["list"])).unwrap();
    assert!(
        list.as_array().unwrap().iter().all(|m| m["bytes_fetched"] == 0),
        "served from the cache: {list}"
    );
    // Data never read needs the registry: back up, it is fetched.
    reg.restart();
    for (mode, mnt) in &mnts {
        assert_eq!(
            std::fs::read_to_string(mnt.join("data/hello.txt")).unwrap(),
            "hello from layer 2\n",
            "{mode}"
        );
    }
    // A clean stop unmounts everything and restores nothing next time.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    let mut daemon = start_daemon(dir.path());
    let list: serde_json::Value = serde_json::from_str(&ctl(args!["list"])).unwrap();
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn naiad_mount_daemon_detaches_and_umount_stops_the_server() {
    require!(Root);
    let reg = Registry::start(None);
    let (dir, _bs) = naiad_image(&reg, None);
    let mnt = dir.path().join("mnt");
    let run = dir.path().join("run");
    let started = Instant::now();
    naiad_ok(args![
        "mount",
        reg.docker_ref("naiad/bb:1"),
        mnt,
        "--insecure",
        "--daemon",
        "--cache-dir",
        dir.path().join("cache"),
        "--runtime-dir",
        run
    ]);
    let _g = MountGuard(mnt.clone());
    assert!(started.elapsed() < Duration::from_secs(30));
    // The command returned with the mount up, served by a background process.
    assert_eq!(
        std::fs::read(mnt.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    let log = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("mount-")))
        .expect("a server log");
    assert!(std::fs::read_to_string(&log).unwrap().contains("serving until unmounted"));
    naiad_ok(args!["umount", mnt]);
    // The server notices and exits: its views mount goes away.
    let started = Instant::now();
    while std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(run.to_str().unwrap()) {
        assert!(started.elapsed() < Duration::from_secs(10), "the background server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_config_file_supplies_dirs_insecure_registries_and_mirrors() {
    require!(Root);
    let mut origin = Registry::start(None);
    let mirror = Registry::start(None);
    let (dir, _bs) = naiad_image(&origin, None);
    skopeo_copy(&origin.docker_ref("naiad/bb:1"), &mirror.docker_ref("naiad/bb:1"), None);
    let cache = dir.path().join("cfg-cache");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "cache_dir = {:?}\nruntime_dir = {:?}\ntimeout_secs = 2\n[registries.\"{}\"]\ninsecure = true\nmirrors = [\"{}\"]\n[registries.\"{}\"]\ninsecure = true\n",
            cache.display().to_string(),
            dir.path().join("cfg-run").display().to_string(),
            origin.addr,
            mirror.addr,
            mirror.addr
        ),
    )
    .unwrap();
    let mnt = dir.path().join("mnt");
    // No --insecure, no dirs, no mirror on the command line: all from the file.
    naiad_ok(args!["--config", cfg, "mount", origin.docker_ref("naiad/bb:1"), mnt, "--daemon"]);
    let _g = MountGuard(mnt.clone());
    origin.kill();
    assert_eq!(
        std::fs::read(mnt.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap(),
        "served by the mirror"
    );
    let ls: serde_json::Value =
        serde_json::from_str(&naiad_ok(args!["--config", cfg, "cache", "ls", "--json"])).unwrap();
    assert!(!ls.as_array().unwrap().is_empty(), "the cache dir came from the config file");
    naiad_ok(args!["umount", mnt]);
    // The background server stops (its views mount goes) before the test's directory goes.
    let run = dir.path().join("cfg-run");
    let started = Instant::now();
    while std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(run.to_str().unwrap()) {
        assert!(started.elapsed() < Duration::from_secs(10), "the background server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A typo in the file is an error naming the key.
    std::fs::write(&cfg, "cache_dri = \"/tmp\"\n").unwrap();
    let out = naiad(args!["--config", cfg, "cache", "ls"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cache_dri"));
}

#[test]
fn registry_credentials_can_come_from_the_config_file() {
    require!(Root);
    let reg = Registry::start(Some(("cfguser", "cfg-secret-pw")));
    let (dir, _bs) = naiad_image(&reg, reg.creds());
    // No docker config at all: only naiad's config file has the credentials.
    let docker = dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let cfg = dir.path().join("config.toml");
    let mnt = dir.path().join("mnt");
    let mount = |password: &str| {
        std::fs::write(&cfg, format!("[registries.\"{}\"]\ninsecure = true\nusername = \"cfguser\"\npassword = \"{password}\"\n", reg.addr)).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
            .env("DOCKER_CONFIG", &docker)
            .args(["--config"])
            .arg(&cfg)
            .args(["mount", &reg.docker_ref("naiad/bb:1")])
            .arg(&mnt)
            .args(["--mode", "kernel", "--daemon", "--cache-dir"])
            .arg(dir.path().join("cache"))
            .arg("--runtime-dir")
            .arg(dir.path().join("run"))
            .output()
            .unwrap()
    };
    let out = mount("wrong-pw");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("authentication failed") && !err.contains("wrong-pw"),
        "{err}"
    );
    let out = mount("cfg-secret-pw");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _g = MountGuard(mnt.clone());
    assert_eq!(
        std::fs::read(mnt.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    naiad_ok(args!["umount", mnt]);
    // The background server notices and exits (its views mount goes away) before the
    // temporary directory is removed.
    let run = dir.path().join("run");
    let started = Instant::now();
    while std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(run.to_str().unwrap()) {
        assert!(started.elapsed() < Duration::from_secs(10), "the background server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("mount-")))
        .unwrap();
    assert!(!std::fs::read_to_string(log).unwrap().contains("cfg-secret-pw"));
}
