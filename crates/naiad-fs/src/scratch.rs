//! Names for files and directories made next to another one for a moment (a copy written
//! before a rename, a private directory to bind a socket in).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `path` with `.<pid>-<n>` added, `n` new on every call: no two calls in any process on the
/// machine get the same name, so concurrent writers of one file never share a scratch file.
pub fn unique_sibling(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}-{n}", std::process::id()));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_call_names_another_sibling() {
        let p = std::path::Path::new("/run/x/a.boot");
        let (a, b) = (super::unique_sibling(p), super::unique_sibling(p));
        assert_ne!(a, b);
        assert_eq!(a.parent(), p.parent());
        assert!(a.to_string_lossy().starts_with("/run/x/a.boot."));
    }
}
