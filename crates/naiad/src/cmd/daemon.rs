//! `naiad daemon`: serve many lazy mounts and the admin API.

use anyhow::{Context, Result};
use naiad_daemon::api::Daemon;
use naiad_daemon::mounts::Mounts;
use naiad_storage::chunk_cache::ChunkCache;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Default admin API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/naiad/api.sock";

/// Run the daemon: lazy mounts managed over the admin API (`naiad ctl`), Prometheus metrics
/// at /metrics on the same socket. SIGINT/SIGTERM unmount everything and stop it.
#[derive(clap::Args)]
pub struct Args {
    /// Admin API socket (created with mode 0600).
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    api: PathBuf,
    /// Where blob data is cached.
    #[arg(long, default_value = crate::cmd::mount::DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
    /// Runtime state (bootstraps, blob-view mounts).
    #[arg(long, default_value = crate::cmd::mount::DEFAULT_RUNTIME_DIR)]
    runtime_dir: PathBuf,
    /// Keep the cache at most this big (e.g. 20G): blobs no mount uses are evicted, least
    /// recently used first. Blobs in use are never evicted, so it can be exceeded meanwhile.
    #[arg(long, value_parser = parse_size_u64)]
    cache_limit: Option<u64>,
    /// Seconds between cache limit checks.
    #[arg(long, default_value_t = 60)]
    gc_interval: u64,
}

fn parse_size_u64(s: &str) -> Result<u64> {
    crate::cmd::cache::parse_size_u64(s)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let cache = Arc::new(ChunkCache::open(&a.cache_dir)?);
    let d = Arc::new(Daemon { mounts: Mounts::default(), cache, runtime_dir: a.runtime_dir.clone() });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        if let Some(limit) = a.cache_limit {
            let cache = d.cache.clone();
            let every = std::time::Duration::from_secs(a.gc_interval.max(1));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let c = cache.clone();
                    match tokio::task::spawn_blocking(move || c.gc(Some(limit))).await {
                        Ok(Ok(removed)) if !removed.is_empty() => tracing::info!(evicted = removed.len(), "cache limit enforced"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "cache gc failed"),
                        _ => {}
                    }
                }
            });
        }
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        eprintln!("naiad: daemon serving {}", a.api.display());
        naiad_daemon::api::serve(d.clone(), &a.api, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
