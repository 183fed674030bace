//! The daemon's mount table on disk, so a daemon that died (`kill -9`, a crash, an OOM kill)
//! brings its mounts back when it starts again.
//!
//! `RUNTIME_DIR/daemon-mounts.json` holds the [`MountSpec`] of every mount the daemon serves;
//! it is rewritten (temp file, fsync, rename) whenever a mount is added or removed, so it is
//! always one complete table. A clean shutdown unmounts everything and leaves it empty. A
//! spec never holds credentials (they come from the serving process's own configuration), so
//! the file holds none either.
//!
//! `RUNTIME_DIR/daemon.lock` is held (flock) by the running daemon, so a second daemon on the
//! same runtime directory is refused instead of fighting over the same mounts.

use crate::spec::MountSpec;
use crate::{DaemonError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The mount table file of one runtime directory.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The table in `runtime_dir`.
    pub fn new(runtime_dir: &Path) -> Self {
        StateFile { path: runtime_dir.join("daemon-mounts.json") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved specs; none if the file does not exist. A file that does not parse is an
    /// error naming it (it is left for inspection, never overwritten unread).
    pub fn load(&self) -> Result<Vec<MountSpec>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DaemonError::io(self.path.display())(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            DaemonError::Invalid(format!("{}: not a mount table: {e}", self.path.display()))
        })
    }

    /// Replaces the table with `specs`, atomically.
    pub fn save(&self, specs: &[&MountSpec]) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(DaemonError::io(dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let json =
            serde_json::to_vec_pretty(specs).map_err(|e| DaemonError::Invalid(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(DaemonError::io(self.path.display()))
    }
}

/// An exclusive hold on a runtime directory; released when dropped (or when the process dies).
pub struct RuntimeLock {
    _file: std::fs::File,
}

impl RuntimeLock {
    /// Takes `runtime_dir/daemon.lock`, or fails naming the daemon that holds it.
    pub fn acquire(runtime_dir: &Path) -> Result<RuntimeLock> {
        std::fs::create_dir_all(runtime_dir).map_err(DaemonError::io(runtime_dir.display()))?;
        let path = runtime_dir.join("daemon.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(DaemonError::io(path.display()))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(DaemonError::Invalid(format!(
                "another naiad daemon (pid {}) uses {}",
                holder.trim(),
                runtime_dir.display()
            )));
        }
        file.set_len(0)
            .and_then(|_| write!(file, "{}", std::process::id()))
            .map_err(DaemonError::io(path.display()))?;
        Ok(RuntimeLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Mode;

    fn spec(mp: &str) -> MountSpec {
        serde_json::from_value(
            serde_json::json!({ "source": "docker://h/r:t", "mountpoint": mp, "mode": "fuse" }),
        )
        .unwrap()
    }

    #[test]
    fn table_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateFile::new(dir.path());
        assert!(st.load().unwrap().is_empty());
        let (a, b) = (spec("/a"), spec("/b"));
        st.save(&[&a, &b]).unwrap();
        let back = st.load().unwrap();
        assert_eq!(
            back.iter().map(|s| s.mountpoint.clone()).collect::<Vec<_>>(),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(back[0].mode, Mode::Fuse);
        st.save(&[]).unwrap();
        assert!(st.load().unwrap().is_empty());
    }

    #[test]
    fn corrupt_table_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateFile::new(dir.path());
        std::fs::write(st.path(), b"{not json").unwrap();
        let e = st.load().unwrap_err().to_string();
        assert!(e.contains("daemon-mounts.json") && e.contains("not a mount table"), "{e}");
    }

    #[test]
    fn second_daemon_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = RuntimeLock::acquire(dir.path()).unwrap();
        let e = RuntimeLock::acquire(dir.path()).err().expect("second lock refused").to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(held);
        RuntimeLock::acquire(dir.path()).unwrap();
    }
}
