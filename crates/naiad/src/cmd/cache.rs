//! `naiad cache ls|gc`: what the blob cache holds, and evicting what is not in use.

use crate::output::{human, print_json};
use anyhow::Result;
use naiad_format::digest::to_hex;
use naiad_storage::chunk_cache::ChunkCache;
use std::path::PathBuf;
use std::process::ExitCode;

/// Inspect or shrink the blob cache of lazy mounts.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// List cached blobs: size, bytes present, disk use, last use, whether in use.
    Ls {
        /// [default: config cache_dir, else /var/lib/naiad/cache]
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Evict blobs no mount uses, least recently used first, until the cache is at most
    /// --max-size (every unused blob without it).
    Gc {
        /// [default: config cache_dir, else /var/lib/naiad/cache]
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Target disk use, e.g. 10G.
        #[arg(long, value_parser = parse_size_u64)]
        max_size: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

pub fn parse_size_u64(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| anyhow::anyhow!("bad size {s:?}"))?;
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => anyhow::bail!("bad size unit in {s:?}"),
    };
    n.checked_mul(mul).ok_or_else(|| anyhow::anyhow!("size {s:?} is too large"))
}

pub fn run(a: Args, cfg: &crate::config::Config) -> Result<ExitCode> {
    let dir = |d: Option<PathBuf>| d.or(cfg.cache_dir.clone()).unwrap_or_else(|| crate::cmd::mount::DEFAULT_CACHE_DIR.into());
    match a.cmd {
        Cmd::Ls { cache_dir, json } => {
            let entries = ChunkCache::open(&dir(cache_dir))?.list()?;
            if json {
                print_json(&entries)?;
            } else {
                for e in &entries {
                    println!(
                        "sha256:{} view {} present {} disk {}{}",
                        to_hex(&e.digest),
                        human(e.view_size),
                        human(e.present_bytes),
                        human(e.disk_bytes),
                        if e.in_use { " (in use)" } else { "" }
                    );
                }
                println!("{} blobs, {} on disk", entries.len(), human(entries.iter().map(|e| e.disk_bytes).sum()));
            }
        }
        Cmd::Gc { cache_dir, max_size, json } => {
            let removed = ChunkCache::open(&dir(cache_dir))?.gc(max_size)?;
            if json {
                print_json(&removed)?;
            } else {
                println!("evicted {} blobs, {}", removed.len(), human(removed.iter().map(|e| e.disk_bytes).sum()));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
