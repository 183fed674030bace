//! The daemon's table of active mounts, saved to its state file on every change, and
//! bringing the mounts of a daemon that died back ([`restore`]).

use crate::mount::{mount, views_dir, ActiveMount};
use crate::spec::Mode;
use crate::state::StateFile;
use crate::{DaemonError, Result};
use naiad_fs::erofs_mount::MountTable;
use naiad_storage::cache::ChunkCache;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The daemon's table of mounts, by mount point; with a [`StateFile`], every change is saved
/// so a restarted daemon can bring the mounts back ([`restore`]).
#[derive(Default)]
pub struct Mounts {
    table: Mutex<BTreeMap<PathBuf, Arc<ActiveMount>>>,
    /// Mount points a request is mounting now (see [`Mounts::claim`]).
    claimed: Mutex<std::collections::BTreeSet<PathBuf>>,
    state: Option<StateFile>,
}

/// A mount point claimed for a mount being made: no other request may mount there until it
/// is dropped (the mount failed) or its mount is [inserted](Mounts::insert).
pub struct Claim<'a> {
    mounts: &'a Mounts,
    mountpoint: PathBuf,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.mounts.claimed.lock().expect("claims lock").remove(&self.mountpoint);
    }
}

impl Mounts {
    /// A table saved to `state` on every change.
    pub fn persistent(state: StateFile) -> Self {
        Mounts { table: Mutex::default(), claimed: Mutex::default(), state: Some(state) }
    }

    /// Saves the table (under its lock, so saves follow the order of changes). A failed save
    /// is logged: the mounts work on, only a restart would not bring them back.
    fn save(&self, t: &BTreeMap<PathBuf, Arc<ActiveMount>>) {
        if let Some(st) = &self.state {
            if let Err(e) = st.save(&t.values().map(|m| &m.spec).collect::<Vec<_>>()) {
                tracing::warn!(error = %e, "saving the mount table failed");
            }
        }
    }

    /// Claims `mountpoint` for a mount about to be made: a conflict if it is mounted or
    /// being mounted, so of two requests for one mount point exactly one mounts, and the
    /// winner's mount is never touched by the other.
    pub fn claim(&self, mountpoint: &Path) -> Result<Claim<'_>> {
        let t = self.table.lock().expect("mounts lock");
        let mut claimed = self.claimed.lock().expect("claims lock");
        if t.contains_key(mountpoint) || !claimed.insert(mountpoint.to_path_buf()) {
            return Err(DaemonError::Conflict(format!(
                "{} is mounted or being mounted already",
                mountpoint.display()
            )));
        }
        Ok(Claim { mounts: self, mountpoint: mountpoint.to_path_buf() })
    }

    /// Adds a mount made under `claim` (its mount point).
    pub fn insert(&self, claim: Claim<'_>, m: ActiveMount) -> Arc<ActiveMount> {
        debug_assert!(claim.mountpoint == m.spec.mountpoint);
        let mut t = self.table.lock().expect("mounts lock");
        let m = Arc::new(m);
        t.insert(m.spec.mountpoint.clone(), m.clone());
        self.save(&t);
        drop(claim);
        m
    }

    /// Unmounts and removes. The image's own mount goes first, while everything still
    /// serves it: if it is busy (files open in it), nothing changes, and the caller gets the
    /// error, the mount and its spec kept.
    pub fn remove(&self, mountpoint: &Path) -> Result<()> {
        let held = self
            .get(mountpoint)
            .ok_or_else(|| DaemonError::NotMounted(mountpoint.display().to_string()))?;
        if held.is_mounted() {
            if let Err(e) = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::empty())
            {
                if held.is_mounted() {
                    return Err(DaemonError::Conflict(format!(
                        "{} cannot be unmounted: {e}{}; still mounted",
                        mountpoint.display(),
                        if e == rustix::io::Errno::BUSY { " (files are open in it)" } else { "" }
                    )));
                }
            }
        }
        let m = {
            let mut t = self.table.lock().expect("mounts lock");
            let Some(m) = t.remove(mountpoint) else {
                // Removed meanwhile by another request.
                return Err(DaemonError::NotMounted(mountpoint.display().to_string()));
            };
            self.save(&t);
            m
        };
        drop(held);
        m.unmount();
        self.forget_bootstrap(&m.spec);
        Ok(())
    }

    /// Removes the bootstrap `spec` kept in the runtime directory once no mount uses it (nor
    /// may: while a mount is being made, which may be of the same image, it is left for the
    /// next removal).
    fn forget_bootstrap(&self, spec: &crate::spec::MountSpec) {
        let Some(path) = &spec.bootstrap else { return };
        let t = self.table.lock().expect("mounts lock");
        let in_use = t.values().any(|m| m.spec.bootstrap.as_ref() == Some(path))
            || !self.claimed.lock().expect("claims lock").is_empty();
        if !in_use {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "removing a kept bootstrap");
                }
            }
        }
    }

    /// A mount by mount point.
    pub fn get(&self, mountpoint: &Path) -> Option<Arc<ActiveMount>> {
        self.table.lock().expect("mounts lock").get(mountpoint).cloned()
    }

    /// Every mount.
    pub fn all(&self) -> Vec<Arc<ActiveMount>> {
        self.table.lock().expect("mounts lock").values().cloned().collect()
    }

    /// Drops the mounts whose kernel mount went away (an external `umount`).
    pub fn reap(&self) {
        let table = MountTable::read();
        let gone: Vec<PathBuf> = self
            .all()
            .into_iter()
            .filter(|m| !m.spec.mode.is_mounted_in(&table, &m.spec.mountpoint))
            .map(|m| m.spec.mountpoint.clone())
            .collect();
        for p in gone {
            let _ = self.remove(&p);
        }
    }

    /// Unmounts everything (daemon shutdown).
    pub fn clear(&self) {
        let all: Vec<_> = {
            let mut t = self.table.lock().expect("mounts lock");
            let all = std::mem::take(&mut *t).into_values().collect();
            self.save(&t);
            all
        };
        for m in all {
            m.unmount();
            self.forget_bootstrap(&m.spec);
        }
    }
}

