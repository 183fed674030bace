//! `naiad cache ls|gc|verify`: what the blob cache holds, evicting what is not in use, and
//! checking what it holds against the images' chunk digests.

use crate::output::{human, open_bootstrap, print_json};
use anyhow::{Context, Result};
use naiad_format::digest::{to_hex, Digest32, Digester};
use naiad_format::extension::ChunkRecord;
use naiad_storage::cache::check::{check_cached_blob, BlobCheckReport};
use naiad_storage::cache::{ChunkCache, EntryKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
        #[arg(long, value_parser = crate::args::parse_size_u64)]
        max_size: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Check every chunk marked present in the cache against its digest, using the images'
    /// bootstraps: those given with --bootstrap, and those a daemon or `naiad mount` keeps in
    /// RUNTIME_DIR/bootstraps (read unless only --bootstrap is given). Exits non-zero when a
    /// chunk is bad, unless --repair cleared it.
    Verify {
        /// [default: config cache_dir, else /var/lib/naiad/cache]
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Read the bootstraps kept in RUNTIME_DIR/bootstraps [default: config runtime_dir,
        /// else /run/naiad].
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
        /// A bootstrap naming blobs in the cache (repeat).
        #[arg(long = "bootstrap")]
        bootstraps: Vec<PathBuf>,
        /// Clear the presence bits of bad chunks, so they are fetched again (the blob must
        /// not be in use).
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

/// What `cache verify --json` prints.
#[derive(serde::Serialize)]
struct VerifyReport {
    bootstraps: Vec<PathBuf>,
    blobs: Vec<BlobCheckReport>,
    /// Blobs of cache entries no bootstrap reads (a blob none names, or a layout of it none
    /// gives): not checked.
    #[serde(serialize_with = "hex_digests")]
    unknown: Vec<Digest32>,
    bad_chunks: usize,
}

fn hex_digests<S: serde::Serializer>(v: &[Digest32], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|d| format!("sha256:{}", to_hex(d))))
}

/// The bootstrap files to check with: `given`, plus the runtime directory's unless only
/// `given` were asked for.
fn bootstrap_files(
    given: &[PathBuf],
    runtime_dir: Option<PathBuf>,
    cfg: &crate::config::Config,
) -> Result<Vec<PathBuf>> {
    let mut files = given.to_vec();
    if given.is_empty() || runtime_dir.is_some() {
        let run = cfg.runtime_dir(runtime_dir.as_deref());
        let dir = run.join("bootstraps");
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let mut kept = Vec::new();
                for e in entries {
                    let p = e.with_context(|| format!("reading {}", dir.display()))?.path();
                    if p.extension().is_some_and(|x| x == "boot") {
                        kept.push(p);
                    }
                }
                kept.sort();
                files.extend(kept);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !given.is_empty() => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("reading {} (name bootstraps with --bootstrap)", dir.display())
                })
            }
        }
    }
    anyhow::ensure!(!files.is_empty(), "no bootstraps to check the cache with: none kept in the runtime directory; name them with --bootstrap");
    Ok(files)
}

fn verify(
    cache_dir: &Path,
    bootstraps: Vec<PathBuf>,
    repair: bool,
    json: bool,
) -> Result<ExitCode> {
    // Per entry (a blob and the layout an image gives it, so images that agree share one):
    // the view size, digest kind and chunk records that entry is read through.
    let mut entries: BTreeMap<EntryKey, (u64, Digester, Vec<ChunkRecord>)> = BTreeMap::new();
    for path in &bootstraps {
        let bs = open_bootstrap(path)?;
        let ext = bs.extension();
        for (i, b) in ext.blobs.iter().enumerate() {
            entries
                .entry(EntryKey::of_image_blob(ext, i))
                .or_insert_with(|| (b.view_size, ext.digester, ext.blob_chunks(i as u32).to_vec()));
        }
    }
    let mut reports = Vec::new();
    for (key, (view_size, digester, chunks)) in &entries {
        let r = check_cached_blob(cache_dir, &key.blob, *view_size, chunks, *digester, repair)
            .with_context(|| format!("checking blob sha256:{}", to_hex(&key.blob)))?;
        if r.cached {
            reports.push(r);
        }
    }
    let unknown: Vec<Digest32> = ChunkCache::open(cache_dir)?
        .list()?
        .into_iter()
        .filter(|e| !entries.contains_key(&e.key()))
        .map(|e| e.digest)
        .collect();
    let bad_chunks: usize = reports.iter().map(|r| r.bad.len()).sum();
    let unrepaired = reports.iter().any(|r| !r.bad.is_empty() && !r.repaired);
    if json {
        print_json(&VerifyReport { bootstraps, blobs: reports, unknown, bad_chunks })?;
    } else {
        for r in &reports {
            let state = if r.stale {
                " (stale entry: discarded when next opened)".to_string()
            } else {
                String::new()
            };
            println!(
                "sha256:{} chunks {} present {} verified {} bad {}{state}",
                to_hex(&r.digest),
                r.chunks,
                r.present,
                r.verified,
                r.bad.len()
            );
            for b in &r.bad {
                println!(
                    "  bad chunk at view offset {} ({} bytes): {}{}",
                    b.view_offset,
                    b.size,
                    b.detail,
                    if r.repaired { " (cleared)" } else { "" }
                );
            }
        }
        for d in &unknown {
            println!("sha256:{} not named by any bootstrap: not checked", to_hex(d));
        }
        println!(
            "{} blobs checked, {} bad chunks{}",
            reports.len(),
            bad_chunks,
            if bad_chunks > 0 && !unrepaired { ", cleared" } else { "" }
        );
    }
    if unrepaired {
        eprintln!("error: {bad_chunks} cached chunks fail verification (clear them with --repair)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args, cfg: &crate::config::Config) -> Result<ExitCode> {
    let dir = |d: Option<PathBuf>| cfg.cache_dir(d.as_deref());
    match a.cmd {
        Cmd::Ls { cache_dir, json } => {
            let entries = ChunkCache::open(&dir(cache_dir))?.list()?;
            if json {
                print_json(&entries)?;
            } else {
                for e in &entries {
                    println!(
                        "sha256:{} layout {} view {} present {} disk {}{}",
                        to_hex(&e.digest),
                        &to_hex(&e.layout)[..12],
                        human(e.view_size),
                        human(e.present_bytes),
                        human(e.disk_bytes),
                        if e.in_use { " (in use)" } else { "" }
                    );
                }
                println!(
                    "{} blobs, {} on disk",
                    entries.len(),
                    human(entries.iter().map(|e| e.disk_bytes).sum())
                );
            }
        }
        Cmd::Gc { cache_dir, max_size, json } => {
            let removed = ChunkCache::open(&dir(cache_dir))?.gc(max_size)?;
            if json {
                print_json(&removed)?;
            } else {
                println!(
                    "evicted {} blobs, {}",
                    removed.len(),
                    human(removed.iter().map(|e| e.disk_bytes).sum())
                );
            }
        }
        Cmd::Verify { cache_dir, runtime_dir, bootstraps, repair, json } => {
            let files = bootstrap_files(&bootstraps, runtime_dir, cfg)?;
            return verify(&dir(cache_dir), files, repair, json);
        }
    }
    Ok(ExitCode::SUCCESS)
}
