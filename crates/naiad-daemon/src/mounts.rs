//! Lazy mounts: resolving a source (image reference, or bootstrap and blob directories or S3) to
//! a bootstrap and a backend, mounting it in kernel or fuse mode, prefetch, and the table of
//! active mounts.

use crate::state::StateFile;
use crate::{DaemonError, Result};
use naiad_format::bootstrap::Bootstrap;
use naiad_fs::kernel::MountTable;
use naiad_fs::prefetch::{PrefetchPlan, PrefetchProgress};
use naiad_oci::reference::ImageRef;
use naiad_storage::backend::{
    Backend, LocalBackend, MirroredBackend, RegistryBackend, RegistryOptions, S3Backend,
    S3Location, S3Options,
};
use naiad_storage::blob_store::BlobDirs;
use naiad_storage::chunk_cache::ChunkCache;
use naiad_storage::fetcher::{Fetcher, DEFAULT_MAX_REQUESTS, DEFAULT_MERGE_LIMIT_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The lazy read paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The best this kernel supports: fanotify, else kernel, else fuse ([`auto_mode`]).
    Auto,
    /// EROFS in the kernel straight on the cache files, filled on demand through fanotify
    /// pre-content events: nothing in user space on the data path.
    Fanotify,
    /// EROFS in the kernel over FUSE blob-view files.
    Kernel,
    /// The whole filesystem in user space.
    Fuse,
}

/// The mode [`Mode::Auto`] picks on this kernel for a cache in `cache_dir`: fanotify where
/// it has pre-content events and file-backed EROFS; else kernel mode where it has EROFS;
/// else fuse mode. With the reason when it is not fanotify.
pub fn auto_mode(cache_dir: &Path) -> (Mode, Option<String>) {
    match naiad_fs::fanotify::supported(cache_dir) {
        Ok(()) => (Mode::Fanotify, None),
        Err(why) if naiad_fs::kernel::has_erofs() => {
            (Mode::Kernel, Some(format!("fanotify mode unavailable: {why}; using kernel mode")))
        }
        Err(why) => (
            Mode::Fuse,
            Some(format!("fanotify mode unavailable: {why}; no EROFS either: using fuse mode")),
        ),
    }
}

/// What to mount and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountSpec {
    /// An image reference (`docker://`, `oci:`) or a bootstrap path.
    pub source: String,
    pub mountpoint: PathBuf,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Blob directories, for a bootstrap source.
    #[serde(default)]
    pub blob_dirs: Vec<PathBuf>,
    /// S3-compatible storage holding the blobs, for a bootstrap source (instead of blob
    /// directories). No credentials: the serving process (the foreground `naiad mount` or
    /// the daemon) takes them from its own environment or config file, so a spec sent over
    /// the API, listed or saved never holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Location>,
    #[serde(default)]
    pub insecure: bool,
    /// Seconds per registry or S3 request.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Fetch the prefetch list ahead of reads.
    #[serde(default = "yes")]
    pub prefetch: bool,
    /// Then fetch everything in the background.
    #[serde(default)]
    pub prefetch_all: bool,
    /// Background prefetch limit in bytes per second.
    #[serde(default)]
    pub prefetch_rate: Option<u64>,
    /// Registry mirrors (`host[:port]`, same repository), tried in order before the origin.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// The image's bootstrap, already fetched and kept in the runtime directory. The daemon
    /// sets it when it mounts an image reference, so that bringing the mount back after a
    /// crash needs no registry; a bootstrap read from here is verified like a fetched one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<PathBuf>,
    /// Largest merged backend request, bytes (default 4 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_merge_max: Option<u64>,
    /// Backend requests at once, per mount (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_concurrency: Option<usize>,
}

fn default_mode() -> Mode {
    Mode::Auto
}
fn default_timeout() -> u64 {
    10
}
fn yes() -> bool {
    true
}

