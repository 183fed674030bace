//! Lazy mounts in kernel mode: the blob-view FUSE filesystem under a private directory, and
//! the kernel's EROFS on top of it with those files as devices.

use crate::blob_view_fs::{BlobViewFs, ViewFile};
use crate::fuse_keep::{FuseServer, Keep};
use crate::{FsError, Result};
use naiad_format::bootstrap::Bootstrap;
use naiad_storage::chunk_cache::ChunkCache;
use naiad_storage::fetcher::Fetcher;
use std::path::{Path, PathBuf};

use std::sync::Arc;

/// A mounted lazy image; dropping it (or [`LazyMount::unmount`]) unmounts both layers.
pub struct LazyMount {
    mountpoint: PathBuf,
    views: Option<FuseServer>,
    pub fetcher: Arc<Fetcher>,
}

/// Threads serving the blob views (the kernel issues reads of different ranges in parallel;
/// more threads measured no faster here: bench/lazy.sh).
pub const VIEW_THREADS: usize = 4;

/// Mounts `bootstrap_path` (parsed as `bs`) at `mountpoint`, its blobs served from `cache`
/// through `fetcher`; `views_dir` (created) holds the blob-view files. With `keep`, the
/// views' FUSE connection is held by a keeper process, so that a later server (after this
/// one died) takes it over: then EROFS is still mounted on the views and stays.
pub fn mount_kernel_mode(
    bootstrap_path: &Path,
    bs: &Bootstrap,
    cache: &ChunkCache,
    fetcher: Arc<Fetcher>,
    views_dir: &Path,
    mountpoint: &Path,
    keep: Option<&Keep>,
) -> Result<LazyMount> {
    let ext = bs.extension();
    let mut files = Vec::new();
    for (i, b) in ext.blobs.iter().enumerate() {
        let blob = cache.blob(&b.digest, b.view_size)?;
        files.push(ViewFile::new(blob, ext.blob_chunks(i as u32).to_vec()));
    }
    let fs = BlobViewFs::new(files, fetcher.clone());
    // Frames complete in the cache are read by EROFS straight from their files, like a local
    // image: nothing of them goes through this process (a remount of a cached image, or of
    // one partly cached). The rest is read through the views.
    let plan = {
        let blobs: Vec<_> = (0..fs.len())
            .map(|i| crate::devices::BlobDevices {
                blob: &fs.file(i).blob,
                frames: &fs.file(i).frames,
                view: Some(views_dir.join(fs.file_name(i))),
            })
            .collect();
        crate::devices::plan(bs, &blobs, |i, frame| blobs[i].blob.all_present(frame))?
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("naiad-views".into()),
        fuser::MountOption::Subtype("naiad".into()),
    ];
    // Only take over views that still carry the image: otherwise start afresh.
    let (views, adopted) = FuseServer::start(
        fs,
        views_dir,
        config,
        VIEW_THREADS,
        keep,
        crate::kernel::is_erofs_mounted(mountpoint),
        None,
    )?;
    // From here on, dropping `m` (on an error too) unmounts the views.
    let m = LazyMount { mountpoint: mountpoint.into(), views: Some(views), fetcher };
    if !adopted {
        std::fs::create_dir_all(mountpoint).map_err(FsError::io(mountpoint))?;
        crate::devices::mount(
            &plan,
            bootstrap_path,
            &views_dir.with_extension("erofs"),
            mountpoint,
        )?;
    }
    Ok(m)
}

impl LazyMount {
    /// Unmounts the image, then the blob views.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(mut views) = self.views.take() else { return Ok(()) };
        let r = crate::kernel::umount(&self.mountpoint);
        let _ = views.stop();
        r
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
