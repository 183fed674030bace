//! One lazy mount of the daemon (or of a foreground `naiad mount`): its source resolved, the
//! mode chosen, the image mounted in it, its prefetch.

use crate::source::resolve;
use crate::spec::{Mode, MountSpec};
use crate::{DaemonError, Result};
use naiad_format::bootstrap::Bootstrap;
use naiad_fs::keeper::Keep;
use naiad_fs::mode::{auto_mode, LazyMount};
use naiad_fs::prefetch::{PrefetchPlan, PrefetchProgress};
use naiad_storage::cache::ChunkCache;
use naiad_storage::fetch::{Fetcher, DEFAULT_MAX_REQUESTS, DEFAULT_MERGE_LIMIT_BYTES};
use naiad_storage::lazy::LazyBlob;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One active mount.
pub struct ActiveMount {
    pub spec: MountSpec,
    pub backend: String,
    pub bootstrap: Arc<Bootstrap>,
    pub fetcher: Arc<Fetcher>,
    pub prefetch: Mutex<Option<Arc<PrefetchProgress>>>,
    /// The image's blobs, by blob index: what every read and prefetch goes through.
    blobs: Vec<Arc<LazyBlob>>,
    stop: Arc<AtomicBool>,
    /// The mount itself; taking it unmounts.
    handle: Mutex<Option<LazyMount>>,
}

/// Resolves the source, mounts it, and starts the prefetch. With `keep_fuse`, FUSE
/// connections are held by keepers (the daemon's mounts survive its restart).
pub async fn mount(
    spec: MountSpec,
    cache: Arc<ChunkCache>,
    runtime_dir: &Path,
    keep_fuse: bool,
) -> Result<ActiveMount> {
    let src = resolve(&spec, runtime_dir).await?;
    let bs = Arc::new(Bootstrap::open(src.bootstrap_bytes)?);
    // Everything the kernel will parse, checked before any mode mounts it.
    bs.validate()?;
    let backend_name = src.backend.name();
    let fetcher = Arc::new(
        Fetcher::new(
            src.backend,
            bs.extension().digester,
            spec.fetch_merge_max.unwrap_or(DEFAULT_MERGE_LIMIT_BYTES),
        )
        .with_max_requests(spec.fetch_concurrency.unwrap_or(DEFAULT_MAX_REQUESTS)),
    );
    let mountpoint = std::path::absolute(&spec.mountpoint)
        .map_err(DaemonError::io(spec.mountpoint.display()))?;
    let blobs = LazyBlob::for_image(bs.extension(), &cache, &fetcher)?;
    let target = Target {
        bootstrap_path: &src.bootstrap_path,
        bs: &bs,
        blobs: &blobs,
        mountpoint: &mountpoint,
        runtime_dir,
        exposure: spec.exposure(),
    };
    let handle = target.mount(spec.mode, cache.dir(), keep_fuse)?;
    let m = ActiveMount {
        spec: MountSpec {
            mountpoint,
            mode: handle.mode(),
            bootstrap: Some(src.bootstrap_path),
            ..spec
        },
        backend: backend_name,
        bootstrap: bs,
        fetcher,
        prefetch: Mutex::new(None),
        blobs,
        stop: Arc::new(AtomicBool::new(false)),
        handle: Mutex::new(Some(handle)),
    };
    if m.spec.prefetch || m.spec.prefetch_all {
        m.start_prefetch(PrefetchPlan {
            everything: m.spec.prefetch_all,
            rate_bytes_per_sec: m.spec.prefetch_rate,
        });
    }
    Ok(m)
}

/// What is mounted, and where.
struct Target<'a> {
    bootstrap_path: &'a Path,
    bs: &'a Arc<Bootstrap>,
    blobs: &'a [Arc<LazyBlob>],
    mountpoint: &'a Path,
    runtime_dir: &'a Path,
    exposure: naiad_fs::erofs_mount::Exposure,
}

