//! Shared bits of command output and argument parsing.

use crate::args::parse_size;
use anyhow::{Context, Result};
use naiad_format::bootstrap::Bootstrap;
use std::path::Path;

/// What a mount on the host lets its files do beyond being read (`naiad mount`, `naiad ctl
/// mount`): by default neither, `nosuid,nodev`.
#[derive(clap::Args, Clone, Copy)]
pub struct ExposureArgs {
    /// Let the image's setuid and setgid bits take effect (the mount is nosuid without).
    #[arg(long)]
    pub allow_setuid: bool,
    /// Let the image's device nodes open their devices (the mount is nodev without).
    #[arg(long)]
    pub allow_devices: bool,
}

impl ExposureArgs {
    /// As the mount layer takes it.
    pub fn exposure(self) -> naiad_fs::erofs_mount::Exposure {
        naiad_fs::erofs_mount::Exposure { setuid: self.allow_setuid, devices: self.allow_devices }
    }
}

/// How a lazy mount fetches: the options `naiad mount` and `naiad ctl mount` share.
#[derive(clap::Args, Clone)]
pub struct FetchArgs {
    /// Allow plain HTTP to the registry or the S3 endpoint.
    #[arg(long)]
    pub insecure: bool,
    /// Lazy modes: do not fetch the image's prefetch list ahead of reads.
    #[arg(long)]
    pub no_prefetch: bool,
    /// Lazy modes: after the prefetch list, fetch the whole image in the background (resumed
    /// when a restarted daemon brings the mount back).
    #[arg(long)]
    pub prefetch_all: bool,
    /// Bandwidth limit of background prefetch, e.g. 20M (bytes per second).
    #[arg(long, value_parser = parse_size)]
    pub prefetch_rate: Option<u32>,
    /// A registry mirror (host[:port], same repository) tried before the origin; repeat for
    /// several, in order [default: the config file's mirrors of the registry].
    #[arg(long = "mirror")]
    pub mirrors: Vec<String>,
    /// Lazy modes: the largest backend request adjacent missing chunks are merged into, e.g.
    /// 8M [default: config fetch_merge_max, else 4M].
    #[arg(long, value_parser = crate::args::parse_size_u64)]
    pub fetch_merge_max: Option<u64>,
    /// Lazy modes: backend requests at once [default: config fetch_concurrency, else 8].
    #[arg(long)]
    pub fetch_concurrency: Option<usize>,
}

impl FetchArgs {
    /// Fills what the flags left unset from the config file, for a mount of `source`:
    /// fetch limits, and a registry's `insecure` and mirrors.
    pub fn resolve(&mut self, cfg: &crate::config::Config, source: &str) -> anyhow::Result<()> {
        self.fetch_merge_max = self.fetch_merge_max.or(cfg.fetch_merge_max()?);
        self.fetch_concurrency = self.fetch_concurrency.or(cfg.fetch_concurrency);
        if let Some(host) = crate::config::registry_of(source) {
            self.insecure |= cfg.insecure(host);
            if self.mirrors.is_empty() {
                self.mirrors = cfg.registry(host).map(|r| r.mirrors.clone()).unwrap_or_default();
            }
        }
        Ok(())
    }
}

/// The chunking options `build` and `convert` share.
#[derive(clap::Args)]
pub struct ChunkArgs {
    /// Chunk size: a power of two from 4K to 16M.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub chunk_size: u32,
    /// Compression of the data: zstd, lz4 or none.
    #[arg(long, default_value = "zstd", value_parser = ["zstd", "lz4", "none"])]
    compressor: String,
    /// Chunk digest: blake3 or sha256.
    #[arg(long, default_value = "blake3", value_parser = ["blake3", "sha256"])]
    digester: String,
}

impl ChunkArgs {
    pub fn compressor(&self) -> naiad_format::compression::Compressor {
        naiad_format::compression::Compressor::from_name(&self.compressor)
            .expect("clap checked the name")
    }
    pub fn digester(&self) -> naiad_format::digest::Digester {
        naiad_format::digest::Digester::from_name(&self.digester).expect("clap checked the name")
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Reads and opens a bootstrap, verifying its digest.
pub fn open_bootstrap(path: &Path) -> Result<Bootstrap> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Bootstrap::open(bytes).with_context(|| {
        format!("bootstrap {} is not valid (run `naiad check` for details)", path.display())
    })
}

/// Reads a list of paths, one per line; blank lines and `#` comments are skipped.
pub fn read_path_list(path: &Path) -> Result<Vec<Vec<u8>>> {
    Ok(std::fs::read(path)
        .with_context(|| format!("reading {}", path.display()))?
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .map(<[u8]>::to_vec)
        .collect())
}

/// Human-readable byte count.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
