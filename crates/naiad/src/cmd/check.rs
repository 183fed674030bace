//! `naiad check`: verify a bootstrap and, with `--blob-dir`, every chunk of its blobs.

use crate::output::print_json;
use anyhow::{Context, Result};
use naiad_storage::blob_store::BlobDirs;
use std::path::PathBuf;
use std::process::ExitCode;

/// Verify a bootstrap's structure and, with blobs, every chunk's digest.
#[derive(clap::Args)]
pub struct Args {
    bootstrap: PathBuf,
    /// Directory of blob files named by digest (repeat for several).
    #[arg(long = "blob-dir")]
    blob_dirs: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let bytes = std::fs::read(&a.bootstrap).with_context(|| format!("reading {}", a.bootstrap.display()))?;
    let dirs = (!a.blob_dirs.is_empty()).then(|| BlobDirs::new(a.blob_dirs.clone()));
    let report = naiad_fs::check::check(bytes, dirs.as_ref());
    if a.json {
        print_json(&report)?;
    } else if report.ok() {
        println!(
            "ok: {} entries, {} files, {} chunk references; {} blobs and {} chunks verified",
            report.entries, report.files, report.chunk_refs, report.blobs_checked, report.chunks_verified
        );
    }
    if report.ok() {
        return Ok(ExitCode::SUCCESS);
    }
    if !a.json {
        for p in &report.problems {
            eprintln!("naiad: check: {p}");
        }
        eprintln!("naiad: check: {} problem(s) found in {}", report.problems.len(), a.bootstrap.display());
    }
    Ok(ExitCode::FAILURE)
}
