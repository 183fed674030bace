//! Resolving a mount's source to its bootstrap and the backend its blobs come from: an image
//! reference (`docker://`, `oci:`) reads its bootstrap layer and its blobs from the registry
//! (through the spec's mirrors first) or layout; a bootstrap file reads its blobs from blob
//! directories or S3.

use crate::spec::MountSpec;
use crate::{DaemonError, Result};
use naiad_oci::bootstrap_layer::MAX_BOOTSTRAP_BYTES;
use naiad_oci::reference::ImageRef;
use naiad_oci::registry::Timeouts;
use naiad_storage::backend::{
    Backend, LocalBackend, MirroredBackend, RegistryBackend, RegistryOptions, S3Backend, S3Options,
};
use naiad_storage::blob_store::BlobDirs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A mount's source, resolved.
pub(crate) struct Resolved {
    /// The bootstrap file the kernel mounts: a copy kept in the runtime directory, of an
    /// image's fetched bootstrap or of the bootstrap file named, as it was read and checked.
    pub bootstrap_path: PathBuf,
    pub bootstrap_bytes: Vec<u8>,
    pub backend: Arc<dyn Backend>,
}

fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "linux/arm64",
        _ => "linux/amd64",
    }
}

/// Resolves `spec`'s source; the bootstrap is kept in `runtime_dir/bootstraps`.
pub(crate) async fn resolve(spec: &MountSpec, runtime_dir: &Path) -> Result<Resolved> {
    let image = (spec.source.starts_with("docker://") || spec.source.starts_with("oci:"))
        .then(|| ImageRef::parse(&spec.source))
        .transpose()?;
    if image.is_some() && spec.s3.is_some() {
        return Err(DaemonError::Invalid("S3 storage is for a bootstrap source: an image reference reads its blobs from its registry".into()));
    }
    let (path, bytes, backend): (PathBuf, Vec<u8>, Arc<dyn Backend>) = match &image {
        None => {
            let backend: Arc<dyn Backend> = match (&spec.s3, spec.blob_dirs.is_empty()) {
                (None, true) => {
                    return Err(DaemonError::Invalid(
                        "a bootstrap source needs blob directories or S3 storage".into(),
                    ))
                }
                (Some(_), false) => {
                    return Err(DaemonError::Invalid(
                        "blob directories or S3 storage, not both".into(),
                    ))
                }
                (None, false) => Arc::new(LocalBackend::new(BlobDirs::new(spec.blob_dirs.clone()))),
                // The credentials are this process's own (S3Options::new), never the spec's.
                (Some(loc), true) => Arc::new(S3Backend::new(S3Options {
                    insecure: spec.insecure,
                    timeout: Duration::from_secs(spec.timeout_secs.max(1)),
                    ..S3Options::new(loc.clone())
                })?),
            };
            let bytes = read_bounded(Path::new(&spec.source))?;
            // The kernel mounts a copy of what was read and checked, never the file named,
            // which could change between the check and the mount.
            (keep_bootstrap(runtime_dir, &bytes)?, bytes, backend)
        }
        Some(r) => {
            // Kept by this daemon under its SHA-256: used only if it still has those bytes.
            let kept = spec.bootstrap.as_ref().and_then(|p| {
                let bytes = read_bounded(p).ok()?;
                let name = hex::encode(naiad_format::digest::sha256(&bytes));
                (p.file_stem().and_then(|s| s.to_str()) == Some(name.as_str())).then_some(bytes)
            });
            let bytes = match kept {
                Some(b) => b,
                None => {
                    let timeouts = Timeouts::within(Duration::from_secs(spec.timeout_secs.max(1)));
                    naiad_oci::check::fetch_bootstrap(r, spec.insecure, host_platform(), timeouts)
                        .await?
                }
            };
            let backend: Arc<dyn Backend> = match r {
                ImageRef::Registry { registry, repository, .. } => {
                    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
                    for host in spec.mirrors.iter().chain(std::iter::once(registry)) {
                        let opts = RegistryOptions {
                            insecure: spec.insecure,
                            timeout: Duration::from_secs(spec.timeout_secs.max(1)),
                            ..RegistryOptions::new(host, repository)
                        };
                        backends.push(Arc::new(
                            tokio::task::spawn_blocking(move || RegistryBackend::new(opts))
                                .await
                                .map_err(|e| DaemonError::Invalid(e.to_string()))??,
                        ));
                    }
                    if backends.len() == 1 {
                        backends.remove(0)
                    } else {
                        Arc::new(MirroredBackend::new(backends))
                    }
                }
                ImageRef::Layout { dir, .. } => {
                    Arc::new(LocalBackend::new(BlobDirs::new(vec![dir.join("blobs/sha256")])))
                }
            };
            let path = keep_bootstrap(runtime_dir, &bytes)?;
            (path, bytes, backend)
        }
    };
    Ok(Resolved { bootstrap_path: path, bootstrap_bytes: bytes, backend })
}

/// Where the bootstrap `bytes` is kept: `RUNTIME_DIR/bootstraps/<sha256>.boot`, written once
/// (to a new file, synced, renamed into place) and never rewritten: the kernel may be reading
/// it, for a mount of the same image, and a file it has mounted must not change under it. A
/// kept file with other contents (damaged) is replaced the same way.
pub(crate) fn keep_bootstrap(runtime_dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let dir = runtime_dir.join("bootstraps");
    std::fs::create_dir_all(&dir).map_err(DaemonError::io(dir.display()))?;
    let hex = hex::encode(naiad_format::digest::sha256(bytes));
    let path = dir.join(format!("{hex}.boot"));
    if std::fs::read(&path).is_ok_and(|kept| kept == bytes) {
        return Ok(path);
    }
    // A name of its own: two mounts of one image at once must not write one scratch file.
    let tmp = naiad_fs::scratch::unique_sibling(&dir.join(format!(".{hex}.tmp")));
    let written = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(DaemonError::io(path.display()))?;
    Ok(path)
}

/// Reads a bootstrap file, refusing one over [`MAX_BOOTSTRAP_BYTES`] before reading it all.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = || DaemonError::io(path.display());
    let f = std::fs::File::open(path).map_err(io())?;
    let declared = f.metadata().map_err(io())?.len();
    let mut bytes = Vec::new();
    if declared <= MAX_BOOTSTRAP_BYTES {
        f.take(MAX_BOOTSTRAP_BYTES + 1).read_to_end(&mut bytes).map_err(io())?;
    }
    if declared > MAX_BOOTSTRAP_BYTES || bytes.len() as u64 > MAX_BOOTSTRAP_BYTES {
        return Err(DaemonError::Invalid(format!(
            "{}: over the limit MAX_BOOTSTRAP_BYTES ({MAX_BOOTSTRAP_BYTES} bytes) for a bootstrap",
            path.display()
        )));
    }
    Ok(bytes)
}
