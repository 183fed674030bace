//! Faults (issue 6): what a bad network, a full disk or a crash does to lazy reads.
//!
//! The registry is real (docker-registry); the network faults come from a relay in front of
//! it (`common::faulty`), the full disk from a small tmpfs, the crash from `kill -9`. In both
//! lazy modes a read gets the right bytes or EIO within the backend's bound (attempts x
//! timeout), never wrong bytes; nothing wrong is cached (every chunk marked present passes
//! verification); and reads recover once the fault ends. Needs root.

use crate::support as common;

use common::faulty::{http_date_in, Fault, FaultyProxy};
use common::registry::*;
use common::*;
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::extension::ChunkRecord;
use naiad_oci::reference::ImageRef;
use naiad_storage::backend::{RegistryBackend, RegistryOptions};
use naiad_storage::cache::check::check_cached_blob;
use naiad_storage::cache::{CachedBlob, ChunkCache};
use naiad_storage::credentials::RegistryAuth;
use naiad_storage::fetch::{Fetcher, DEFAULT_MERGE_LIMIT_BYTES};
use naiad_storage::lazy::LazyBlob;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per request.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Per read, the first included.
const ATTEMPTS: u32 = 2;
/// What a read may take beyond the backend's bound before it ends: thread and FUSE
/// scheduling on a busy machine, not waiting on the network.
const SLACK: Duration = Duration::from_secs(1);
const EIO: i32 = 5;
/// The file the tests read: about 2 MiB, several chunks.
const FILE: &str = "bin/busybox";

/// The longest a backend read may take: every attempt's timeout.
fn bound() -> Duration {
    TIMEOUT * ATTEMPTS
}

fn expected() -> Vec<u8> {
    std::fs::read("/bin/busybox").unwrap()
}

/// The busybox test image converted (chunks of `chunk_size`) and pushed to a registry of its
/// own as `naiad/bb:1`.
struct Image {
    reg: Registry,
    dir: tempfile::TempDir,
    bs: Arc<Bootstrap>,
    boot_path: PathBuf,
}

