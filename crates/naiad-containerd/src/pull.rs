//! `naiad pull`: what containerd's Go client does for `ctr pull`, plus the labels a remote
//! snapshotter needs to recognise a layer, which the CRI plugin sends and `ctr` does not.
//!
//! Steps, all under one containerd lease so its garbage collector keeps what is half done:
//! 1. resolve the reference (an index: this platform's Naiad manifest if there is one);
//! 2. put the config into containerd's content store, labelled with the snapshot it keeps
//!    alive (`containerd.io/gc.ref.snapshot.<snapshotter>`);
//! 3. unpack layer by layer through containerd's snapshot service: `Prepare` with the target
//!    chain ID and the CRI labels. A remote snapshotter answers "already exists" (nothing to
//!    download); otherwise the layer is downloaded into the content store, applied by
//!    containerd's differ onto the returned mounts, and committed;
//! 4. put the manifest (labelled with the content it references) and the image record.

use crate::api::{content, diff, images, leases, snapshots, types};
use crate::snapshotter::{LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER, LABEL_CRI_MANIFEST, LABEL_REF};
use crate::{Error, Result};
use naiad_oci::manifest::{Descriptor, Index, Manifest};
use naiad_oci::media::{is_index, NAIAD_OS_FEATURE};
use naiad_oci::reference::ImageRef;
use naiad_oci::store::Store;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use tonic::transport::Channel;

/// CRI label listing the image's layers (as the CRI plugin sends it).
const LABEL_CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// Largest config accepted.
const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Deadline of each containerd call (a layer download is one call).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// Bytes per content write message.
const WRITE_CHUNK: usize = 1 << 20;

pub struct PullOptions {
    pub socket: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    pub platform: Option<String>,
    pub insecure: bool,
}

#[derive(Debug, Serialize)]
pub struct PullReport {
    pub name: String,
    pub manifest_digest: String,
    pub naiad: bool,
    pub layers: usize,
    /// Layers downloaded and applied by containerd's differ (the rest the snapshotter had or
    /// serves remotely).
    pub layers_unpacked: usize,
    pub bytes_downloaded: u64,
    pub chain_id: String,
}

struct Cx {
    ch: Channel,
    ns: String,
    lease: String,
}

impl Cx {
    /// A request in our namespace and lease, with a deadline so that containerd (which
    /// waits for a proxy snapshotter that does not answer) cannot hang us.
    fn req<T>(&self, msg: T) -> Result<tonic::Request<T>> {
        let mut r = crate::with_namespace_and_lease(msg, &self.ns, &self.lease).map_err(|_| {
            Error::Invalid(format!("namespace {:?} is not a valid header value", self.ns))
        })?;
        r.set_timeout(REQUEST_TIMEOUT);
        Ok(r)
    }
}

/// The platform of this machine, as OCI names it.
fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        a => a,
    };
    format!("linux/{arch}")
}

