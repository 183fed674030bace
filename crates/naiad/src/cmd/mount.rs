//! `naiad mount`: mount an image with the kernel's EROFS, its blobs either local (copied
//! into the cache once) or fetched lazily, chunk by chunk, as files are read.

use anyhow::{bail, Context, Result};
use naiad_format::bootstrap::Bootstrap;
use naiad_oci::reference::ImageRef;
use naiad_storage::backend::{Backend, LocalBackend, RegistryBackend, RegistryOptions};
use naiad_storage::blob_store::BlobDirs;
use naiad_storage::chunk_cache::ChunkCache;
use naiad_storage::fetcher::{Fetcher, DEFAULT_MERGE_LIMIT_BYTES};
use naiad_storage::view_cache::{ViewCache, ViewState};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Default directory of the blob cache.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/naiad/cache";
/// Default directory for runtime state (the kernel mode's blob-view mounts).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/naiad";

/// How a mount reads its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Blobs are local: each blob's whole view is written to the cache once, then the kernel
    /// mounts EROFS on the views; no process stays behind. The default for a bootstrap file.
    Local,
    /// Lazy: the kernel mounts EROFS on blob-view files that this process serves over FUSE,
    /// fetching and verifying chunks as they are read. The default for an image reference.
    Kernel,
    /// Lazy, the whole filesystem served from user space over FUSE (no file-backed EROFS
    /// needed).
    Fuse,
}

/// Mount a Naiad image.
///
/// SOURCE is a bootstrap file (with --blob-dir) or a Naiad image reference
/// (docker://HOST/REPO:TAG, oci:DIR:TAG). Local mode returns once mounted; the lazy modes
/// (kernel, fuse) serve the mount in the foreground until it is unmounted (`naiad umount`
/// from another shell) or the process gets SIGINT/SIGTERM, which unmounts it.
#[derive(clap::Args)]
pub struct Args {
    source: String,
    mountpoint: PathBuf,
    /// Directory of blob files named by digest (repeat for several).
    #[arg(long = "blob-dir")]
    blob_dirs: Vec<PathBuf>,
    /// local, kernel or fuse (default: local for a bootstrap file, kernel for an image).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Where blob data is cached.
    #[arg(long, default_value = DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
    /// Where the kernel mode mounts its blob views.
    #[arg(long, default_value = DEFAULT_RUNTIME_DIR)]
    runtime_dir: PathBuf,
    /// Allow plain HTTP to the registry.
    #[arg(long)]
    insecure: bool,
    /// Seconds one registry request may take before it is retried or fails.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Lazy modes: do not fetch the image's prefetch list ahead of reads.
    #[arg(long)]
    no_prefetch: bool,
    /// Lazy modes: after the prefetch list, fetch the whole image in the background.
    #[arg(long)]
    prefetch_all: bool,
    /// Bandwidth limit of background prefetch, e.g. 20M (bytes per second).
    #[arg(long, value_parser = crate::output::parse_size)]
    prefetch_rate: Option<u32>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let image = (a.source.starts_with("docker://") || a.source.starts_with("oci:")).then(|| ImageRef::parse(&a.source)).transpose()?;
    let mode = a.mode.unwrap_or(if image.is_some() { Mode::Kernel } else { Mode::Local });
    let (bootstrap_path, bytes, backend): (PathBuf, Vec<u8>, Arc<dyn Backend>) = match &image {
        None => {
            let path = PathBuf::from(&a.source);
            if a.blob_dirs.is_empty() {
                bail!("a bootstrap needs --blob-dir (or mount an image reference)");
            }
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            (path, bytes, Arc::new(LocalBackend::new(BlobDirs::new(a.blob_dirs.clone()))))
        }
        Some(r) => {
            if mode == Mode::Local {
                bail!("--mode local needs a bootstrap and --blob-dir; an image reference mounts lazily (kernel or fuse)");
            }
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let bytes = rt.block_on(naiad_oci::check::fetch_bootstrap(r, a.insecure, host_platform()))?;
            let backend: Arc<dyn Backend> = match r {
                ImageRef::Registry { registry, repository, .. } => Arc::new(RegistryBackend::new(RegistryOptions {
                    insecure: a.insecure,
                    timeout: Duration::from_secs(a.timeout.max(1)),
                    ..RegistryOptions::new(registry, repository)
                })?),
                ImageRef::Layout { dir, .. } => Arc::new(LocalBackend::new(BlobDirs::new(vec![dir.join("blobs/sha256")]))),
            };
            let dir = a.runtime_dir.join("bootstraps");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("{}.boot", hex::encode(naiad_format::digest::sha256(&bytes))));
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            (path, bytes, backend)
        }
    };
    let bs = Bootstrap::open(bytes).with_context(|| format!("bootstrap of {} is not valid", a.source))?;
    match mode {
        Mode::Local => mount_local(&bs, &bootstrap_path, &a),
        Mode::Kernel | Mode::Fuse => mount_lazy(Arc::new(bs), &bootstrap_path, backend, mode, &a),
    }
}

fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "linux/arm64",
        "x86_64" => "linux/amd64",
        other => other,
    }
}

fn mount_local(bs: &Bootstrap, bootstrap_path: &Path, a: &Args) -> Result<ExitCode> {
    let dirs = BlobDirs::new(a.blob_dirs.clone());
    let cache = ViewCache::new(&a.cache_dir)?;
    let mut devices = Vec::new();
    for b in &bs.extension().blobs {
        let blob = dirs.open(&b.digest)?;
        let (path, state) = cache.ensure(&blob, b.view_size)?;
        tracing::info!(view = %path.display(), reused = (state == ViewState::Reused), "blob view ready");
        devices.push(path);
    }
    std::fs::create_dir_all(&a.mountpoint).with_context(|| format!("creating {}", a.mountpoint.display()))?;
    naiad_fs::kernel::mount_erofs(bootstrap_path, &devices, &a.mountpoint)?;
    Ok(ExitCode::SUCCESS)
}

fn mount_lazy(bs: Arc<Bootstrap>, bootstrap_path: &Path, backend: Arc<dyn Backend>, mode: Mode, a: &Args) -> Result<ExitCode> {
    let cache = ChunkCache::open(&a.cache_dir)?;
    let fetcher = Arc::new(Fetcher::new(backend, bs.extension().digester, DEFAULT_MERGE_LIMIT_BYTES));
    let prefetch_fetcher = fetcher.clone();
    let mountpoint = std::path::absolute(&a.mountpoint)?;
    let fs_type = match mode {
        Mode::Kernel => "erofs",
        _ => "fuse.naiad",
    };
    // Whichever handle is kept unmounts on drop.
    let _held: Box<dyn std::any::Any> = match mode {
        Mode::Kernel => {
            let views = a.runtime_dir.join(format!("views-{}", std::process::id()));
            Box::new(naiad_fs::lazy::mount_kernel_mode(bootstrap_path, &bs, &cache, fetcher, &views, &mountpoint)?)
        }
        _ => {
            let blobs = bs.extension().blobs.iter().map(|b| cache.blob(&b.digest, b.view_size)).collect::<std::result::Result<Vec<_>, _>>()?;
            let fs = naiad_fs::image_fs::ImageFs::new(bs.clone(), blobs, fetcher);
            Box::new(naiad_fs::image_fs::mount_fuse_mode(fs, &mountpoint).with_context(|| format!("mounting FUSE at {}", mountpoint.display()))?)
        }
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if !a.no_prefetch || a.prefetch_all {
        let blobs = bs.extension().blobs.iter().map(|b| cache.blob(&b.digest, b.view_size)).collect::<std::result::Result<Vec<_>, _>>()?;
        let plan = naiad_fs::prefetch::PrefetchPlan { everything: a.prefetch_all, rate_bytes_per_sec: a.prefetch_rate.map(u64::from) };
        let _progress = naiad_fs::prefetch::spawn(bs.clone(), blobs, prefetch_fetcher.clone(), plan, stop.clone());
    }
    eprintln!("naiad: {} mounted at {} ({mode:?} mode); serving until unmounted", a.source, mountpoint.display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if !is_mounted(&mountpoint, fs_type) {
                        break;
                    }
                }
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(ExitCode::SUCCESS)
}

/// Whether `mountpoint` carries a mount of `fs_type` (from /proc/self/mountinfo).
fn is_mounted(mountpoint: &Path, fs_type: &str) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = mountpoint.to_string_lossy();
    info.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-");
        fields.get(4).is_some_and(|m| unescape(m) == want) && sep.and_then(|s| fields.get(s + 1)).is_some_and(|t| *t == fs_type)
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}
