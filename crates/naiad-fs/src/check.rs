//! `check`: verifies a bootstrap's structure and, with its blobs, every chunk.
//!
//! The report lists every problem found rather than stopping at the first, and names what is
//! wrong in the user's terms: a path in the image, a blob digest and a chunk offset, or a
//! damaged bootstrap block and the entries it holds.

use crate::unpack::chunk_reader;
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::extension;
use naiad_format::BLOCK_SIZE_BYTES;
use naiad_storage::blob_store::BlobDirs;
use naiad_storage::verify;
use std::collections::HashMap;

/// The outcome of a check.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub entries: u64,
    pub files: u64,
    pub chunk_refs: u64,
    pub blobs_checked: u64,
    pub chunks_verified: u64,
    /// Everything found wrong; empty means the image is sound.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether nothing was found wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks `bytes` as a bootstrap and, with `blobs`, verifies every blob it references.
pub fn check(bytes: Vec<u8>, blobs: Option<&BlobDirs>) -> CheckReport {
    let mut report = CheckReport::default();
    let sealed = extension::verify_seal(&bytes);
    let bs = match Bootstrap::open_unverified(bytes) {
        Ok(bs) => bs,
        Err(e) => {
            report.problems.push(format!("bootstrap: {e}"));
            if let Err(seal) = sealed {
                if seal.to_string() != e.to_string() {
                    report.problems.push(format!("bootstrap: {seal}"));
                }
            }
            return report;
        }
    };
    if let Err(e) = sealed {
        report.problems.push(format!("bootstrap: {e}"));
        locate_damage(&bs, &mut report);
    }
    let walked = bs.walk(|path, _ty, ino| {
        report.entries += 1;
        let shown = if path.is_empty() {
            "/".to_string()
        } else {
            String::from_utf8_lossy(path).into_owned()
        };
        let mut problem =
            |e: naiad_format::FormatError| report.problems.push(format!("{shown}: {e}"));
        if let Err(e) = bs.xattrs(ino) {
            problem(e);
        }
        if ino.is_symlink() {
            if let Err(e) = bs.symlink_target(ino) {
                problem(e);
            }
        }
        if ino.is_reg() {
            report.files += 1;
            for i in 0..ino.chunk_count() {
                match bs.chunk(ino, i) {
                    Ok(ChunkSlot::Data(_)) => report.chunk_refs += 1,
                    Ok(ChunkSlot::Hole) => {}
                    Err(e) => {
                        problem(e);
                        break;
                    }
                }
            }
        }
        Ok::<(), naiad_format::FormatError>(())
    });
    if let Err(e) = walked {
        report.problems.push(e.to_string());
    }
    if let Some(dirs) = blobs {
        check_blobs(&bs, dirs, &mut report);
        if report.ok() {
            // Every chunk of every file read back through the same path unpack uses.
            if let Err(e) = read_all_files(&bs, dirs) {
                report.problems.push(e.to_string());
            }
        }
    }
    report
}

fn check_blobs(bs: &Bootstrap, dirs: &BlobDirs, report: &mut CheckReport) {
    let ext = bs.extension();
    for (i, b) in ext.blobs.iter().enumerate() {
        let result = (|| {
            let file = dirs.open(&b.digest)?;
            let toc = file.toc()?;
            verify::cross_check(&file, &toc, ext.blob_chunks(i as u32), b.view_size)?;
            verify::for_each_verified_chunk(&file, &toc, |_, _| Ok(()))
        })();
        match result {
            Ok(c) => {
                report.blobs_checked += 1;
                report.chunks_verified += c.chunks;
            }
            // Storage errors name the blob already.
            Err(e) => report.problems.push(e.to_string()),
        }
    }
}

fn read_all_files(bs: &Bootstrap, dirs: &BlobDirs) -> crate::Result<()> {
    let mut reader = chunk_reader(bs, dirs)?;
    bs.walk(|path, _, ino| -> crate::Result<()> {
        if ino.is_reg() {
            crate::unpack::for_each_chunk(bs, &mut reader, ino, |_, _| Ok(()))
                .map_err(|e| e.at(path))?;
        }
        Ok(())
    })
}

/// Maps damaged bootstrap blocks to the entries whose metadata they hold.
fn locate_damage(bs: &Bootstrap, report: &mut CheckReport) {
    let damaged = bs.damaged_blocks();
    if damaged.is_empty() {
        report.problems.push("bootstrap: the damage lies in the Naiad extension or trailer".into());
        return;
    }
    let mut owners: HashMap<u64, Vec<String>> = HashMap::new();
    let _ = bs.walk(|path, _, ino| {
        let shown = if path.is_empty() {
            "/".to_string()
        } else {
            String::from_utf8_lossy(path).into_owned()
        };
        let r = ino.metadata_range(bs);
        let meta_blocks = r.start / BLOCK_SIZE_BYTES..r.end.div_ceil(BLOCK_SIZE_BYTES);
        for b in meta_blocks.chain(ino.data_blocks()) {
            if damaged.contains(&b) {
                owners.entry(b).or_default().push(shown.clone());
            }
        }
        Ok::<(), naiad_format::FormatError>(())
    });
    for b in damaged {
        let who = match owners.get(&b) {
            Some(paths) => paths.join(", "),
            None if b == 0 => "the superblock and device table".into(),
            None => "no reachable entry".into(),
        };
        report.problems.push(format!(
            "bootstrap block {b} (bytes {}..{}) is damaged: it holds {who}",
            b * BLOCK_SIZE_BYTES,
            (b + 1) * BLOCK_SIZE_BYTES
        ));
    }
}