impl Target<'_> {
    /// Mounts in `asked` (auto: the best this kernel has for a cache in `cache_dir`).
    fn mount(&self, asked: Mode, cache_dir: &Path, keep_fuse: bool) -> Result<LazyMount> {
        let mode = match asked {
            Mode::Auto => {
                let (mode, why) = auto_mode(cache_dir);
                if let Some(why) = why {
                    tracing::warn!("{why}");
                }
                mode
            }
            Mode::Fanotify => {
                naiad_fs::fanotify::supported(cache_dir).map_err(|why| {
                    DaemonError::Invalid(format!(
                        "fanotify mode: {why} (use --mode kernel or fuse)"
                    ))
                })?;
                Mode::Fanotify
            }
            m => m,
        };
        // FUSE connections (kernel mode's views, fuse mode's mount) go to keepers if asked.
        let keep = || keep_fuse.then(|| keeper_for(self.runtime_dir)).transpose();
        match mode {
            Mode::Fanotify => match self.fanotify() {
                Ok(m) => Ok(m),
                // The mode was not asked for: a cache that cannot hold the frame files (a full
                // disk) still lets kernel mode serve reads, from memory.
                Err(DaemonError::Fs(e @ naiad_fs::FsError::Storage(_))) if asked == Mode::Auto => {
                    tracing::warn!(error = %e, "fanotify mode cannot set up its cache files; mounting in kernel mode");
                    self.kernel(keep()?.as_ref())
                }
                Err(e) => Err(e),
            },
            Mode::Kernel => self.kernel(keep()?.as_ref()),
            Mode::Fuse => {
                let fs = naiad_fs::mode::fuse::ImageFs::new(self.bs.clone(), self.blobs.to_vec());
                Ok(LazyMount::Fuse(naiad_fs::mode::fuse::mount_fuse_mode(fs, self.mountpoint, keep()?.as_ref(), self.exposure)?))
            }
            Mode::Local => Err(DaemonError::Invalid(
                "local mode is for `naiad mount` of a bootstrap with --blob-dir; a daemon mounts lazily (auto, fanotify, kernel or fuse)".into(),
            )),
            Mode::Auto => unreachable!("resolved above"),
        }
    }

    fn fanotify(&self) -> Result<LazyMount> {
        let exe = std::env::current_exe().map_err(DaemonError::io("the naiad executable"))?;
        Ok(LazyMount::Fanotify(naiad_fs::mode::fanotify::mount_fanotify_mode(
            self.bootstrap_path,
            self.bs,
            self.blobs.to_vec(),
            self.mountpoint,
            self.runtime_dir,
            &exe,
            self.exposure,
        )?))
    }

    fn kernel(&self, keep: Option<&Keep>) -> Result<LazyMount> {
        Ok(LazyMount::Kernel(naiad_fs::mode::kernel::mount_kernel_mode(
            self.bootstrap_path,
            self.bs,
            self.blobs.to_vec(),
            &views_dir(self.runtime_dir, self.mountpoint),
            self.mountpoint,
            keep,
            self.exposure,
        )?))
    }
}

impl ActiveMount {
    /// Starts (or restarts) a background prefetch.
    pub fn start_prefetch(&self, plan: PrefetchPlan) {
        let p = naiad_fs::prefetch::spawn(
            self.bootstrap.clone(),
            self.blobs.clone(),
            plan,
            self.stop.clone(),
        );
        *self.prefetch.lock().expect("prefetch lock") = Some(p);
    }

    /// Stops prefetching and unmounts.
    pub fn unmount(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.lock().expect("handle lock").take();
        if let Some(Err(e)) = handle.map(LazyMount::unmount) {
            tracing::warn!(mountpoint = %self.spec.mountpoint.display(), error = %e, "unmounting");
        }
    }

    /// Whether the kernel still has the mount (an external `umount` ends it).
    pub fn is_mounted(&self) -> bool {
        self.spec.mode.is_mounted(&self.spec.mountpoint)
    }
}

impl Drop for ActiveMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Where a kernel-mode mount at `mountpoint` has its blob views.
pub(crate) fn views_dir(runtime_dir: &Path, mountpoint: &Path) -> PathBuf {
    runtime_dir.join(format!("views-{}", naiad_fs::erofs_mount::mount_tag(mountpoint)))
}

/// FUSE connections of the daemon's mounts are held by keepers (`naiad fuse-keeper`), so
/// that a daemon that dies leaves them waiting for the next one instead of broken.
fn keeper_for(runtime_dir: &Path) -> Result<Keep> {
    let exe = std::env::current_exe().map_err(DaemonError::io("the naiad executable"))?;
    Ok(Keep { runtime_dir: runtime_dir.to_path_buf(), exe })
}