/// Brings back the mounts a previous daemon saved in `mounts`' state file and did not
/// unmount (it died). Each mount point still carries the dead daemon's mount (a FUSE mount
/// with no server, or EROFS over blob views with none): it is detached, so processes that
/// hold files open there keep the old mount (their reads fail), and the image is mounted
/// afresh with the same spec, its data served from the cache the dead daemon filled. Returns
/// the mount points restored and, for each that failed, the error (the spec is dropped).
pub async fn restore(
    mounts: &Mounts,
    cache: &Arc<ChunkCache>,
    runtime_dir: &Path,
) -> (Vec<PathBuf>, Vec<(PathBuf, DaemonError)>) {
    let specs = match mounts.state.as_ref().map(|s| s.load()) {
        Some(Ok(specs)) => specs,
        Some(Err(e)) => {
            return (
                Vec::new(),
                vec![(
                    mounts.state.as_ref().map(|s| s.path().to_path_buf()).unwrap_or_default(),
                    e,
                )],
            )
        }
        None => return (Vec::new(), Vec::new()),
    };
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for spec in specs {
        let mp = spec.mountpoint.clone();
        // A mount whose keeper lives is still in place, its readers waiting: the new server
        // takes it over.
        let kept = match spec.mode {
            Mode::Fanotify => naiad_fs::keeper::fanotify::keeper_alive(runtime_dir, &mp),
            Mode::Kernel => {
                naiad_fs::keeper::fuse::keeper_alive(runtime_dir, &views_dir(runtime_dir, &mp))
            }
            Mode::Fuse => naiad_fs::keeper::fuse::keeper_alive(runtime_dir, &mp),
            Mode::Auto | Mode::Local => false,
        };
        if !kept && spec.mode.is_mounted(&mp) {
            let _ = rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH);
        }
        let r = match mounts.claim(&mp) {
            Ok(claim) => match mount(spec, cache.clone(), runtime_dir, true).await {
                Ok(m) => {
                    mounts.insert(claim, m);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => ok.push(mp),
            Err(e) => failed.push((mp, e)),
        }
    }
    // Saves the table as restored (the failed specs are gone).
    mounts.save(&mounts.table.lock().expect("mounts lock"));
    (ok, failed)
}
