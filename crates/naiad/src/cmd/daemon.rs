//! `naiad daemon`: serve many lazy mounts and the admin API.

use anyhow::{Context, Result};
use naiad_daemon::api::Daemon;
use naiad_daemon::state::{RuntimeLock, StateFile};
use naiad_daemon::table::Mounts;
use naiad_storage::cache::ChunkCache;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Run the daemon: lazy mounts managed over the admin API (`naiad ctl`), Prometheus metrics
/// at /metrics on the same socket. SIGINT/SIGTERM unmount everything and stop it. A daemon
/// that died without unmounting (kill -9, a crash) has its mounts brought back, served from
/// the same cache, by the next daemon started on the same runtime directory.
#[derive(clap::Args)]
pub struct Args {
    /// Admin API socket, created with mode 0600 [default: config api, else /run/naiad/api.sock].
    #[arg(long)]
    api: Option<PathBuf>,
    /// Where blob data is cached [default: config cache_dir, else /var/lib/naiad/cache].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Runtime state: bootstraps, blob-view mounts [default: config runtime_dir, else /run/naiad].
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// Keep the cache at most this big (e.g. 20G): blobs no mount uses are evicted, least
    /// recently used first. Blobs in use are never evicted, so it can be exceeded meanwhile.
    #[arg(long, value_parser = parse_size_u64)]
    cache_limit: Option<u64>,
    /// Seconds between cache limit checks.
    #[arg(long, default_value_t = 60)]
    gc_interval: u64,
}

use crate::args::parse_size_u64;

pub fn run(a: Args, cfg: &crate::config::Config) -> Result<ExitCode> {
    let api = cfg.api(a.api.as_deref());
    let cache_dir = cfg.cache_dir(a.cache_dir.as_deref());
    let runtime_dir = cfg.runtime_dir(a.runtime_dir.as_deref());
    let cache_limit = match (a.cache_limit, &cfg.cache_limit) {
        (Some(l), _) => Some(l),
        (None, Some(s)) => Some(parse_size_u64(s).context("config cache_limit")?),
        (None, None) => None,
    };
    let cache = Arc::new(ChunkCache::open(&cache_dir)?);
    let _lock = RuntimeLock::acquire(&runtime_dir)?;
    let mounts = Mounts::persistent(StateFile::new(&runtime_dir));
    let d = Arc::new(Daemon { mounts, cache, runtime_dir });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        if let Some(limit) = cache_limit {
            let cache = d.cache.clone();
            let every = std::time::Duration::from_secs(a.gc_interval.max(1));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let c = cache.clone();
                    match tokio::task::spawn_blocking(move || c.gc(Some(limit))).await {
                        Ok(Ok(removed)) if !removed.is_empty() => {
                            tracing::info!(evicted = removed.len(), "cache limit enforced")
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "cache gc failed"),
                        _ => {}
                    }
                }
            });
        }
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        // A previous daemon that died left its mounts in the state file: bring them back.
        let (restored, failed) =
            naiad_daemon::table::restore(&d.mounts, &d.cache, &d.runtime_dir).await;
        for mp in &restored {
            tracing::info!(mountpoint = %mp.display(), "mount restored");
        }
        for (mp, e) in &failed {
            tracing::error!(mountpoint = %mp.display(), error = %e, "mount could not be restored");
        }
        eprintln!("naiad: daemon serving {}", api.display());
        naiad_daemon::api::serve(d.clone(), &api, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
