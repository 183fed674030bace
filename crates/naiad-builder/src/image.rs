//! A whole build: sources in, blobs and a bootstrap out.

use crate::chunk_pipeline::{Pipeline, PipelineConfig, SealedBlob, DICT_BLOB_BASE};
use crate::temp_path::TempPath;
use crate::tree_builder::TreeBuilder;
use crate::{dir_source, tar_source, BuildError, BuildOptions, Result};
use naiad_format::digest::to_hex;
use naiad_format::extension::{BlobEntry, ChunkRecord, Extension};
use naiad_format::tree::{ChunkAddr, NodeKind, Tree, ROOT};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Name of the bootstrap in an output directory.
pub const BOOTSTRAP_FILE_NAME: &str = "bootstrap";

/// What to build from.
pub enum Source {
    /// A directory tree.
    Dir(PathBuf),
    /// One or more layer tars, lowest first, merged with OCI whiteout rules.
    Layers(Vec<PathBuf>),
    /// One layer tar read from a stream (already decompressed), named `name` in messages.
    Stream { reader: Box<dyn std::io::Read + Send>, name: String },
}

/// What a build produced, for `--json` and the human summary.
#[derive(Clone, Debug, Serialize)]
pub struct BuildSummary {
    pub bootstrap: PathBuf,
    pub bootstrap_bytes: u64,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub other_entries: u64,
    /// Bytes of regular file data in the tree (hardlinked data once).
    pub file_bytes: u64,
    pub chunks: u64,
    /// All-zero chunks (sparse holes among them), stored once per length.
    pub zero_chunks: u64,
    pub dedup_chunks: u64,
    pub dict_chunks: u64,
    pub stored_chunks: u64,
    pub stored_bytes: u64,
    /// Compressed bytes of the blobs this build wrote.
    pub new_blob_bytes: u64,
    pub blobs: Vec<BlobSummary>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// One blob of the image.
#[derive(Clone, Debug, Serialize)]
pub struct BlobSummary {
    pub digest: String,
    pub compressed_bytes: u64,
    pub view_bytes: u64,
    pub chunks: u32,
    /// True for a blob of the chunk dictionary (not written by this build).
    pub from_dict: bool,
}

/// Builds `source` into `out_dir` (created if missing): one blob per layer (or one for a
/// directory) named by its sha256, and `out_dir/bootstrap`.
pub fn build(source: Source, mut opts: BuildOptions, out_dir: &Path) -> Result<BuildSummary> {
    let started = Instant::now();
    opts.validate()?;
    std::fs::create_dir_all(out_dir).map_err(BuildError::io(out_dir))?;
    let dict = opts.chunk_dict.take();
    let dict_blobs: Vec<BlobEntry> = dict.as_ref().map(|d| d.blobs().to_vec()).unwrap_or_default();
    let mut pipe = Pipeline::start(PipelineConfig {
        digester: opts.digester,
        compressor: opts.compressor,
        frame_size: opts.frame_size,
        out_dir: out_dir.to_path_buf(),
        dict,
    });
    let mut tb = TreeBuilder::new();
    let mut warnings = Vec::new();
    let layer_opts = tar_source::LayerOptions {
        chunk_size: opts.chunk_size,
        keep_whiteouts: opts.keep_whiteouts,
    };
    match source {
        Source::Dir(dir) => {
            dir_source::add_dir(&dir, &mut tb, &mut pipe, opts.chunk_size, &mut warnings)?
        }
        Source::Stream { reader, name } => {
            tar_source::add_layer(reader, &name, &mut tb, &mut pipe, &layer_opts, &mut warnings)?
        }
        Source::Layers(layers) => {
            for (i, layer) in layers.iter().enumerate() {
                if i > 0 {
                    pipe.start_blob()?;
                    tb.next_layer();
                }
                let reader = tar_source::open_layer(layer)?;
                let name = layer.display().to_string();
                tar_source::add_layer(
                    reader,
                    &name,
                    &mut tb,
                    &mut pipe,
                    &layer_opts,
                    &mut warnings,
                )?;
            }
        }
    }
    let out = pipe.finish()?;
    let mut tree = tb.into_tree();

    // Final blob table: new blobs that hold chunks, then the dictionary blobs referenced.
    let mut blobs = Vec::new();
    let mut chunks = Vec::new();
    let mut final_id: HashMap<u32, u32> = HashMap::new();
    let mut summaries = Vec::new();
    for (prov, sealed) in out.blobs.iter().enumerate() {
        let idx = blobs.len() as u32;
        final_id.insert(prov as u32, idx);
        chunks.extend(records_of(sealed, idx));
        blobs.push(BlobEntry {
            digest: sealed.digest,
            compressed_size: sealed.compressed_size,
            view_size: sealed.toc.view_size,
            chunk_count: sealed.toc.chunks.len() as u32,
            compressor: sealed.compressor,
        });
        summaries.push(BlobSummary {
            digest: to_hex(&sealed.digest),
            compressed_bytes: sealed.compressed_size,
            view_bytes: sealed.toc.view_size,
            chunks: sealed.toc.chunks.len() as u32,
            from_dict: false,
        });
    }
    let new_blob_bytes = blobs.iter().map(|b| b.compressed_size).sum();
    for (&dict_idx, used) in &out.dict_used {
        let idx = blobs.len() as u32;
        final_id.insert(DICT_BLOB_BASE + dict_idx, idx);
        let b = dict_blobs.get(dict_idx as usize).ok_or_else(|| {
            BuildError::Invalid("chunk dictionary references a missing blob".into())
        })?;
        chunks.extend(used.values().map(|r| ChunkRecord { blob_index: idx, ..*r }));
        summaries.push(BlobSummary {
            digest: to_hex(&b.digest),
            compressed_bytes: b.compressed_size,
            view_bytes: b.view_size,
            chunks: used.len() as u32,
            from_dict: true,
        });
        blobs.push(BlobEntry { chunk_count: used.len() as u32, ..b.clone() });
    }

    // Point every file at its chunks.
    let cs = u64::from(opts.chunk_size);
    for node in tree.nodes.iter_mut() {
        if let NodeKind::File(f) = &mut node.kind {
            f.chunks = vec![None; f.size.div_ceil(cs) as usize];
        }
    }
    for (node, index, a) in out.assignments {
        let addr = Some(ChunkAddr { blob: final_id[&a.blob], view_offset: a.view_offset });
        if let NodeKind::File(f) = &mut tree.nodes[node].kind {
            f.chunks[index as usize] = addr;
        }
    }

    let prefetch = resolve_prefetch(&tree, &opts.prefetch, &mut warnings);

    let ext = Extension {
        digester: opts.digester,
        chunk_size: opts.chunk_size,
        blobs,
        chunks,
        prefetch,
        block_checksums: Vec::new(),
    };
    let bytes = naiad_format::writer::write_bootstrap(&tree, &ext)?;
    let bootstrap = out_dir.join(BOOTSTRAP_FILE_NAME);
    write_atomically(&bootstrap, &bytes)?;

    let counts = count_entries(&tree);
    let s = out.stats;
    Ok(BuildSummary {
        bootstrap,
        bootstrap_bytes: bytes.len() as u64,
        files: counts.0,
        directories: counts.1,
        symlinks: counts.2,
        other_entries: counts.3,
        file_bytes: counts.4,
        chunks: s.chunks,
        zero_chunks: s.zero_chunks,
        dedup_chunks: s.dedup_hits,
        dict_chunks: s.dict_hits,
        stored_chunks: s.stored_chunks,
        stored_bytes: s.stored_bytes,
        new_blob_bytes,
        blobs: summaries,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Bootstrap chunk records of a new blob: each chunk with its frame's place in the blob.
fn records_of(sealed: &SealedBlob, blob_index: u32) -> impl Iterator<Item = ChunkRecord> + '_ {
    (0..sealed.toc.chunks.len()).map(move |i| sealed.toc.record(i, blob_index))
}

/// The prefetch paths that exist in `tree`, made absolute; the others become warnings.
pub(crate) fn resolve_prefetch(
    tree: &Tree,
    paths: &[Vec<u8>],
    warnings: &mut Vec<String>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in paths {
        let rel = p.strip_prefix(b"/").unwrap_or(p);
        match TreeBuilder::split_path(rel).ok().and_then(|c| lookup(tree, &c)) {
            Some(()) => out.push([b"/", rel].concat()),
            None => warnings.push(format!(
                "prefetch path {:?} is not in the image; skipped",
                String::from_utf8_lossy(p)
            )),
        }
    }
    out
}

fn lookup(tree: &Tree, comps: &[&[u8]]) -> Option<()> {
    let mut cur = ROOT;
    for c in comps {
        cur = *tree.children(cur)?.get(*c)?;
    }
    Some(())
}

/// (files, dirs, symlinks, other, file bytes) of the reachable tree, hardlinks once.
fn count_entries(tree: &Tree) -> (u64, u64, u64, u64, u64) {
    let mut seen = vec![false; tree.nodes.len()];
    let mut c = (0, 0, 0, 0, 0);
    let mut stack = vec![ROOT];
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut seen[id], true) {
            continue;
        }
        match &tree.nodes[id].kind {
            NodeKind::Dir(ch) => {
                c.1 += 1;
                stack.extend(ch.values());
            }
            NodeKind::File(f) => {
                c.0 += 1;
                c.4 += f.size;
            }
            NodeKind::Symlink(_) => c.2 += 1,
            _ => c.3 += 1,
        }
    }
    c
}

/// Writes a file under a temporary name, syncs it and renames it into place.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = TempPath::new(dir)?;
    let mut f = std::fs::File::create(&tmp.path).map_err(BuildError::io(&tmp.path))?;
    f.write_all(bytes).map_err(BuildError::io(&tmp.path))?;
    f.sync_data().map_err(BuildError::io(&tmp.path))?;
    tmp.persist(dest)
}