fn image(chunk_size: &str) -> Image {
    let reg = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("bb");
    busybox_oci_layout(&layout, "1");
    let naiad_layout = dir.path().join("naiad");
    let naiad_ref = format!("oci:{}:1", naiad_layout.display());
    naiad_ok(args![
        "convert",
        "--chunk-size",
        chunk_size,
        format!("oci:{}:1", layout.display()),
        naiad_ref
    ]);
    skopeo_copy(&naiad_ref, &reg.docker_ref("naiad/bb:1"), None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fetched = rt
        .block_on(naiad_oci::check::fetch_naiad(
            &ImageRef::parse(&naiad_ref).unwrap(),
            false,
            dir.path(),
        ))
        .unwrap();
    let boot_path = dir.path().join("bootstrap");
    std::fs::write(&boot_path, &fetched[0].bootstrap).unwrap();
    let bs = Arc::new(Bootstrap::open(fetched[0].bootstrap.clone()).unwrap());
    Image { reg, dir, bs, boot_path }
}

impl Image {
    /// The chunks of `FILE`.
    fn file_chunks(&self) -> Vec<ChunkRecord> {
        let ino = self.bs.lookup(format!("/{FILE}").as_bytes()).unwrap();
        (0..ino.chunk_count())
            .filter_map(|i| match self.bs.chunk(&ino, i).unwrap() {
                ChunkSlot::Data(r) => Some(*r),
                ChunkSlot::Hole => None,
            })
            .collect()
    }

    /// Checks every chunk marked present in `cache_dir` against its digest (what `naiad
    /// cache verify` does); returns (chunks present, chunks of the image).
    fn assert_cache_clean(&self, cache_dir: &Path) -> (u64, u64) {
        let ext = self.bs.extension();
        let (mut present, mut total) = (0, 0);
        for (i, b) in ext.blobs.iter().enumerate() {
            let r = check_cached_blob(
                cache_dir,
                &b.digest,
                b.view_size,
                ext.blob_chunks(i as u32),
                ext.digester,
                false,
            )
            .unwrap();
            assert!(
                r.bad.is_empty() && r.verified == r.present,
                "chunks that fail verification are marked present: {r:?}"
            );
            present += r.present;
            total += r.chunks;
        }
        (present, total)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Kernel,
    Fuse,
    /// Fuse mode served through FUSE over io_uring.
    FuseRing,
}

/// The modes this kernel has.
fn modes() -> Vec<Mode> {
    [Mode::Kernel, Mode::Fuse, Mode::FuseRing]
        .into_iter()
        .filter(|m| *m != Mode::FuseRing || has_fuse_uring())
        .collect()
}

/// A lazy mount made in this process, its blobs read from `registry` ("host:port"), with a
/// fresh work directory (and so a cold kernel page cache) each time. Unmounted on drop.
struct Lazy {
    handle: Option<Box<dyn std::any::Any>>,
    _guard: MountGuard,
    mnt: PathBuf,
    fetcher: Arc<Fetcher>,
    blobs: Vec<Arc<CachedBlob>>,
    _work: tempfile::TempDir,
}

impl Lazy {
    fn mount(img: &Image, mode: Mode, registry: &str, cache_dir: Option<&Path>) -> Lazy {
        let work = tempfile::Builder::new().prefix("mount").tempdir_in(img.dir.path()).unwrap();
        let cache = ChunkCache::open(cache_dir.unwrap_or(&work.path().join("cache"))).unwrap();
        let opts = RegistryOptions {
            auth: RegistryAuth::Anonymous,
            insecure: true,
            timeout: TIMEOUT,
            attempts: ATTEMPTS,
            ..RegistryOptions::new(registry, "naiad/bb")
        };
        let fetcher = Arc::new(Fetcher::new(
            Arc::new(RegistryBackend::new(opts).unwrap()),
            img.bs.extension().digester,
            DEFAULT_MERGE_LIMIT_BYTES,
        ));
        let lazy = LazyBlob::for_image(img.bs.extension(), &cache, &fetcher).unwrap();
        let blobs: Vec<Arc<CachedBlob>> = lazy.iter().map(|b| b.cached().clone()).collect();
        let mnt = work.path().join("mnt");
        let handle: Box<dyn std::any::Any> = match mode {
            Mode::Kernel => Box::new(
                naiad_fs::mode::kernel::mount_kernel_mode(
                    &img.boot_path,
                    &img.bs,
                    lazy.clone(),
                    &work.path().join("views"),
                    &mnt,
                    None,
                    Default::default(),
                )
                .unwrap(),
            ),
            Mode::Fuse => {
                let fs = naiad_fs::mode::fuse::ImageFs::new(img.bs.clone(), lazy.clone());
                Box::new(
                    naiad_fs::mode::fuse::mount_fuse_mode(fs, &mnt, None, Default::default())
                        .unwrap(),
                )
            }
            Mode::FuseRing => Box::new(mount_fuse_ring(
                naiad_fs::mode::fuse::ImageFs::new(img.bs.clone(), lazy.clone()),
                &mnt,
            )),
        };
        Lazy {
            handle: Some(handle),
            _guard: MountGuard(mnt.clone()),
            mnt,
            fetcher,
            blobs,
            _work: work,
        }
    }

    fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.mnt.join(FILE))
    }

    /// Bytes marked present in this process's view of the cache.
    fn present_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.present_bytes()).sum()
    }

    fn stat(
        &self,
        f: impl Fn(&naiad_storage::fetch::FetchStats) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        f(&self.fetcher.stats).load(Ordering::SeqCst)
    }
}

impl Drop for Lazy {
    fn drop(&mut self) {
        drop(self.handle.take());
    }
}

/// The next `k` requests get `fault`: the backend retries them, so the read succeeds,
/// byte-exact, and what it cached verifies.
fn rides_out(img: &Image, proxy: &FaultyProxy, mode: Mode, fault: Fault, k: u32) -> Lazy {
    let m = Lazy::mount(img, mode, &proxy.addr, None);
    let before = proxy.count(fault.name());
    proxy.set_next(fault.clone(), k);
    let data = m.read().unwrap_or_else(|e| {
        panic!("{mode:?}, {fault:?} x{k}: the read failed although a retry was possible: {e}")
    });
    assert!(data == expected(), "{mode:?}, {fault:?} x{k}: wrong bytes");
    assert_eq!(proxy.count(fault.name()), before + k as usize, "{mode:?}: the fault was not hit");
    let (present, _) = img.assert_cache_clean(m._work.path().join("cache").as_path());
    assert!(present > 0, "{mode:?}: nothing was cached");
    m
}

