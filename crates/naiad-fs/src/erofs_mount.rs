//! Mounting a bootstrap with the kernel's EROFS, file-backed (Linux >= 6.12), one `device`
//! per blob view.
//!
//! The new mount API (`fsopen`/`fsconfig`/`fsmount`/`move_mount`) is used so that each
//! device path is its own option: the legacy `mount(2)` data string is limited to one page,
//! which an image with many layers would overflow. util-linux's `mount(8)` cannot be used at
//! all: it turns a regular-file source into a loop device, and then `device=` fails.

use crate::{FsError, Result};
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, unmount, FsMountFlags,
    FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};
use std::path::{Path, PathBuf};

/// What a mount lets its files do beyond being read. An image mounted on the host for a user
/// gets neither (`nosuid,nodev`, the default): a hostile image's setuid binaries and device
/// nodes are inert there. A container's root filesystem needs both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exposure {
    /// Setuid and setgid bits take effect.
    pub setuid: bool,
    /// Device nodes open their devices.
    pub devices: bool,
}

impl Exposure {
    /// What a container's root filesystem needs: both.
    pub const CONTAINER: Exposure = Exposure { setuid: true, devices: true };

    /// The mount attributes of a read-only mount with this exposure.
    pub fn attrs(self) -> MountAttrFlags {
        let mut a = MountAttrFlags::MOUNT_ATTR_RDONLY;
        if !self.setuid {
            a |= MountAttrFlags::MOUNT_ATTR_NOSUID;
        }
        if !self.devices {
            a |= MountAttrFlags::MOUNT_ATTR_NODEV;
        }
        a
    }

    /// The FUSE mount options saying the same.
    pub fn fuse_options(self) -> [fuser::MountOption; 2] {
        use fuser::MountOption as O;
        [
            if self.setuid { O::Suid } else { O::NoSuid },
            if self.devices { O::Dev } else { O::NoDev },
        ]
    }
}

/// Mounts `bootstrap` read-only at `mountpoint` with `devices` (absolute paths, in blob order),
/// its files exposed as `exposure` says, from the moment it appears.
pub fn mount_erofs(
    bootstrap: &Path,
    devices: &[PathBuf],
    mountpoint: &Path,
    exposure: Exposure,
) -> Result<()> {
    let abs = |p: &Path| std::path::absolute(p).map_err(FsError::io(p));
    let source = abs(bootstrap)?;
    let fail = |what: &str, e: rustix::io::Errno| {
        FsError::Invalid(format!(
            "mounting {} at {}: {what}: {e}",
            source.display(),
            mountpoint.display()
        ))
    };
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
        fsconfig_set_string(&fs, "device", d.as_os_str())
            .map_err(|e| fail(&format!("device {}", d.display()), e))?;
    }
    fsconfig_create(&fs).map_err(|e| {
        fail(
            "creating the filesystem (needs a kernel with file-backed EROFS, CONFIG_EROFS_FS_BACKED_BY_FILE, and a valid image; see dmesg)",
            e,
        )
    })?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, exposure.attrs())
        .map_err(|e| fail("fsmount", e))?;
    move_mount(&mnt, "", rustix::fs::CWD, mountpoint, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .map_err(|e| fail("move_mount", e))?;
    Ok(())
}

/// Unmounts `mountpoint`.
pub fn umount(mountpoint: &Path) -> Result<()> {
    unmount(mountpoint, UnmountFlags::empty())
        .map_err(|e| FsError::Io { path: mountpoint.into(), cause: e.into() })
}

/// Whether `mountpoint` carries a mount of one of `fs_types` (from /proc/self/mountinfo).
pub fn has_mount(mountpoint: &Path, fs_types: &[&str]) -> bool {
    MountTable::read().has(mountpoint, fs_types)
}

/// The mounts of this process's mount namespace, as (mount point, filesystem type), read
/// once: on a host with thousands of mounts, checking many mount points against one reading
/// costs one parse, not one each.
pub struct MountTable(Vec<(String, String)>);

impl MountTable {
    /// Reads /proc/self/mountinfo (empty if it cannot be read).
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|info| Self::parse(&info))
            .unwrap_or(MountTable(Vec::new()))
    }

    /// Mountinfo lines: the mount point is the fifth field, the filesystem type the first
    /// after the `-` that ends the optional fields.
    fn parse(info: &str) -> Self {
        let mounts = info
            .lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                let sep = fields.iter().position(|f| *f == "-")?;
                Some((unescape(fields.get(4)?), (*fields.get(sep + 1)?).to_string()))
            })
            .collect();
        MountTable(mounts)
    }

    /// Whether `mountpoint` carries a mount of one of `fs_types`.
    pub fn has(&self, mountpoint: &Path, fs_types: &[&str]) -> bool {
        let want = mountpoint.to_string_lossy();
        self.0.iter().any(|(m, t)| *m == want && fs_types.contains(&t.as_str()))
    }
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
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|f| f.lines().any(|l| l.split_whitespace().last() == Some("erofs")))
        || fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_reads_mount_points_and_types() {
        let info = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    40 27 0:40 / /mnt/my\\040image rw,relatime shared:9 master:2 - erofs /boot.img ro\n\
                    41 27 0:41 / /run/views rw - fuse.naiad naiad-views ro\n\
                    broken line\n";
        let t = MountTable::parse(info);
        assert!(
            t.has(Path::new("/mnt/my image"), &["erofs"]),
            "escaped space, optional fields skipped"
        );
        assert!(!t.has(Path::new("/mnt/my image"), &["fuse"]), "another type");
        assert!(t.has(Path::new("/run/views"), &["fuse", "fuse.naiad"]));
        assert!(!t.has(Path::new("/run"), &["fuse.naiad"]), "a prefix is not the mount point");
        assert!(t.has(Path::new("/proc"), &["proc"]));
    }
}
