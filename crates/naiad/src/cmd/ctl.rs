//! `naiad ctl`: talk to a running `naiad daemon`.

use anyhow::Result;
use naiad_daemon::api::PrefetchRequest;
use naiad_daemon::client::DaemonClient;
use naiad_daemon::spec::{Mode, MountSpec};
use std::path::PathBuf;
use std::process::ExitCode;

/// Control a running daemon.
#[derive(clap::Args)]
pub struct Args {
    /// The daemon's admin API socket [default: config api, else /run/naiad/api.sock].
    #[arg(long, global = true)]
    api: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
enum Cmd {
    /// Mount an image lazily in the daemon: an image reference, or a bootstrap file with
    /// --blob-dir or its blobs in S3 (--s3-bucket, or the config file's [s3] table). S3
    /// credentials are the daemon's own (its environment or config file): none are sent.
    Mount {
        source: String,
        mountpoint: PathBuf,
        /// auto (the best the daemon's kernel supports: fanotify, else kernel, else fuse),
        /// fanotify, kernel or fuse.
        #[arg(long, default_value = "auto", value_parser = crate::args::mode_parser(crate::args::LAZY_MODES))]
        mode: Mode,
        #[arg(long = "blob-dir")]
        blob_dirs: Vec<PathBuf>,
        #[command(flatten)]
        fetch: crate::output::FetchArgs,
        #[command(flatten)]
        s3: crate::config::S3Args,
        #[command(flatten)]
        exposure: crate::output::ExposureArgs,
        /// Mount even if MOUNTPOINT is not an empty directory (what it holds is hidden while
        /// mounted).
        #[arg(long)]
        force: bool,
    },
    /// Unmount.
    Umount { mountpoint: PathBuf },
    /// List mounts with their counters (JSON).
    List,
    /// Daemon facts (JSON).
    Status,
    /// Prometheus metrics.
    Metrics,
    /// Prefetch a mount: its prefetch list, or everything with --all.
    Prefetch {
        mountpoint: PathBuf,
        #[arg(long)]
        all: bool,
        /// Bytes per second at most, e.g. 20M.
        #[arg(long, value_parser = crate::args::parse_size)]
        rate: Option<u32>,
    },
}

pub fn run(a: Args, cfg: &crate::config::Config) -> Result<ExitCode> {
    let api = cfg.api(a.api.as_deref());
    let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let client = DaemonClient::new(api);
    match &a.cmd {
        Cmd::Mount { source, mountpoint, mode, blob_dirs, fetch, s3, exposure, force } => {
            let mut fetch = fetch.clone();
            fetch.resolve(cfg, source)?;
            let (s3, s3_insecure) = cfg.s3_location(source, !blob_dirs.is_empty(), s3)?;
            let image = source.starts_with("docker://") || source.starts_with("oci:");
            let spec = MountSpec {
                // The daemon runs elsewhere: a bootstrap path must not depend on our directory.
                source: if image {
                    source.clone()
                } else {
                    abs(&PathBuf::from(source)).to_string_lossy().into_owned()
                },
                mountpoint: abs(mountpoint),
                mode: *mode,
                blob_dirs: blob_dirs.iter().map(abs).collect(),
                insecure: fetch.insecure || (s3.is_some() && s3_insecure),
                s3,
                timeout_secs: 10,
                prefetch: !fetch.no_prefetch,
                prefetch_all: fetch.prefetch_all,
                prefetch_rate: fetch.prefetch_rate.map(u64::from),
                mirrors: fetch.mirrors,
                bootstrap: None,
                fetch_merge_max: fetch.fetch_merge_max,
                fetch_concurrency: fetch.fetch_concurrency,
                force: *force,
                allow_setuid: exposure.allow_setuid,
                allow_devices: exposure.allow_devices,
            };
            out(&client.mount(&spec)?)?;
        }
        Cmd::Umount { mountpoint } => client.umount(&abs(mountpoint))?,
        Cmd::List => out(&client.list()?)?,
        Cmd::Status => out(&client.status()?)?,
        Cmd::Metrics => print!("{}", client.metrics()?),
        Cmd::Prefetch { mountpoint, all, rate } => client.prefetch(&PrefetchRequest {
            mountpoint: abs(mountpoint),
            all: *all,
            rate: rate.map(u64::from),
        })?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one of the daemon's answers as compact JSON, as the API sends it.
fn out(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}
