//! `naiad mount`: mount an image whose blobs are local, with the kernel's EROFS.

use crate::output::open_bootstrap;
use anyhow::{Context, Result};
use naiad_storage::blob_store::BlobDirs;
use naiad_storage::view_cache::{ViewCache, ViewState};
use std::path::PathBuf;
use std::process::ExitCode;

/// Default directory of blob views.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/naiad/cache";

/// Mount an image with the kernel's EROFS (file-backed, Linux >= 6.12).
///
/// Each blob's uncompressed view is written to the cache directory once (verified chunk by
/// chunk) and reused by later mounts; the bootstrap is then mounted with one EROFS device per
/// view. `naiad umount` undoes it.
#[derive(clap::Args)]
pub struct Args {
    bootstrap: PathBuf,
    mountpoint: PathBuf,
    /// Directory of blob files named by digest (repeat for several).
    #[arg(long = "blob-dir", required = true)]
    blob_dirs: Vec<PathBuf>,
    /// Where blob views are kept.
    #[arg(long, default_value = DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let bs = open_bootstrap(&a.bootstrap)?;
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
    naiad_fs::kernel::mount_erofs(&a.bootstrap, &devices, &a.mountpoint)?;
    Ok(ExitCode::SUCCESS)
}
