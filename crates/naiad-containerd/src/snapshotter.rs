//! The snapshotter's logic, apart from gRPC: containerd's overlayfs snapshotter semantics
//! for ordinary layers, and lazy Naiad images for layers whose labels name one.
//!
//! A Naiad image's layers are its data blobs and, last, its bootstrap (`docs/oci.md`). When
//! containerd unpacks such an image it prepares one snapshot per layer with the target
//! chain ID in `containerd.io/snapshot.ref` and, from the CRI plugin or `naiad pull`, the
//! image reference, manifest digest and layer digest in `containerd.io/snapshot/cri.*`
//! labels. For a data blob layer we commit an empty snapshot at once; for the bootstrap
//! layer we have the daemon mount the whole image lazily and commit a snapshot standing for
//! that mount. Both answer "already exists", so containerd downloads nothing. A container's
//! rootfs is then an overlay whose lower layer is the lazy mount.

use crate::store::{Kind, Remote, Snapshot, Store};
use crate::{Error, Result};
use naiad_daemon::client::DaemonClient;
use naiad_daemon::spec::{Mode, MountSpec};
use naiad_daemon::DaemonError;
use naiad_oci::manifest::Manifest;
use naiad_oci::media::NAIAD_BLOB;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const LABEL_REF: &str = "containerd.io/snapshot.ref";
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const LABEL_CRI_MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
pub const LABEL_CRI_LAYER: &str = "containerd.io/snapshot/cri.layer-digest";
/// Set by the snapshotter on the snapshot of a Naiad image's bootstrap layer: where it is mounted.
pub const LABEL_NAIAD_MOUNT: &str = "dev.naiad.mountpoint";

/// A mount as containerd takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOut {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// How the snapshotter reaches the Naiad daemon.
#[derive(Debug, Clone)]
pub struct DaemonLink {
    /// The daemon's admin API socket.
    pub api: PathBuf,
    /// The command that starts a daemon on `api` when none answers (run detached, in its
    /// own session, so it outlives the snapshotter); `None` to require a running daemon.
    pub spawn: Option<Vec<String>>,
    /// Where a spawned daemon logs.
    pub log: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub daemon: DaemonLink,
    /// The daemon's blob cache, whose entries of removed images are collected.
    pub cache_dir: PathBuf,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// How Naiad images are mounted.
    pub mode: Mode,
}

/// What a manifest digest turned out to be.
#[derive(Debug)]
enum ImageKind {
    Plain,
    Naiad { source: String, blobs: Vec<String>, bootstrap: String, insecure: bool },
}

pub struct Snapshotter {
    cfg: Config,
    store: Store,
    runtime: tokio::runtime::Handle,
    images: Mutex<HashMap<String, Arc<ImageKind>>>,
    /// Serializes mounting and unmounting of each lazy image (rare, slow operations; the
    /// snapshot reads and ordinary layers never take it). Per mount point: an image whose
    /// registry is slow delays no other image's prepare or remove.
    mounting: MountClaims,
    /// Held shared while a snapshot is being created (its record and its directory or mount
    /// come one after the other) and exclusively by `cleanup`, so that cleanup never takes
    /// a snapshot being made for an orphan.
    creating: std::sync::RwLock<()>,
}

