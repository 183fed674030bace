//! The devices of a lazy EROFS mount. The chunk cache keeps each frame of a blob in its own
//! file; a mount gives the kernel, per chunk, either the file of the chunk's frame or the
//! blob's whole view (the kernel mode's FUSE view file), through a copy of the bootstrap whose
//! chunk indexes name those devices ([`naiad_format::remap`]).

use crate::{FsError, Result};
use naiad_format::bootstrap::Bootstrap;
use naiad_format::digest::to_hex;
use naiad_format::extension::ChunkRecord;
use naiad_format::remap::{remap_devices, Device, MAX_DEVICES};
use naiad_format::{block_align, BLOCK_SIZE_BYTES};
use naiad_storage::cache::CachedBlob;
use naiad_storage::fetch::FrameIndex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a mount gives the kernel: device paths in table order, and the remapped bootstrap
/// (`None`: the image's own, every blob read through its view).
pub(crate) struct Plan {
    pub paths: Vec<PathBuf>,
    image: Option<Vec<u8>>,
}

/// One blob of the image: its cache entry, its chunks by frame, and its view file, if the
/// mount has one.
pub(crate) struct BlobDevices<'a> {
    pub blob: &'a CachedBlob,
    pub frames: &'a FrameIndex,
    pub view: Option<PathBuf>,
}

/// Plans the devices: every frame `use_frame` accepts (given the blob's index and the
/// frame's chunks) is read from its frame file, the rest of a blob from its view. A blob
/// without a view must have every frame accepted. With more devices than a device table
/// holds, blobs that have a view are read through it alone; an error if that is not enough.
pub(crate) fn plan(
    bs: &Bootstrap,
    blobs: &[BlobDevices],
    mut use_frame: impl FnMut(usize, &[ChunkRecord]) -> bool,
) -> Result<Plan> {
    let mut chosen: Vec<Vec<&[ChunkRecord]>> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| b.frames.frames().filter(|f| use_frame(i, f)).collect())
        .collect();
    let totals: Vec<usize> = blobs.iter().map(|b| b.frames.frames().count()).collect();
    // A blob needs its view as a device too when some of its frames are not chosen.
    let needs_view = |i: usize, chosen: &[Vec<&[ChunkRecord]>]| chosen[i].len() < totals[i];
    let count = |chosen: &[Vec<&[ChunkRecord]>]| -> usize {
        (0..blobs.len()).map(|i| chosen[i].len() + usize::from(needs_view(i, chosen))).sum()
    };
    if count(&chosen) > MAX_DEVICES {
        tracing::info!(
            devices = count(&chosen),
            max = MAX_DEVICES,
            "too many frame files for one mount; blobs with a view are read through it"
        );
        for (b, c) in blobs.iter().zip(chosen.iter_mut()) {
            if b.view.is_some() {
                c.clear();
            }
        }
        if count(&chosen) > MAX_DEVICES {
            return Err(FsError::Invalid(format!(
                "the image needs {} frame files as EROFS devices, more than the {MAX_DEVICES} one mount can have; mount it in kernel or fuse mode",
                count(&chosen)
            )));
        }
    }
    if chosen.iter().all(Vec::is_empty) {
        if let Some(paths) = blobs.iter().map(|b| b.view.clone()).collect::<Option<Vec<_>>>() {
            return Ok(Plan { paths, image: None });
        }
    }
    let mut devices = Vec::new();
    let mut paths = Vec::new();
    let mut view_id: Vec<u16> = vec![0; blobs.len()];
    let mut frame_id: HashMap<(u32, u64), u16> = HashMap::new();
    for (i, (b, frames)) in blobs.iter().zip(&chosen).enumerate() {
        let hex = to_hex(b.blob.digest());
        if needs_view(i, &chosen) {
            let view = b.view.clone().ok_or_else(|| FsError::Invalid(format!("blob {hex}: some frames are not to be read from their files, and there is no view")))?;
            devices.push(Device {
                tag: hex.clone(),
                blocks: (b.blob.view_size() / BLOCK_SIZE_BYTES) as u32,
            });
            paths.push(view);
            view_id[i] = devices.len() as u16;
        }
        for f in frames {
            let frame = f[0].compressed_offset;
            let blocks: u64 =
                f.iter().map(|c| block_align(u64::from(c.size)) / BLOCK_SIZE_BYTES).sum();
            devices
                .push(Device { tag: format!("{}-{frame:x}", &hex[..16]), blocks: blocks as u32 });
            paths.push(b.blob.frame_path(frame));
            frame_id.insert((i as u32, frame), devices.len() as u16);
        }
    }
    let image = remap_devices(bs, &devices, |rec| {
        frame_id
            .get(&(rec.blob_index, rec.compressed_offset))
            .copied()
            .unwrap_or(view_id.get(rec.blob_index as usize).copied().unwrap_or(0))
    })?;
    Ok(Plan { paths, image: Some(image) })
}

/// Mounts the plan at `mountpoint`: the remapped bootstrap is written to a new file named
/// after `scratch` for the mount and removed after (the kernel holds it open), else
/// `bootstrap_path` is mounted. The new file is created for this mount alone: a file another
/// mount still reads (a previous mount at this mount point, left in place for its readers) is
/// never truncated or rewritten.
pub(crate) fn mount(
    plan: &Plan,
    bootstrap_path: &Path,
    scratch: &Path,
    mountpoint: &Path,
    exposure: crate::erofs_mount::Exposure,
) -> Result<()> {
    let Some(image) = &plan.image else {
        return crate::erofs_mount::mount_erofs(bootstrap_path, &plan.paths, mountpoint, exposure);
    };
    let path = crate::scratch::unique_sibling(scratch);
    let written = (|| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        f.write_all(image)
    })();
    let r = written
        .map_err(FsError::io(&path))
        .and_then(|()| crate::erofs_mount::mount_erofs(&path, &plan.paths, mountpoint, exposure));
    let _ = std::fs::remove_file(&path);
    r
}
