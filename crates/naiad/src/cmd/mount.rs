//! `naiad mount`: mount an image with the kernel's EROFS, its blobs either local (copied
//! into the cache once) or fetched lazily, chunk by chunk, as files are read, from a
//! registry, a blob directory or S3-compatible storage.

use crate::config::{Config, S3Args};
use crate::output::FetchArgs;
use anyhow::{bail, Context, Result};
use naiad_daemon::spec::{Mode, MountSpec};
use naiad_format::bootstrap::Bootstrap;
use naiad_storage::backend::S3Location;
use naiad_storage::blob_store::BlobDirs;
use naiad_storage::cache::ChunkCache;
use naiad_storage::view_cache::{ViewCache, ViewState};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Mount a Naiad image.
///
/// SOURCE is a bootstrap file (with --blob-dir, or with its blobs in S3-compatible storage:
/// --s3-bucket or the config file's [s3] table) or a Naiad image reference
/// (docker://HOST/REPO:TAG, oci:DIR:TAG). Local mode returns once mounted; the lazy modes
/// (fanotify, kernel, fuse) serve the mount in the foreground until it is unmounted (`naiad
/// umount` from another shell) or the process gets SIGINT/SIGTERM, which unmounts it.
///
/// Without --mode, an image reference or S3 mounts lazily in the best mode this kernel
/// supports: fanotify where it has pre-content events (Linux 6.14+) and file-backed EROFS,
/// else kernel where it has file-backed EROFS, else fuse; a line on stderr says when it
/// falls back and why. A bootstrap with --blob-dir mounts in local mode.
///
/// S3 credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
/// AWS_SESSION_TOKEN), else from the config file's [s3] table; with none, requests are
/// unsigned (public buckets).
#[derive(clap::Args)]
pub struct Args {
    source: String,
    mountpoint: PathBuf,
    /// Directory of blob files named by digest (repeat for several).
    #[arg(long = "blob-dir")]
    blob_dirs: Vec<PathBuf>,
    /// local, fanotify, kernel or fuse (default: local for a bootstrap file with --blob-dir;
    /// for an image or S3, the best lazy mode this kernel supports).
    ///
    /// local: each blob's whole view is written to the cache once, then the kernel mounts
    /// EROFS on the views; no process stays behind. fanotify: the kernel mounts EROFS
    /// straight on the cache's frame files, which this process fills through fanotify
    /// pre-content events as they are read (Linux 6.14+ with file-backed EROFS). kernel: the
    /// kernel mounts EROFS on blob-view files this process serves over FUSE (6.12+). fuse: the
    /// whole filesystem served from user space over FUSE, through FUSE over io_uring where the
    /// kernel offers it (except daemon mounts, which must survive a daemon restart). auto: the
    /// best lazy mode.
    #[arg(long, value_parser = crate::args::mode_parser(crate::args::MOUNT_MODES))]
    mode: Option<Mode>,
    /// Where blob data is cached [default: config cache_dir, else /var/lib/naiad/cache].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Where the kernel mode mounts its blob views [default: config runtime_dir, else /run/naiad].
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// Seconds one registry or S3 request may take before it is retried or fails [default:
    /// config timeout_secs, else 10].
    #[arg(long)]
    timeout: Option<u64>,
    /// Lazy modes: detach once mounted; the server keeps running in the background (its log
    /// goes to RUNTIME_DIR/mount-*.log) until `naiad umount`.
    #[arg(long)]
    daemon: bool,
    #[command(flatten)]
    fetch: FetchArgs,
    #[command(flatten)]
    s3: S3Args,
    #[command(flatten)]
    exposure: crate::output::ExposureArgs,
}

pub fn run(mut a: Args, cfg: &Config) -> Result<ExitCode> {
    // Flags win over the config file, the file over the defaults.
    a.cache_dir = Some(cfg.cache_dir(a.cache_dir.as_deref()));
    a.runtime_dir = Some(cfg.runtime_dir(a.runtime_dir.as_deref()));
    a.timeout = Some(cfg.timeout_secs(a.timeout));
    a.fetch.resolve(cfg, &a.source)?;
    let (s3, s3_insecure) = cfg.s3_location(&a.source, !a.blob_dirs.is_empty(), &a.s3)?;
    a.fetch.insecure |= s3.is_some() && s3_insecure;
    let image = a.source.starts_with("docker://") || a.source.starts_with("oci:");
    let mode = match a.mode {
        Some(m) => Some(m),
        None if image || s3.is_some() => None, // the best lazy mode, chosen when mounting
        None => Some(Mode::Local),
    };
    let Some(mode) = mode else { return mount_lazy(None, &a, s3) };
    match mode {
        Mode::Local if image => bail!("--mode local needs a bootstrap and --blob-dir; an image reference mounts lazily (kernel or fuse)"),
        Mode::Local if s3.is_some() => bail!("--mode local needs --blob-dir; blobs in S3 mount lazily (kernel or fuse)"),
        Mode::Local if a.daemon => bail!("--daemon is for the lazy modes; a local mount needs no process"),
        Mode::Local => mount_local(&a),
        lazy => mount_lazy(Some(lazy), &a, s3),
    }
}

