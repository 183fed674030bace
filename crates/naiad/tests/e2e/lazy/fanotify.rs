//! The fanotify mode against the real kernel: EROFS mounted straight on the cache files,
//! filled through fanotify pre-content events. Only the ranges read are fetched (the metrics
//! and the cache file's allocated blocks show it), the whole tree matches the source, a hole
//! is never read as data, concurrent readers share fetches, and what was read once is read
//! again with nothing in user space. Needs root and a kernel with pre-content events (6.14+).

use crate::support as common;

use common::registry::*;
use common::tree::make_tree;
use common::*;
use naiad_format::bootstrap::Bootstrap;
use naiad_storage::backend::{Backend, LocalBackend, RegistryBackend, RegistryOptions};
use naiad_storage::blob_store::BlobDirs;
use naiad_storage::cache::ChunkCache;
use naiad_storage::credentials::RegistryAuth;
use naiad_storage::fetch::{Fetcher, DEFAULT_MERGE_LIMIT_BYTES};
use naiad_storage::lazy::LazyBlob;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Image {
    dir: tempfile::TempDir,
    bs: Arc<Bootstrap>,
}

impl Image {
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn bootstrap(&self) -> PathBuf {
        self.dir.path().join("out/bootstrap")
    }
}

fn image() -> Image {
    assert!(is_root(), "mounting needs root");
    naiad_fs::fanotify::supported(&std::env::temp_dir())
        .expect("this kernel runs the fanotify mode");
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("src"), false);
    naiad_ok(args!["build", dir.path().join("src"), "-o", dir.path().join("out")]);
    let bs = Arc::new(
        Bootstrap::open(std::fs::read(dir.path().join("out/bootstrap")).unwrap()).unwrap(),
    );
    Image { dir, bs }
}

fn mount(
    img: &Image,
    backend: Arc<dyn Backend>,
    name: &str,
) -> (naiad_fs::mode::fanotify::FanotifyMount, Arc<Fetcher>, PathBuf, ChunkCache) {
    let cache = ChunkCache::open(&img.dir.path().join(format!("cache-{name}"))).unwrap();
    let fetcher =
        Arc::new(Fetcher::new(backend, img.bs.extension().digester, DEFAULT_MERGE_LIMIT_BYTES));
    let mnt = img.dir.path().join(format!("mnt-{name}"));
    let run = img.dir.path().join(format!("run-{name}"));
    let blobs = LazyBlob::for_image(img.bs.extension(), &cache, &fetcher).unwrap();
    let m = naiad_fs::mode::fanotify::mount_fanotify_mode(
        &img.bootstrap(),
        &img.bs,
        blobs,
        &mnt,
        &run,
        env!("CARGO_BIN_EXE_naiad").as_ref(),
        Default::default(),
    )
    .unwrap();
    (m, fetcher, mnt, cache)
}

fn local(img: &Image) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new(BlobDirs::new(vec![img.dir.path().join("out")])))
}

/// Bytes the cache's frame files hold on disk (allocated blocks).
fn allocated(cache: &ChunkCache) -> u64 {
    std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "frames"))
        .flat_map(|d| {
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        })
        .sum()
}

#[test]
fn only_the_ranges_read_are_fetched_and_the_tree_matches_the_source() {
    require!(Root, Fanotify);
    let img = image();
    let (m, fetcher, mnt, cache) = mount(&img, local(&img), "a");
    let _g = MountGuard(mnt.clone());
    let view: u64 = img.bs.extension().blobs.iter().map(|b| b.view_size).sum();
    // Listing the tree reads the bootstrap only.
    let _ = std::fs::read_dir(mnt.join("many")).unwrap().count();
    assert_eq!(fetcher.stats.requests.load(Ordering::SeqCst), 0, "a listing fetched data");
    assert_eq!(allocated(&cache), 0);
    // One file of one chunk: about that chunk is fetched and stored, no more.
    let want = std::fs::read(img.src().join("files/one_chunk")).unwrap();
    assert_eq!(std::fs::read(mnt.join("files/one_chunk")).unwrap(), want);
    let (fetched, stored) = (fetcher.stats.bytes_fetched.load(Ordering::SeqCst), allocated(&cache));
    let ext = img.bs.extension();
    let present: u64 =
        (0..ext.blobs.len()).map(|i| cache.image_blob(ext, i).unwrap().present_bytes()).sum();
    assert!(
        fetched > 0
            && stored >= want.len() as u64
            && stored < 4 * want.len() as u64
            && stored * 4 < view,
        "fetched {fetched}, stored {stored} of {view} for {} bytes",
        want.len()
    );
    assert!(
        present >= want.len() as u64 && present <= stored,
        "present {present}, stored {stored}"
    );
    // The whole tree, every entry type and attribute.
    assert_same_tree("fanotify mode", &snapshot(&img.src()), &snapshot(&mnt), Skip::default());
    assert_eq!(fetcher.stats.verify_failures.load(Ordering::SeqCst), 0);
    m.unmount().unwrap();
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none(), "unmounted");
}

