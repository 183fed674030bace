//! `naiad inspect`: what an image holds, or one entry in detail.

use crate::output::{human, open_bootstrap, print_json};
use anyhow::Result;
use naiad_format::bootstrap::{Bootstrap, ChunkSlot, Inode};
use naiad_format::digest::to_hex;
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

/// Summarize an image, or show one entry's inode and chunks with --path.
#[derive(clap::Args)]
pub struct Args {
    bootstrap: PathBuf,
    /// Show this entry (`/usr/bin/x`) in detail.
    #[arg(long)]
    path: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    bootstrap_bytes: u64,
    digester: &'static str,
    chunk_size: u32,
    files: u64,
    directories: u64,
    symlinks: u64,
    other_entries: u64,
    hardlinked_names: u64,
    file_bytes: u64,
    chunk_refs: u64,
    hole_chunks: u64,
    referenced_bytes: u64,
    unique_chunks: u64,
    unique_bytes: u64,
    /// referenced_bytes / unique_bytes: how many times each stored byte is used.
    dedup_ratio: f64,
    compressed_bytes: u64,
    blobs: Vec<BlobInfo>,
    prefetch: Vec<String>,
}

#[derive(Serialize)]
struct BlobInfo {
    digest: String,
    compressed_bytes: u64,
    view_bytes: u64,
    chunks: u32,
    compressor: &'static str,
}

#[derive(Serialize)]
struct EntryInfo {
    path: String,
    nid: u64,
    ino: u32,
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    nlink: u32,
    xattrs: Vec<(String, String)>,
    symlink_target: Option<String>,
    rdev: Option<(u32, u32)>,
    chunk_size: Option<u64>,
    chunks: Vec<ChunkInfo>,
}

