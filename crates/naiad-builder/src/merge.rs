//! Merging per-layer bootstraps into one image.
//!
//! A converter builds every layer on its own (in parallel, and cached by layer digest) with
//! [`crate::BuildOptions::keep_whiteouts`], so each layer's bootstrap still holds its OCI
//! whiteout entries. This module replays those bootstraps lowest first through the same
//! [`TreeBuilder`] a multi-layer tar build uses, so the merged tree follows the same rules, and
//! writes one bootstrap whose blob table is the union of the layers' blobs.
//!
//! A directory a layer only implies (a tar holding `a/b` without `a/`) is stored with the
//! implicit metadata (0755, root, mtime 0, no xattrs); such a directory does not override the
//! metadata a lower layer gave the same directory, as in a tar merge.

use crate::image::resolve_prefetch;
use crate::tree_builder::{implicit_dir_meta, TreeBuilder, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::{BuildError, Result};
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::digest::Digest32;
use naiad_format::extension::{BlobEntry, ChunkRecord, Extension};
use naiad_format::tree::{ChunkAddr, FileData, Meta, Node, NodeId, NodeKind, Xattr};
use std::collections::{BTreeMap, HashMap};

/// What a merge produced.
#[derive(Debug)]
pub struct Merged {
    /// The bootstrap's bytes.
    pub bootstrap: Vec<u8>,
    /// The blob table, in device order.
    pub blobs: Vec<BlobEntry>,
    pub warnings: Vec<String>,
}

/// Merges layer bootstraps (lowest first) into one bootstrap.
pub fn merge_layers(layers: &[Bootstrap], prefetch: &[Vec<u8>]) -> Result<Merged> {
    let first =
        layers.first().ok_or_else(|| BuildError::Invalid("no layers to merge".into()))?.extension();
    let (digester, chunk_size) = (first.digester, first.chunk_size);
    let mut blobs: Vec<BlobEntry> = Vec::new();
    let mut blob_index: HashMap<Digest32, u32> = HashMap::new();
    let mut records: BTreeMap<(u32, u64), ChunkRecord> = BTreeMap::new();
    let mut tb = TreeBuilder::new();
    for (li, layer) in layers.iter().enumerate() {
        let ext = layer.extension();
        if ext.digester != digester || ext.chunk_size != chunk_size {
            return Err(BuildError::Invalid(format!(
                "layer {li} was built with other chunk options than layer 0"
            )));
        }
        if li > 0 {
            tb.next_layer();
        }
        let remap: Vec<u32> = ext
            .blobs
            .iter()
            .map(|b| {
                *blob_index.entry(b.digest).or_insert_with(|| {
                    blobs.push(b.clone());
                    blobs.len() as u32 - 1
                })
            })
            .collect();
        for c in &ext.chunks {
            let blob = remap[c.blob_index as usize];
            records.insert((blob, c.view_offset), ChunkRecord { blob_index: blob, ..*c });
        }
        replay(layer, li, &remap, &mut tb)?;
    }
    for (i, b) in blobs.iter_mut().enumerate() {
        b.chunk_count = records.range((i as u32, 0)..(i as u32 + 1, 0)).count() as u32;
    }
    let tree = tb.into_tree();
    let mut warnings = Vec::new();
    let prefetch = resolve_prefetch(&tree, prefetch, &mut warnings);
    let ext = Extension {
        digester,
        chunk_size,
        blobs: blobs.clone(),
        chunks: records.into_values().collect(),
        prefetch,
        block_checksums: Vec::new(),
    };
    let bootstrap = naiad_format::writer::write_bootstrap(&tree, &ext)?;
    Ok(Merged { bootstrap, blobs, warnings })
}

/// Replays one layer's entries into the tree builder.
fn replay(layer: &Bootstrap, li: usize, remap: &[u32], tb: &mut TreeBuilder) -> Result<()> {
    let mut links: HashMap<u64, NodeId> = HashMap::new();
    let implicit = implicit_dir_meta();
    layer.walk(|path, _ty, ino| -> Result<()> {
        let bad = |detail: String| BuildError::Entry {
            source_name: format!("layer {li}"),
            entry: String::from_utf8_lossy(path).into_owned(),
            detail,
        };
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
        if let Some((last, dirs)) = comps.split_last() {
            if *last == OPAQUE_MARKER {
                return tb.opaque(dirs).map_err(bad);
            }
            if let Some(target) = last.strip_prefix(WHITEOUT_PREFIX) {
                if !target.starts_with(WHITEOUT_PREFIX) {
                    tb.whiteout(dirs, target).map_err(bad)?;
                }
                return Ok(());
            }
        }
        if !ino.is_dir() && ino.nlink > 1 {
            if let Some(&id) = links.get(&ino.nid) {
                let (name, dirs) =
                    comps.split_last().ok_or_else(|| bad("hardlink at the root".into()))?;
                let parent =
                    tb.lookup(dirs).ok_or_else(|| bad("parent of a hardlink is missing".into()))?;
                return tb.link_at(parent, name, id).map_err(bad);
            }
        }
        let mut xattrs: Vec<Xattr> =
            layer.xattrs(ino)?.into_iter().map(|(name, value)| Xattr { name, value }).collect();
        xattrs.sort();
        let meta = Meta {
            perm: ino.mode & 0o7777,
            uid: ino.uid,
            gid: ino.gid,
            mtime: ino.mtime,
            mtime_nsec: ino.mtime_nsec,
            xattrs,
        };
        let kind = match ino.type_bits() {
            0o040000 => {
                if meta == implicit {
                    let existing = tb.lookup(&comps);
                    if existing.is_some_and(|id| tb.tree().children(id).is_some())
                        || comps.is_empty()
                    {
                        return Ok(());
                    }
                }
                NodeKind::Dir(BTreeMap::new())
            }
            0o100000 => {
                let mut chunks = Vec::with_capacity(ino.chunk_count() as usize);
                for i in 0..ino.chunk_count() {
                    chunks.push(match layer.chunk(ino, i)? {
                        ChunkSlot::Hole => None,
                        ChunkSlot::Data(r) => Some(ChunkAddr {
                            blob: remap[r.blob_index as usize],
                            view_offset: r.view_offset,
                        }),
                    });
                }
                NodeKind::File(FileData { size: ino.size, chunks })
            }
            0o120000 => NodeKind::Symlink(layer.symlink_target(ino)?),
            0o020000 => {
                let (major, minor) = ino.rdev();
                NodeKind::CharDev { major, minor }
            }
            0o060000 => {
                let (major, minor) = ino.rdev();
                NodeKind::BlockDev { major, minor }
            }
            0o010000 => NodeKind::Fifo,
            _ => NodeKind::Socket,
        };
        let id = tb.insert(&comps, Node { meta, kind }).map_err(bad)?;
        if !ino.is_dir() && ino.nlink > 1 {
            links.insert(ino.nid, id);
        }
        Ok(())
    })
}
