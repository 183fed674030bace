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