pub async fn pull(name: &str, opts: &PullOptions) -> Result<PullReport> {
    let image = ImageRef::parse(&format!("docker://{name}")).map_err(Error::image(name))?;
    let bad = Error::image(name);
    let store = Store::open(&image, opts.insecure, false).map_err(bad)?;
    let (mut bytes, mut media_type, mut digest) =
        store.manifest(image.reference()).await.map_err(bad)?;
    if is_index(&media_type) {
        let index = Index::parse(&bytes, name).map_err(bad)?;
        let want = opts.platform.clone().unwrap_or_else(host_platform);
        let fits: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| d.platform.as_ref().is_some_and(|p| p.matches(&want)))
            .collect();
        let is_naiad = |d: &&&Descriptor| {
            d.platform
                .as_ref()
                .and_then(|p| p.os_features.as_ref())
                .is_some_and(|f| f.iter().any(|x| x == NAIAD_OS_FEATURE))
        };
        let chosen = fits
            .iter()
            .find(is_naiad)
            .or_else(|| fits.iter().find(|d| !is_naiad(d)))
            .ok_or_else(|| Error::NotFound(format!("platform {want} in image {name}")))?;
        let d = (*chosen).clone();
        (bytes, media_type, digest) = store.manifest(Some(&d.digest)).await.map_err(bad)?;
    }
    let manifest = Manifest::parse(&bytes, name).map_err(bad)?;
    let naiad = manifest.bootstrap_layer().is_some();
    let config = store.blob_bytes(&manifest.config, MAX_CONFIG_BYTES).await.map_err(bad)?;
    let diff_ids = diff_ids(&config, name)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::Invalid(format!(
            "image {name}: {} layers but {} diff_ids in its config",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let chain = chain_ids(&diff_ids);
    let top = chain
        .last()
        .cloned()
        .ok_or_else(|| Error::Invalid(format!("image {name} has no layers")))?;

    let ch = crate::connect(&opts.socket).await.map_err(|e| Error::Connect {
        socket: opts.socket.display().to_string(),
        cause: e.to_string(),
    })?;
    let lease_id = format!(
        "naiad-pull-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let expire =
        humantime_rfc3339(std::time::SystemTime::now() + std::time::Duration::from_secs(24 * 3600));
    let mut leases = leases::leases_client::LeasesClient::new(ch.clone());
    leases
        .create(
            crate::with_namespace(
                leases::CreateRequest {
                    id: lease_id.clone(),
                    labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
                },
                &opts.namespace,
            )
            .map_err(|_| {
                Error::Invalid(format!(
                    "namespace {:?} is not a valid header value",
                    opts.namespace
                ))
            })?,
        )
        .await?;
    let cx = Cx { ch, ns: opts.namespace.clone(), lease: lease_id.clone() };
    let result = pull_under_lease(
        &cx,
        opts,
        name,
        &store,
        &manifest,
        &bytes,
        &media_type,
        &digest,
        &config,
        &diff_ids,
        &chain,
    )
    .await;
    if let Ok(r) =
        crate::with_namespace(leases::DeleteRequest { id: lease_id, sync: false }, &opts.namespace)
    {
        let _ = leases.delete(r).await;
    }
    let (layers_unpacked, bytes_downloaded) = result?;
    Ok(PullReport {
        name: name.to_string(),
        manifest_digest: digest,
        naiad,
        layers: manifest.layers.len(),
        layers_unpacked,
        bytes_downloaded,
        chain_id: top,
    })
}

#[allow(clippy::too_many_arguments)]
async fn pull_under_lease(
    cx: &Cx,
    opts: &PullOptions,
    name: &str,
    store: &Store,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    media_type: &str,
    digest: &str,
    config: &[u8],
    diff_ids: &[String],
    chain: &[String],
) -> Result<(usize, u64)> {
    let top = chain.last().expect("at least one layer");
    let config_digest = &manifest.config.digest;
    put_content(
        cx,
        config_digest,
        config,
        HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{}", opts.snapshotter),
            top.clone(),
        )]),
    )
    .await?;

    let mut sn = snapshots::snapshots_client::SnapshotsClient::new(cx.ch.clone());
    let mut differ = diff::diff_client::DiffClient::new(cx.ch.clone());
    let layer_list =
        manifest.layers.iter().map(|l| l.digest.as_str()).collect::<Vec<_>>().join(",");
    let mut unpacked = 0;
    let mut downloaded = 0u64;
    let mut content_labels =
        HashMap::from([("containerd.io/gc.ref.content.config".to_string(), config_digest.clone())]);
    for (i, layer) in manifest.layers.iter().enumerate() {
        let parent = if i == 0 { String::new() } else { chain[i - 1].clone() };
        if sn
            .stat(cx.req(snapshots::StatSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                key: chain[i].clone(),
            })?)
            .await
            .is_ok()
        {
            continue;
        }
        let mut labels = HashMap::from([
            (LABEL_REF.to_string(), chain[i].clone()),
            (LABEL_CRI_IMAGE_REF.to_string(), name.to_string()),
            (LABEL_CRI_MANIFEST.to_string(), digest.to_string()),
            (LABEL_CRI_LAYER.to_string(), layer.digest.clone()),
        ]);
        // The CRI plugin leaves this one out when it grows too long for a label.
        if layer_list.len() < 4000 {
            labels.insert(LABEL_CRI_IMAGE_LAYERS.to_string(), layer_list.clone());
        }
        let key = format!("extract-{}-{i} {}", std::process::id(), chain[i]);
        let prepared = sn
            .prepare(cx.req(snapshots::PrepareSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                key: key.clone(),
                parent,
                labels,
            })?)
            .await;
        let mounts = match prepared {
            Ok(r) => r.into_inner().mounts,
            Err(s) if s.code() == tonic::Code::AlreadyExists => continue,
            Err(s) => return Err(s.into()),
        };
        let applied = async {
            downloaded += fetch_layer(cx, store, layer, name).await?;
            let desc = types::Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size as i64,
                annotations: HashMap::new(),
            };
            let r = differ
                .apply(cx.req(diff::ApplyRequest {
                    diff: Some(desc),
                    mounts,
                    payloads: HashMap::new(),
                })?)
                .await?
                .into_inner();
            let got = r.applied.map(|d| d.digest).unwrap_or_default();
            if got != diff_ids[i] {
                return Err(Error::Invalid(format!(
                    "image {name}: layer {} unpacks to {got}, but the config says {}",
                    layer.digest, diff_ids[i]
                )));
            }
            sn.commit(cx.req(snapshots::CommitSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                name: chain[i].clone(),
                key: key.clone(),
                labels: HashMap::new(),
            })?)
            .await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = applied {
            let _ = sn
                .remove(cx.req(snapshots::RemoveSnapshotRequest {
                    snapshotter: opts.snapshotter.clone(),
                    key,
                })?)
                .await;
            return Err(e);
        }
        content_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), layer.digest.clone());
        unpacked += 1;
    }
    put_content(cx, digest, manifest_bytes, content_labels).await?;

    let mut imgs = images::images_client::ImagesClient::new(cx.ch.clone());
    let record = images::Image {
        name: name.to_string(),
        labels: HashMap::new(),
        target: Some(types::Descriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size: manifest_bytes.len() as i64,
            annotations: HashMap::new(),
        }),
        created_at: None,
        updated_at: None,
    };
    match imgs.create(cx.req(images::CreateImageRequest { image: Some(record.clone()) })?).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            imgs.update(
                cx.req(images::UpdateImageRequest { image: Some(record), update_mask: None })?,
            )
            .await?;
        }
        Err(s) => return Err(s.into()),
    }
    Ok((unpacked, downloaded))
}

