//! `naiad convert`: an OCI image (one manifest or a multi-platform index) into a Naiad image.
//!
//! Per platform:
//! 1. every layer is streamed from the source (verified against its digest as it is read),
//!    decompressed and built into its own blob and layer bootstrap; layers are converted in
//!    parallel (at most `jobs` at once), and a layer found in the build cache is not
//!    converted again;
//! 2. the layer bootstraps are merged (OCI whiteout rules) into the image's bootstrap;
//! 3. blobs go up first (skipped when the destination has them, mounted across repositories
//!    of one registry when possible), then the bootstrap layer, the config, and the manifest
//!    last, so a reader never finds a manifest whose blobs are missing.

use crate::bootstrap_layer;
use crate::manifest::{sha256_digest, Descriptor, Index, Manifest, Platform, MAX_CONFIG_BYTES};
use crate::media::*;
use crate::reference::ImageRef;
use crate::store::{ProgressFn, Store};
use crate::{OciError, Result};
use naiad_builder::chunk_dict::ChunkDict;
use naiad_builder::{BuildOptions, BuildSummary, Source};
use naiad_format::bootstrap::Bootstrap;
use naiad_format::compression::Compressor;
use naiad_format::digest::{to_hex, Digester};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    /// Convert only this platform (`os/arch[/variant]`); the result is then a single manifest.
    pub platform: Option<String>,
    /// A Naiad image whose chunks are referenced instead of stored again.
    pub chunk_dict: Option<ImageRef>,
    /// Paths to prefetch first.
    pub prefetch: Vec<Vec<u8>>,
    /// Where converted layers are kept, keyed by layer digest and options.
    pub build_cache: Option<PathBuf>,
    /// Push an index holding both the original manifests and the Naiad ones.
    pub merge_platform: bool,
    /// Allow plain HTTP to the registries involved.
    pub insecure: bool,
    /// Layers converted at once.
    pub jobs: usize,
}

/// Progress reports (the CLI draws bars from them; the library never prints).
pub trait Progress: Send + Sync {
    /// An image of `bytes` compressed layer bytes starts converting.
    fn image_start(&self, _bytes: u64) {}
    fn layer_start(&self, _layer: &str, _bytes: u64) {}
    fn layer_bytes(&self, _layer: &str, _n: u64) {}
    fn layer_done(&self, _layer: &str, _cached: bool) {}
    fn stage(&self, _what: &str) {}
}

/// No progress reports.
pub struct Quiet;
impl Progress for Quiet {}

/// What a conversion did.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertSummary {
    pub source: String,
    pub destination: String,
    /// Digest of what the destination tag now points at.
    pub digest: String,
    pub media_type: String,
    pub images: Vec<ImageSummary>,
    pub seconds_total: f64,
}

/// One converted platform.
#[derive(Clone, Debug, Serialize)]
pub struct ImageSummary {
    pub platform: Option<String>,
    pub source_digest: String,
    pub digest: String,
    /// Compressed bytes of the source layers.
    pub source_bytes: u64,
    /// Bytes of the Naiad layers (blobs and the bootstrap layer).
    pub naiad_bytes: u64,
    pub bootstrap_bytes: u64,
    pub layers: usize,
    pub blobs: usize,
    pub cached_layers: usize,
    pub chunks: u64,
    pub stored_chunks: u64,
    pub dedup_chunks: u64,
    pub dict_chunks: u64,
    pub uploaded_blobs: usize,
    pub seconds_convert: f64,
    pub seconds_merge: f64,
    pub seconds_push: f64,
    pub warnings: Vec<String>,
}

struct Context<'a> {
    src: Store,
    dst: Store,
    dict: Option<(Store, Arc<ChunkDict>, String)>,
    opts: &'a ConvertOptions,
    progress: Arc<dyn Progress>,
    work: tempfile::TempDir,
}

