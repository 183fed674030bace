//! Chunk processing: hashing, dedup, frame packing, compression and blob writing.
//!
//! A source pushes [`ChunkJob`]s; they are batched and handed to a processing thread, so the
//! source keeps reading while a batch is processed. For each batch the processing thread
//! hashes every chunk in parallel (rayon), then decides *in order* what each chunk becomes
//! (a hole if it is all zeros, a reference to an identical chunk already stored or in the
//! chunk dictionary, or a new chunk of the current blob), then compresses the frames that
//! are complete in parallel and appends them to the blob in order. Decisions are sequential
//! so the output is the same for the same input whatever the thread timing.
//!
//! Memory is bounded: at most two batches ([`BATCH_BYTES`] each) are in flight, plus the
//! frames being compressed.

use crate::chunk_dict::ChunkDict;
use crate::{BuildError, Result};
use naiad_format::blob::{BlobChunk, Frame, Toc};
use naiad_format::compression::{Compressor, ZSTD_LEVEL};
use naiad_format::digest::{Digest32, Digester};
use naiad_format::extension::ChunkRecord;
use naiad_format::tree::{ChunkAddr, NodeId};
use naiad_format::{block_align, digest};
use rayon::prelude::*;
use sha2::Digest as _;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;
use crate::temp_path::TempPath;

/// Chunk bytes gathered before a batch is handed to the processing thread.
pub const BATCH_BYTES: usize = 16 << 20;
/// Chunks gathered before a batch is handed on, whatever their size.
pub const BATCH_CHUNKS: usize = 8192;
/// Provisional blob ids at or above this name a blob of the chunk dictionary.
pub const DICT_BLOB_BASE: u32 = 1 << 30;

/// One chunk of one file: chunk `index` of `node`.
#[derive(Debug)]
pub struct ChunkJob {
    pub node: NodeId,
    pub index: u64,
    pub data: ChunkData,
}

/// The bytes of a chunk.
#[derive(Debug)]
pub enum ChunkData {
    Bytes(Vec<u8>),
    /// This many zero bytes (a hole of a sparse source, never read).
    Zeros(u32),
}

impl ChunkData {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            ChunkData::Bytes(b) => b.len(),
            ChunkData::Zeros(n) => *n as usize,
        }
    }

    /// Whether the chunk is empty (never true for a chunk of a file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the pipeline decided for every chunk, and the blobs it wrote.
#[derive(Debug, Default)]
pub struct PipelineOutput {
    /// `(node, chunk index, address)`. Blob ids are provisional:
    /// `0..` new blobs in creation order, [`DICT_BLOB_BASE`]`+i` the dictionary's blob `i`.
    pub assignments: Vec<(NodeId, u64, ChunkAddr)>,
    /// Sealed new blobs by provisional id; `None` where a blob ended up with no chunk.
    pub blobs: Vec<Option<SealedBlob>>,
    /// Dictionary chunks referenced, by dictionary blob index and view offset.
    pub dict_used: BTreeMap<u32, BTreeMap<u64, ChunkRecord>>,
    pub stats: ChunkStats,
}

/// Counts of what happened to chunks.
#[derive(Clone, Debug, Default)]
pub struct ChunkStats {
    /// Chunks of file data seen (zero chunks included).
    pub chunks: u64,
    /// Bytes of file data seen.
    pub bytes: u64,
    /// All-zero chunks (holes of sparse files among them): they all reference one stored
    /// zero chunk per length.
    pub zero_chunks: u64,
    /// Chunks identical to one already stored in this image.
    pub dedup_hits: u64,
    /// Chunks found in the chunk dictionary.
    pub dict_hits: u64,
    /// Chunks stored in new blobs, and their uncompressed bytes.
    pub stored_chunks: u64,
    pub stored_bytes: u64,
}

/// A blob written to the output directory.
#[derive(Clone, Debug)]
pub struct SealedBlob {
    /// sha256 of the file, which is also its name (hex).
    pub digest: Digest32,
    pub compressed_size: u64,
    pub toc: Toc,
    pub compressor: Compressor,
}

enum Msg {
    Batch(Vec<ChunkJob>),
    StartBlob,
}

/// The running pipeline.
pub struct Pipeline {
    tx: Option<SyncSender<Msg>>,
    handle: Option<JoinHandle<Result<PipelineOutput>>>,
    batch: Vec<ChunkJob>,
    batch_bytes: usize,
}

/// Settings of the pipeline.
pub struct PipelineConfig {
    pub digester: Digester,
    pub compressor: Compressor,
    pub frame_size: u32,
    pub out_dir: PathBuf,
    pub dict: Option<ChunkDict>,
}

impl Pipeline {
    /// Starts the processing thread. The first blob is started at once.
    pub fn start(cfg: PipelineConfig) -> Self {
        let (tx, rx) = sync_channel(1);
        let handle = std::thread::Builder::new()
            .name("naiad-chunks".into())
            .spawn(move || process(cfg, rx))
            .expect("spawning a thread");
        Pipeline { tx: Some(tx), handle: Some(handle), batch: Vec::new(), batch_bytes: 0 }
    }