/// Downloads a layer into containerd's content store unless it is there; returns the bytes
/// downloaded.
async fn fetch_layer(cx: &Cx, store: &Store, layer: &Descriptor, name: &str) -> Result<u64> {
    let mut cs = content::content_client::ContentClient::new(cx.ch.clone());
    if cs.info(cx.req(content::InfoRequest { digest: layer.digest.clone() })?).await.is_ok() {
        return Ok(0);
    }
    let Store::Registry(repo) = store else {
        return Err(Error::Invalid(format!("image {name} is not in a registry")));
    };
    let stream = repo.blob_stream(layer).await.map_err(Error::image(name))?;
    write_stream(cx, &layer.digest, layer.size, stream, HashMap::new()).await?;
    Ok(layer.size)
}

/// Puts a small blob into the content store (or updates the labels of the one there).
async fn put_content(
    cx: &Cx,
    digest: &str,
    bytes: &[u8],
    labels: HashMap<String, String>,
) -> Result<()> {
    let data = bytes::Bytes::copy_from_slice(bytes);
    let one = futures_util::stream::iter([Ok::<_, std::io::Error>(data)]);
    write_stream(cx, digest, bytes.len() as u64, Box::pin(one), labels).await
}

/// Content.Write: one message at a time, each answered; the last commits against the
/// expected digest and size, so containerd verifies what it stores. Content already there
/// gets its labels set instead.
async fn write_stream(
    cx: &Cx,
    digest: &str,
    size: u64,
    mut data: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    labels: HashMap<String, String>,
) -> Result<()> {
    use futures_util::StreamExt;
    let mut cs = content::content_client::ContentClient::new(cx.ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<content::WriteContentRequest>(2);
    let reference = format!("naiad-pull-{digest}");
    let msg =
        |action: content::WriteAction, offset: u64, data: Vec<u8>| content::WriteContentRequest {
            action: action as i32,
            r#ref: reference.clone(),
            total: size as i64,
            expected: digest.to_string(),
            offset: offset as i64,
            data,
            labels: HashMap::new(),
        };
    let send = |m| {
        let tx = tx.clone();
        async move {
            tx.send(m)
                .await
                .map_err(|_| Error::Internal("containerd closed the content write stream".into()))
        }
    };
    // Where a previous, interrupted write of the same ref left off.
    // (Queued before the call: tonic waits for containerd's response headers, which come
    // only once containerd has a first message.)
    send(msg(content::WriteAction::Stat, 0, Vec::new())).await?;
    let mut responses =
        match cs.write(cx.req(tokio_stream::wrappers::ReceiverStream::new(rx))?).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                return set_labels(cx, digest, labels).await
            }
            Err(s) => return Err(s.into()),
        };
    let stat = match responses.message().await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(Error::Internal("containerd ended the content write stream".into()))
        }
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            return set_labels(cx, digest, labels).await
        }
        Err(s) => return Err(s.into()),
    };
    let mut skip = stat.offset.max(0) as u64;
    let mut offset = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
    loop {
        let chunk = data
            .next()
            .await
            .transpose()
            .map_err(|e| Error::Internal(format!("downloading {digest}: {e}")))?;
        if let Some(mut c) = chunk {
            let drop_n = skip.min(c.len() as u64) as usize;
            skip -= drop_n as u64;
            offset += drop_n as u64;
            let c = c.split_off(drop_n);
            buf.extend_from_slice(&c);
            if buf.len() < WRITE_CHUNK {
                continue;
            }
        }
        let last = buf.len() < WRITE_CHUNK;
        let n = buf.len() as u64;
        let payload = std::mem::take(&mut buf);
        if last {
            let mut m = msg(content::WriteAction::Commit, offset, payload);
            m.labels = labels.clone();
            send(m).await?;
        } else {
            send(msg(content::WriteAction::Write, offset, payload)).await?;
        }
        offset += n;
        match responses.message().await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(Error::Internal("containerd ended the content write stream".into()))
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                return set_labels(cx, digest, labels).await
            }
            Err(s) => return Err(s.into()),
        }
        if last {
            return Ok(());
        }
    }
}