/// One active mount.
pub struct ActiveMount {
    pub spec: MountSpec,
    pub backend: String,
    pub bootstrap: Arc<Bootstrap>,
    pub fetcher: Arc<Fetcher>,
    pub prefetch: Mutex<Option<Arc<PrefetchProgress>>>,
    stop: Arc<AtomicBool>,
    cache: Arc<ChunkCache>,
    /// The FUSE session / kernel mount; dropping it unmounts.
    handle: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "linux/arm64",
        _ => "linux/amd64",
    }
}

/// Resolves the source, mounts it, and starts the prefetch.
pub async fn mount(
    spec: MountSpec,
    cache: Arc<ChunkCache>,
    runtime_dir: &Path,
    keep_fuse: bool,
) -> Result<ActiveMount> {
    let image = (spec.source.starts_with("docker://") || spec.source.starts_with("oci:"))
        .then(|| ImageRef::parse(&spec.source))
        .transpose()?;
    if image.is_some() && spec.s3.is_some() {
        return Err(DaemonError::Invalid("S3 storage is for a bootstrap source: an image reference reads its blobs from its registry".into()));
    }
    let (bootstrap_path, bytes, backend): (PathBuf, Vec<u8>, Arc<dyn Backend>) = match &image {
        None => {
            let backend: Arc<dyn Backend> = match (&spec.s3, spec.blob_dirs.is_empty()) {
                (None, true) => {
                    return Err(DaemonError::Invalid(
                        "a bootstrap source needs blob directories or S3 storage".into(),
                    ))
                }
                (Some(_), false) => {
                    return Err(DaemonError::Invalid(
                        "blob directories or S3 storage, not both".into(),
                    ))
                }
                (None, false) => Arc::new(LocalBackend::new(BlobDirs::new(spec.blob_dirs.clone()))),
                // The credentials are this process's own (S3Options::new), never the spec's.
                (Some(loc), true) => Arc::new(S3Backend::new(S3Options {
                    insecure: spec.insecure,
                    timeout: Duration::from_secs(spec.timeout_secs.max(1)),
                    ..S3Options::new(loc.clone())
                })?),
            };
            let path = PathBuf::from(&spec.source);
            let bytes = std::fs::read(&path).map_err(DaemonError::io(path.display()))?;
            (path, bytes, backend)
        }
        Some(r) => {
            let kept = spec.bootstrap.as_ref().and_then(|p| std::fs::read(p).ok());
            let bytes = match kept {
                Some(b) => b,
                None => {
                    naiad_oci::check::fetch_bootstrap(r, spec.insecure, host_platform()).await?
                }
            };
            let backend: Arc<dyn Backend> = match r {
                ImageRef::Registry { registry, repository, .. } => {
                    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
                    for host in spec.mirrors.iter().chain(std::iter::once(registry)) {
                        let opts = RegistryOptions {
                            insecure: spec.insecure,
                            timeout: Duration::from_secs(spec.timeout_secs.max(1)),
                            ..RegistryOptions::new(host, repository)
                        };
                        backends.push(Arc::new(
                            tokio::task::spawn_blocking(move || RegistryBackend::new(opts))
                                .await
                                .map_err(|e| DaemonError::Invalid(e.to_string()))??,
                        ));
                    }
                    if backends.len() == 1 {
                        backends.remove(0)
                    } else {
                        Arc::new(MirroredBackend::new(backends))
                    }
                }
                ImageRef::Layout { dir, .. } => {
                    Arc::new(LocalBackend::new(BlobDirs::new(vec![dir.join("blobs/sha256")])))
                }
            };
            let dir = runtime_dir.join("bootstraps");
            std::fs::create_dir_all(&dir).map_err(DaemonError::io(dir.display()))?;
            let path =
                dir.join(format!("{}.boot", hex::encode(naiad_format::digest::sha256(&bytes))));
            std::fs::write(&path, &bytes).map_err(DaemonError::io(path.display()))?;
            (path, bytes, backend)
        }
    };
    let bs = Arc::new(Bootstrap::open(bytes)?);
    let backend_name = backend.name();
    let fetcher = Arc::new(
        Fetcher::new(
            backend,
            bs.extension().digester,
            spec.fetch_merge_max.unwrap_or(DEFAULT_MERGE_LIMIT_BYTES),
        )
        .with_max_requests(spec.fetch_concurrency.unwrap_or(DEFAULT_MAX_REQUESTS)),
    );
    let mountpoint = std::path::absolute(&spec.mountpoint)
        .map_err(DaemonError::io(spec.mountpoint.display()))?;
    let blobs = bs
        .extension()
        .blobs
        .iter()
        .map(|b| cache.blob(&b.digest, b.view_size))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut mode = match spec.mode {
        Mode::Auto => {
            let (mode, why) = auto_mode(cache.dir());
            if let Some(why) = why {
                tracing::warn!("{why}");
            }
            mode
        }
        Mode::Fanotify => {
            naiad_fs::fanotify::supported(cache.dir()).map_err(|why| {
                DaemonError::Invalid(format!("fanotify mode: {why} (use --mode kernel or fuse)"))
            })?;
            Mode::Fanotify
        }
        m => m,
    };
    let mut handle: Option<Box<dyn std::any::Any + Send>> = None;
    if mode == Mode::Fanotify {
        let exe = std::env::current_exe().map_err(DaemonError::io("the naiad executable"))?;
        match naiad_fs::fanotify::mount_fanotify_mode(
            &bootstrap_path,
            &bs,
            &cache,
            fetcher.clone(),
            &mountpoint,
            runtime_dir,
            &exe,
        ) {
            Ok(m) => handle = Some(Box::new(m)),
            // The mode was not asked for: a cache that cannot hold the frame files (a full
            // disk) still lets kernel mode serve reads, from memory.
            Err(e @ naiad_fs::FsError::Storage(_)) if spec.mode == Mode::Auto => {
                tracing::warn!(error = %e, "fanotify mode cannot set up its cache files; mounting in kernel mode");
                mode = Mode::Kernel;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let keep = (keep_fuse && matches!(mode, Mode::Kernel | Mode::Fuse))
        .then(|| fuse_keep(runtime_dir))
        .transpose()?;
    let handle: Box<dyn std::any::Any + Send> = match (handle, mode) {
        (Some(h), _) => h,
        (None, Mode::Kernel) => Box::new(naiad_fs::lazy::mount_kernel_mode(
            &bootstrap_path,
            &bs,
            &cache,
            fetcher.clone(),
            &views_dir(runtime_dir, &mountpoint),
            &mountpoint,
            keep.as_ref(),
        )?),
        (None, Mode::Fuse) => {
            let fs = naiad_fs::image_fs::ImageFs::new(bs.clone(), blobs.clone(), fetcher.clone());
            Box::new(naiad_fs::image_fs::mount_fuse_mode(fs, &mountpoint, keep.as_ref())?)
        }
        (None, Mode::Auto | Mode::Fanotify) => unreachable!("resolved, or mounted above"),
    };
    let m = ActiveMount {
        spec: MountSpec {
            mountpoint,
            mode,
            bootstrap: image.is_some().then_some(bootstrap_path),
            ..spec
        },
        backend: backend_name,
        bootstrap: bs,
        fetcher,
        prefetch: Mutex::new(None),
        stop: Arc::new(AtomicBool::new(false)),
        cache,
        handle: Mutex::new(Some(handle)),
    };
    if m.spec.prefetch || m.spec.prefetch_all {
        m.start_prefetch(PrefetchPlan {
            everything: m.spec.prefetch_all,
            rate_bytes_per_sec: m.spec.prefetch_rate,
        })?;
    }
    Ok(m)
}

impl ActiveMount {
    /// Starts (or restarts) a background prefetch.
    pub fn start_prefetch(&self, plan: PrefetchPlan) -> Result<()> {
        let blobs = self
            .bootstrap
            .extension()
            .blobs
            .iter()
            .map(|b| self.cache.blob(&b.digest, b.view_size))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let p = naiad_fs::prefetch::spawn(
            self.bootstrap.clone(),
            blobs,
            self.fetcher.clone(),
            plan,
            self.stop.clone(),
        );
        *self.prefetch.lock().expect("prefetch lock") = Some(p);
        Ok(())
    }

    /// Stops prefetching and unmounts.
    pub fn unmount(&self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.handle.lock().expect("handle lock").take());
    }

    /// Whether the kernel still has the mount (an external `umount` ends it).
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.spec.mountpoint, self.spec.mode)
    }
}