/// Converts `src` into a Naiad image at `dst`.
pub async fn convert(
    src: &ImageRef,
    dst: &ImageRef,
    opts: &ConvertOptions,
    progress: Arc<dyn Progress>,
) -> Result<ConvertSummary> {
    let started = Instant::now();
    if dst.reference().is_some_and(|r| r.starts_with("sha256:")) {
        return Err(OciError::Reference {
            reference: dst.to_string(),
            detail: "the destination needs a tag, not a digest".into(),
        });
    }
    let work = tempfile::Builder::new()
        .prefix("naiad-convert-")
        .tempdir()
        .map_err(OciError::io("temporary directory"))?;
    let src_store = Store::open(src, opts.insecure, false)?;
    let dst_store = Store::open(dst, opts.insecure, true)?;
    if let Store::Registry(r) = &dst_store {
        r.login(true).await?;
    }
    let mut cx = Context {
        src: src_store,
        dst: dst_store,
        dict: None,
        opts,
        progress: progress.clone(),
        work,
    };
    if let Some(d) = &opts.chunk_dict {
        cx.dict = Some(load_dict(d, opts).await?);
    }
    let (bytes, media_type, digest) = cx.src.manifest(src.reference()).await?;
    let src_name = src.to_string();
    let tag = dst.reference().unwrap_or("latest").to_string();
    let mut images = Vec::new();
    let (out_bytes, out_type) = if is_index(&media_type) {
        let index = Index::parse(&bytes, &src_name)?;
        let wanted: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| is_manifest(&d.media_type))
            .filter(|d| d.platform.as_ref().is_some_and(|p| p.os != "unknown"))
            .filter(|d| {
                opts.platform
                    .as_deref()
                    .is_none_or(|w| d.platform.as_ref().is_some_and(|p| p.matches(w)))
            })
            .collect();
        if wanted.is_empty() {
            return Err(OciError::NotFound {
                what: format!("platform {}", opts.platform.as_deref().unwrap_or("(any)")),
                image: src_name,
            });
        }
        let mut entries = Vec::new();
        for d in &wanted {
            let (mbytes, _, mdigest) = cx.src.manifest(Some(&d.digest)).await?;
            if mdigest != d.digest {
                return Err(OciError::Digest {
                    what: format!("manifest of {src_name}"),
                    expected: d.digest.clone(),
                    actual: mdigest,
                });
            }
            let (desc, summary) =
                convert_image(&cx, &mbytes, &d.digest, d.platform.clone(), &src_name).await?;
            images.push(summary);
            entries.push((d, desc));
        }
        if opts.platform.is_some() && entries.len() == 1 && !opts.merge_platform {
            let (_, desc) = &entries[0];
            (cx.dst_manifest_bytes(&desc.digest).await?, OCI_MANIFEST.to_string())
        } else {
            let mut manifests: Vec<Descriptor> = Vec::new();
            if opts.merge_platform {
                for (orig, _) in &entries {
                    copy_manifest(&cx, orig).await?;
                    manifests.push(Descriptor::clone(orig));
                }
            }
            manifests.extend(entries.into_iter().map(|(_, d)| d));
            let out = Index {
                schema_version: 2,
                media_type: Some(OCI_INDEX.into()),
                manifests,
                annotations: None,
            };
            (serde_json::to_vec(&out).expect("index serializes"), OCI_INDEX.to_string())
        }
    } else if is_manifest(&media_type) {
        let platform = if opts.merge_platform {
            Some(platform_of(&cx, &Manifest::parse(&bytes, &src_name)?).await?)
        } else {
            None
        };
        let (desc, summary) =
            convert_image(&cx, &bytes, &digest, platform.clone(), &src_name).await?;
        images.push(summary);
        if let Some(platform) = platform {
            let orig = Descriptor {
                media_type: media_type.clone(),
                digest: digest.clone(),
                size: bytes.len() as u64,
                annotations: None,
                platform: Some(platform),
                urls: None,
            };
            copy_manifest(&cx, &orig).await?;
            let out = Index {
                schema_version: 2,
                media_type: Some(OCI_INDEX.into()),
                manifests: vec![orig, desc],
                annotations: None,
            };
            (serde_json::to_vec(&out).expect("index serializes"), OCI_INDEX.to_string())
        } else {
            (cx.dst_manifest_bytes(&desc.digest).await?, OCI_MANIFEST.to_string())
        }
    } else {
        return Err(OciError::invalid(
            &src_name,
            format!("unknown manifest media type {media_type:?}"),
        ));
    };
    progress.stage("pushing the manifest");
    cx.dst.put_manifest(&out_bytes, &out_type, Some(&tag)).await?;
    Ok(ConvertSummary {
        source: src_name,
        destination: dst.to_string(),
        digest: sha256_digest(&out_bytes),
        media_type: out_type,
        images,
        seconds_total: started.elapsed().as_secs_f64(),
    })
}

impl Context<'_> {
    /// Bytes of a manifest this conversion already pushed (kept in the work dir).
    async fn dst_manifest_bytes(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.work.path().join(format!("manifest-{}", &digest[7..]));
        std::fs::read(&p).map_err(OciError::io(p.display()))
    }
}