    /// Queues a chunk.
    pub fn push(&mut self, job: ChunkJob) -> Result<()> {
        if let ChunkData::Bytes(b) = &job.data {
            self.batch_bytes += b.len();
        }
        self.batch.push(job);
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_CHUNKS {
            self.flush()?;
        }
        Ok(())
    }

    /// Seals the current blob (if it holds any chunk) and starts a new one: one blob per layer.
    pub fn start_blob(&mut self) -> Result<()> {
        self.flush()?;
        self.send(Msg::StartBlob)
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.send(Msg::Batch(batch))
    }

    fn send(&mut self, msg: Msg) -> Result<()> {
        let tx = self.tx.as_ref().expect("pipeline is running");
        if tx.send(msg).is_err() {
            // The processing thread stopped early: its error says why.
            return Err(self.join().err().unwrap_or_else(|| BuildError::Invalid("chunk pipeline stopped".into())));
        }
        Ok(())
    }

    fn join(&mut self) -> Result<PipelineOutput> {
        self.tx = None;
        match self.handle.take().expect("joined once").join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Processes what is left, seals the last blob and returns everything decided.
    pub fn finish(mut self) -> Result<PipelineOutput> {
        self.flush()?;
        self.join()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.handle.is_some() {
            // Abandoned (an error elsewhere): stop the thread; its temporary blob is removed.
            let _ = self.join();
        }
    }
}

struct State {
    cfg: PipelineConfig,
    seen: HashMap<Digest32, ChunkAddr>,
    /// Digest of a chunk of N zero bytes, by N.
    zero_digests: HashMap<u32, Digest32>,
    current: BlobWriter,
    out: PipelineOutput,
}

fn process(cfg: PipelineConfig, rx: Receiver<Msg>) -> Result<PipelineOutput> {
    let current = BlobWriter::create(&cfg.out_dir, &cfg)?;
    let mut st = State { cfg, seen: HashMap::new(), zero_digests: HashMap::new(), current, out: PipelineOutput::default() };
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Batch(batch) => st.batch(batch)?,
            Msg::StartBlob => {
                if !st.current.chunks.is_empty() {
                    let next = BlobWriter::create(&st.cfg.out_dir, &st.cfg)?;
                    let done = std::mem::replace(&mut st.current, next);
                    st.out.blobs.push(done.seal()?);
                }
            }
        }
    }
    let last = st.current.seal()?;
    if last.is_some() || st.out.blobs.is_empty() {
        st.out.blobs.push(last);
    }
    Ok(st.out)
}

impl State {
    /// Decides every chunk of a batch. Zero chunks are not special in the image: they are
    /// ordinary chunks that deduplicate to one stored zero chunk per length, so every EROFS
    /// reader sees zeros (erofs-utils 1.5 mis-extracts `NULL_ADDR` holes) while `unpack`
    /// still recreates holes. Their digests are computed once per length.
    fn batch(&mut self, batch: Vec<ChunkJob>) -> Result<()> {
        let digester = self.cfg.digester;
        let digests: Vec<Option<Digest32>> = batch
            .par_iter()
            .map(|j| match &j.data {
                ChunkData::Bytes(b) if !is_zero(b) => Some(digester.digest(b)),
                _ => None,
            })
            .collect();
        for (job, d) in batch.into_iter().zip(digests) {
            let len = job.data.len();
            let stats = &mut self.out.stats;
            stats.chunks += 1;
            stats.bytes += len as u64;
            let d = match d {
                Some(d) => d,
                None => {
                    stats.zero_chunks += 1;
                    *self.zero_digests.entry(len as u32).or_insert_with(|| digester.digest(&vec![0u8; len]))
                }
            };
            let addr = if let Some(a) = self.seen.get(&d) {
                stats.dedup_hits += 1;
                *a
            } else {
                let a = if let Some(rec) = self.cfg.dict.as_ref().and_then(|dict| dict.get(&d)) {
                    stats.dict_hits += 1;
                    self.out.dict_used.entry(rec.blob_index).or_default().insert(rec.view_offset, *rec);
                    ChunkAddr { blob: DICT_BLOB_BASE + rec.blob_index, view_offset: rec.view_offset }
                } else {
                    stats.stored_chunks += 1;
                    stats.stored_bytes += len as u64;
                    let bytes = match job.data {
                        ChunkData::Bytes(b) => b,
                        ChunkData::Zeros(n) => vec![0; n as usize],
                    };
                    let view_offset = self.current.add(bytes, d);
                    ChunkAddr { blob: self.out.blobs.len() as u32, view_offset }
                };
                self.seen.insert(d, a);
                a
            };
            self.out.assignments.push((job.node, job.index, addr));
        }
        self.current.write_ready()
    }
}

static ZEROS: [u8; 65536] = [0; 65536];

