//! The trust boundary between images: hostile images, and what one can never do to another
//! that shares a node's daemon and cache.

use naiad_format::extension::{self, block_checksum, Extension};
use naiad_format::BLOCK_SIZE_BYTES;
use std::path::{Path, PathBuf};

/// The lazy modes this kernel has: fanotify (where it has it), kernel and fuse.
pub fn lazy_modes() -> Vec<&'static str> {
    let mut m = vec!["kernel", "fuse"];
    match naiad_fs::fanotify::supported(&std::env::temp_dir()) {
        Ok(()) => m.insert(0, "fanotify"),
        Err(why) => eprintln!("fanotify mode not tested here: {why}"),
    }
    m
}

/// A `naiad daemon` with its work directory `work` (API at `work/run/api.sock`), stopped
/// when dropped.
pub struct Daemon {
    child: std::process::Child,
    work: PathBuf,
    pub sock: PathBuf,
}

impl Daemon {
    pub fn start(work: &Path) -> Daemon {
        let child = crate::support::start_daemon(work);
        Daemon { child, work: work.to_path_buf(), sock: work.join("run/api.sock") }
    }

    /// Kills it with SIGKILL (no chance to tidy up) and starts the next one.
    pub fn kill9_and_restart(&mut self) {
        crate::support::kill9(&mut self.child);
        self.child = crate::support::start_daemon(&self.work);
    }

    /// Kills it with SIGKILL, leaving it dead.
    pub fn kill9(&mut self) {
        crate::support::kill9(&mut self.child);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bootstrap of the EROFS part `img` and the extension `ext`, with the block checksums and
/// the trailer's digest made to agree (what a hostile image does; it needs no key).
pub fn reseal(mut img: Vec<u8>, mut ext: Extension) -> Vec<u8> {
    ext.block_checksums = img.chunks(BLOCK_SIZE_BYTES as usize).map(block_checksum).collect();
    let ext_bytes = ext.encode();
    let ext_offset = img.len() as u64;
    img.extend_from_slice(&ext_bytes);
    img.extend_from_slice(&extension::encode_trailer(ext_offset, ext_bytes.len() as u64));
    extension::seal(&mut img);
    img
}
mod api;
mod bootstrap;
mod cache;
mod exposure;
mod network;
mod sockets;
