//! `naiad`: build, check, inspect, unpack and mount lazily loaded container images.

mod cmd;
mod config;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "naiad",
    version,
    about = "Lazily loaded container images: build, check, inspect, unpack and mount",
    propagate_version = true
)]
struct Cli {
    /// Configuration file (default /etc/naiad/config.toml, if it exists).
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Build(cmd::build::Args),
    Cache(cmd::cache::Args),
    Check(cmd::check::Args),
    Convert(cmd::convert::Args),
    Daemon(cmd::daemon::Args),
    Ctl(cmd::ctl::Args),
    Inspect(cmd::inspect::Args),
    Unpack(cmd::unpack::Args),
    Mount(cmd::mount::Args),
    Umount(cmd::umount::Args),
    Pull(cmd::pull::Args),
    Snapshotter(cmd::snapshotter::Args),
    /// Internal: holds a fanotify-mode mount's group across restarts of its server.
    #[command(hide = true)]
    FanotifyKeeper(KeeperArgs),
    /// Internal: holds a FUSE mount's connection across restarts of its server.
    #[command(hide = true)]
    FuseKeeper(FuseKeeperArgs),
}

#[derive(clap::Args)]
struct FuseKeeperArgs {
    #[arg(long)]
    fd: i32,
    #[arg(long)]
    socket: std::path::PathBuf,
    /// The mount it keeps (shown by ps).
    #[arg(long)]
    mountpoint: std::path::PathBuf,
}

#[derive(clap::Args)]
struct KeeperArgs {
    #[arg(long)]
    group_fd: i32,
    #[arg(long, value_delimiter = ',')]
    writer_fds: Vec<i32>,
    #[arg(long)]
    socket: std::path::PathBuf,
    #[arg(long)]
    mountpoint: std::path::PathBuf,
}

/// Raises the soft limit of open files to the hard one: the chunk cache keeps a file per
/// frame open, and a fanotify-mode mount (with its keeper) one per frame not yet cached,
/// thousands for a large image.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::debug!(error = %e, "cannot raise the open file limit");
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NAIAD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    raise_open_file_limit();
    let cli = Cli::parse();
    let cfg = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("naiad: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Cmd::Build(a) => cmd::build::run(a),
        Cmd::Cache(a) => cmd::cache::run(a, &cfg),
        Cmd::Check(a) => cmd::check::run(a),
        Cmd::Convert(a) => cmd::convert::run(a, &cfg),
        Cmd::Daemon(a) => cmd::daemon::run(a, &cfg),
        Cmd::Ctl(a) => cmd::ctl::run(a, &cfg),
        Cmd::Inspect(a) => cmd::inspect::run(a),
        Cmd::Unpack(a) => cmd::unpack::run(a),
        Cmd::Mount(a) => cmd::mount::run(a, &cfg),
        Cmd::Umount(a) => cmd::umount::run(a),
        Cmd::Pull(a) => cmd::pull::run(a, &cfg),
        Cmd::Snapshotter(a) => cmd::snapshotter::run(a, &cfg, cli.config.as_deref()),
        Cmd::FuseKeeper(a) => naiad_fs::fuse_keep::run_keeper(a.fd, &a.socket)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Cmd::FanotifyKeeper(a) => {
            naiad_fs::fanotify_keeper::run(a.group_fd, &a.writer_fds, &a.socket, &a.mountpoint)
                .map(|()| ExitCode::SUCCESS)
                .map_err(Into::into)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("naiad: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
