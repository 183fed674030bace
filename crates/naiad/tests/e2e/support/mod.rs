//! Helpers shared by the end-to-end tests: running the CLI and snapshotting trees.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

/// Deterministic pseudo-random bytes (xorshift): incompressible test data.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs `naiad ARGS` and returns its output.
pub fn naiad(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_naiad")).args(args).output().expect("running naiad")
}

/// Runs `naiad ARGS`, panicking with its stderr when it fails.
pub fn naiad_ok(args: &[&OsStr]) -> String {
    let out = naiad(args);
    assert!(
        out.status.success(),
        "naiad {:?} failed: {}\n{}",
        args,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Shorthand to build an argument list of mixed strings and paths.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}

/// What a test knows about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    /// blake3 of the contents (files), the target (symlinks).
    pub content: String,
    pub rdev: (u32, u32),
    pub nlink: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// First path (in sorted order) that shares this entry's inode, if any other does.
    pub link_group: Option<Vec<u8>>,
}

/// Snapshot options: which differences a tree is allowed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Skip {
    /// Don't compare xattrs (for a tree extracted by a tool that does not restore them).
    pub xattrs: bool,
    /// Don't compare the mtime of directories.
    pub dir_mtime: bool,
    /// Don't compare setuid/setgid bits.
    pub suid_bits: bool,
    /// Don't expect sockets.
    pub sockets: bool,
    /// Don't compare link counts and hardlink groups.
    pub hardlinks: bool,
}

/// Walks `root` (without following symlinks) into a map of relative path -> entry.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(&rel) };
        let md =
            std::fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let content = if ft.is_file() {
            hash_file(&full)
        } else if ft.is_symlink() {
            String::from_utf8_lossy(std::fs::read_link(&full).unwrap().as_os_str().as_bytes())
                .into_owned()
        } else {
            String::new()
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&full)
            .unwrap()
            .map(|n| {
                let v = xattr::get(&full, &n).unwrap().unwrap_or_default();
                (n.as_bytes().to_vec(), v)
            })
            .collect();
        xattrs.sort();
        let key = rel.as_os_str().as_bytes().to_vec();
        if !ft.is_dir() && md.nlink() > 1 {
            inodes.entry((md.dev(), md.ino())).or_default().push(key.clone());
        }
        out.insert(
            key,
            Entry {
                kind,
                perm: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: if ft.is_dir() { 0 } else { md.size() },
                content,
                rdev: (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())),
                nlink: if ft.is_dir() { 0 } else { md.nlink() },
                xattrs,
                link_group: None,
            },
        );
        if ft.is_dir() {
            let mut names: Vec<_> =
                std::fs::read_dir(&full).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            for n in names {
                stack.push(rel.join(n));
            }
        }
    }
    for paths in inodes.values() {
        let first = paths.iter().min().unwrap().clone();
        for p in paths {
            out.get_mut(p).unwrap().link_group = Some(first.clone());
        }
    }
    out
}

/// blake3 of a file's contents.
pub fn hash_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// Asserts two snapshots are equal (up to `skip`), listing every difference.
pub fn assert_same_tree(
    what: &str,
    expected: &BTreeMap<Vec<u8>, Entry>,
    actual: &BTreeMap<Vec<u8>, Entry>,
    skip: Skip,
) {
    let mut diffs = Vec::new();
    for (path, e) in expected {
        let shown = String::from_utf8_lossy(path);
        if skip.sockets && e.kind == "socket" {
            continue;
        }
        let Some(a) = actual.get(path) else {
            diffs.push(format!("{shown}: missing"));
            continue;
        };
        let mut e = e.clone();
        let mut a = a.clone();
        if skip.xattrs {
            e.xattrs.clear();
            a.xattrs.clear();
        }
        if skip.dir_mtime && e.kind == "dir" {
            a.mtime = e.mtime;
        }
        if skip.hardlinks {
            (e.nlink, e.link_group) = (0, None);
            (a.nlink, a.link_group) = (0, None);
        }
        if skip.suid_bits {
            e.perm &= !0o6000;
            a.perm &= !0o6000;
        }
        if e != a {
            diffs.push(format!("{shown}:\n  expected {e:?}\n  actual   {a:?}"));
        }
    }
    for path in actual.keys() {
        if !expected.contains_key(path) {
            diffs.push(format!("{}: unexpected", String::from_utf8_lossy(path)));
        }
    }
    assert!(diffs.is_empty(), "{what}: {} differences:\n{}", diffs.len(), diffs.join("\n"));
}

/// Unmounts on drop, so a failing test does not leave a mount behind.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// On drop (a test that failed half-way too): kills the processes whose command line names
/// the directory (keepers, shims, daemons) and unmounts everything below it, so that the
/// temporary directory can go.
pub struct BelowGuard(pub PathBuf);

impl Drop for BelowGuard {
    fn drop(&mut self) {
        containerd::kill_processes_naming(&self.0);
        containerd::unmount_below(&self.0);
    }
}

