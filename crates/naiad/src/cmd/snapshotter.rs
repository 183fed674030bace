//! `naiad snapshotter`: a containerd remote snapshotter (a `[proxy_plugins]` entry of type
//! `snapshot`). Naiad images are mounted lazily by a Naiad daemon; other layers are
//! handled like containerd's overlayfs snapshotter.

use anyhow::{Context, Result};
use naiad_containerd::snapshotter::{Config, DaemonLink, Snapshotter};
use naiad_daemon::spec::Mode;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Run a containerd remote snapshotter serving Naiad images lazily.
///
/// Configure it in containerd's config.toml:
///
///   [proxy_plugins.naiad]
///     type = "snapshot"
///     address = "/run/naiad/snapshotter.sock"
///
/// then pull with `naiad pull --containerd-socket SOCK REF` (or through Kubernetes, whose CRI
/// plugin sends the labels it needs) and run with `ctr run --snapshotter naiad REF ...`.
///
/// Naiad images are mounted by a Naiad daemon: the one at --daemon-api, or else one the
/// snapshotter starts on ROOT/daemon/api.sock, with its cache in ROOT/cache, in its own
/// session so that it (and every lazy mount) outlives restarts of the snapshotter.
#[derive(clap::Args)]
pub struct Args {
    /// The gRPC socket containerd connects to (created with mode 0600).
    #[arg(long, default_value = "/run/naiad/snapshotter.sock")]
    address: PathBuf,
    /// Snapshot database, layer directories and lazy image mountpoints.
    #[arg(long, default_value = "/var/lib/naiad")]
    root: PathBuf,
    /// Use the daemon on this admin socket instead of starting one.
    #[arg(long)]
    daemon_api: Option<PathBuf>,
    /// How images are mounted (see `naiad mount --help`).
    #[arg(long, default_value = "auto", value_parser = crate::args::mode_parser(crate::args::LAZY_MODES))]
    mode: Mode,
    /// A registry (`host[:port]`) to reach over plain HTTP; may be repeated. Registries with
    /// `insecure = true` in the config file are too.
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
}

pub fn run(a: Args, cfg: &crate::config::Config, config_path: Option<&Path>) -> Result<ExitCode> {
    std::fs::create_dir_all(&a.root).with_context(|| format!("creating {}", a.root.display()))?;
    let root = std::fs::canonicalize(&a.root).with_context(|| a.root.display().to_string())?;
    let (daemon, cache_dir) = match &a.daemon_api {
        Some(api) => {
            let status = naiad_daemon::client::DaemonClient::new(api)
                .status()
                .context("the daemon given by --daemon-api")?;
            let cache = status.cache_dir;
            (DaemonLink { api: api.clone(), spawn: None, log: root.join("daemon.log") }, cache)
        }
        None => {
            let exe = std::env::current_exe().context("finding the naiad executable")?;
            let api = root.join("daemon").join("api.sock");
            let cache = root.join("cache");
            std::fs::create_dir_all(root.join("daemon"))
                .context("creating the daemon's directory")?;
            let mut cmd = vec![exe.display().to_string()];
            if let Some(c) = config_path {
                cmd.extend(["--config".to_string(), c.display().to_string()]);
            }
            cmd.extend([
                "daemon".to_string(),
                "--api".into(),
                api.display().to_string(),
                "--cache-dir".into(),
                cache.display().to_string(),
                "--runtime-dir".into(),
                root.join("daemon").display().to_string(),
            ]);
            (DaemonLink { api, spawn: Some(cmd), log: root.join("daemon.log") }, cache)
        }
    };
    let mut insecure = a.insecure_registry.clone();
    insecure.extend(cfg.registries.iter().filter(|(_, r)| r.insecure).map(|(h, _)| h.clone()));
    let mode = a.mode;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let sn = Arc::new(Snapshotter::open(
        Config { root: root.clone(), daemon, cache_dir, insecure_registries: insecure, mode },
        rt.handle().clone(),
    )?);
    // Lazy images of the database that are not mounted (after a reboot, say) come back now.
    let sn2 = sn.clone();
    let restored =
        rt.block_on(rt.spawn_blocking(move || sn2.restore())).context("restoring mounts")??;
    if restored > 0 {
        tracing::info!(restored, "lazy images mounted");
    }
    rt.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        eprintln!("naiad: snapshotter serving {}", a.address.display());
        naiad_containerd::service::serve(sn, &a.address, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