#[derive(Serialize)]
struct ChunkInfo {
    index: u64,
    file_offset: u64,
    hole: bool,
    blob: Option<String>,
    view_offset: Option<u64>,
    size: Option<u32>,
    compressed_offset: Option<u64>,
    compressed_size: Option<u32>,
    digest: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let bs = open_bootstrap(&a.bootstrap)?;
    if let Some(path) = &a.path {
        let ino = bs.lookup(path.as_bytes())?;
        let info = entry(&bs, path, &ino)?;
        if a.json {
            print_json(&info)?;
        } else {
            print_entry(&info);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let s = summarize(&bs)?;
    if a.json {
        print_json(&s)?;
    } else {
        println!(
            "bootstrap: {} ({} chunks, {} digests)",
            human(s.bootstrap_bytes),
            human(u64::from(s.chunk_size)),
            s.digester
        );
        println!(
            "entries: {} files, {} directories, {} symlinks, {} other, {} extra hardlink names",
            s.files, s.directories, s.symlinks, s.other_entries, s.hardlinked_names
        );
        println!(
            "file data: {} in {} chunk references ({} holes)",
            human(s.file_bytes),
            s.chunk_refs,
            s.hole_chunks
        );
        println!(
            "unique chunks: {} holding {}; dedup ratio {:.2}; compressed {}",
            s.unique_chunks,
            human(s.unique_bytes),
            s.dedup_ratio,
            human(s.compressed_bytes)
        );
        for b in &s.blobs {
            println!(
                "blob {} {} compressed, {} view, {} chunks, {}",
                b.digest,
                human(b.compressed_bytes),
                human(b.view_bytes),
                b.chunks,
                b.compressor
            );
        }
        for p in &s.prefetch {
            println!("prefetch {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn summarize(bs: &Bootstrap) -> Result<Summary> {
    let ext = bs.extension();
    let mut s = Summary {
        bootstrap_bytes: bs.bytes().len() as u64,
        digester: ext.digester.name(),
        chunk_size: ext.chunk_size,
        files: 0,
        directories: 0,
        symlinks: 0,
        other_entries: 0,
        hardlinked_names: 0,
        file_bytes: 0,
        chunk_refs: 0,
        hole_chunks: 0,
        referenced_bytes: 0,
        unique_chunks: ext.chunks.len() as u64,
        unique_bytes: ext.chunks.iter().map(|c| u64::from(c.size)).sum(),
        dedup_ratio: 0.0,
        compressed_bytes: ext.blobs.iter().map(|b| b.compressed_size).sum(),
        blobs: ext
            .blobs
            .iter()
            .map(|b| BlobInfo {
                digest: to_hex(&b.digest),
                compressed_bytes: b.compressed_size,
                view_bytes: b.view_size,
                chunks: b.chunk_count,
                compressor: b.compressor.name(),
            })
            .collect(),
        prefetch: ext.prefetch.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect(),
    };
    let mut seen = HashSet::new();
    bs.walk(|_, _, ino| -> Result<()> {
        match ino.type_bits() {
            0o040000 => s.directories += 1,
            0o120000 => s.symlinks += 1,
            0o100000 => {
                if !seen.insert(ino.nid) {
                    s.hardlinked_names += 1;
                    return Ok(());
                }
                s.files += 1;
                s.file_bytes += ino.size;
                for i in 0..ino.chunk_count() {
                    match bs.chunk(ino, i)? {
                        ChunkSlot::Hole => s.hole_chunks += 1,
                        ChunkSlot::Data(r) => {
                            s.chunk_refs += 1;
                            s.referenced_bytes += u64::from(r.size);
                        }
                    }
                }
            }
            _ => s.other_entries += 1,
        }
        Ok(())
    })?;
    s.dedup_ratio =
        if s.unique_bytes == 0 { 1.0 } else { s.referenced_bytes as f64 / s.unique_bytes as f64 };
    Ok(s)
}

fn entry(bs: &Bootstrap, path: &str, ino: &Inode) -> Result<EntryInfo> {
    let ext = bs.extension();
    let mut chunks = Vec::new();
    if ino.is_reg() {
        for i in 0..ino.chunk_count() {
            let file_offset = i * ino.chunk_size();
            chunks.push(match bs.chunk(ino, i)? {
                ChunkSlot::Hole => ChunkInfo {
                    index: i,
                    file_offset,
                    hole: true,
                    blob: None,
                    view_offset: None,
                    size: None,
                    compressed_offset: None,
                    compressed_size: None,
                    digest: None,
                },
                ChunkSlot::Data(r) => ChunkInfo {
                    index: i,
                    file_offset,
                    hole: false,
                    blob: Some(to_hex(&ext.blobs[r.blob_index as usize].digest)),
                    view_offset: Some(r.view_offset),
                    size: Some(r.size),
                    compressed_offset: Some(r.compressed_offset),
                    compressed_size: Some(r.compressed_size),
                    digest: Some(format!("{}:{}", ext.digester.name(), to_hex(&r.digest))),
                },
            });
        }
    }
    Ok(EntryInfo {
        path: path.to_string(),
        nid: ino.nid,
        ino: ino.ino,
        mode: format!("{:o}", ino.mode),
        uid: ino.uid,
        gid: ino.gid,
        size: ino.size,
        mtime: ino.mtime,
        mtime_nsec: ino.mtime_nsec,
        nlink: ino.nlink,
        xattrs: bs
            .xattrs(ino)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), hex::encode(v)))
            .collect(),
        symlink_target: if ino.is_symlink() {
            Some(String::from_utf8_lossy(&bs.symlink_target(ino)?).into_owned())
        } else {
            None
        },
        rdev: matches!(ino.type_bits(), 0o020000 | 0o060000).then(|| ino.rdev()),
        chunk_size: ino.is_chunk_based().then(|| ino.chunk_size()),
        chunks,
    })
}

fn print_entry(e: &EntryInfo) {
    println!(
        "{}: nid {} ino {} mode {} uid {} gid {} size {} nlink {}",
        e.path, e.nid, e.ino, e.mode, e.uid, e.gid, e.size, e.nlink
    );
    println!("mtime {}.{:09}", e.mtime, e.mtime_nsec);
    for (k, v) in &e.xattrs {
        println!("xattr {k} = 0x{v}");
    }
    if let Some(t) = &e.symlink_target {
        println!("symlink -> {t}");
    }
    if let Some((ma, mi)) = e.rdev {
        println!("device {ma}:{mi}");
    }
    for c in &e.chunks {
        if c.hole {
            println!("chunk {} @{}: hole", c.index, c.file_offset);
        } else {
            println!(
                "chunk {} @{}: blob {} view {} size {} frame {}+{} {}",
                c.index,
                c.file_offset,
                c.blob.as_deref().unwrap_or(""),
                c.view_offset.unwrap_or(0),
                c.size.unwrap_or(0),
                c.compressed_offset.unwrap_or(0),
                c.compressed_size.unwrap_or(0),
                c.digest.as_deref().unwrap_or("")
            );
        }
    }
}