/// Every request gets `fault`: the read fails with EIO within the backend's bound and caches
/// nothing; once the fault ends, reads succeed byte-exact (after the fetcher's retry delay).
fn fails_then_recovers(img: &Image, proxy: &FaultyProxy, mode: Mode, fault: Fault) -> Lazy {
    let m = Lazy::mount(img, mode, &proxy.addr, None);
    proxy.set(fault.clone());
    let started = Instant::now();
    let err = m.read().expect_err("a read through a lasting fault succeeded");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(EIO), "{mode:?}, {fault:?}: {err}");
    assert!(
        took < bound() + SLACK,
        "{mode:?}, {fault:?}: EIO took {took:?}, the bound is {:?}",
        bound()
    );
    assert_eq!(m.present_bytes(), 0, "{mode:?}, {fault:?}: something was cached from bad answers");
    assert!(m.stat(|s| &s.errors) > 0);
    proxy.set(Fault::Pass);
    assert!(
        read_when_back(&m.mnt.join(FILE)) == expected(),
        "{mode:?}, {fault:?}: wrong bytes after recovery"
    );
    let (present, _) = img.assert_cache_clean(m._work.path().join("cache").as_path());
    assert!(present > 0, "{mode:?}: nothing was cached after recovery");
    m
}

fn setup() -> (Image, FaultyProxy) {
    assert!(is_root(), "mounting needs root");
    let img = image("1M");
    let proxy = FaultyProxy::start(&img.reg.addr);
    (img, proxy)
}

#[test]
fn connection_refused_gives_eio_in_bounded_time_then_reads_recover() {
    require!(Root);
    let (img, proxy) = setup();
    for mode in modes() {
        fails_then_recovers(&img, &proxy, mode, Fault::Refuse);
    }
}

#[test]
fn a_reset_mid_body_is_retried_or_eio_never_cached() {
    require!(Root);
    let (img, proxy) = setup();
    for mode in modes() {
        rides_out(&img, &proxy, mode, Fault::ResetAfter(1000), 1);
        fails_then_recovers(&img, &proxy, mode, Fault::ResetAfter(1000));
    }
}

#[test]
fn bursts_of_503_are_retried_and_a_longer_burst_is_eio_until_it_ends() {
    require!(Root);
    let (img, proxy) = setup();
    for mode in modes() {
        rides_out(&img, &proxy, mode, Fault::Unavailable, ATTEMPTS - 1);
        fails_then_recovers(&img, &proxy, mode, Fault::Unavailable);
    }
}

/// The retry of the request answered `429` (same range) arrived no earlier than `not_before`
/// after it, measured on the relay's clock.
fn assert_retried_after(proxy: &FaultyProxy, not_before: impl Fn(&common::faulty::Seen) -> bool) {
    let seen = proxy.seen();
    let i = seen.iter().rposition(|s| s.fault == "429").expect("a 429 was sent");
    let retry =
        seen[i + 1..].iter().find(|s| s.range == seen[i].range).expect("the request was retried");
    assert!(not_before(retry), "retried too early: {:?} then {:?}", seen[i], retry);
}

#[test]
fn too_many_requests_waits_as_retry_after_says_within_the_bound() {
    require!(Root);
    let (img, proxy) = setup();
    for mode in modes() {
        // Seconds: the retry waits at least that long, and the read succeeds.
        rides_out(&img, &proxy, mode, Fault::TooMany("1".into()), 1);
        let seen = proxy.seen();
        let first = seen.iter().rposition(|s| s.fault == "429").unwrap();
        assert_retried_after(&proxy, |r| {
            r.at.duration_since(seen[first].at) >= Duration::from_secs(1)
        });
        // An HTTP date: not before that time. Whole seconds: 1.5 s ahead names a time 0.5 to
        // 1.5 s away, within the read's bound of 2 s (2 s ahead could name one 2 s away, and
        // the read would rightly give up at once).
        let (date, not_before) = http_date_in(Duration::from_millis(1500));
        rides_out(&img, &proxy, mode, Fault::TooMany(date.clone()), 1);
        assert_retried_after(&proxy, |r| r.wall >= not_before);
        // Asked to wait past the read's bound: EIO at once, not after the wait.
        let m = Lazy::mount(&img, mode, &proxy.addr, None);
        proxy.set(Fault::TooMany("3600".into()));
        let started = Instant::now();
        let err = m.read().expect_err("read succeeded through 429s");
        assert_eq!(err.raw_os_error(), Some(EIO));
        assert!(
            started.elapsed() < bound(),
            "{mode:?}: waited {:?} on a Retry-After beyond the bound",
            started.elapsed()
        );
        proxy.set(Fault::Pass);
        assert!(read_when_back(&m.mnt.join(FILE)) == expected());
        drop(m);
        // 429s that last: EIO within the bound, then recovery.
        fails_then_recovers(&img, &proxy, mode, Fault::TooMany("1".into()));
    }
}

