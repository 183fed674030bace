//! `naiad`: build, convert, check, inspect, unpack and mount lazily loaded container images;
//! the daemon and its control client, the cache commands, the containerd snapshotter and
//! `naiad pull`. One file per subcommand in `cmd/`; `config.rs` (the config file and the
//! flag-else-config-else-default rule), `args.rs` (shared value parsers), `output.rs`.

mod args;
mod cmd;
mod config;
mod output;

use anyhow::Context;
use clap::{Parser, Subcommand};
use naiad_fs::keeper::spawn::inherited_fd;
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
    /// The watched files' descriptors, comma-separated (none when every frame is cached).
    #[arg(long, value_parser = fd_list, default_value = "")]
    writer_fds: FdList,
    #[arg(long)]
    socket: std::path::PathBuf,
    #[arg(long)]
    mountpoint: std::path::PathBuf,
}

/// Descriptor numbers, comma-separated; empty for none.
#[derive(Clone, Debug)]
struct FdList(Vec<i32>);

fn fd_list(s: &str) -> Result<FdList, String> {
    s.split(',')
        .filter(|f| !f.is_empty())
        .map(|f| f.parse::<i32>().map_err(|e| format!("{f:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(FdList)
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
            eprintln!("naiad: error: {}", report(&e));
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
        Cmd::FuseKeeper(a) => run_fuse_keeper(&a),
        Cmd::FanotifyKeeper(a) => run_fanotify_keeper(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("naiad: error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

fn run_fuse_keeper(a: &FuseKeeperArgs) -> anyhow::Result<ExitCode> {
    let fd = inherited_fd(a.fd).with_context(|| format!("--fd {}", a.fd))?;
    naiad_fs::keeper::fuse::run(fd, &a.socket)?;
    Ok(ExitCode::SUCCESS)
}

fn run_fanotify_keeper(a: &KeeperArgs) -> anyhow::Result<ExitCode> {
    let group = inherited_fd(a.group_fd).with_context(|| format!("--group-fd {}", a.group_fd))?;
    let writers = a
        .writer_fds
        .0
        .iter()
        .map(|&fd| inherited_fd(fd).with_context(|| format!("--writer-fds: {fd}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    naiad_fs::keeper::fanotify::run(group, writers, &a.socket, &a.mountpoint)?;
    Ok(ExitCode::SUCCESS)
}

/// An error and its causes, outermost first, joined by ": ". Errors of the crates name their
/// cause in their own message as well as keeping it as their source: a cause already at the
/// end of the message so far is not said again.
fn report(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.ends_with(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_lists_may_be_empty() {
        assert!(fd_list("").unwrap().0.is_empty(), "a fully cached image watches nothing");
        assert_eq!(fd_list("3,17").unwrap().0, vec![3, 17]);
        assert!(fd_list("3,x").is_err());
    }

    #[test]
    fn a_cause_the_message_already_names_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(naiad_fs::FsError::Io { path: "/x".into(), cause: io })
            .context("mounting /x");
        assert_eq!(report(&e), "mounting /x: /x: no such file");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(report(&plain), "outer: inner");
    }
}