impl Drop for ActiveMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Whether `mountpoint` carries the mount a lazy mount of `mode` makes: EROFS, or FUSE (whose
/// type reads `fuse` when root mounts it directly and `fuse.naiad` through `fusermount3`).
pub fn is_mounted(mountpoint: &Path, mode: Mode) -> bool {
    is_mounted_in(&MountTable::read(), mountpoint, mode)
}

/// [`is_mounted`] against a mount table already read.
fn is_mounted_in(table: &MountTable, mountpoint: &Path, mode: Mode) -> bool {
    let types: &[&str] = match mode {
        Mode::Kernel | Mode::Fanotify => &["erofs"],
        Mode::Fuse => &["fuse", "fuse.naiad"],
        Mode::Auto => &["erofs", "fuse", "fuse.naiad"],
    };
    table.has(mountpoint, types)
}

/// The daemon's table of mounts, by mount point; with a [`StateFile`], every change is saved
/// so a restarted daemon can bring the mounts back ([`restore`]).
#[derive(Default)]
pub struct Mounts {
    table: Mutex<BTreeMap<PathBuf, Arc<ActiveMount>>>,
    state: Option<StateFile>,
}

impl Mounts {
    /// A table saved to `state` on every change.
    pub fn persistent(state: StateFile) -> Self {
        Mounts { table: Mutex::default(), state: Some(state) }
    }

    /// Saves the table (under its lock, so saves follow the order of changes). A failed save
    /// is logged: the mounts work on, only a restart would not bring them back.
    fn save(&self, t: &BTreeMap<PathBuf, Arc<ActiveMount>>) {
        if let Some(st) = &self.state {
            if let Err(e) = st.save(&t.values().map(|m| &m.spec).collect::<Vec<_>>()) {
                tracing::warn!(error = %e, "saving the mount table failed");
            }
        }
    }

    /// Adds a mount (refused if the mount point is taken).
    pub fn insert(&self, m: ActiveMount) -> Result<Arc<ActiveMount>> {
        let mut t = self.table.lock().expect("mounts lock");
        if t.contains_key(&m.spec.mountpoint) {
            return Err(DaemonError::Invalid(format!(
                "{} is already mounted",
                m.spec.mountpoint.display()
            )));
        }
        let m = Arc::new(m);
        t.insert(m.spec.mountpoint.clone(), m.clone());
        self.save(&t);
        Ok(m)
    }

    /// Removes and unmounts.
    pub fn remove(&self, mountpoint: &Path) -> Result<()> {
        let m = {
            let mut t = self.table.lock().expect("mounts lock");
            let m = t
                .remove(mountpoint)
                .ok_or_else(|| DaemonError::NotMounted(mountpoint.display().to_string()))?;
            self.save(&t);
            m
        };
        m.unmount();
        Ok(())
    }

    /// A mount by mount point.
    pub fn get(&self, mountpoint: &Path) -> Option<Arc<ActiveMount>> {
        self.table.lock().expect("mounts lock").get(mountpoint).cloned()
    }

    /// Every mount.
    pub fn all(&self) -> Vec<Arc<ActiveMount>> {
        self.table.lock().expect("mounts lock").values().cloned().collect()
    }

    /// Drops the mounts whose kernel mount went away (an external `umount`).
    pub fn reap(&self) {
        let table = MountTable::read();
        let gone: Vec<PathBuf> = self
            .all()
            .into_iter()
            .filter(|m| !is_mounted_in(&table, &m.spec.mountpoint, m.spec.mode))
            .map(|m| m.spec.mountpoint.clone())
            .collect();
        for p in gone {
            let _ = self.remove(&p);
        }
    }

    /// Unmounts everything (daemon shutdown).
    pub fn clear(&self) {
        let all: Vec<_> = {
            let mut t = self.table.lock().expect("mounts lock");
            let all = std::mem::take(&mut *t).into_values().collect();
            self.save(&t);
            all
        };
        for m in all {
            m.unmount();
        }
    }
}

/// Where a kernel-mode mount at `mountpoint` has its blob views.
fn views_dir(runtime_dir: &Path, mountpoint: &Path) -> PathBuf {
    runtime_dir.join(format!("views-{}", naiad_fs::kernel::mount_tag(mountpoint)))
}

/// FUSE connections of the daemon's mounts are held by keepers (`naiad fuse-keeper`), so
/// that a daemon that dies leaves them waiting for the next one instead of broken.
fn fuse_keep(runtime_dir: &Path) -> Result<naiad_fs::fuse_keep::Keep> {
    let exe = std::env::current_exe().map_err(DaemonError::io("the naiad executable"))?;
    Ok(naiad_fs::fuse_keep::Keep { runtime_dir: runtime_dir.to_path_buf(), exe })
}

/// Brings back the mounts a previous daemon saved in `mounts`' state file and did not
/// unmount (it died). Each mount point still carries the dead daemon's mount (a FUSE mount
/// with no server, or EROFS over blob views with none): it is detached, so processes that
/// hold files open there keep the old mount (their reads fail), and the image is mounted
/// afresh with the same spec, its data served from the cache the dead daemon filled. Returns
/// the mount points restored and, for each that failed, the error (the spec is dropped).
pub async fn restore(
    mounts: &Mounts,
    cache: &Arc<ChunkCache>,
    runtime_dir: &Path,
) -> (Vec<PathBuf>, Vec<(PathBuf, DaemonError)>) {
    let specs = match mounts.state.as_ref().map(|s| s.load()) {
        Some(Ok(specs)) => specs,
        Some(Err(e)) => {
            return (
                Vec::new(),
                vec![(
                    mounts.state.as_ref().map(|s| s.path().to_path_buf()).unwrap_or_default(),
                    e,
                )],
            )
        }
        None => return (Vec::new(), Vec::new()),
    };
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for spec in specs {
        let mp = spec.mountpoint.clone();
        // A mount whose keeper lives is still in place, its readers waiting: the new server
        // takes it over.
        let kept = match spec.mode {
            Mode::Fanotify => naiad_fs::fanotify::keeper_alive(runtime_dir, &mp),
            Mode::Kernel => {
                naiad_fs::fuse_keep::keeper_alive(runtime_dir, &views_dir(runtime_dir, &mp))
            }
            Mode::Fuse => naiad_fs::fuse_keep::keeper_alive(runtime_dir, &mp),
            Mode::Auto => false,
        };
        if !kept && is_mounted(&mp, spec.mode) {
            let _ = rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH);
        }
        let r = match mount(spec, cache.clone(), runtime_dir, true).await {
            Ok(m) => mounts.insert(m).map(|_| ()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => ok.push(mp),
            Err(e) => failed.push((mp, e)),
        }
    }
    // Saves the table as restored (the failed specs are gone).
    mounts.save(&mounts.table.lock().expect("mounts lock"));
    (ok, failed)
}