#[test]
fn a_hole_is_never_read_as_data_and_reads_recover() {
    require!(Root, Fanotify);
    let img = image();
    let mut reg = Registry::start(None);
    // The image's blobs in the registry, read back through the registry backend.
    let repo = "naiad/fan";
    for b in &img.bs.extension().blobs {
        let hex = naiad_format::digest::to_hex(&b.digest);
        reg.push_blob(repo, &std::fs::read(img.dir.path().join("out").join(&hex)).unwrap());
    }
    let opts = RegistryOptions {
        auth: RegistryAuth::Anonymous,
        insecure: true,
        timeout: Duration::from_secs(1),
        attempts: 2,
        ..RegistryOptions::new(&reg.addr, repo)
    };
    let (m, fetcher, mnt, _cache) = mount(&img, Arc::new(RegistryBackend::new(opts).unwrap()), "b");
    let _g = MountGuard(mnt.clone());
    assert_eq!(std::fs::read(mnt.join("files/tiny")).unwrap(), b"x");
    reg.kill();
    let started = Instant::now();
    let err = std::fs::read(mnt.join("files/multi_chunk")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "EIO took {:?}", started.elapsed());
    assert!(fetcher.stats.errors.load(Ordering::SeqCst) > 0);
    reg.restart();
    assert_eq!(
        read_when_back(&mnt.join("files/multi_chunk")),
        std::fs::read(img.src().join("files/multi_chunk")).unwrap()
    );
    m.unmount().unwrap();
}

#[test]
fn concurrent_readers_share_fetches_and_get_exact_bytes() {
    require!(Root, Fanotify);
    let img = image();
    let (m, fetcher, mnt, _cache) = mount(&img, local(&img), "c");
    let _g = MountGuard(mnt.clone());
    let want = Arc::new(std::fs::read(img.src().join("files/multi_chunk")).unwrap());
    random_readers(&mnt.join("files/multi_chunk"), &want);
    // Every chunk of the file was fetched at most once.
    let chunks = img.bs.extension().chunks.len() as u64;
    assert!(
        fetcher.stats.chunks_fetched.load(Ordering::SeqCst) <= chunks,
        "{} chunks fetched of {chunks}",
        fetcher.stats.chunks_fetched.load(Ordering::SeqCst)
    );
    m.unmount().unwrap();
}

#[test]
fn a_fully_cached_image_is_read_without_the_mount_process() {
    require!(Root, Fanotify);
    read_without_the_mount_process("fanotify", false);
}

/// An image whose every frame is in the cache mounts again in fanotify mode (nothing left to
/// watch: its keeper gets no writers) and reads without the process.
#[test]
fn a_fully_cached_image_mounts_again_in_fanotify_mode() {
    require!(Root, Fanotify);
    read_without_the_mount_process("fanotify", true);
}

/// Kernel mode mounts a blob complete in the cache straight from its cache file: a cached
/// image mounted again reads without the process (no FUSE view in between).
#[test]
fn a_cached_image_mounted_again_in_kernel_mode_is_read_without_the_mount_process() {
    require!(Root, Fanotify);
    read_without_the_mount_process("kernel", true);
}

/// Starts `naiad mount` of the image in `mode` at `work/mnt` (cache and runtime dir in
/// `work`) and waits for the tree to show.
fn spawn_mount(img: &Image, mode: &str, work: &std::path::Path) -> std::process::Child {
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
        .arg("mount")
        .arg(img.bootstrap())
        .arg(&mnt)
        .args(["--mode", mode, "--no-prefetch", "--blob-dir"])
        .arg(img.dir.path().join("out"))
        .arg("--cache-dir")
        .arg(work.join("cache"))
        .arg("--runtime-dir")
        .arg(work.join("run"))
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !mnt.join("files").exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "mount did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// `sha256sum` of `path` within `secs` seconds: the digest, or None if it did not finish.
fn sha256_within(path: &std::path::Path, secs: u32) -> Option<String> {
    let out = std::process::Command::new("timeout")
        .args([secs.to_string().as_str(), "sha256sum"])
        .arg(path)
        .output()
        .unwrap();
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// Mounts the image in `mode`, reads everything once (every blob complete in the cache),
/// mounts it again if `remount`, then freezes the mount process: a read that needed it would
/// wait, so with the page cache dropped a reader with a deadline shows it does not.
fn read_without_the_mount_process(mode: &str, remount: bool) {
    let img = image();
    let work = img.dir.path().join("f");
    let mnt = work.join("mnt");
    let mut child = spawn_mount(&img, mode, &work);
    let _g = MountGuard(mnt.clone());
    assert_same_tree("first read", &snapshot(&img.src()), &snapshot(&mnt), Skip::default());
    if remount {
        naiad_ok(args!["umount", mnt]);
        assert!(child.wait().unwrap().success());
        child = spawn_mount(&img, mode, &work);
    }
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let got = sha256_within(&mnt.join("files/multi_chunk"), 20);
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    assert_eq!(
        got,
        sha256_within(&img.src().join("files/multi_chunk"), 20),
        "a read waited for the frozen mount process, or read wrong bytes"
    );
    naiad_ok(args!["umount", mnt]);
    assert!(child.wait().unwrap().success());
}

/// The pids of the fanotify keepers serving `mnt`.
fn keepers_of(mnt: &std::path::Path) -> Vec<rustix::process::Pid> {
    let needle = mnt.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            (args.contains(&&b"fanotify-keeper"[..]) && args.contains(&needle))
                .then(|| rustix::process::Pid::from_raw(pid))?
        })
        .collect()
}

