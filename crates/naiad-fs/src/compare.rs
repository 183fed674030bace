//! Comparing two images entry by entry: paths, types, metadata and file contents (read and
//! verified through each image's own chunks, so images built with other chunk options
//! compare equal when their trees are).

use crate::unpack::{chunk_reader, for_each_chunk};
use crate::Result;
use naiad_format::bootstrap::Bootstrap;
use naiad_storage::blob_store::BlobDirs;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, PartialEq, Eq)]
struct EntryFacts {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    size: u64,
    rdev: Option<(u32, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// blake3 of a file's contents, or a symlink's target.
    content: String,
    /// Index of the first path with the same inode (hardlinks), if shared.
    link: Option<Vec<u8>>,
}

fn facts(bs: &Bootstrap, dirs: &BlobDirs) -> Result<BTreeMap<Vec<u8>, EntryFacts>> {
    let mut reader = chunk_reader(bs, dirs)?;
    let mut out = BTreeMap::new();
    let mut first: HashMap<u64, Vec<u8>> = HashMap::new();
    bs.walk(|path, _, ino| -> Result<()> {
        let mut xattrs = bs.xattrs(ino)?;
        xattrs.sort();
        let content = if ino.is_reg() {
            let mut h = blake3::Hasher::new();
            let mut pos = 0u64;
            for_each_chunk(bs, &mut reader, ino, |off, data| {
                if off > pos {
                    h.update(&vec![0u8; (off - pos) as usize]);
                }
                h.update(data);
                pos = off + data.len() as u64;
                Ok(())
            })
            .map_err(|e| e.at(path))?;
            if ino.size > pos {
                h.update(&vec![0u8; (ino.size - pos) as usize]);
            }
            h.finalize().to_hex().to_string()
        } else if ino.is_symlink() {
            String::from_utf8_lossy(&bs.symlink_target(ino)?).into_owned()
        } else {
            String::new()
        };
        let link = if !ino.is_dir() && ino.nlink > 1 {
            Some(first.entry(ino.nid).or_insert_with(|| path.to_vec()).clone())
        } else {
            None
        };
        out.insert(
            path.to_vec(),
            EntryFacts {
                mode: ino.mode,
                uid: ino.uid,
                gid: ino.gid,
                mtime: (ino.mtime, ino.mtime_nsec),
                size: if ino.is_dir() { 0 } else { ino.size },
                rdev: matches!(ino.type_bits(), 0o020000 | 0o060000).then(|| ino.rdev()),
                xattrs,
                content,
                link,
            },
        );
        Ok(())
    })?;
    Ok(out)
}

/// Every difference between two images' trees, as lines naming the path and what differs.
pub fn compare_images(
    a: &Bootstrap,
    a_dirs: &BlobDirs,
    b: &Bootstrap,
    b_dirs: &BlobDirs,
) -> Result<Vec<String>> {
    let fa = facts(a, a_dirs)?;
    let fb = facts(b, b_dirs)?;
    let mut diffs = Vec::new();
    let show = |p: &[u8]| {
        if p.is_empty() {
            "/".to_string()
        } else {
            String::from_utf8_lossy(p).into_owned()
        }
    };
    for (path, ea) in &fa {
        match fb.get(path) {
            None => diffs.push(format!("{}: only in the first image", show(path))),
            Some(eb) if eb != ea => {
                diffs.push(format!("{}: differs: {ea:?} vs {eb:?}", show(path)))
            }
            Some(_) => {}
        }
    }
    for path in fb.keys().filter(|p| !fa.contains_key(*p)) {
        diffs.push(format!("{}: only in the second image", show(path)));
    }
    Ok(diffs)
}
