//! `naiad pull`: an image into containerd, unpacked for a snapshotter, sending the labels
//! a remote snapshotter needs (those Kubernetes' CRI plugin sends; `ctr pull` does not).

use crate::output::print_json;
use anyhow::Result;
use naiad_containerd::pull::{pull, PullOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// Pull an image into containerd for a snapshotter.
///
/// REF is `HOST[:PORT]/REPO[:TAG|@DIGEST]` (a `docker://` prefix is allowed); containerd
/// knows the image by that name afterwards, so `ctr run --snapshotter naiad REF ID CMD`
/// starts it. For a Naiad image (or an index holding one) with the naiad snapshotter,
/// nothing but the manifest and config is downloaded: the snapshotter mounts the image
/// lazily. Other images are downloaded and unpacked layer by layer, as `ctr pull` does.
#[derive(clap::Args)]
pub struct Args {
    reference: String,
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// containerd namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The snapshotter to unpack for.
    #[arg(long, default_value = "naiad")]
    snapshotter: String,
    /// The platform to pull from an index (os/arch[/variant]) [default: this machine's].
    #[arg(long)]
    platform: Option<String>,
    /// Allow plain HTTP to the registry (also `insecure = true` for it in the config file).
    #[arg(long)]
    insecure: bool,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, cfg: &crate::config::Config) -> Result<ExitCode> {
    let name = a.reference.strip_prefix("docker://").unwrap_or(&a.reference).to_string();
    let host = name.split('/').next().unwrap_or_default();
    let opts = PullOptions {
        socket: a.containerd_socket.clone(),
        namespace: a.namespace.clone(),
        snapshotter: a.snapshotter.clone(),
        platform: a.platform.clone(),
        insecure: a.insecure || cfg.insecure(host),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(pull(&name, &opts))?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "pulled {} ({}) for snapshotter {}: {}, {} layers, {} unpacked here, {} bytes downloaded",
            report.name,
            report.manifest_digest,
            opts.snapshotter,
            if report.naiad { "Naiad image, mounted lazily" } else { "OCI image" },
            report.layers,
            report.layers_unpacked,
            report.bytes_downloaded
        );
    }
    Ok(ExitCode::SUCCESS)
}
