//! `naiad convert`: an OCI image into a Naiad image, registry or OCI layout on either side.

use crate::output::{human, print_json, ChunkArgs};
use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use naiad_oci::convert::{ConvertOptions, Progress, Quiet};
use naiad_oci::reference::ImageRef;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// Convert an OCI image into a Naiad image.
///
/// SRC and DST are `docker://HOST[:PORT]/REPO:TAG` (or `@sha256:...` for SRC) or
/// `oci:DIR[:TAG]`. Credentials come from the docker config (~/.docker/config.json).
#[derive(clap::Args)]
pub struct Args {
    source: String,
    destination: String,
    #[command(flatten)]
    chunking: ChunkArgs,
    /// Convert only this platform (os/arch[/variant]); the result is a single manifest.
    #[arg(long)]
    platform: Option<String>,
    /// A Naiad image whose chunks are referenced instead of stored again.
    #[arg(long)]
    chunk_dict: Option<String>,
    /// File of paths to prefetch first, one per line (a directory means all below it).
    #[arg(long)]
    prefetch_patterns: Option<PathBuf>,
    /// Keep converted layers here; a layer converted before with the same options is reused.
    #[arg(long)]
    build_cache: Option<PathBuf>,
    /// Push an index holding both the original manifests and the Naiad ones.
    #[arg(long)]
    merge_platform: bool,
    /// Allow plain HTTP to the registries.
    #[arg(long)]
    insecure: bool,
    /// Layers converted at once (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, cfg: &crate::config::Config) -> Result<ExitCode> {
    let src = ImageRef::parse(&a.source)?;
    let dst = ImageRef::parse(&a.destination)?;
    let prefetch = match &a.prefetch_patterns {
        Some(p) => crate::output::read_path_list(p)?,
        None => Vec::new(),
    };
    let opts = ConvertOptions {
        chunk_size: a.chunking.chunk_size,
        compressor: a.chunking.compressor(),
        digester: a.chunking.digester(),
        platform: a.platform.clone(),
        chunk_dict: a.chunk_dict.as_deref().map(ImageRef::parse).transpose()?,
        prefetch,
        build_cache: a.build_cache.clone(),
        merge_platform: a.merge_platform,
        insecure: a.insecure
            || [Some(a.source.as_str()), Some(a.destination.as_str()), a.chunk_dict.as_deref()]
                .into_iter()
                .flatten()
                .filter_map(crate::config::registry_of)
                .any(|h| cfg.insecure(h)),
        jobs: a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
    };
    let progress: Arc<dyn Progress> = if !a.json && std::io::stderr().is_terminal() {
        Arc::new(Bars::new())
    } else {
        Arc::new(Quiet)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = rt.block_on(naiad_oci::convert::convert(&src, &dst, &opts, progress))?;
    if a.json {
        print_json(&summary)?;
        return Ok(ExitCode::SUCCESS);
    }
    for img in &summary.images {
        for w in &img.warnings {
            eprintln!("naiad: warning: {w}");
        }
        println!(
            "{}{}: {} layers ({}) -> {} blobs + bootstrap ({}); chunks {} stored, {} deduplicated, {} from the dictionary; {} layers from the cache",
            img.platform.as_deref().map(|p| format!("{p} ")).unwrap_or_default(),
            img.source_digest,
            img.layers,
            human(img.source_bytes),
            img.blobs,
            human(img.naiad_bytes),
            img.stored_chunks,
            img.dedup_chunks,
            img.dict_chunks,
            img.cached_layers
        );
    }
    println!(
        "pushed {} ({}) in {:.1} s",
        summary.destination, summary.digest, summary.seconds_total
    );
    Ok(ExitCode::SUCCESS)
}

/// Progress bars on a terminal: one per layer (bytes read) and a stage line.
struct Bars {
    multi: MultiProgress,
    stage: ProgressBar,
    overall: ProgressBar,
    layers: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let stage = multi.add(ProgressBar::new_spinner());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {elapsed}")
                .expect("valid template")
                .progress_chars("## "),
        );
        overall.set_prefix("all layers");
        Bars { multi, stage, overall, layers: Mutex::new(HashMap::new()) }
    }
}

impl Progress for Bars {
    fn image_start(&self, bytes: u64) {
        self.overall.inc_length(bytes);
    }
    fn layer_start(&self, layer: &str, bytes: u64) {
        let bar = self.multi.add(ProgressBar::new(bytes));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(layer.to_string());
        self.layers.lock().expect("bars lock").insert(layer.to_string(), bar);
    }
    fn layer_bytes(&self, layer: &str, n: u64) {
        if let Some(b) = self.layers.lock().expect("bars lock").get(layer) {
            b.inc(n);
        }
        self.overall.inc(n);
    }
    fn layer_done(&self, layer: &str, cached: bool) {
        if let Some(b) = self.layers.lock().expect("bars lock").remove(layer) {
            b.finish_with_message("done");
        } else if cached {
            self.multi.println(format!("{layer:>16} from the build cache")).ok();
        }
    }
    fn stage(&self, what: &str) {
        self.stage.set_message(what.to_string());
        self.stage.tick();
    }
}
