//! Chunk processing: hashing, dedup, frame packing, compression and blob writing.
//!
//! Three stages, each on its own thread, so reading, hashing and compressing overlap:
//! 1. the source (the caller's thread) pushes [`ChunkJob`]s, which are batched;
//! 2. the *decider* hashes a batch in parallel (rayon), then decides *in order* what each
//!    chunk becomes: a reference to an identical chunk already stored or in the chunk
//!    dictionary, or a new chunk of the current blob, packed into a frame;
//! 3. the *writer* compresses finished frames in parallel (rayon) and appends them to the
//!    blob file in order, then seals the blob (TOC, trailer, sha256 name).
//!
//! Decisions are sequential, so the output is byte-identical for the same input whatever the
//! thread timing. Memory is bounded: each channel holds at most one batch (about
//! [`BATCH_BYTES`]) of chunks or frames.

use crate::chunk_dict::ChunkDict;
use crate::temp_path::TempPath;
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
use std::sync::Arc;
use std::thread::JoinHandle;

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
    /// Sealed new blobs by provisional id (a blob that would hold no chunk is never written).
    pub blobs: Vec<SealedBlob>,
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

/// What the decider hands the writer.
enum WriteMsg {
    /// Finished frames of the current blob, in order.
    Frames(Vec<Vec<u8>>),
    /// The current blob is complete: write its TOC with these chunks.
    Seal { chunks: Vec<BlobChunk>, view_size: u64 },
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
    pub dict: Option<Arc<ChunkDict>>,
}

impl Pipeline {
    /// Starts the decider and writer threads.
    pub fn start(cfg: PipelineConfig) -> Self {
        let (tx, rx) = sync_channel(1);
        let handle = std::thread::Builder::new()
            .name("naiad-decide".into())
            .spawn(move || decide(cfg, rx))
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
            // The decider stopped early: its error says why.
            return Err(self
                .join()
                .err()
                .unwrap_or_else(|| BuildError::Invalid("chunk pipeline stopped".into())));
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
            // Abandoned (an error elsewhere): stop the threads; temporary files are removed.
            let _ = self.join();
        }
    }
}

/// The writer thread: its input and its result.
type WriterThread = (SyncSender<WriteMsg>, JoinHandle<Result<Vec<SealedBlob>>>);

/// The decider's state.
struct Decider {
    cfg: PipelineConfig,
    seen: HashMap<Digest32, ChunkAddr>,
    /// Digest of a chunk of N zero bytes, by N.
    zero_digests: HashMap<u32, Digest32>,
    out: PipelineOutput,
    /// Provisional id of the blob being filled (= blobs sealed so far).
    blob_id: u32,
    blob: BlobLayout,
    writer: Option<WriterThread>,
}

/// Chunks and frames of the blob being filled, as decided (nothing compressed yet).
#[derive(Default)]
struct BlobLayout {
    chunks: Vec<BlobChunk>,
    view_size: u64,
    frames_closed: u32,
    open: Vec<u8>,
    open_chunks: Vec<usize>,
    ready: Vec<Vec<u8>>,
}

impl BlobLayout {
    /// Adds a new chunk; returns its offset in the uncompressed view.
    fn add(&mut self, data: Vec<u8>, digest: Digest32, frame_size: u32) -> u64 {
        let view_offset = self.view_size;
        let size = data.len() as u32;
        self.view_size += block_align(u64::from(size));
        let mut chunk = BlobChunk { digest, view_offset, frame_index: 0, frame_offset: 0, size };
        if size >= frame_size {
            self.close_open();
            chunk.frame_index = self.frames_closed;
            self.frames_closed += 1;
            self.ready.push(data);
        } else {
            if self.open.len() + data.len() > frame_size as usize {
                self.close_open();
            }
            chunk.frame_offset = self.open.len() as u32;
            self.open.extend_from_slice(&data);
            self.open_chunks.push(self.chunks.len());
        }
        self.chunks.push(chunk);
        view_offset
    }

    fn close_open(&mut self) {
        if !self.open.is_empty() {
            for &i in &self.open_chunks {
                self.chunks[i].frame_index = self.frames_closed;
            }
            self.frames_closed += 1;
            self.open_chunks.clear();
            self.ready.push(std::mem::take(&mut self.open));
        }
    }
}

fn decide(cfg: PipelineConfig, rx: Receiver<Msg>) -> Result<PipelineOutput> {
    let (wtx, wrx) = sync_channel(1);
    let (out_dir, compressor, digester) = (cfg.out_dir.clone(), cfg.compressor, cfg.digester);
    let writer = std::thread::Builder::new()
        .name("naiad-write".into())
        .spawn(move || write_blobs(&out_dir, compressor, digester, wrx))
        .expect("spawning a thread");
    let mut d = Decider {
        cfg,
        seen: HashMap::new(),
        zero_digests: HashMap::new(),
        out: PipelineOutput::default(),
        blob_id: 0,
        blob: BlobLayout::default(),
        writer: Some((wtx, writer)),
    };
    let result = (|| {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Batch(batch) => d.batch(batch)?,
                Msg::StartBlob => d.seal()?,
            }
        }
        d.seal()
    })();
    // Stop the writer and collect its blobs (or its error, which explains ours).
    let (wtx, handle) = d.writer.take().expect("writer running");
    drop(wtx);
    let sealed = match handle.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    };
    let sealed = sealed?;
    result?;
    d.out.blobs = sealed;
    Ok(d.out)
}

