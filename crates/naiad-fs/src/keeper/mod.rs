//! Keepers: small processes that hold what a lazy mount cannot lose when its server dies (a
//! fanotify group, a FUSE connection), so that a daemon restart or crash leaves readers
//! waiting instead of failing. [`spawn`] starts them and takes descriptors back from them,
//! [`proto`] is what they say over their sockets, [`fanotify`] and [`fuse`] are the two
//! keepers.

pub mod fanotify;
pub mod fuse;
pub mod proto;
pub mod spawn;

use std::path::{Path, PathBuf};

/// What a server needs to hand its mount to a keeper.
#[derive(Clone, Debug)]
pub struct Keep {
    /// Where keeper sockets and logs go.
    pub runtime_dir: PathBuf,
    /// The `naiad` executable (`naiad fuse-keeper`, `naiad fanotify-keeper`).
    pub exe: PathBuf,
}

/// `RUNTIME_DIR/<prefix>-<hash of mountpoint>.sock`: where a keeper of that mount listens.
fn socket(runtime_dir: &Path, prefix: &str, mountpoint: &Path) -> PathBuf {
    runtime_dir.join(format!("{prefix}-{}.sock", crate::erofs_mount::mount_tag(mountpoint)))
}
