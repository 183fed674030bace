//! Prefetch: fetching ahead of reads. First the image's prefetch list (files, or whole
//! directories), then optionally every chunk of the image, in the background under a
//! bandwidth limit. Prefetch reads through the same blobs as the mount, so a chunk being
//! prefetched and read at once is fetched once.

use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::extension::ChunkRecord;
use naiad_storage::lazy::LazyBlob;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Progress of a prefetch (exported as metrics).
#[derive(Debug, Default)]
pub struct PrefetchProgress {
    pub chunks_total: AtomicU64,
    pub chunks_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub errors: AtomicU64,
    pub finished: AtomicBool,
}

/// What to prefetch.
#[derive(Clone, Copy, Debug)]
pub struct PrefetchPlan {
    /// After the prefetch list, fetch every chunk of the image.
    pub everything: bool,
    /// Bytes per second at most (uncompressed chunk bytes); `None` for no limit.
    pub rate_bytes_per_sec: Option<u64>,
}

/// The chunks of the prefetch list (in list order, each file's chunks in order), then with
/// `everything` all the other chunks of the image; no chunk twice.
pub fn plan_chunks(bs: &Bootstrap, everything: bool) -> Vec<ChunkRecord> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut add_file = |ino: &naiad_format::bootstrap::Inode, out: &mut Vec<ChunkRecord>| {
        for i in 0..ino.chunk_count() {
            if let Ok(ChunkSlot::Data(r)) = bs.chunk(ino, i) {
                if seen.insert((r.blob_index, r.view_offset)) {
                    out.push(*r);
                }
            }
        }
    };
    for path in &bs.extension().prefetch {
        let Ok(ino) = bs.lookup(path) else { continue };
        if ino.is_reg() {
            add_file(&ino, &mut out);
        } else if ino.is_dir() {
            let _ = bs.walk(|p, _, child| -> naiad_format::Result<()> {
                let under = p.starts_with(path)
                    && (p.len() == path.len() || p.get(path.len()) == Some(&b'/') || path == b"/");
                if under && child.is_reg() {
                    add_file(child, &mut out);
                }
                Ok(())
            });
        }
    }
    if everything {
        for r in &bs.extension().chunks {
            if seen.insert((r.blob_index, r.view_offset)) {
                out.push(*r);
            }
        }
    }
    out
}

/// Runs a prefetch of image `bs` (its blobs by blob index) on a background thread; `stop`
/// ends it early.
pub fn spawn(
    bs: Arc<Bootstrap>,
    blobs: Vec<Arc<LazyBlob>>,
    plan: PrefetchPlan,
    stop: Arc<AtomicBool>,
) -> Arc<PrefetchProgress> {
    let progress = Arc::new(PrefetchProgress::default());
    let p = progress.clone();
    std::thread::Builder::new()
        .name("naiad-prefetch".into())
        .spawn(move || {
            let chunks = plan_chunks(&bs, plan.everything);
            p.chunks_total.store(chunks.len() as u64, Ordering::Relaxed);
            let started = Instant::now();
            for c in chunks {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Some(blob) = blobs.get(c.blob_index as usize) else { continue };
                match blob.ensure(&[c]) {
                    Ok(()) => {
                        p.chunks_done.fetch_add(1, Ordering::Relaxed);
                        p.bytes_done.fetch_add(u64::from(c.size), Ordering::Relaxed);
                    }
                    Err(e) => {
                        p.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "prefetch of a chunk failed");
                    }
                }
                if let Some(rate) = plan.rate_bytes_per_sec.filter(|r| *r > 0) {
                    // Stay under the rate: sleep until the bytes done so far are due.
                    let due = Duration::from_secs_f64(
                        p.bytes_done.load(Ordering::Relaxed) as f64 / rate as f64,
                    );
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            p.finished.store(true, Ordering::Release);
        })
        .expect("spawning the prefetch thread");
    progress
}