/// Whether this process may mount filesystems and create devices (root).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What a test may need of the machine beyond an ordinary user's rights.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Root: mounts, device nodes, ownership, another uid, network namespaces.
    Root,
    /// The kernel's fanotify pre-content events and file-backed EROFS (Linux 6.14+).
    Fanotify,
    /// FUSE over io_uring in this kernel (CONFIG_FUSE_IO_URING).
    FuseRing,
    /// containerd, ctr and runc installed.
    Containerd,
}

impl Need {
    /// Why the machine does not have it, if it does not.
    fn missing(self) -> Option<String> {
        match self {
            Need::Root => {
                (!is_root()).then(|| "root (it mounts, makes devices or sets ownership)".into())
            }
            Need::Fanotify => naiad_fs::fanotify::supported(&std::env::temp_dir())
                .err()
                .map(|why| format!("the fanotify mode: {why}")),
            Need::FuseRing => {
                (!has_fuse_uring()).then(|| "FUSE over io_uring (CONFIG_FUSE_IO_URING)".into())
            }
            Need::Containerd => {
                (!containerd::available()).then(|| "containerd, ctr and runc".into())
            }
        }
    }
}

/// The one skip rule of the end-to-end tests: whether the machine has every one of `needs`;
/// if not, prints `skipped: TEST: needs ...` (so a skip is never silent) and the test returns.
pub fn has(needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|n| n.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    eprintln!("skipped: {test}: needs {}", missing.join(", "));
    false
}

/// Returns from the test unless the machine has all of the [`Need`]s named:
/// `require!(Root, Fanotify);`.
#[macro_export]
macro_rules! require {
    ($($need:ident),+ $(,)?) => {
        if !$crate::support::has(&[$($crate::support::Need::$need),+]) {
            return;
        }
    };
}

pub mod containerd;
pub mod faulty;
pub mod registry;
pub mod token;
pub mod tree;

/// Reads `path` once its backend is back: a fetcher that saw the backend fail answers EIO
/// for a short while (`BACKEND_RETRY_AFTER`) before it asks again. Every failure must be EIO,
/// and the read must succeed within a few of those delays.
pub fn read_when_back(path: &Path) -> Vec<u8> {
    let delay = naiad_storage::fetch::BACKEND_RETRY_AFTER;
    let started = std::time::Instant::now();
    loop {
        match std::fs::read(path) {
            Ok(data) => return data,
            Err(e) => assert_eq!(e.raw_os_error(), Some(5), "{}: {e}", path.display()),
        }
        assert!(started.elapsed() < delay * 3, "reads of {} did not recover", path.display());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Starts `naiad daemon` with its API at `dir/run/api.sock`, cache `dir/cache`, runtime state
/// `dir/run` and log appended to `dir/daemon.log`; returns once its socket is up (a killed
/// daemon's stale socket is removed first, so this waits for the new one).
pub fn start_daemon(dir: &Path) -> std::process::Child {
    let sock = dir.join("run/api.sock");
    let _ = std::fs::remove_file(&sock);
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log")).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["daemon", "--api"])
        .arg(&sock)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .stderr(log)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon exited: {}",
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "daemon socket did not appear"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    daemon
}

/// Kills `child` with SIGKILL (no chance to clean up) and reaps it.
pub fn kill9(child: &mut std::process::Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_child(child),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = child.wait();
}

/// 16 threads read `path` at pseudo-random offsets and lengths, each comparing every byte
/// with `want`.
pub fn random_readers(path: &Path, want: &Arc<Vec<u8>>) {
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let (path, want) = (path.to_path_buf(), want.clone());
            std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(&path).unwrap();
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = x % want.len() as u64;
                    let len = ((x >> 32) % 200_000).min(want.len() as u64 - off) as usize;
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, off).unwrap();
                    assert!(
                        buf == want[off as usize..off as usize + len],
                        "reader {t} at {off}+{len}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// The fuse module's switch for FUSE over io_uring.
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether this kernel has FUSE over io_uring (CONFIG_FUSE_IO_URING).
pub fn has_fuse_uring() -> bool {
    Path::new(ENABLE_URING).exists()
}

/// Mounts `fs` in fuse mode served through FUSE over io_uring. The module parameter decides
/// what the kernel offers at INIT and whether it takes the ring's registration: it is on while
/// mounting and back as it was at once; the connection keeps its ring. The switch is global
/// and tests run in parallel processes, so one process at a time turns it on and back, under
/// a lock file: without it, one test put it back while another was still registering its ring
/// (EOPNOTSUPP), and two tests could leave it on.
pub fn mount_fuse_ring(
    fs: naiad_fs::mode::fuse::ImageFs,
    mnt: &Path,
) -> naiad_fs::fuse::server::FuseServer {
    let lock =
        std::fs::File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join("enable_uring.lock"))
            .unwrap();
    lock.lock().unwrap();
    let old = std::fs::read_to_string(ENABLE_URING).unwrap();
    std::fs::write(ENABLE_URING, "Y").unwrap();
    let s = naiad_fs::mode::fuse::mount_fuse_mode(fs, mnt, None, Default::default());
    std::fs::write(ENABLE_URING, old.trim()).unwrap();
    drop(lock);
    let s = s.unwrap();
    assert!(s.uses_ring(), "mounted with enable_uring=Y but not served through the ring");
    s
}
