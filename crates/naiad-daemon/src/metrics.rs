//! Prometheus text exposition of the daemon's state: per mount (and so per backend) bytes
//! and requests fetched, cache hits and misses, the fetch latency histogram, verification
//! failures, fetch errors and cache write failures, and prefetch progress.

use crate::table::Mounts;
use naiad_storage::fetch::LATENCY_BUCKETS_SECS;
use std::fmt::Write;
use std::sync::atomic::Ordering;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders every metric.
pub fn render(mounts: &Mounts, cache: &naiad_storage::cache::ChunkCache) -> String {
    let all = mounts.all();
    let mut out = String::new();
    let counter = |out: &mut String,
                   name: &str,
                   help: &str,
                   get: &dyn Fn(&crate::mount::ActiveMount) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for m in &all {
            let _ = writeln!(
                out,
                "{name}{{mountpoint=\"{}\",backend=\"{}\"}} {}",
                label(&m.spec.mountpoint.to_string_lossy()),
                label(&m.backend),
                get(m)
            );
        }
    };
    counter(&mut out, "naiad_backend_requests_total", "Requests sent to the backend.", &|m| {
        m.fetcher.stats.requests.load(Ordering::Relaxed)
    });
    counter(&mut out, "naiad_backend_bytes_total", "Bytes fetched from the backend.", &|m| {
        m.fetcher.stats.bytes_fetched.load(Ordering::Relaxed)
    });
    counter(&mut out, "naiad_chunks_fetched_total", "Chunks fetched, verified and cached.", &|m| {
        m.fetcher.stats.chunks_fetched.load(Ordering::Relaxed)
    });
    counter(&mut out, "naiad_cache_hits_total", "Chunk reads served from the cache.", &|m| {
        m.fetcher.stats.hits.load(Ordering::Relaxed)
    });
    counter(&mut out, "naiad_cache_misses_total", "Chunk reads that needed a fetch.", &|m| {
        m.fetcher.stats.misses.load(Ordering::Relaxed)
    });
    counter(
        &mut out,
        "naiad_verify_failures_total",
        "Chunks that failed digest verification.",
        &|m| m.fetcher.stats.verify_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "naiad_fetch_errors_total",
        "Fetches that failed (read errors for the reader).",
        &|m| m.fetcher.stats.errors.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "naiad_cache_write_failures_total",
        "Fetches the cache could not store (disk full), served from memory.",
        &|m| m.fetcher.stats.cache_write_failures.load(Ordering::Relaxed),
    );
    let prefetch = |m: &crate::mount::ActiveMount,
                    f: &dyn Fn(&naiad_fs::prefetch::PrefetchProgress) -> u64| {
        m.prefetch.lock().expect("prefetch lock").as_ref().map_or(0, |p| f(p))
    };
    let _ = writeln!(out, "# HELP naiad_prefetch_chunks Prefetch progress in chunks.\n# TYPE naiad_prefetch_chunks gauge");
    for m in &all {
        let mp = label(&m.spec.mountpoint.to_string_lossy());
        let _ = writeln!(
            out,
            "naiad_prefetch_chunks{{mountpoint=\"{mp}\",state=\"done\"}} {}",
            prefetch(m, &|p| p.chunks_done.load(Ordering::Relaxed))
        );
        let _ = writeln!(
            out,
            "naiad_prefetch_chunks{{mountpoint=\"{mp}\",state=\"total\"}} {}",
            prefetch(m, &|p| p.chunks_total.load(Ordering::Relaxed))
        );
    }
    let _ = writeln!(out, "# HELP naiad_fetch_duration_seconds Backend request latency.\n# TYPE naiad_fetch_duration_seconds histogram");
    for m in &all {
        let mp = label(&m.spec.mountpoint.to_string_lossy());
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_SECS.iter().enumerate() {
            cumulative += m.fetcher.stats.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "naiad_fetch_duration_seconds_bucket{{mountpoint=\"{mp}\",le=\"{bound}\"}} {cumulative}");
        }
        cumulative += m.fetcher.stats.latency[LATENCY_BUCKETS_SECS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "naiad_fetch_duration_seconds_bucket{{mountpoint=\"{mp}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = m.fetcher.stats.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "naiad_fetch_duration_seconds_sum{{mountpoint=\"{mp}\"}} {sum}");
        let _ =
            writeln!(out, "naiad_fetch_duration_seconds_count{{mountpoint=\"{mp}\"}} {cumulative}");
    }
    let _ = writeln!(
        out,
        "# HELP naiad_cache_layout_splits_total Cache entries made for a blob another image gives other chunk records.\n# TYPE naiad_cache_layout_splits_total counter\nnaiad_cache_layout_splits_total {}",
        cache.layout_splits.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP naiad_mounts Active mounts.\n# TYPE naiad_mounts gauge\nnaiad_mounts {}",
        all.len()
    );
    out
}