fn is_zero(data: &[u8]) -> bool {
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// One blob being written to a temporary file in the output directory.
struct BlobWriter {
    tmp: TempPath,
    file: BufWriter<File>,
    hasher: sha2::Sha256,
    written: u64,
    compressor: Compressor,
    digester: Digester,
    frame_size: u32,
    frames: Vec<Frame>,
    chunks: Vec<BlobChunk>,
    view_size: u64,
    open: Vec<u8>,
    open_chunks: Vec<usize>,
    ready: Vec<(Vec<u8>, Vec<usize>)>,
}

impl BlobWriter {
    fn create(dir: &Path, cfg: &PipelineConfig) -> Result<Self> {
        let tmp = TempPath::new(dir)?;
        let file = File::create(&tmp.path).map_err(BuildError::io(&tmp.path))?;
        Ok(BlobWriter {
            tmp,
            file: BufWriter::with_capacity(1 << 20, file),
            hasher: sha2::Sha256::new(),
            written: 0,
            compressor: cfg.compressor,
            digester: cfg.digester,
            frame_size: cfg.frame_size,
            frames: Vec::new(),
            chunks: Vec::new(),
            view_size: 0,
            open: Vec::new(),
            open_chunks: Vec::new(),
            ready: Vec::new(),
        })
    }

    /// Adds a new chunk; returns its offset in the uncompressed view.
    fn add(&mut self, data: Vec<u8>, digest: Digest32) -> u64 {
        let view_offset = self.view_size;
        let size = data.len() as u32;
        self.view_size += block_align(u64::from(size));
        let idx = self.chunks.len();
        let mut chunk = BlobChunk { digest, view_offset, frame_index: 0, frame_offset: 0, size };
        if size >= self.frame_size {
            self.close_open();
            self.ready.push((data, vec![idx]));
        } else {
            if self.open.len() + data.len() > self.frame_size as usize {
                self.close_open();
            }
            chunk.frame_offset = self.open.len() as u32;
            self.open.extend_from_slice(&data);
            self.open_chunks.push(idx);
        }
        self.chunks.push(chunk);
        view_offset
    }

    fn close_open(&mut self) {
        if !self.open.is_empty() {
            let data = std::mem::take(&mut self.open);
            let chunks = std::mem::take(&mut self.open_chunks);
            self.ready.push((data, chunks));
        }
    }

    /// Compresses complete frames in parallel and appends them in order.
    fn write_ready(&mut self) -> Result<()> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let ready = std::mem::take(&mut self.ready);
        let compressor = self.compressor;
        let packed: Vec<Option<Vec<u8>>> = ready.par_iter().map(|(data, _)| compress_frame(compressor, data)).collect();
        for ((data, chunk_ids), comp) in ready.into_iter().zip(packed) {
            let frame_index = self.frames.len() as u32;
            for id in chunk_ids {
                self.chunks[id].frame_index = frame_index;
            }
            let (bytes, used) = match &comp {
                Some(c) => (c.as_slice(), compressor),
                None => (data.as_slice(), Compressor::None),
            };
            self.write(bytes)?;
            self.frames.push(Frame {
                compressed_offset: self.written - bytes.len() as u64,
                compressed_size: bytes.len() as u32,
                size: data.len() as u32,
                compressor: used,
            });
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.file.write_all(bytes).map_err(BuildError::io(&self.tmp.path))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the TOC, names the file by its sha256 and returns it; `None` (and no file) if
    /// the blob holds no chunk.
    fn seal(mut self) -> Result<Option<SealedBlob>> {
        self.close_open();
        self.write_ready()?;
        if self.chunks.is_empty() {
            return Ok(None);
        }
        let toc = Toc { digester: self.digester, frames: std::mem::take(&mut self.frames), chunks: std::mem::take(&mut self.chunks), view_size: self.view_size };
        Ok(Some(self.finish_with(toc)?))
    }

    fn finish_with(mut self, toc: Toc) -> Result<SealedBlob> {
        let tail = toc.encode_tail(self.written);
        self.write(&tail)?;
        let file = self.file.into_inner().map_err(|e| BuildError::Io { path: self.tmp.path.clone(), cause: e.into_error() })?;
        file.sync_data().map_err(BuildError::io(&self.tmp.path))?;
        let digest: Digest32 = self.hasher.finalize().into();
        let name = self.tmp.path.with_file_name(digest::to_hex(&digest));
        self.tmp.persist(&name)?;
        Ok(SealedBlob { digest, compressed_size: self.written, toc, compressor: self.compressor })
    }
}

thread_local! {
    static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses one frame; `None` when compression does not make it smaller (stored raw).
fn compress_frame(compressor: Compressor, data: &[u8]) -> Option<Vec<u8>> {
    let out = match compressor {
        Compressor::None => return None,
        Compressor::Lz4 => lz4_flex::block::compress(data),
        Compressor::Zstd => ZSTD.with(|z| {
            let mut z = z.borrow_mut();
            let c = z.get_or_insert_with(|| zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context"));
            c.compress(data).ok()
        })?,
    };
    (out.len() < data.len()).then_some(out)
}
