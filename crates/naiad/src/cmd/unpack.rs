//! `naiad unpack`: write an image's tree to a directory or a tar.

use crate::output::{open_bootstrap, print_json};
use anyhow::{Context, Result};
use naiad_storage::blob_store::BlobDirs;
use std::path::PathBuf;
use std::process::ExitCode;

/// Write an image's files to a directory (or a tar with --tar), exactly as built.
#[derive(clap::Args)]
pub struct Args {
    bootstrap: PathBuf,
    /// Directory of blob files named by digest (repeat for several).
    #[arg(long = "blob-dir", required = true)]
    blob_dirs: Vec<PathBuf>,
    /// Output directory (new or empty), or with --tar the tar file (`-` for stdout).
    #[arg(short, long)]
    output: PathBuf,
    /// Write a tar stream instead of a directory.
    #[arg(long)]
    tar: bool,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let bs = open_bootstrap(&a.bootstrap)?;
    let dirs = BlobDirs::new(a.blob_dirs.clone());
    let summary = if a.tar {
        if a.output.as_os_str() == "-" {
            naiad_fs::unpack::unpack_to_tar(
                &bs,
                &dirs,
                std::io::BufWriter::new(std::io::stdout().lock()),
            )?
        } else {
            let f = std::fs::File::create_new(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))?;
            let r = naiad_fs::unpack::unpack_to_tar(&bs, &dirs, std::io::BufWriter::new(f));
            if r.is_err() {
                let _ = std::fs::remove_file(&a.output);
            }
            r?
        }
    } else {
        naiad_fs::unpack::unpack_to_dir(&bs, &dirs, &a.output)?
    };
    if a.json {
        print_json(&summary)?;
    } else if !(a.tar && a.output.as_os_str() == "-") {
        println!(
            "unpacked {} entries ({} files, {} bytes) to {}",
            summary.entries,
            summary.files,
            summary.bytes,
            a.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