/// Copies an original manifest and its blobs to the destination (for `--merge-platform`).
async fn copy_manifest(cx: &Context<'_>, orig: &Descriptor) -> Result<()> {
    let (bytes, media_type, _) = cx.src.manifest(Some(&orig.digest)).await?;
    let m = Manifest::parse(&bytes, &cx.src.name())?;
    for d in m.layers.iter().chain(std::iter::once(&m.config)) {
        cx.dst.copy_blob_from(&cx.src, d, cx.work.path()).await?;
    }
    cx.dst.put_manifest(&bytes, &media_type, Some(&orig.digest)).await
}

async fn platform_of(cx: &Context<'_>, m: &Manifest) -> Result<Platform> {
    let config: serde_json::Value =
        serde_json::from_slice(&cx.src.blob_bytes(&m.config, MAX_CONFIG_BYTES).await?)
            .map_err(|e| OciError::invalid(cx.src.name(), format!("config does not parse: {e}")))?;
    let s = |k: &str| config.get(k).and_then(|v| v.as_str()).map(String::from);
    Ok(Platform {
        architecture: s("architecture").unwrap_or_else(|| "amd64".into()),
        os: s("os").unwrap_or_else(|| "linux".into()),
        os_version: None,
        os_features: None,
        variant: s("variant"),
    })
}

/// Loads the chunk dictionary image: its store, its bootstrap, and its manifest digest.
async fn load_dict(r: &ImageRef, opts: &ConvertOptions) -> Result<(Store, Arc<ChunkDict>, String)> {
    let store = Store::open(r, opts.insecure, false)?;
    let (bytes, mt, digest) = store.manifest(r.reference()).await?;
    let (bytes, digest) = if is_index(&mt) {
        let index = Index::parse(&bytes, &r.to_string())?;
        let pick = index
            .manifests
            .iter()
            .find(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    p.os_features.as_ref().is_some_and(|f| f.iter().any(|x| x == NAIAD_OS_FEATURE))
                })
            })
            .or_else(|| index.manifests.first())
            .ok_or_else(|| OciError::invalid(r, "chunk dictionary index is empty"))?;
        let (b, _, d) = store.manifest(Some(&pick.digest)).await?;
        (b, d)
    } else {
        (bytes, digest)
    };
    let m = Manifest::parse(&bytes, &r.to_string())?;
    let layer = m.bootstrap_layer().ok_or_else(|| {
        OciError::invalid(r, "chunk dictionary is not a Naiad image (no bootstrap layer)")
    })?;
    let wrapped = store.blob_bytes(layer, bootstrap_layer::MAX_BOOTSTRAP_BYTES).await?;
    let bs = bootstrap_layer::unwrap(&wrapped, &r.to_string())?;
    let dict = ChunkDict::from_bootstrap(bs)
        .map_err(|cause| OciError::Build { layer: format!("chunk dictionary {r}"), cause })?;
    if dict.digester() != opts.digester {
        return Err(OciError::invalid(
            r,
            format!(
                "chunk dictionary uses {} digests; convert with --digester {}",
                dict.digester().name(),
                dict.digester().name()
            ),
        ));
    }
    Ok((store, Arc::new(dict), digest))
}

/// A converted layer: its directory (bootstrap + blob), and what building it did.
struct LayerOut {
    dir: PathBuf,
    summary: Option<BuildSummary>,
}

fn cache_key(layer: &Descriptor, opts: &ConvertOptions, dict: Option<&str>) -> String {
    let key = format!(
        "naiad-layer-v{}|{}|{}|{}|{}|{}",
        naiad_format::extension::FORMAT_VERSION,
        layer.digest,
        opts.chunk_size,
        opts.compressor.name(),
        opts.digester.name(),
        dict.unwrap_or("-")
    );
    hex::encode(naiad_format::digest::sha256(key.as_bytes()))
}