#[test]
fn a_truncated_body_is_retried_or_eio_never_cached() {
    require!(Root);
    let (img, proxy) = setup();
    for mode in modes() {
        rides_out(&img, &proxy, mode, Fault::Truncate, 1);
        fails_then_recovers(&img, &proxy, mode, Fault::Truncate);
    }
}

#[test]
fn wrong_bytes_are_eio_counted_and_never_cached() {
    require!(Root);
    let (img, proxy) = setup();
    for mode in modes() {
        // One bad answer: that read may fail (EIO, never wrong bytes) or be served by another
        // fetch of the same chunks; the next read succeeds.
        let m = Lazy::mount(&img, mode, &proxy.addr, None);
        let before = proxy.count("flip");
        proxy.set_next(Fault::Flip, 1);
        match m.read() {
            Ok(data) => assert!(data == expected(), "{mode:?}: wrong bytes"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(EIO), "{mode:?}: {e}"),
        }
        assert_eq!(proxy.count("flip"), before + 1);
        assert_eq!(
            m.stat(|s| &s.verify_failures),
            1,
            "{mode:?}: the flipped answer was not caught"
        );
        assert!(read_when_back(&m.mnt.join(FILE)) == expected());
        img.assert_cache_clean(m._work.path().join("cache").as_path());
        drop(m);
        // Every answer bad: EIO every time, each one counted.
        let m = fails_then_recovers(&img, &proxy, mode, Fault::Flip);
        assert!(m.stat(|s| &s.verify_failures) > 0, "{mode:?}: no verification failure counted");
    }
}

#[test]
fn a_slow_trickle_times_out_into_eio_then_reads_recover() {
    require!(Root);
    let (img, proxy) = setup();
    // A chunk of 1 MiB at 1 KiB/s would take 17 minutes.
    const TRICKLE: Fault = Fault::Trickle(1024);
    for mode in modes() {
        rides_out(&img, &proxy, mode, TRICKLE, 1);
        fails_then_recovers(&img, &proxy, mode, TRICKLE);
    }
}

/// A small ext4 filesystem on a loop device, made by the test and unmounted on drop (tmpfs
/// would do for the FUSE modes, but fanotify's pre-content events need a disk filesystem).
struct SmallDisk {
    dir: PathBuf,
    _guard: MountGuard,
}

impl SmallDisk {
    fn new(at: &Path) -> SmallDisk {
        let image = at.join("disk.img");
        let dir = at.join("disk");
        std::fs::create_dir(&dir).unwrap();
        std::fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
        // No blocks reserved for root: the tests (root) fill it to the end.
        run_ok(std::process::Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image));
        run_ok(std::process::Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&dir));
        SmallDisk { _guard: MountGuard(dir.clone()), dir }
    }

    /// Fills the disk with a file of zeros.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let block = vec![0u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
        let _ = f.sync_all();
    }

    /// Frees `bytes` of the filler.
    fn free(&self, bytes: u64) {
        let f = std::fs::OpenOptions::new().write(true).open(self.dir.join("filler")).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(bytes)).unwrap();
        f.sync_all().unwrap();
    }

    fn empty(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
        rustix::fs::sync();
    }
}