fn mount_local(a: &Args) -> Result<ExitCode> {
    if a.blob_dirs.is_empty() {
        bail!(
            "a bootstrap needs --blob-dir or S3 storage (--s3-bucket), or mount an image reference"
        );
    }
    let bootstrap_path = PathBuf::from(&a.source);
    let bytes = std::fs::read(&bootstrap_path)
        .with_context(|| format!("reading {}", bootstrap_path.display()))?;
    let bs =
        Bootstrap::open(bytes).with_context(|| format!("bootstrap {} is not valid", a.source))?;
    bs.validate().with_context(|| format!("bootstrap {} is not valid", a.source))?;
    let dirs = BlobDirs::new(a.blob_dirs.clone());
    let cache = ViewCache::new(a.cache_dir())?;
    let mut devices = Vec::new();
    for b in &bs.extension().blobs {
        let blob = dirs.open(&b.digest)?;
        let (path, state) = cache.ensure(&blob, b.view_size)?;
        tracing::info!(view = %path.display(), reused = (state == ViewState::Reused), "blob view ready");
        devices.push(path);
    }
    std::fs::create_dir_all(&a.mountpoint)
        .with_context(|| format!("creating {}", a.mountpoint.display()))?;
    naiad_fs::erofs_mount::mount_erofs(
        &bootstrap_path,
        &devices,
        &a.mountpoint,
        a.exposure.exposure(),
    )?;
    Ok(ExitCode::SUCCESS)
}

impl Args {
    fn cache_dir(&self) -> &std::path::Path {
        self.cache_dir.as_deref().expect("resolved in run")
    }
    fn runtime_dir(&self) -> &std::path::Path {
        self.runtime_dir.as_deref().expect("resolved in run")
    }
}

/// Starts this same command without `--daemon` in its own process group, its output in a
/// log file, and returns once the mount is up (or the server failed).
fn detach(mode: Option<Mode>, a: &Args) -> Result<ExitCode> {
    std::fs::create_dir_all(a.runtime_dir())
        .with_context(|| format!("creating {}", a.runtime_dir().display()))?;
    let mountpoint = std::path::absolute(&a.mountpoint)?;
    let log_path = a
        .runtime_dir()
        .join(format!("mount-{}.log", naiad_fs::erofs_mount::mount_tag(&mountpoint)));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let args: Vec<std::ffi::OsString> =
        std::env::args_os().skip(1).filter(|x| x != "--daemon").collect();
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the mount server")?;
    let lazy_mode = mode.unwrap_or(Mode::Auto);
    let started = std::time::Instant::now();
    loop {
        // Up once the server says so (it does right after mounting and starting its prefetch).
        let said = std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains(SERVING));
        if said && lazy_mode.is_mounted(&mountpoint) {
            eprintln!(
                "naiad: {} mounted at {} (server pid {}, log {})",
                a.source,
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the mount server exited ({status}):\n{}", log.trim_end());
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            bail!("the mount did not come up within 120 s (log: {})", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a mount server prints once its mount is up.
const SERVING: &str = "; serving until unmounted";

fn mount_lazy(mode: Option<Mode>, a: &Args, s3: Option<S3Location>) -> Result<ExitCode> {
    if a.daemon {
        return detach(mode, a);
    }
    let spec = MountSpec {
        source: a.source.clone(),
        mountpoint: a.mountpoint.clone(),
        mode: mode.unwrap_or(Mode::Auto),
        blob_dirs: a.blob_dirs.clone(),
        s3,
        insecure: a.fetch.insecure,
        timeout_secs: a.timeout.expect("resolved in run"),
        prefetch: !a.fetch.no_prefetch,
        prefetch_all: a.fetch.prefetch_all,
        prefetch_rate: a.fetch.prefetch_rate.map(u64::from),
        mirrors: a.fetch.mirrors.clone(),
        bootstrap: None,
        fetch_merge_max: a.fetch.fetch_merge_max,
        fetch_concurrency: a.fetch.fetch_concurrency,
        force: false,
        allow_setuid: a.exposure.allow_setuid,
        allow_devices: a.exposure.allow_devices,
    };
    let cache = Arc::new(ChunkCache::open(a.cache_dir())?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let m = rt.block_on(naiad_daemon::mount::mount(spec, cache, a.runtime_dir(), false))?;
    eprintln!(
        "naiad: {} mounted at {} ({:?} mode){SERVING}",
        a.source,
        m.spec.mountpoint.display(),
        m.spec.mode
    );
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if !m.is_mounted() {
                        break;
                    }
                }
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    m.unmount();
    Ok(ExitCode::SUCCESS)
}
