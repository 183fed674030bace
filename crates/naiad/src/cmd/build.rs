//! `naiad build`: a directory, a layer tar or several layers into a bootstrap and blobs.

use crate::output::{human, print_json, ChunkArgs};
use anyhow::{bail, Context, Result};
use naiad_builder::chunk_dict::ChunkDict;
use naiad_builder::{BuildOptions, Source};
use std::path::PathBuf;
use std::process::ExitCode;

/// Build a Naiad image (bootstrap + blobs) from a directory or OCI layer tars.
#[derive(clap::Args)]
pub struct Args {
    /// A directory, or one layer tar (.tar, .tar.gz, .tar.zst; detected from its bytes).
    source: Option<PathBuf>,
    /// Layer tars, lowest first, merged with OCI whiteout rules (repeat the flag).
    #[arg(long = "layer", conflicts_with = "source")]
    layers: Vec<PathBuf>,
    /// Output directory: `bootstrap` plus one file per blob named by its sha256.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    chunking: ChunkArgs,
    /// Bootstrap of another image whose chunks are referenced instead of stored again.
    #[arg(long)]
    chunk_dict: Option<PathBuf>,
    /// File listing paths to fetch first, one per line.
    #[arg(long)]
    prefetch_list: Option<PathBuf>,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let source = match (&a.source, a.layers.is_empty()) {
        (Some(p), true) => {
            let md = std::fs::metadata(p).with_context(|| format!("source {}", p.display()))?;
            if md.is_dir() {
                Source::Dir(p.clone())
            } else {
                Source::Layers(vec![p.clone()])
            }
        }
        (None, false) => Source::Layers(a.layers.clone()),
        _ => bail!("give a SOURCE (directory or tar) or one or more --layer"),
    };
    let chunk_dict = match &a.chunk_dict {
        Some(p) => {
            let bytes = std::fs::read(p)
                .with_context(|| format!("reading chunk dictionary {}", p.display()))?;
            Some(std::sync::Arc::new(
                ChunkDict::from_bootstrap(bytes)
                    .with_context(|| format!("chunk dictionary {}", p.display()))?,
            ))
        }
        None => None,
    };
    let prefetch = match &a.prefetch_list {
        Some(p) => crate::output::read_path_list(p)?,
        None => Vec::new(),
    };
    let opts = BuildOptions {
        chunk_size: a.chunking.chunk_size,
        compressor: a.chunking.compressor(),
        digester: a.chunking.digester(),
        chunk_dict,
        prefetch,
        ..BuildOptions::default()
    };
    let summary = naiad_builder::build(source, opts, &a.output)?;
    if a.json {
        print_json(&summary)?;
    } else {
        for w in &summary.warnings {
            eprintln!("naiad: warning: {w}");
        }
        println!(
            "built {}: {} files, {} dirs, {} symlinks, {} other; {} of file data",
            a.output.display(),
            summary.files,
            summary.directories,
            summary.symlinks,
            summary.other_entries,
            human(summary.file_bytes)
        );
        println!(
            "chunks: {} total, {} stored, {} deduplicated, {} from the dictionary, {} all zeros",
            summary.chunks,
            summary.stored_chunks,
            summary.dedup_chunks,
            summary.dict_chunks,
            summary.zero_chunks
        );
        for b in &summary.blobs {
            println!(
                "blob {} {} ({} chunks){}",
                b.digest,
                human(b.compressed_bytes),
                b.chunks,
                if b.from_dict { " [dictionary]" } else { "" }
            );
        }
        println!(
            "bootstrap {} ({}), {:.2} s",
            summary.bootstrap.display(),
            human(summary.bootstrap_bytes),
            summary.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