/// Reads `FILE` through the blobs of a fetcher and cache directly, chunk by chunk as the
/// FUSE read paths do; returns the bytes, the blobs' cache entries and the blobs.
fn read_through(
    img: &Image,
    fetcher: &Arc<Fetcher>,
    cache: &ChunkCache,
) -> (Vec<u8>, Vec<Arc<CachedBlob>>, Vec<Arc<LazyBlob>>) {
    let lazy = LazyBlob::for_image(img.bs.extension(), cache, fetcher).unwrap();
    let mut out = Vec::new();
    for c in img.file_chunks() {
        let mut buf = vec![0u8; c.size as usize];
        lazy[c.blob_index as usize].read_chunks(&[c], &mut buf, c.view_offset).unwrap();
        out.extend_from_slice(&buf);
    }
    (out, lazy.iter().map(|b| b.cached().clone()).collect(), lazy)
}

#[test]
fn a_full_cache_disk_still_serves_reads_from_the_backend_and_stays_consistent() {
    require!(Root);
    let img = image("1M");
    let disk = SmallDisk::new(img.dir.path());
    let cache_dir = disk.dir.join("cache");
    let file_len = expected().len() as u64;
    let fetcher = || {
        let opts = RegistryOptions {
            insecure: true,
            timeout: TIMEOUT,
            attempts: ATTEMPTS,
            ..RegistryOptions::new(&img.reg.addr, "naiad/bb")
        };
        Arc::new(Fetcher::new(
            Arc::new(RegistryBackend::new(opts).unwrap()),
            img.bs.extension().digester,
            DEFAULT_MERGE_LIMIT_BYTES,
        ))
    };
    // Full: nothing can be stored. Reads that copy their bytes out get them from the
    // registry; nothing is marked present; a reader of the data file itself (fanotify mode)
    // is told the chunks are missing (ENOSPC), never handed a hole.
    disk.fill();
    let f = fetcher();
    let cache = ChunkCache::open(&cache_dir).unwrap();
    let (data, blobs, lazy) = read_through(&img, &f, &cache);
    assert!(data == expected(), "wrong bytes with the disk full");
    assert!(f.stats.cache_write_failures.load(Ordering::SeqCst) > 0);
    assert_eq!(
        blobs.iter().map(|b| b.present_bytes()).sum::<u64>(),
        0,
        "chunks marked present on a full disk"
    );
    let c = img.file_chunks()[0];
    let err = lazy[c.blob_index as usize].ensure(&[c]).unwrap_err();
    assert!(err.to_string().contains("os error 28"), "{err}");
    assert_eq!(img.assert_cache_clean(&cache_dir).0, 0);
    drop((blobs, lazy, cache));
    // Room for half the file: writes fail part-way; what is marked present is whole.
    disk.free(file_len / 2);
    let f = fetcher();
    let cache = ChunkCache::open(&cache_dir).unwrap();
    let (data, blobs, _) = read_through(&img, &f, &cache);
    assert!(data == expected(), "wrong bytes with the disk nearly full");
    assert!(
        f.stats.cache_write_failures.load(Ordering::SeqCst) > 0,
        "the file fit in half its size?"
    );
    let chunks = img.file_chunks();
    let cached = chunks
        .iter()
        .filter(|c| blobs[c.blob_index as usize].is_present(c.view_offset, u64::from(c.size)))
        .count();
    assert!(cached < chunks.len(), "{cached} of {} chunks cached in half their size", chunks.len());
    img.assert_cache_clean(&cache_dir);
    drop((blobs, cache));
    // Space again: the reads fill the cache.
    disk.empty();
    let f = fetcher();
    let cache = ChunkCache::open(&cache_dir).unwrap();
    let (data, blobs, _) = read_through(&img, &f, &cache);
    assert!(data == expected(), "wrong bytes once space is back");
    assert_eq!(f.stats.cache_write_failures.load(Ordering::SeqCst), 0);
    for c in &chunks {
        assert!(
            blobs[c.blob_index as usize].is_present(c.view_offset, u64::from(c.size)),
            "chunk at {} not cached",
            c.view_offset
        );
    }
    assert_eq!(img.assert_cache_clean(&cache_dir).0, chunks.len() as u64);
}