/// Converts one layer (or takes it from the build cache).
async fn convert_layer(
    cx: &Context<'_>,
    index: usize,
    layer: &Descriptor,
    image: &str,
) -> Result<LayerOut> {
    let label = format!("{}:{}", index, &layer.digest[7..19]);
    let dict_digest = cx.dict.as_ref().map(|(_, _, d)| d.as_str());
    let cached =
        cx.opts.build_cache.as_ref().map(|c| c.join(cache_key(layer, cx.opts, dict_digest)));
    if let Some(dir) = &cached {
        if dir.join(naiad_builder::image::BOOTSTRAP_FILE_NAME).is_file() {
            cx.progress.layer_bytes(&label, layer.size);
            cx.progress.layer_done(&label, true);
            return Ok(LayerOut { dir: dir.clone(), summary: None });
        }
    }
    if !is_layer(&layer.media_type) {
        return Err(OciError::invalid(
            image,
            format!("layer {} has unknown media type {:?}", layer.digest, layer.media_type),
        ));
    }
    cx.progress.layer_start(&label, layer.size);
    let reporter: ProgressFn = {
        let (label, p) = (label.clone(), cx.progress.clone());
        Arc::new(move |n| p.layer_bytes(&label, n))
    };
    let reader = cx.src.blob_reader(layer, Some(reporter)).await?;
    let out = cx.work.path().join(format!("layer-{index}"));
    let opts = BuildOptions {
        chunk_size: cx.opts.chunk_size,
        compressor: cx.opts.compressor,
        digester: cx.opts.digester,
        chunk_dict: cx.dict.as_ref().map(|(_, d, _)| d.clone()),
        keep_whiteouts: true,
        ..BuildOptions::default()
    };
    let name = format!("{} of {image}", layer.digest);
    let out2 = out.clone();
    let summary = tokio::task::spawn_blocking(
        move || -> std::result::Result<BuildSummary, naiad_builder::BuildError> {
            let reader = naiad_builder::tar_source::decompress_layer(reader, &name)?;
            naiad_builder::build(Source::Stream { reader, name }, opts, &out2)
        },
    )
    .await
    .map_err(|e| OciError::invalid(image, format!("layer conversion task failed: {e}")))?
    .map_err(|cause| match digest_error(&cause, layer, image) {
        Some(e) => e,
        None => OciError::Build { layer: layer.digest.clone(), cause },
    })?;
    cx.progress.layer_done(&label, false);
    if let Some(dir) = cached {
        store_in_cache(&out, &dir)?;
    }
    Ok(LayerOut { dir: out, summary: Some(summary) })
}

/// The builder keeps the read error of the layer stream as its source; a digest mismatch of
/// the source layer found by the verifying reader under it is reported as such.
fn digest_error(
    e: &naiad_builder::BuildError,
    layer: &Descriptor,
    image: &str,
) -> Option<OciError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        let mismatch = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<crate::store::DigestMismatch>());
        if let Some(m) = mismatch {
            return Some(OciError::Digest {
                what: format!("layer {} of {image}", layer.digest),
                expected: m.expected.clone(),
                actual: m.actual.clone(),
            });
        }
        cause = err.source();
    }
    None
}

