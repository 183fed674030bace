//! Lazy mounts in kernel mode: the blob-view FUSE filesystem under a private directory, and
//! the kernel's EROFS on top of it with those files as devices.

use crate::blob_view_fs::{BlobViewFs, ViewFile};
use crate::{FsError, Result};
use naiad_format::bootstrap::Bootstrap;
use naiad_storage::chunk_cache::ChunkCache;
use naiad_storage::fetcher::Fetcher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A mounted lazy image; dropping it (or [`LazyMount::unmount`]) unmounts both layers.
pub struct LazyMount {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    pub fetcher: Arc<Fetcher>,
}

/// Threads serving the blob views (the kernel issues reads of different ranges in parallel;
/// more threads measured no faster here: bench/lazy.sh).
pub const VIEW_THREADS: usize = 4;

/// Mounts `bootstrap_path` (parsed as `bs`) at `mountpoint`, its blobs served from `cache`
/// through `fetcher`; `views_dir` (created) holds the blob-view files.
pub fn mount_kernel_mode(bootstrap_path: &Path, bs: &Bootstrap, cache: &ChunkCache, fetcher: Arc<Fetcher>, views_dir: &Path, mountpoint: &Path) -> Result<LazyMount> {
    let ext = bs.extension();
    let mut files = Vec::new();
    for (i, b) in ext.blobs.iter().enumerate() {
        let blob = cache.blob(&b.digest, b.view_size)?;
        let chunks = ext.blob_chunks(i as u32).to_vec();
        files.push(ViewFile::new(blob, chunks));
    }
    // A server killed without unmounting leaves its views mount behind, disconnected:
    // detach it so this mount can take its place.
    let _ = rustix::mount::unmount(views_dir, rustix::mount::UnmountFlags::DETACH);
    std::fs::create_dir_all(views_dir).map_err(FsError::io(views_dir))?;
    let fs = BlobViewFs::new(files, fetcher.clone());
    let devices: Vec<PathBuf> = (0..ext.blobs.len()).map(|i| views_dir.join(fs.file_name(i))).collect();
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::RO, fuser::MountOption::FSName("naiad-views".into()), fuser::MountOption::Subtype("naiad".into())];
    config.n_threads = Some(VIEW_THREADS);
    let session = fuser::spawn_mount(fs, views_dir, &config).map_err(|e| FsError::Io { path: views_dir.into(), cause: e })?;
    // From here on, dropping `m` (on an error too) unmounts the views.
    let m = LazyMount { mountpoint: mountpoint.into(), session: Some(session), fetcher };
    std::fs::create_dir_all(mountpoint).map_err(FsError::io(mountpoint))?;
    crate::kernel::mount_erofs(bootstrap_path, &devices, mountpoint)?;
    Ok(m)
}

impl LazyMount {
    /// Unmounts the image, then the blob views.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else { return Ok(()) };
        let r = crate::kernel::umount(&self.mountpoint);
        let _ = session.umount_and_join();
        r
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
