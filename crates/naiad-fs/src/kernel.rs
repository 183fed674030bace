//! Mounting a bootstrap with the kernel's EROFS, file-backed (Linux >= 6.12), one `device`
//! per blob view.
//!
//! The new mount API (`fsopen`/`fsconfig`/`fsmount`/`move_mount`) is used so that each
//! device path is its own option: the legacy `mount(2)` data string is limited to one page,
//! which an image with many layers would overflow. util-linux's `mount(8)` cannot be used at
//! all: it turns a regular-file source into a loop device, and then `device=` fails.

use crate::{FsError, Result};
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, unmount, FsMountFlags, FsOpenFlags, MountAttrFlags,
    MoveMountFlags, UnmountFlags,
};
use std::path::{Path, PathBuf};

/// Mounts `bootstrap` read-only at `mountpoint` with `devices` (absolute paths, in blob order).
pub fn mount_erofs(bootstrap: &Path, devices: &[PathBuf], mountpoint: &Path) -> Result<()> {
    let abs = |p: &Path| std::path::absolute(p).map_err(FsError::io(p));
    let source = abs(bootstrap)?;
    let fail = |what: &str, e: rustix::io::Errno| FsError::Invalid(format!("mounting {} at {}: {what}: {e}", source.display(), mountpoint.display()));
    let fs = fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| {
        if e == rustix::io::Errno::NODEV {
            FsError::Invalid("this kernel has no EROFS support (modprobe erofs?)".into())
        } else {
            fail("fsopen", e)
        }
    })?;
    fsconfig_set_string(&fs, "source", source.as_os_str()).map_err(|e| fail("source", e))?;
    for d in devices {
        let d = abs(d)?;
        fsconfig_set_string(&fs, "device", d.as_os_str()).map_err(|e| fail(&format!("device {}", d.display()), e))?;
    }
    fsconfig_create(&fs).map_err(|e| {
        fail(
            "creating the filesystem (needs a kernel with file-backed EROFS, CONFIG_EROFS_FS_BACKED_BY_FILE, and a valid image; see dmesg)",
            e,
        )
    })?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::MOUNT_ATTR_RDONLY).map_err(|e| fail("fsmount", e))?;
    move_mount(&mnt, "", rustix::fs::CWD, mountpoint, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH).map_err(|e| fail("move_mount", e))?;
    Ok(())
}

/// Unmounts `mountpoint`.
pub fn umount(mountpoint: &Path) -> Result<()> {
    unmount(mountpoint, UnmountFlags::empty()).map_err(|e| FsError::Io { path: mountpoint.into(), cause: e.into() })
}

/// Whether `mountpoint` carries a mount of one of `fs_types` (from /proc/self/mountinfo).
pub fn has_mount(mountpoint: &Path, fs_types: &[&str]) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = mountpoint.to_string_lossy();
    info.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-");
        fields.get(4).is_some_and(|m| unescape(m) == want) && sep.and_then(|s| fields.get(s + 1)).is_some_and(|t| fs_types.contains(t))
    })
}

/// A short name for a mount point (16 hex digits of its path's sha256), for the files that
/// belong to a mount: keeper sockets, blob-view directories, logs.
pub fn mount_tag(mountpoint: &Path) -> String {
    hex::encode(&naiad_format::digest::sha256(mountpoint.as_os_str().as_encoded_bytes())[..8])
}

/// Whether `mountpoint` carries an EROFS mount.
pub fn is_erofs_mounted(mountpoint: &Path) -> bool {
    has_mount(mountpoint, &["erofs"])
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Whether the kernel has EROFS, or can load it (`fsopen` loads the module on demand).
pub fn has_erofs() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.lines().any(|l| l.split_whitespace().last() == Some("erofs")))
        || fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).is_ok()
}
