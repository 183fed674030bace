//! `naiad umount`: undo `naiad mount`.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Unmount an image mounted by `naiad mount`.
#[derive(clap::Args)]
pub struct Args {
    mountpoint: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    naiad_fs::erofs_mount::umount(&a.mountpoint)?;
    Ok(ExitCode::SUCCESS)
}