/// Copies a converted layer into the build cache (hardlinks; atomic rename of the directory).
fn store_in_cache(from: &Path, to: &Path) -> Result<()> {
    let parent = to.parent().expect("cache entries have a parent");
    std::fs::create_dir_all(parent).map_err(OciError::io(parent.display()))?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        to.file_name().expect("named").to_string_lossy()
    ));
    std::fs::create_dir_all(&tmp).map_err(OciError::io(tmp.display()))?;
    for e in std::fs::read_dir(from).map_err(OciError::io(from.display()))? {
        let e = e.map_err(OciError::io(from.display()))?;
        let dest = tmp.join(e.file_name());
        if std::fs::hard_link(e.path(), &dest).is_err() {
            std::fs::copy(e.path(), &dest).map_err(OciError::io(dest.display()))?;
        }
    }
    if std::fs::rename(&tmp, to).is_err() {
        // Another conversion cached it first: keep theirs.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// Converts every layer of `m` and merges them: the layers, the merged bootstrap, where each
/// new blob is on disk, and the seconds the layer conversion took.
async fn build_layers(
    cx: &Context<'_>,
    m: &Manifest,
    image: &str,
) -> Result<(Vec<LayerOut>, naiad_builder::merge::Merged, HashMap<String, PathBuf>, f64)> {
    let t0 = Instant::now();
    cx.progress.stage("converting layers");
    cx.progress.image_start(m.layers.iter().map(|l| l.size).sum());
    let sem = tokio::sync::Semaphore::new(cx.opts.jobs.max(1));
    let futures = m.layers.iter().enumerate().map(|(i, l)| {
        let sem = &sem;
        async move {
            let _permit = sem.acquire().await.expect("semaphore open");
            convert_layer(cx, i, l, image).await
        }
    });
    // Wait for every layer even when one fails: a layer build cannot be cancelled, and it
    // must not write into the work directory after that is removed.
    let layers: Vec<LayerOut> =
        futures_util::future::join_all(futures).await.into_iter().collect::<Result<_>>()?;
    let seconds_convert = t0.elapsed().as_secs_f64();
    cx.progress.stage("merging layers");
    let mut bootstraps = Vec::new();
    let mut local_blobs: HashMap<String, PathBuf> = HashMap::new();
    for l in &layers {
        let p = l.dir.join(naiad_builder::image::BOOTSTRAP_FILE_NAME);
        let bytes = std::fs::read(&p).map_err(OciError::io(p.display()))?;
        let bs = Bootstrap::open(bytes)?;
        for b in &bs.extension().blobs {
            let f = l.dir.join(to_hex(&b.digest));
            if f.is_file() {
                local_blobs.insert(to_hex(&b.digest), f);
            }
        }
        bootstraps.push(bs);
    }
    let merged = naiad_builder::merge::merge_layers(&bootstraps, &cx.opts.prefetch)
        .map_err(|cause| OciError::Build { layer: "merge".into(), cause })?;
    Ok((layers, merged, local_blobs, seconds_convert))
}

/// Builds the Naiad form of `src` (one platform) locally, pushing nothing: for comparing a
/// converted image against its source. Returns the bootstrap and the directories holding
/// its blobs (under `work`).
pub async fn build_local(
    src: &ImageRef,
    platform: Option<&str>,
    opts: &ConvertOptions,
    work: &Path,
) -> Result<(Vec<u8>, Vec<PathBuf>)> {
    let store = Store::open(src, opts.insecure, false)?;
    let (bytes, mt, _) = store.manifest(src.reference()).await?;
    let bytes = if is_index(&mt) {
        let index = Index::parse(&bytes, &src.to_string())?;
        let d = index
            .manifests
            .iter()
            .filter(|d| {
                is_manifest(&d.media_type) && d.platform.as_ref().is_some_and(|p| p.os != "unknown")
            })
            .find(|d| platform.is_none_or(|w| d.platform.as_ref().is_some_and(|p| p.matches(w))))
            .ok_or_else(|| OciError::NotFound {
                what: format!("platform {}", platform.unwrap_or("(any)")),
                image: src.to_string(),
            })?;
        store.manifest(Some(&d.digest)).await?.0
    } else {
        bytes
    };
    let m = Manifest::parse(&bytes, &src.to_string())?;
    let tmp = tempfile::Builder::new()
        .prefix("naiad-src-")
        .tempdir_in(work)
        .map_err(OciError::io(work.display()))?;
    let cx = Context {
        src: store,
        dst: Store::Layout(crate::layout::Layout::deferred(&tmp.path().join("unused"))),
        dict: None,
        opts,
        progress: Arc::new(Quiet),
        work: tmp,
    };
    let (layers, merged, _, _) = build_layers(&cx, &m, &src.to_string()).await?;
    // The layer directories live in the work dir: keep it (it is inside the caller's `work`).
    let _ = cx.work.keep();
    Ok((merged.bootstrap, layers.into_iter().map(|l| l.dir).collect()))
}

/// Converts one image manifest; returns the descriptor of the pushed Naiad manifest.
async fn convert_image(
    cx: &Context<'_>,
    bytes: &[u8],
    source_digest: &str,
    platform: Option<Platform>,
    image: &str,
) -> Result<(Descriptor, ImageSummary)> {
    let m = Manifest::parse(bytes, image)?;
    if m.layers.is_empty() {
        return Err(OciError::invalid(image, "the image has no layers"));
    }
    for l in &m.layers {
        if !is_layer(&l.media_type) {
            return Err(OciError::invalid(
                image,
                format!("layer {} has unknown media type {:?}", l.digest, l.media_type),
            ));
        }
    }
    let config_bytes = cx.src.blob_bytes(&m.config, MAX_CONFIG_BYTES).await?;
    let mut config: serde_json::Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| OciError::invalid(image, format!("config does not parse: {e}")))?;

    let (layers, merged, local_blobs, seconds_convert) = build_layers(cx, &m, image).await?;
    let t1 = Instant::now();
    let (boot_layer, boot_diff_id) = bootstrap_layer::wrap(&merged.bootstrap)?;
    let seconds_merge = t1.elapsed().as_secs_f64();

    // 3. Push: blobs, bootstrap layer, config, manifest.
    let t2 = Instant::now();
    cx.progress.stage("pushing blobs");
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut uploaded = 0;
    for b in &merged.blobs {
        let hexd = to_hex(&b.digest);
        let digest = format!("sha256:{hexd}");
        let desc = Descriptor {
            media_type: NAIAD_BLOB.into(),
            digest: digest.clone(),
            size: b.compressed_size,
            annotations: Some(BTreeMap::from([(ANN_BLOB.to_string(), "true".to_string())])),
            platform: None,
            urls: None,
        };
        let had = cx.dst.has_blob(&digest).await?;
        match local_blobs.get(&hexd) {
            Some(path) => cx.dst.put_blob_file(path, &digest, b.compressed_size).await?,
            None => {
                let (dict_store, _, _) = cx.dict.as_ref().ok_or_else(|| {
                    OciError::invalid(
                        image,
                        format!("blob {digest} is neither converted nor in a chunk dictionary"),
                    )
                })?;
                cx.dst.copy_blob_from(dict_store, &desc, cx.work.path()).await?;
            }
        }
        if !had {
            uploaded += 1;
        }
        diff_ids.push(serde_json::Value::String(digest));
        layer_descs.push(desc);
    }
    let boot_digest = sha256_digest(&boot_layer);
    let boot_size = boot_layer.len() as u64;
    cx.dst.put_blob_bytes(boot_layer, &boot_digest).await?;
    layer_descs.push(Descriptor {
        media_type: NAIAD_BOOTSTRAP.into(),
        digest: boot_digest,
        size: boot_size,
        annotations: Some(BTreeMap::from([(ANN_BOOTSTRAP.to_string(), "true".to_string())])),
        platform: None,
        urls: None,
    });
    diff_ids.push(serde_json::Value::String(format!("sha256:{}", hex::encode(boot_diff_id))));
    config["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": diff_ids });
    let new_config = serde_json::to_vec(&config).expect("config serializes");
    let config_digest = sha256_digest(&new_config);
    let config_size = new_config.len() as u64;
    cx.dst.put_blob_bytes(new_config, &config_digest).await?;
    let options = format!(
        "chunk-size={},compressor={},digester={}",
        cx.opts.chunk_size,
        cx.opts.compressor.name(),
        cx.opts.digester.name()
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: config_digest,
            size: config_size,
            annotations: None,
            platform: None,
            urls: None,
        },
        layers: layer_descs,
        annotations: Some(BTreeMap::from([
            (ANN_SOURCE.to_string(), source_digest.to_string()),
            (ANN_VERSION.to_string(), naiad_format::extension::FORMAT_VERSION.to_string()),
            (ANN_OPTIONS.to_string(), options),
        ])),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let digest = sha256_digest(&manifest_bytes);
    std::fs::write(cx.work.path().join(format!("manifest-{}", &digest[7..])), &manifest_bytes)
        .map_err(OciError::io("work dir"))?;
    // In an index the manifest goes up by digest now; a single manifest goes up under its
    // tag last, by the caller.
    cx.dst.put_manifest(&manifest_bytes, OCI_MANIFEST, Some(&digest)).await?;
    let seconds_push = t2.elapsed().as_secs_f64();

    let platform = platform.map(|mut p| {
        p.os_features.get_or_insert_with(Vec::new).push(NAIAD_OS_FEATURE.into());
        p
    });
    let built: Vec<&BuildSummary> = layers.iter().filter_map(|l| l.summary.as_ref()).collect();
    let summary = ImageSummary {
        platform: platform.as_ref().map(|p| p.name()),
        source_digest: source_digest.to_string(),
        digest: digest.clone(),
        source_bytes: m.layers.iter().map(|l| l.size).sum(),
        naiad_bytes: merged.blobs.iter().map(|b| b.compressed_size).sum::<u64>() + boot_size,
        bootstrap_bytes: merged.bootstrap.len() as u64,
        layers: m.layers.len(),
        blobs: merged.blobs.len(),
        cached_layers: layers.len() - built.len(),
        chunks: built.iter().map(|s| s.chunks).sum(),
        stored_chunks: built.iter().map(|s| s.stored_chunks).sum(),
        dedup_chunks: built.iter().map(|s| s.dedup_chunks).sum(),
        dict_chunks: built.iter().map(|s| s.dict_chunks).sum(),
        uploaded_blobs: uploaded,
        seconds_convert,
        seconds_merge,
        seconds_push,
        warnings: merged
            .warnings
            .into_iter()
            .chain(built.iter().flat_map(|s| s.warnings.clone()))
            .collect(),
    };
    let desc = Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest,
        size: manifest_bytes.len() as u64,
        annotations: None,
        platform,
        urls: None,
    };
    Ok((desc, summary))
}
