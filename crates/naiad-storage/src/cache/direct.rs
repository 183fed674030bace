//! Direct I/O for whole-block reads of present data.
//!
//! Whole-block reads into a block-aligned buffer ([`BlockBuf`]: the kernel mode's blob-view
//! reads, 128 KiB and more) use direct I/O where the filesystem allows it: the data goes from
//! disk into the caller's buffer without a second copy in the page cache (the kernel caches it
//! already, in the view's pages), and without the page-cache readahead around each read
//! filling pages of the sparse file's holes with zeros. Small unaligned reads (the fuse mode's,
//! a file at a time) stay buffered: there that readahead brings in the next files' blocks, and
//! it is faster.

use naiad_format::BLOCK_SIZE_BYTES;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// A zeroed byte buffer that starts on a block boundary, as direct I/O needs.
pub struct BlockBuf {
    raw: Vec<u8>,
    at: usize,
    len: usize,
}

impl BlockBuf {
    pub fn new(len: usize) -> Self {
        let b = BLOCK_SIZE_BYTES as usize;
        let raw = vec![0u8; len + b];
        let at = (b - raw.as_ptr() as usize % b) % b;
        BlockBuf { raw, at, len }
    }

    /// Whether a direct read of `buf` at `offset` can go straight into `buf`.
    pub(crate) fn fits(buf: &[u8], offset: u64) -> bool {
        let b = BLOCK_SIZE_BYTES as usize;
        (buf.as_ptr() as usize).is_multiple_of(b)
            && buf.len().is_multiple_of(b)
            && offset.is_multiple_of(BLOCK_SIZE_BYTES)
    }
}

impl std::ops::Deref for BlockBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.at..self.at + self.len]
    }
}

impl std::ops::DerefMut for BlockBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + self.len]
    }
}

/// A file's direct-I/O descriptor, opened on first use (none if its filesystem refuses it).
#[derive(Debug, Default)]
pub(crate) struct DirectFile(OnceLock<Option<File>>);

impl DirectFile {
    /// Whether the descriptor was opened.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.0.get().is_some_and(Option::is_some)
    }

    /// Reads `buf` at `offset` of `path` directly, if `buf` and the range are block aligned,
    /// the filesystem allows it and no direct read failed before (`failed`, shared by the
    /// files of one blob); false if not done, and the caller reads through the page cache.
    pub(crate) fn read(
        &self,
        path: &Path,
        failed: &AtomicBool,
        buf: &mut [u8],
        offset: u64,
    ) -> bool {
        if !BlockBuf::fits(buf, offset) || failed.load(Ordering::Relaxed) {
            return false;
        }
        let Some(direct) = self.0.get_or_init(|| {
            OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(path)
                .ok()
        }) else {
            return false;
        };
        match direct.read_exact_at(buf, offset) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "direct read failed; reading through the page cache from now on");
                failed.store(true, Ordering::Relaxed);
                false
            }
        }
    }
}
