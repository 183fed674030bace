//! fanotify as the fanotify mode uses it: the system calls ([`sys`]) and whether this kernel
//! can run the mode at all ([`supported`]). The mode itself is [`crate::mode::fanotify`], the
//! process holding its group [`crate::keeper::fanotify`].

pub mod sys;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Whether this kernel can run the fanotify mode on files in `dir`: pre-content events
/// (Linux 6.14+, CONFIG_FANOTIFY_ACCESS_PERMISSIONS) and file-backed EROFS (6.12+). The error
/// says what is missing.
pub fn supported(dir: &Path) -> std::result::Result<(), String> {
    if !crate::erofs_mount::has_erofs() {
        return Err("the kernel has no EROFS".into());
    }
    let group = sys::init().map_err(|e| {
        format!("fanotify permission events are unavailable ({e}; needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS and CAP_SYS_ADMIN)")
    })?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let probe = probe_file(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let r = sys::mark(group.as_fd(), true, &probe);
    let _ = std::fs::remove_file(&probe);
    r.map_err(|e| {
        format!("this kernel has no fanotify pre-content events ({e}; Linux 6.14 or later, on a filesystem that supports them)")
    })
}

/// A new empty file in `dir`, unique per call (threads of one process may probe at once).
fn probe_file(dir: &Path) -> std::io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = dir.join(format!(".fanotify-probe-{}-{n}", std::process::id()));
    std::fs::File::create(&p)?;
    Ok(p)
}
