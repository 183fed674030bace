//! `naiad check`: verify a bootstrap (and its blobs), or a whole Naiad image in a registry
//! or OCI layout (and, with `--source`, that it holds the same tree as its source image).

use crate::output::print_json;
use anyhow::{Context, Result};
use naiad_format::bootstrap::Bootstrap;
use naiad_oci::convert::ConvertOptions;
use naiad_oci::reference::ImageRef;
use naiad_storage::blob_store::BlobDirs;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Verify a bootstrap's structure and, with blobs, every chunk's digest; or, given an image
/// reference (docker://... or oci:...), fetch a Naiad image and verify all of it.
#[derive(clap::Args)]
pub struct Args {
    /// A bootstrap file, or a Naiad image reference.
    target: String,
    /// Directory of blob files named by digest (repeat for several).
    #[arg(long = "blob-dir")]
    blob_dirs: Vec<PathBuf>,
    /// With an image: the OCI image it was converted from; every file's contents and
    /// metadata must equal the source's merged tree.
    #[arg(long)]
    source: Option<String>,
    /// Allow plain HTTP to the registries.
    #[arg(long)]
    insecure: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Default)]
struct ImageReport {
    images: Vec<PlatformReport>,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct PlatformReport {
    platform: Option<String>,
    manifest: String,
    check: naiad_fs::check::CheckReport,
    compared_with_source: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.target.starts_with("docker://") || a.target.starts_with("oci:") {
        return check_image(&a);
    }
    let path = PathBuf::from(&a.target);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let dirs = (!a.blob_dirs.is_empty()).then(|| BlobDirs::new(a.blob_dirs.clone()));
    let report = naiad_fs::check::check(bytes, dirs.as_ref());
    if a.json {
        print_json(&report)?;
    } else if report.ok() {
        println!(
            "ok: {} entries, {} files, {} chunk references; {} blobs and {} chunks verified",
            report.entries,
            report.files,
            report.chunk_refs,
            report.blobs_checked,
            report.chunks_verified
        );
    }
    finish(&report.problems, &a.target, a.json)
}

fn finish(problems: &[String], what: &str, json: bool) -> Result<ExitCode> {
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        for p in problems {
            eprintln!("naiad: check: {p}");
        }
        eprintln!("naiad: check: {} problem(s) found in {what}", problems.len());
    }
    Ok(ExitCode::FAILURE)
}

fn check_image(a: &Args) -> Result<ExitCode> {
    let image = ImageRef::parse(&a.target)?;
    let source = a.source.as_deref().map(ImageRef::parse).transpose()?;
    let work = tempfile::Builder::new()
        .prefix("naiad-check-")
        .tempdir()
        .context("creating a temporary directory")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut report = ImageReport::default();
    let fetched = rt.block_on(naiad_oci::check::fetch_naiad(&image, a.insecure, work.path()))?;
    for f in fetched {
        let dirs = BlobDirs::new(vec![f.blob_dir.clone()]);
        let check = naiad_fs::check::check(f.bootstrap.clone(), Some(&dirs));
        let label = f.platform.clone().unwrap_or_else(|| f.manifest_digest.clone());
        report.problems.extend(f.problems.iter().map(|p| format!("{label}: {p}")));
        report.problems.extend(check.problems.iter().map(|p| format!("{label}: {p}")));
        let mut compared = false;
        if let (Some(src), true) = (&source, check.ok()) {
            let bs = Bootstrap::open(f.bootstrap.clone())?;
            let opts = ConvertOptions {
                chunk_size: bs.extension().chunk_size,
                compressor: naiad_format::compression::Compressor::Lz4,
                digester: bs.extension().digester,
                platform: f
                    .platform
                    .clone()
                    .map(|p| p.split('/').take(2).collect::<Vec<_>>().join("/")),
                chunk_dict: None,
                prefetch: Vec::new(),
                build_cache: None,
                merge_platform: false,
                insecure: a.insecure,
                jobs: 2,
            };
            let (src_boot, src_dirs) = rt.block_on(naiad_oci::convert::build_local(
                src,
                opts.platform.as_deref(),
                &opts,
                work.path(),
            ))?;
            let src_bs = Bootstrap::open(src_boot)?;
            let diffs =
                naiad_fs::compare::compare_images(&src_bs, &BlobDirs::new(src_dirs), &bs, &dirs)?;
            report
                .problems
                .extend(diffs.into_iter().map(|d| format!("{label}: against the source: {d}")));
            compared = true;
        }
        report.images.push(PlatformReport {
            platform: f.platform,
            manifest: f.manifest_digest,
            check,
            compared_with_source: compared,
        });
    }
    if a.json {
        print_json(&report)?;
    } else if report.problems.is_empty() {
        for i in &report.images {
            println!(
                "ok: {} {}: {} entries, {} files, {} blobs and {} chunks verified{}",
                i.platform.as_deref().unwrap_or("image"),
                i.manifest,
                i.check.entries,
                i.check.files,
                i.check.blobs_checked,
                i.check.chunks_verified,
                if i.compared_with_source { "; same tree as the source" } else { "" }
            );
        }
    }
    finish(&report.problems, &a.target, a.json)
}