impl Decider {
    fn send(&mut self, msg: WriteMsg) -> Result<()> {
        let (tx, _) = self.writer.as_ref().expect("writer running");
        // If the writer stopped, its error is returned when it is joined.
        tx.send(msg).map_err(|_| BuildError::Invalid("blob writer stopped".into()))
    }

    /// Sends the current blob's remaining frames and its TOC, if it holds any chunk.
    fn seal(&mut self) -> Result<()> {
        if self.blob.chunks.is_empty() {
            return Ok(());
        }
        self.blob.close_open();
        let mut blob = std::mem::take(&mut self.blob);
        self.send(WriteMsg::Frames(std::mem::take(&mut blob.ready)))?;
        self.send(WriteMsg::Seal { chunks: blob.chunks, view_size: blob.view_size })?;
        self.blob_id += 1;
        Ok(())
    }

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
                    *self
                        .zero_digests
                        .entry(len as u32)
                        .or_insert_with(|| digester.digest(&vec![0u8; len]))
                }
            };
            let addr = if let Some(a) = self.seen.get(&d) {
                stats.dedup_hits += 1;
                *a
            } else {
                let a = if let Some(rec) = self.cfg.dict.as_ref().and_then(|dict| dict.get(&d)) {
                    stats.dict_hits += 1;
                    self.out
                        .dict_used
                        .entry(rec.blob_index)
                        .or_default()
                        .insert(rec.view_offset, *rec);
                    ChunkAddr {
                        blob: DICT_BLOB_BASE + rec.blob_index,
                        view_offset: rec.view_offset,
                    }
                } else {
                    stats.stored_chunks += 1;
                    stats.stored_bytes += len as u64;
                    let bytes = match job.data {
                        ChunkData::Bytes(b) => b,
                        ChunkData::Zeros(n) => vec![0; n as usize],
                    };
                    let view_offset = self.blob.add(bytes, d, self.cfg.frame_size);
                    ChunkAddr { blob: self.blob_id, view_offset }
                };
                self.seen.insert(d, a);
                a
            };
            self.out.assignments.push((job.node, job.index, addr));
        }
        let ready = std::mem::take(&mut self.blob.ready);
        if ready.is_empty() {
            return Ok(());
        }
        self.send(WriteMsg::Frames(ready))
    }
}

static ZEROS: [u8; 65536] = [0; 65536];

fn is_zero(data: &[u8]) -> bool {
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// The writer thread: compresses frames and writes blobs, one after the other.
fn write_blobs(
    dir: &Path,
    compressor: Compressor,
    digester: Digester,
    rx: Receiver<WriteMsg>,
) -> Result<Vec<SealedBlob>> {
    let mut sealed = Vec::new();
    let mut current: Option<BlobFile> = None;
    while let Ok(msg) = rx.recv() {
        match msg {
            WriteMsg::Frames(frames) => {
                if current.is_none() {
                    current = Some(BlobFile::create(dir)?);
                }
                current.as_mut().expect("created").append(frames, compressor)?;
            }
            WriteMsg::Seal { chunks, view_size } => {
                let blob = match current.take() {
                    Some(b) => b,
                    None => BlobFile::create(dir)?,
                };
                sealed.push(
                    blob.seal(Toc { digester, frames: Vec::new(), chunks, view_size }, compressor)?,
                );
            }
        }
    }
    Ok(sealed)
}

/// One blob being written to a temporary file in the output directory.
struct BlobFile {
    tmp: TempPath,
    file: BufWriter<File>,
    hasher: sha2::Sha256,
    written: u64,
    frames: Vec<Frame>,
}

impl BlobFile {
    fn create(dir: &Path) -> Result<Self> {
        let tmp = TempPath::new(dir)?;
        let file = File::create(&tmp.path).map_err(BuildError::io(&tmp.path))?;
        Ok(BlobFile {
            tmp,
            file: BufWriter::with_capacity(1 << 20, file),
            hasher: sha2::Sha256::new(),
            written: 0,
            frames: Vec::new(),
        })
    }

    /// Compresses frames in parallel and appends them in order.
    fn append(&mut self, frames: Vec<Vec<u8>>, compressor: Compressor) -> Result<()> {
        let packed: Vec<Option<Vec<u8>>> =
            frames.par_iter().map(|data| compress_frame(compressor, data)).collect();
        for (data, comp) in frames.iter().zip(packed) {
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

    /// Writes the TOC and trailer, syncs, and names the file by its sha256.
    fn seal(mut self, mut toc: Toc, compressor: Compressor) -> Result<SealedBlob> {
        toc.frames = std::mem::take(&mut self.frames);
        let tail = toc.encode_tail(self.written);
        self.write(&tail)?;
        let file = self
            .file
            .into_inner()
            .map_err(|e| BuildError::Io { path: self.tmp.path.clone(), cause: e.into_error() })?;
        file.sync_data().map_err(BuildError::io(&self.tmp.path))?;
        let digest: Digest32 = self.hasher.finalize().into();
        let name = self.tmp.path.with_file_name(digest::to_hex(&digest));
        self.tmp.persist(&name)?;
        Ok(SealedBlob { digest, compressed_size: self.written, toc, compressor })
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
            let c = z.get_or_insert_with(|| {
                zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context")
            });
            c.compress(data).ok()
        })?,
    };
    (out.len() < data.len()).then_some(out)
}