/// Mounts the image with `naiad mount` (the registry direct) in `mode`, its cache in
/// `cache_dir`; returns once the mount serves files, or the mount process's log if it did
/// not come up.
fn try_spawn_mount(
    img: &Image,
    mode: &str,
    mnt: &Path,
    cache_dir: &Path,
) -> Result<std::process::Child, String> {
    std::fs::create_dir_all(mnt).unwrap();
    let log = std::fs::File::create(mnt.with_extension("log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["mount", &img.reg.docker_ref("naiad/bb:1")])
        .arg(mnt)
        .args(["--insecure", "--no-prefetch", "--mode", mode, "--cache-dir"])
        .arg(cache_dir)
        .arg("--runtime-dir")
        .arg(mnt.with_extension("run"))
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !mnt.join("data/hello.txt").exists() {
        if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::fs::read_to_string(mnt.with_extension("log")).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(child)
}

#[test]
fn a_full_cache_disk_never_yields_wrong_bytes_in_any_mode() {
    require!(Root);
    let img = image("1M");
    let disk = SmallDisk::new(img.dir.path());
    let file_len = expected().len() as u64;
    for mode in ["kernel", "fuse", "fanotify"] {
        let cache_dir = disk.dir.join(mode);
        let work = tempfile::Builder::new().prefix(mode).tempdir_in(img.dir.path()).unwrap();
        let read = |phase: &str| -> Option<Vec<u8>> {
            // A fresh mount each time: a cold page cache.
            let mnt = work.path().join(phase);
            // Fanotify mode needs a file per frame in the cache: a disk with no room for them
            // refuses the mount, saying so (without `--mode`, kernel mode is used instead).
            let child = match try_spawn_mount(&img, mode, &mnt, &cache_dir) {
                Ok(c) => c,
                Err(log) if mode == "fanotify" && phase != "space" => {
                    assert!(log.contains("No space left on device"), "{mode}, {phase}: {log}");
                    return None;
                }
                Err(log) => panic!("{mode}, {phase}: the mount did not come up: {log}"),
            };
            let _g = MountGuard(mnt.clone());
            let got = std::fs::read(mnt.join(FILE));
            naiad_ok(args!["umount", mnt]);
            let mut child = child;
            assert!(child.wait().unwrap().success(), "{mode}: the mount process failed");
            match got {
                Ok(data) => {
                    assert!(data == expected(), "{mode}, {phase}: wrong bytes");
                    Some(data)
                }
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(EIO), "{mode}, {phase}: {e}");
                    None
                }
            }
        };
        // Full, then room for half the file: the FUSE modes serve the fetched bytes from
        // memory; in fanotify mode the kernel reads the data file itself, so a range the disk
        // did not take is EIO, never zeros. The cache holds nothing that fails verification.
        let fuse_served = mode != "fanotify";
        disk.fill();
        assert!(read("full").is_some() || !fuse_served, "{mode}: a full disk failed the read");
        img.assert_cache_clean(&cache_dir);
        disk.free(file_len / 2);
        assert!(read("half").is_some() || !fuse_served, "{mode}: a half-full disk failed the read");
        img.assert_cache_clean(&cache_dir);
        // Space again: the right bytes, all cached.
        disk.empty();
        assert!(read("space").is_some(), "{mode}: no read once space is back");
        let cache = ChunkCache::open(&cache_dir).unwrap();
        let ext = img.bs.extension();
        for c in img.file_chunks() {
            assert!(
                cache
                    .image_blob(ext, c.blob_index as usize)
                    .unwrap()
                    .is_present(c.view_offset, u64::from(c.size)),
                "{mode}: chunk at {} not cached",
                c.view_offset
            );
        }
        img.assert_cache_clean(&cache_dir);
    }
}

/// Kills the daemon on drop (a failing test must not leave it running).
struct DaemonGuard(std::process::Child);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_daemon_killed_during_prefetch_leaves_a_cache_that_verifies() {
    require!(Root);
    // Small chunks: many fills for the kill to land among.
    let img = image("64K");
    let dir = img.dir.path();
    let (cache, run) = (dir.join("cache"), dir.join("run"));
    let sock = run.join("api.sock");
    let ctl = |args: &[&std::ffi::OsStr]| naiad_ok(&[args!["ctl", "--api", sock], args].concat());
    let prefetch = || -> (u64, u64) {
        let list: serde_json::Value = serde_json::from_str(&ctl(args!["list"])).unwrap();
        (list[0]["prefetch_done"].as_u64().unwrap(), list[0]["prefetch_total"].as_u64().unwrap())
    };
    let verify = |extra: &[&str]| {
        let out = naiad(
            &[
                args!["cache", "verify", "--cache-dir", cache, "--runtime-dir", run, "--json"],
                &extra.iter().map(std::ffi::OsStr::new).collect::<Vec<_>>()[..],
            ]
            .concat(),
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out, report)
    };
    let sum = |report: &serde_json::Value, key: &str| {
        report["blobs"].as_array().unwrap().iter().map(|b| b[key].as_u64().unwrap()).sum::<u64>()
    };

    let mut daemon = DaemonGuard(start_daemon(dir));
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    // Prefetch everything at a quarter of the image per second: about four seconds.
    let view_bytes: u64 = img.bs.extension().chunks.iter().map(|c| u64::from(c.size)).sum();
    let rate = (view_bytes / 4).to_string();
    ctl(args![
        "mount",
        img.reg.docker_ref("naiad/bb:1"),
        mnt,
        "--mode",
        "kernel",
        "--insecure",
        "--no-prefetch",
        "--prefetch-all",
        "--prefetch-rate",
        rate
    ]);
    let started = Instant::now();
    loop {
        let (done, total) = prefetch();
        assert!(done < total || total == 0, "the prefetch finished before the kill");
        if done * 4 >= total && total > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the prefetch does not progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon.0),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = daemon.0.wait();

    // Every chunk marked present verifies; the kill left the prefetch part-way.
    let (out, report) = verify(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (present, verified, chunks) =
        (sum(&report, "present"), sum(&report, "verified"), sum(&report, "chunks"));
    assert!(present > 0 && present < chunks, "present {present} of {chunks} chunks");
    assert_eq!((verified, report["bad_chunks"].as_u64().unwrap()), (present, 0), "{report}");

    // Damage one present chunk on disk: verify names it and fails; --repair clears it.
    let ext = img.bs.extension();
    let victim = {
        let cc = ChunkCache::open(&cache).unwrap();
        let blobs: Vec<_> = (0..ext.blobs.len()).map(|i| cc.image_blob(ext, i).unwrap()).collect();
        *ext.chunks
            .iter()
            .find(|c| blobs[c.blob_index as usize].is_present(c.view_offset, u64::from(c.size)))
            .unwrap()
    };
    let data_path = cache.join(format!(
        "{}.frames/{:016x}",
        naiad_storage::cache::EntryKey::of_image_blob(ext, victim.blob_index as usize).name(),
        victim.compressed_offset
    ));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&data_path).unwrap();
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, victim.view_offset).unwrap();
        f.write_all_at(&[!byte[0]], victim.view_offset).unwrap();
    }
    let (out, report) = verify(&[]);
    assert!(!out.status.success(), "a bad chunk passed: {report}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("fail verification"));
    assert_eq!(report["bad_chunks"], 1);
    let bad = report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["bad"].as_array().unwrap().clone())
        .collect::<Vec<_>>();
    assert_eq!(bad[0]["view_offset"].as_u64(), Some(victim.view_offset), "{report}");
    let (out, report) = verify(&["--repair"]);
    assert!(
        out.status.success()
            && report["blobs"].as_array().unwrap().iter().any(|b| b["repaired"] == true),
        "{report}"
    );
    let (out, report) = verify(&[]);
    assert!(out.status.success());
    assert_eq!(
        (sum(&report, "present"), sum(&report, "verified")),
        (present - 1, present - 1),
        "{report}"
    );

    // A new daemon brings the mount back and resumes the prefetch: reads are byte-exact,
    // and once it is done every chunk is present and verifies.
    let daemon = DaemonGuard(start_daemon(dir));
    assert!(std::fs::read(mnt.join(FILE)).unwrap() == expected(), "wrong bytes after the restart");
    assert_eq!(
        std::fs::read_to_string(mnt.join("data/hello.txt")).unwrap(),
        "hello from layer 2\n"
    );
    let started = Instant::now();
    loop {
        let (done, total) = prefetch();
        if total > 0 && done == total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the resumed prefetch did not finish: {done}/{total}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (out, report) = verify(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((sum(&report, "present"), sum(&report, "verified")), (chunks, chunks), "{report}");
    let mut daemon = daemon;
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon.0),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(daemon.0.wait().unwrap().success());
}