/// The frames of a partly cached image that were read are files no one watches any more:
/// with the mount process *and* the keeper frozen, re-reading what was read works (page
/// cache dropped), while a read of data never read waits for them.
#[test]
fn the_frames_read_are_read_again_with_nothing_in_user_space() {
    require!(Root, Fanotify);
    let img = image();
    let work = img.dir.path().join("f");
    let mnt = work.join("mnt");
    let child = spawn_mount(&img, "fanotify", &work);
    let _g = MountGuard(mnt.clone());
    let first = sha256_within(&mnt.join("files/multi_chunk"), 20);
    assert_eq!(first, sha256_within(&img.src().join("files/multi_chunk"), 20));
    // A file none of whose chunks are cached yet (the cache is this mount's, opened here only
    // to look).
    let cache = ChunkCache::open(&work.join("cache")).unwrap();
    let ext = img.bs.extension();
    let blobs: Vec<_> = (0..ext.blobs.len()).map(|i| cache.image_blob(ext, i).unwrap()).collect();
    let unread = ["files/one_chunk", "files/text", "many/entry-00001", "files/holey"]
        .into_iter()
        .find(|p| {
            let ino = img.bs.lookup(format!("/{p}").as_bytes()).unwrap();
            (0..ino.chunk_count()).all(|i| match img.bs.chunk(&ino, i).unwrap() {
                naiad_format::bootstrap::ChunkSlot::Data(c) => {
                    !blobs[c.blob_index as usize].is_present(c.view_offset, u64::from(c.size))
                }
                naiad_format::bootstrap::ChunkSlot::Hole => true,
            })
        })
        .expect("a file with nothing cached");
    drop(blobs);
    let keepers = keepers_of(&mnt);
    assert_eq!(keepers.len(), 1, "one keeper serves the mount");
    let frozen = [rustix::process::Pid::from_child(&child), keepers[0]];
    for p in frozen {
        rustix::process::kill_process(p, rustix::process::Signal::STOP).unwrap();
    }
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let again = sha256_within(&mnt.join("files/multi_chunk"), 20);
    let blocked = sha256_within(&mnt.join(unread), 3);
    for p in frozen {
        rustix::process::kill_process(p, rustix::process::Signal::CONT).unwrap();
    }
    assert_eq!(again, first, "re-reading what was read needed user space, or read wrong bytes");
    assert_eq!(blocked, None, "{unread}, never read, was read with the keeper frozen");
    assert_eq!(
        sha256_within(&mnt.join(unread), 20),
        sha256_within(&img.src().join(unread), 20),
        "{unread} after the thaw"
    );
    naiad_ok(args!["umount", mnt]);
    let mut child = child;
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_killed_daemon_costs_readers_a_delay_never_an_error_or_wrong_bytes() {
    require!(Root, Fanotify);
    restart_under_readers("fanotify");
}

/// The same in the FUSE modes: the connection is held by a keeper and taken over.
#[test]
fn a_killed_daemon_costs_readers_a_delay_in_kernel_mode() {
    require!(Root, Fanotify);
    restart_under_readers("kernel");
}

#[test]
fn a_killed_daemon_costs_readers_a_delay_in_fuse_mode() {
    require!(Root, Fanotify);
    restart_under_readers("fuse");
}

/// A reader loops over every file (checking bytes) while the daemon serving `mode` is
/// killed with `kill -9` (first before any read, then mid-read) and started again.
fn restart_under_readers(mode: &str) {
    let img = image();
    let (work, mnt, mut daemon, _g) = daemon_mount(&img, "g", mode);
    // Every regular file of the source, with its bytes.
    let files: Vec<(PathBuf, Vec<u8>)> = walk(&img.src())
        .into_iter()
        .map(|p| (p.strip_prefix(img.src()).unwrap().to_path_buf(), std::fs::read(&p).unwrap()))
        .collect();
    assert!(files.len() > 10);
    // The daemon dies before anything is read: the reader's first read must wait for it.
    kill9(&mut daemon);
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (mnt, progress) = (mnt.clone(), progress.clone());
        std::thread::spawn(move || {
            let (mut errors, mut wrong) = (Vec::new(), Vec::new());
            for _pass in 0..3 {
                for (rel, want) in &files {
                    match std::fs::read(mnt.join(rel)) {
                        Ok(got) if &got == want => {}
                        Ok(_) => wrong.push(rel.clone()),
                        Err(e) => errors.push(format!("{}: {e}", rel.display())),
                    }
                    progress.fetch_add(1, Ordering::SeqCst);
                }
            }
            (errors, wrong)
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let stalled_at = progress.load(Ordering::SeqCst);
    assert!(
        stalled_at < 3 * 11,
        "the reader did not wait for the dead daemon ({stalled_at} reads done)"
    );
    let mut daemon = start_daemon(&work);
    // Once more while the reader runs.
    std::thread::sleep(Duration::from_millis(200));
    kill9(&mut daemon);
    std::thread::sleep(Duration::from_millis(500));
    let mut daemon = start_daemon(&work);
    let (errors, wrong) = reader.join().unwrap();
    assert!(errors.is_empty(), "read errors across daemon restarts: {errors:?}");
    assert!(wrong.is_empty(), "wrong bytes across daemon restarts: {wrong:?}");
    naiad_ok(args!["ctl", "--api", work.join("run/api.sock"), "umount", mnt]);
    assert!(!naiad_daemon::spec::Mode::Auto.is_mounted(&mnt));
    // With the mount gone, its keepers are gone too.
    let keepers = || -> Vec<PathBuf> {
        std::fs::read_dir(work.join("run"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock") && !p.ends_with("api.sock"))
            .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
            .collect()
    };
    let started = Instant::now();
    while !keepers().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "keepers outlived their mount: {:?}",
            keepers()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
}

/// The process holding a daemon mount's FUSE connection sleeps while the mount is used: it
/// must not wait on the queue every request of the connection wakes (that cost a wake-up of
/// it, on another CPU, per request).
#[test]
fn the_fuse_keeper_sleeps_through_requests() {
    require!(Root, Fanotify);
    let img = image();
    let (work, mnt, mut daemon, _g) = daemon_mount(&img, "k", "fuse");
    let keeper = process_running(&["fuse-keeper", mnt.to_str().unwrap()])
        .expect("a fuse keeper for the mount");
    // A lookup of a missing name is not cached (no negative entry): every one is a request.
    let (before, started) = (context_switches(keeper), Instant::now());
    let lookups = 3000;
    for i in 0..lookups {
        assert!(std::fs::metadata(mnt.join(format!("missing-{}", i % 7))).is_err());
    }
    let (woke, secs) = (context_switches(keeper) - before, started.elapsed().as_secs());
    naiad_ok(args!["ctl", "--api", work.join("run/api.sock"), "umount", mnt]);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    // It looks at the connection once a second.
    assert!(
        woke <= 3 + 2 * secs,
        "the keeper woke {woke} times during {lookups} lookups in {secs} s"
    );
}

/// A daemon started in the work directory `dir` of the image's temp dir, and the image
/// mounted through it in `mode` at `dir/mnt`: (work dir, mount point, daemon, guard).
fn daemon_mount(
    img: &Image,
    dir: &str,
    mode: &str,
) -> (PathBuf, PathBuf, std::process::Child, MountGuard) {
    let work = img.dir.path().join(dir);
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let daemon = start_daemon(&work);
    let guard = MountGuard(mnt.clone());
    naiad_ok(args![
        "ctl",
        "--api",
        work.join("run/api.sock"),
        "mount",
        img.bootstrap(),
        mnt,
        "--blob-dir",
        img.dir.path().join("out"),
        "--mode",
        mode,
        "--no-prefetch"
    ]);
    (work, mnt, daemon, guard)
}

/// The pid of the process whose command line has every one of `words`.
fn process_running(words: &[&str]) -> Option<u32> {
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?)
            .replace('\0', " ");
        words.iter().all(|w| cmd.contains(w)).then_some(pid)
    })
}

/// Context switches of every thread of process `pid` so far.
fn context_switches(pid: u32) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        n += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    n
}

/// Regular files under `root`.
fn walk(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(walk(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    out
}