async fn set_labels(cx: &Cx, digest: &str, labels: HashMap<String, String>) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let mut cs = content::content_client::ContentClient::new(cx.ch.clone());
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let info = content::Info {
        digest: digest.to_string(),
        size: 0,
        created_at: None,
        updated_at: None,
        labels,
    };
    cs.update(cx.req(content::UpdateRequest {
        info: Some(info),
        update_mask: Some(prost_types::FieldMask { paths }),
    })?)
    .await?;
    Ok(())
}

/// `rootfs.diff_ids` of an image config.
fn diff_ids(config: &[u8], name: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(config)
        .map_err(|e| Error::Invalid(format!("image {name}: config does not parse: {e}")))?;
    let ids = v
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .ok_or_else(|| Error::Invalid(format!("image {name}: config has no rootfs.diff_ids")))?;
    ids.iter()
        .map(|d| {
            d.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Invalid(format!("image {name}: a diff_id is not a string")))
        })
        .collect()
}

/// The chain IDs of the OCI image spec: the first layer's diff ID, then
/// `sha256(parent_chain + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(p) => naiad_oci::manifest::sha256_digest(format!("{p} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// An RFC 3339 UTC timestamp (containerd's lease expiry label).
fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}")))));
    }

    #[test]
    fn lease_expiry_is_rfc3339() {
        assert_eq!(humantime_rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            humantime_rfc3339(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000)
            ),
            "2026-11-18T11:06:40Z"
        );
    }
}
