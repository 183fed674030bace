//! The lazy mount modes, one module each, all reading through
//! [`naiad_storage::lazy::LazyBlob`]:
//!
//! * [`fanotify`]: the kernel's EROFS straight on the cache's frame files, filled on demand
//!   through fanotify pre-content events; nothing in user space on the data path once filled.
//! * [`kernel`]: the kernel's EROFS over FUSE blob-view files.
//! * [`fuse`]: the whole filesystem in user space.
//!
//! [`Mode`] names them, and the local mount of `naiad mount` (for the CLI, the daemon and its
//! API alike); [`LazyMount`] is a mounted image in any lazy mode.

pub mod fanotify;
pub mod fuse;
pub mod kernel;

use crate::erofs_mount::MountTable;
use crate::Result;
use std::path::Path;

/// How a mount reads its data: lazily in one of the three modes, or (`naiad mount` of a
/// bootstrap with local blobs) from whole blob views written to the cache first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The best this kernel supports: fanotify, else kernel, else fuse ([`auto_mode`]).
    Auto,
    /// EROFS in the kernel straight on the cache files, filled on demand through fanotify
    /// pre-content events: nothing in user space on the data path.
    Fanotify,
    /// EROFS in the kernel over FUSE blob-view files.
    Kernel,
    /// The whole filesystem in user space.
    Fuse,
    /// Not lazy: each blob's whole view is written to the cache once, then the kernel mounts
    /// EROFS on the views; no process stays behind. Only `naiad mount` of a bootstrap with
    /// local blob directories.
    Local,
}

impl Mode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [Mode; 5] = [Mode::Auto, Mode::Fanotify, Mode::Kernel, Mode::Fuse, Mode::Local];

    /// The mode's name, as flags, the API and the mount table spell it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Fanotify => "fanotify",
            Mode::Kernel => "kernel",
            Mode::Fuse => "fuse",
            Mode::Local => "local",
        }
    }

    /// The filesystem types a mount of this mode shows in the mount table: EROFS, or FUSE
    /// (`fuse` when root mounts it directly, `fuse.naiad` through `fusermount3`).
    pub fn mount_types(self) -> &'static [&'static str] {
        match self {
            Mode::Kernel | Mode::Fanotify | Mode::Local => &["erofs"],
            Mode::Fuse => &["fuse", "fuse.naiad"],
            Mode::Auto => &["erofs", "fuse", "fuse.naiad"],
        }
    }

    /// Whether `mountpoint` carries the mount a lazy mount of this mode makes, in `table`.
    pub fn is_mounted_in(self, table: &MountTable, mountpoint: &Path) -> bool {
        table.has(mountpoint, self.mount_types())
    }

    /// [`Mode::is_mounted_in`] the mount table as it is now.
    pub fn is_mounted(self, mountpoint: &Path) -> bool {
        self.is_mounted_in(&MountTable::read(), mountpoint)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Mode, String> {
        Mode::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<_> = Mode::ALL.iter().map(|m| m.name()).collect();
            format!("unknown mode {s:?} (one of {})", names.join(", "))
        })
    }
}

/// The mode [`Mode::Auto`] picks on this kernel for a cache in `cache_dir`: fanotify where
/// it has pre-content events and file-backed EROFS; else kernel mode where it has EROFS;
/// else fuse mode. With the reason when it is not fanotify.
pub fn auto_mode(cache_dir: &Path) -> (Mode, Option<String>) {
    match crate::fanotify::supported(cache_dir) {
        Ok(()) => (Mode::Fanotify, None),
        Err(why) if crate::erofs_mount::has_erofs() => {
            (Mode::Kernel, Some(format!("fanotify mode unavailable: {why}; using kernel mode")))
        }
        Err(why) => (
            Mode::Fuse,
            Some(format!("fanotify mode unavailable: {why}; no EROFS either: using fuse mode")),
        ),
    }
}

/// A mounted image in one of the modes; dropping it unmounts.
pub enum LazyMount {
    Fanotify(fanotify::FanotifyMount),
    Kernel(kernel::KernelMount),
    Fuse(crate::fuse::server::FuseServer),
}

impl LazyMount {
    /// The mode it is mounted in.
    pub fn mode(&self) -> Mode {
        match self {
            LazyMount::Fanotify(_) => Mode::Fanotify,
            LazyMount::Kernel(_) => Mode::Kernel,
            LazyMount::Fuse(_) => Mode::Fuse,
        }
    }

    /// Unmounts (the image, then whatever served it).
    pub fn unmount(self) -> Result<()> {
        match self {
            LazyMount::Fanotify(m) => m.unmount(),
            LazyMount::Kernel(m) => m.unmount(),
            LazyMount::Fuse(mut s) => s.stop(),
        }
    }
}