impl Snapshotter {
    pub fn open(cfg: Config, runtime: tokio::runtime::Handle) -> Result<Snapshotter> {
        for d in ["snapshots", "images"] {
            std::fs::create_dir_all(cfg.root.join(d))
                .map_err(Error::io(cfg.root.join(d).display()))?;
        }
        let store = Store::open(&cfg.root.join("metadata.redb"))?;
        Ok(Snapshotter {
            cfg,
            store,
            runtime,
            images: Mutex::new(HashMap::new()),
            mounting: MountClaims::default(),
            creating: std::sync::RwLock::new(()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn dir(&self, s: &Snapshot) -> PathBuf {
        self.cfg.root.join("snapshots").join(s.id.to_string())
    }

    /// Makes sure every lazy image the database holds is mounted (after a restart of the
    /// snapshotter, the daemon or the machine). Failures are logged, not fatal: the mount is
    /// tried again when a container needs it.
    pub fn restore(&self) -> Result<usize> {
        let mut n = 0;
        for (key, s) in self.store.list()? {
            if let Some(Remote::Image { .. }) = &s.remote {
                match self.ensure_mounted(&s) {
                    Ok(()) => n += 1,
                    Err(e) => tracing::warn!(snapshot = %key, "lazy image not mounted: {e}"),
                }
            }
        }
        Ok(n)
    }

    /// Prepare (`kind` Active) or View.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<MountOut>> {
        let _creating = self.creating.read().expect("creating lock");
        if kind == Kind::Active {
            if let Some(target) = labels.get(LABEL_REF).cloned() {
                if let Some(existing) = self.store.get(&target)? {
                    if existing.kind == Kind::Committed && existing.parent == parent {
                        return Err(Error::AlreadyExists(format!("snapshot {target:?}")));
                    }
                }
                if let Some(done) = self.prepare_naiad_layer(&target, parent, &labels)? {
                    return Err(done);
                }
            }
        }
        let s = self.store.create(key, kind, parent, labels, None)?;
        let dir = self.dir(&s);
        let made = std::fs::create_dir_all(dir.join("fs")).and_then(|()| {
            if kind == Kind::Active {
                std::fs::create_dir_all(dir.join("work"))
            } else {
                Ok(())
            }
        });
        if let Err(e) = made {
            let _ = self.store.remove(key);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::Io { path: dir.display().to_string(), cause: e });
        }
        self.mounts_of(&s)
    }

    /// For a layer of a Naiad image: commits its snapshot and returns the AlreadyExists
    /// error to answer with. `None` for an ordinary layer.
    fn prepare_naiad_layer(
        &self,
        target: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Error>> {
        let (Some(image_ref), Some(manifest), Some(layer)) = (
            labels.get(LABEL_CRI_IMAGE_REF),
            labels.get(LABEL_CRI_MANIFEST),
            labels.get(LABEL_CRI_LAYER),
        ) else {
            return Ok(None);
        };
        let ImageKind::Naiad { source, blobs, bootstrap, insecure } =
            &*self.image_kind(image_ref, manifest)?
        else {
            return Ok(None);
        };
        let mut labels = labels.clone();
        let remote = if layer == bootstrap {
            let mountpoint = self
                .cfg
                .root
                .join("images")
                .join(&naiad_oci::manifest::sha256_digest(target.as_bytes())[7..39]);
            let _claim = self.mounting.claim(&mountpoint);
            let remote = Remote::Image {
                source: source.clone(),
                mountpoint: mountpoint.clone(),
                blobs: blobs.clone(),
                insecure: *insecure,
            };
            self.mount_image(&remote)?;
            labels.insert(LABEL_NAIAD_MOUNT.into(), mountpoint.display().to_string());
            remote
        } else if blobs.contains(layer) {
            Remote::Blob { digest: layer.clone() }
        } else {
            return Err(Error::Invalid(format!(
                "layer {layer} is not in Naiad image {image_ref} ({manifest})"
            )));
        };
        match self.store.create(target, Kind::Committed, parent, labels, Some(remote.clone())) {
            Ok(s) => {
                tracing::info!(snapshot = %target, id = s.id, "{}", match &remote { Remote::Image { source, .. } => format!("lazy image {source}"), Remote::Blob { digest } => format!("data blob {digest}") });
                Ok(Some(Error::AlreadyExists(format!("snapshot {target:?}"))))
            }
            Err(Error::AlreadyExists(_)) => {
                Ok(Some(Error::AlreadyExists(format!("snapshot {target:?}"))))
            }
            Err(e) => {
                if let Remote::Image { mountpoint, .. } = &remote {
                    let _ = self.unmount_image(mountpoint);
                }
                Err(e)
            }
        }
    }

    /// Whether the manifest is a Naiad image's (fetched once per manifest digest).
    fn image_kind(&self, image_ref: &str, manifest_digest: &str) -> Result<Arc<ImageKind>> {
        if let Some(k) = self.images.lock().expect("images lock").get(manifest_digest) {
            return Ok(k.clone());
        }
        let (registry, repository) = split_image_ref(image_ref)
            .ok_or_else(|| Error::Invalid(format!("cannot parse image reference {image_ref:?}")))?;
        let insecure = self.cfg.insecure_registries.iter().any(|h| h == &registry);
        let pinned = format!("docker://{registry}/{repository}@{manifest_digest}");
        let r = naiad_oci::reference::ImageRef::parse(&pinned).map_err(Error::image(image_ref))?;
        let store =
            naiad_oci::store::Store::open(&r, insecure, false).map_err(Error::image(image_ref))?;
        let (bytes, _, _) = self
            .runtime
            .block_on(store.manifest(Some(manifest_digest)))
            .map_err(Error::image(image_ref))?;
        let kind = match Manifest::parse(&bytes, &pinned) {
            Ok(m) => match m.bootstrap_layer() {
                Some(b)
                    if m.layers
                        .iter()
                        .all(|l| l.digest == b.digest || l.media_type == NAIAD_BLOB) =>
                {
                    ImageKind::Naiad {
                        source: pinned,
                        blobs: m
                            .layers
                            .iter()
                            .filter(|l| l.media_type == NAIAD_BLOB)
                            .map(|l| l.digest.clone())
                            .collect(),
                        bootstrap: b.digest.clone(),
                        insecure,
                    }
                }
                _ => ImageKind::Plain,
            },
            Err(_) => ImageKind::Plain,
        };
        let kind = Arc::new(kind);
        self.images.lock().expect("images lock").insert(manifest_digest.to_string(), kind.clone());
        Ok(kind)
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<MountOut>> {
        let s = self.store.need(key)?;
        self.mounts_of(&s)
    }

    /// The mounts of an active snapshot or view: its parents' directories (a lazy image
    /// standing for all the layers under it) under its own.
    fn mounts_of(&self, s: &Snapshot) -> Result<Vec<MountOut>> {
        let mut lowers = Vec::new();
        let mut parent = s.parent.clone();
        while !parent.is_empty() {
            let p = self.store.need(&parent)?;
            match &p.remote {
                Some(Remote::Image { mountpoint, .. }) => {
                    self.ensure_mounted(&p)?;
                    lowers.push(mountpoint.display().to_string());
                    break;
                }
                Some(Remote::Blob { .. }) => {}
                None => lowers.push(self.dir(&p).join("fs").display().to_string()),
            }
            parent = p.parent.clone();
        }
        let dir = self.dir(s);
        let fs = dir.join("fs").display().to_string();
        let bind = |source: String, ro: bool| MountOut {
            kind: "bind".into(),
            source,
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        Ok(vec![match (s.kind, lowers.len()) {
            (Kind::Active, 0) => bind(fs, false),
            (Kind::Active, _) => MountOut {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("workdir={}", dir.join("work").display()),
                    format!("upperdir={fs}"),
                    format!("lowerdir={}", lowers.join(":")),
                ],
            },
            (_, 0) => bind(fs, true),
            (_, 1) => bind(lowers.remove(0), true),
            (_, _) => MountOut {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![format!("lowerdir={}", lowers.join(":"))],
            },
        }])
    }

    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Snapshot> {
        self.store.commit(key, name, labels)
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        let s = self.store.need(key)?;
        if let Some(Remote::Image { mountpoint, blobs, .. }) = &s.remote {
            // Checked before unmounting (the store checks again as it removes).
            if let Some((child, _)) = self.store.list()?.into_iter().find(|(_, c)| c.parent == key)
            {
                return Err(Error::Invalid(format!("snapshot {key:?} has a child, {child:?}")));
            }
            let _claim = self.mounting.claim(mountpoint);
            self.unmount_image(mountpoint)?;
            self.store.remove(key)?;
            self.collect_blobs(blobs)?;
            let _ = std::fs::remove_dir(mountpoint);
            return Ok(());
        }
        self.store.remove(key)?;
        if s.remote.is_none() {
            let dir = self.dir(&s);
            std::fs::remove_dir_all(&dir)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(Error::io(dir.display()))?;
        }
        Ok(())
    }

    /// Drops the cache entries of blobs no remaining lazy image uses (an entry still open
    /// by a mount is left alone).
    fn collect_blobs(&self, blobs: &[String]) -> Result<()> {
        let mut still_used = std::collections::HashSet::new();
        for (_, s) in self.store.list()? {
            if let Some(Remote::Image { blobs, .. }) = s.remote {
                still_used.extend(blobs);
            }
        }
        if !self.cfg.cache_dir.exists() {
            return Ok(());
        }
        let cache = naiad_storage::cache::ChunkCache::open(&self.cfg.cache_dir)
            .map_err(|e| Error::Internal(format!("cache {}: {e}", self.cfg.cache_dir.display())))?;
        for b in blobs.iter().filter(|b| !still_used.contains(*b)) {
            let Some(d) = b
                .strip_prefix("sha256:")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
            else {
                continue;
            };
            match cache.remove_blob(&d) {
                Ok(true) => tracing::info!("cache entry of blob {b} removed"),
                Ok(false) => tracing::info!(
                    "cache entry of blob {b} still in use: left for the cache's own collection"
                ),
                Err(e) => tracing::warn!("cache entry of blob {b}: {e}"),
            }
        }
        Ok(())
    }

    pub fn update_labels(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        fields: &[String],
    ) -> Result<Snapshot> {
        self.store.update_labels(key, labels, fields)
    }

    /// Disk use of a snapshot's own directory: (bytes, inodes). A lazy image's data lives in
    /// the daemon's cache and is not counted here.
    pub fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let s = self.store.need(key)?;
        if s.remote.is_some() {
            return Ok((0, 0));
        }
        let mut bytes = 0i64;
        let mut inodes = 0i64;
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![self.dir(&s).join("fs")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(md) = e.metadata() else { continue };
                use std::os::unix::fs::MetadataExt;
                if !seen.insert((md.dev(), md.ino())) {
                    continue;
                }
                inodes += 1;
                bytes += (md.blocks() * 512) as i64;
                if md.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        Ok((bytes, inodes))
    }

    /// Removes directories and lazy mounts no snapshot owns (left by a crash between the
    /// database change and the disk change).
    pub fn cleanup(&self) -> Result<()> {
        let _exclusive = self.creating.write().expect("creating lock");
        let all = self.store.list()?;
        let ids: std::collections::HashSet<String> =
            all.iter().map(|(_, s)| s.id.to_string()).collect();
        let mounts: std::collections::HashSet<PathBuf> = all
            .iter()
            .filter_map(|(_, s)| {
                if let Some(Remote::Image { mountpoint, .. }) = &s.remote {
                    Some(mountpoint.clone())
                } else {
                    None
                }
            })
            .collect();
        let snaps = self.cfg.root.join("snapshots");
        for e in std::fs::read_dir(&snaps).map_err(Error::io(snaps.display()))?.flatten() {
            if !ids.contains(&e.file_name().to_string_lossy().to_string()) {
                tracing::info!("cleanup: removing {}", e.path().display());
                std::fs::remove_dir_all(e.path()).map_err(Error::io(e.path().display()))?;
            }
        }
        let images = self.cfg.root.join("images");
        for e in std::fs::read_dir(&images).map_err(Error::io(images.display()))?.flatten() {
            let p = e.path();
            if !mounts.contains(&p) {
                let _claim = self.mounting.claim(&p);
                tracing::info!("cleanup: unmounting and removing {}", p.display());
                self.unmount_image(&p)?;
                let _ = std::fs::remove_dir(&p);
            }
        }
        Ok(())
    }

    fn ensure_mounted(&self, s: &Snapshot) -> Result<()> {
        let Some(remote @ Remote::Image { mountpoint, .. }) = &s.remote else {
            return Ok(());
        };
        if Mode::Auto.is_mounted(mountpoint) {
            return Ok(());
        }
        let _claim = self.mounting.claim(mountpoint);
        if Mode::Auto.is_mounted(mountpoint) {
            return Ok(());
        }
        tracing::info!("lazy image at {} is not mounted: mounting it again", mountpoint.display());
        self.mount_image(remote)
    }

    fn mount_image(&self, remote: &Remote) -> Result<()> {
        let Remote::Image { source, mountpoint, insecure, .. } = remote else {
            return Ok(());
        };
        std::fs::create_dir_all(mountpoint).map_err(Error::io(mountpoint.display()))?;
        self.ensure_daemon()?;
        // A mount left from before (the daemon kept it, or brought it back itself).
        let listed = self.daemon().list().map_err(daemon_error)?;
        if listed.iter().any(|m| m.mountpoint == *mountpoint) {
            if Mode::Auto.is_mounted(mountpoint) {
                return Ok(());
            }
            self.unmount_image(mountpoint)?;
        }
        let spec = MountSpec {
            mode: self.cfg.mode,
            insecure: *insecure,
            // A container's root filesystem: its setuid binaries and device nodes work.
            allow_setuid: true,
            allow_devices: true,
            ..MountSpec::new(source.clone(), mountpoint.clone())
        };
        match self.daemon().mount(&spec) {
            Ok(_) => Ok(()),
            Err(DaemonError::Api { message, .. }) => Err(Error::Daemon(format!(
                "mounting {source} at {}: {message}",
                mountpoint.display()
            ))),
            Err(e) => Err(daemon_error(e)),
        }
    }

    fn unmount_image(&self, mountpoint: &Path) -> Result<()> {
        if !self.cfg.daemon.api.exists() && !Mode::Auto.is_mounted(mountpoint) {
            return Ok(());
        }
        self.ensure_daemon()?;
        match self.daemon().umount(mountpoint) {
            Ok(()) | Err(DaemonError::NotMounted(_)) => Ok(()),
            Err(e) => Err(Error::Daemon(format!("unmounting {}: {e}", mountpoint.display()))),
        }
    }

    fn daemon(&self) -> DaemonClient {
        DaemonClient::new(&self.cfg.daemon.api)
    }

    /// Starts the daemon if none answers on its socket and we know how.
    pub fn ensure_daemon(&self) -> Result<()> {
        let api = &self.cfg.daemon.api;
        if self.daemon().status().is_ok() {
            return Ok(());
        }
        let Some(cmd) = &self.cfg.daemon.spawn else {
            return Err(Error::Daemon(format!("no daemon answers on {}", api.display())));
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.daemon.log)
            .map_err(Error::io(self.cfg.daemon.log.display()))?;
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(Error::io("daemon log"))?)
            .stderr(log);
        // Its own session: a daemon that outlives the snapshotter (and its restarts).
        naiad_fs::keeper::spawn::in_new_session(&mut c);
        let mut child = c.spawn().map_err(Error::io(&cmd[0]))?;
        tracing::info!(pid = child.id(), "started the Naiad daemon on {}", api.display());
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if self.daemon().status().is_ok() {
                // Reap it later without blocking: it lives on in its own session.
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Daemon(format!(
                    "it exited ({status}) at start; see {}",
                    self.cfg.daemon.log.display()
                )));
            }
            if Instant::now() > until {
                return Err(Error::Daemon(format!(
                    "no answer on {} 30 s after starting it; see {}",
                    api.display(),
                    self.cfg.daemon.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `host[:port]/repo[:tag|@digest]` (what the CRI plugin passes) → (host, repository).
/// A name without a registry host is Docker Hub's.
pub fn split_image_ref(s: &str) -> Option<(String, String)> {
    let s = s.strip_prefix("docker://").unwrap_or(s);
    let s = s.split_once('@').map_or(s, |(n, _)| n);
    let (first, rest) = match s.split_once('/') {
        Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
            (h.to_string(), r.to_string())
        }
        Some(_) => ("docker.io".to_string(), s.to_string()),
        None => ("docker.io".to_string(), format!("library/{s}")),
    };
    let repo = match rest.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r.to_string(),
        _ => rest,
    };
    (!repo.is_empty()).then_some((first, repo))
}

/// A daemon request that failed.
fn daemon_error(e: DaemonError) -> Error {
    Error::Daemon(e.to_string())
}

/// The mount points being mounted or unmounted: one operation at a time on each.
#[derive(Default)]
struct MountClaims {
    claimed: Mutex<HashSet<PathBuf>>,
    released: Condvar,
}

impl MountClaims {
    /// Waits until no one works on `mountpoint`, then claims it until the guard drops.
    fn claim(&self, mountpoint: &Path) -> MountClaim<'_> {
        let mut claimed = self.claimed.lock().expect("mount claims lock");
        while claimed.contains(mountpoint) {
            claimed = self.released.wait(claimed).expect("mount claims lock");
        }
        claimed.insert(mountpoint.to_path_buf());
        MountClaim { claims: self, mountpoint: mountpoint.to_path_buf() }
    }
}

/// A claim on one mount point ([`MountClaims::claim`]).
struct MountClaim<'a> {
    claims: &'a MountClaims,
    mountpoint: PathBuf,
}

impl Drop for MountClaim<'_> {
    fn drop(&mut self) {
        self.claims.claimed.lock().expect("mount claims lock").remove(&self.mountpoint);
        self.claims.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshotter(root: &Path) -> (Snapshotter, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let daemon = DaemonLink {
            api: root.join("no-daemon.sock"),
            spawn: None,
            log: root.join("daemon.log"),
        };
        let cfg = Config {
            root: root.to_path_buf(),
            daemon,
            cache_dir: root.join("cache"),
            insecure_registries: Vec::new(),
            mode: Mode::Auto,
        };
        (Snapshotter::open(cfg, rt.handle().clone()).unwrap(), rt)
    }

    #[test]
    fn ordinary_layers_follow_the_overlayfs_snapshotter() {
        let dir = tempfile::tempdir().unwrap();
        let (sn, _rt) = snapshotter(dir.path());
        let snaps = dir.path().join("snapshots");
        let fs = |id: u64| snaps.join(id.to_string()).join("fs").display().to_string();
        let m = sn.prepare("a", "", BTreeMap::new(), Kind::Active).unwrap();
        assert_eq!(
            m,
            vec![MountOut {
                kind: "bind".into(),
                source: fs(1),
                options: vec!["rw".into(), "rbind".into()]
            }]
        );
        std::fs::write(snaps.join("1/fs/f"), "layer 1").unwrap();
        sn.commit("l1", "a", BTreeMap::new()).unwrap();
        let m = sn.prepare("b", "l1", BTreeMap::new(), Kind::Active).unwrap();
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(
            m[0].options,
            vec![
                format!("workdir={}", snaps.join("2/work").display()),
                format!("upperdir={}", fs(2)),
                format!("lowerdir={}", fs(1))
            ]
        );
        let v = sn.prepare("v", "l1", BTreeMap::new(), Kind::View).unwrap();
        assert_eq!(
            v,
            vec![MountOut {
                kind: "bind".into(),
                source: fs(1),
                options: vec!["ro".into(), "rbind".into()]
            }]
        );
        assert_eq!(sn.mounts("b").unwrap(), m);
        assert!(sn.usage("l1").unwrap().0 > 0);

        // A directory no snapshot owns (a crash between disk and database) is cleaned up.
        std::fs::create_dir_all(snaps.join("99/fs")).unwrap();
        sn.cleanup().unwrap();
        assert!(!snaps.join("99").exists());
        assert!(
            snaps.join("1/fs/f").exists() && snaps.join("2").exists() && snaps.join("3").exists()
        );

        assert!(matches!(sn.remove("l1"), Err(Error::Invalid(_))), "l1 has children");
        for k in ["b", "v", "l1"] {
            sn.remove(k).unwrap();
        }
        assert_eq!(std::fs::read_dir(&snaps).unwrap().count(), 0);
        assert!(matches!(sn.mounts("b"), Err(Error::NotFound(_))));
    }

    /// A committed snapshot standing for a lazy image mounted at `root/images/NAME`.
    fn lazy_image(sn: &Snapshotter, key: &str) -> PathBuf {
        let mountpoint = sn.cfg.root.join("images").join(key);
        let remote = Remote::Image {
            source: format!("docker://127.0.0.1:1/{key}:1"),
            mountpoint: mountpoint.clone(),
            blobs: Vec::new(),
            insecure: false,
        };
        sn.store.create(key, Kind::Committed, "", BTreeMap::new(), Some(remote)).unwrap();
        mountpoint
    }

    #[test]
    fn an_image_being_mounted_delays_no_other_image_s_removal() {
        let dir = tempfile::tempdir().unwrap();
        let (sn, _rt) = snapshotter(dir.path());
        let slow = lazy_image(&sn, "slow");
        lazy_image(&sn, "other");
        let held = sn.mounting.claim(&slow);
        let started = Instant::now();
        std::thread::scope(|scope| {
            let removal = scope.spawn(|| sn.remove("other"));
            while !removal.is_finished() && started.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let done = removal.is_finished();
            drop(held);
            assert!(done, "the removal waited for another image's mount");
            removal.join().unwrap().unwrap();
        });
        assert!(matches!(sn.store.get("other"), Ok(None)));
        // The same mount point is still one operation at a time.
        let held = sn.mounting.claim(&slow);
        std::thread::scope(|scope| {
            let again = scope.spawn(|| drop(sn.mounting.claim(&slow)));
            std::thread::sleep(Duration::from_millis(200));
            assert!(!again.is_finished(), "a mount point was claimed twice");
            drop(held);
            again.join().unwrap();
        });
    }

    #[test]
    fn image_refs_split_like_containerd_names_them() {
        assert_eq!(
            split_image_ref("127.0.0.1:5000/app:v1"),
            Some(("127.0.0.1:5000".into(), "app".into()))
        );
        assert_eq!(
            split_image_ref("docker://reg.example/a/b@sha256:00"),
            Some(("reg.example".into(), "a/b".into()))
        );
        assert_eq!(split_image_ref("localhost/x"), Some(("localhost".into(), "x".into())));
        assert_eq!(
            split_image_ref("docker.io/library/busybox:latest"),
            Some(("docker.io".into(), "library/busybox".into()))
        );
        assert_eq!(
            split_image_ref("busybox"),
            Some(("docker.io".into(), "library/busybox".into()))
        );
        assert_eq!(split_image_ref("user/app:1"), Some(("docker.io".into(), "user/app".into())));
    }
}
