//! Walks a directory tree: every entry type, ownership, mode, nanosecond mtime, xattrs,
//! hardlinks (by device and inode number), and sparse files (holes are found with
//! `SEEK_DATA` and never read: a chunk wholly in a hole becomes a zero chunk).

use crate::chunk_pipeline::{ChunkData, ChunkJob, Pipeline};
use crate::tree_builder::{file_node, TreeBuilder};
use crate::{BuildError, Result};
use naiad_format::tree::{Meta, Node, NodeId, NodeKind, Xattr};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Adds the tree under `root` (the root's own metadata included).
pub fn add_dir(
    root: &Path,
    tb: &mut TreeBuilder,
    pipe: &mut Pipeline,
    chunk_size: u32,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let md = std::fs::symlink_metadata(root).map_err(BuildError::io(root))?;
    if !md.is_dir() {
        return Err(BuildError::Invalid(format!("{} is not a directory", root.display())));
    }
    let root_meta = meta_of(root, &md, warnings)?;
    tb.insert(&[], Node { meta: root_meta, kind: NodeKind::Dir(BTreeMap::new()) })
        .map_err(|d| entry_err(root, d))?;
    let mut links: HashMap<(u64, u64), NodeId> = HashMap::new();
    let mut stack: Vec<(PathBuf, NodeId)> = vec![(root.to_path_buf(), naiad_format::tree::ROOT)];
    while let Some((dir, dir_id)) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(BuildError::io(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(BuildError::io(&dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let md = std::fs::symlink_metadata(&path).map_err(BuildError::io(&path))?;
            let ft = md.file_type();
            let key = (md.dev(), md.ino());
            if !ft.is_dir() && md.nlink() > 1 {
                if let Some(&id) = links.get(&key) {
                    tb.link_at(dir_id, name.as_bytes(), id).map_err(|d| entry_err(&path, d))?;
                    continue;
                }
            }
            let meta = meta_of(&path, &md, warnings)?;
            let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
            let node = if ft.is_dir() {
                Node { meta, kind: NodeKind::Dir(BTreeMap::new()) }
            } else if ft.is_file() {
                file_node(meta, md.len())
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(BuildError::io(&path))?;
                Node { meta, kind: NodeKind::Symlink(target.as_os_str().as_bytes().to_vec()) }
            } else if ft.is_char_device() {
                Node { meta, kind: NodeKind::CharDev { major, minor } }
            } else if ft.is_block_device() {
                Node { meta, kind: NodeKind::BlockDev { major, minor } }
            } else if ft.is_fifo() {
                Node { meta, kind: NodeKind::Fifo }
            } else if ft.is_socket() {
                Node { meta, kind: NodeKind::Socket }
            } else {
                return Err(entry_err(&path, "unknown file type".into()));
            };
            let id =
                tb.insert_at(dir_id, name.as_bytes(), node).map_err(|d| entry_err(&path, d))?;
            if !ft.is_dir() && md.nlink() > 1 {
                links.insert(key, id);
            }
            if ft.is_file() && md.len() > 0 {
                push_file(&path, &md, id, chunk_size, pipe)?;
            } else if ft.is_dir() {
                subdirs.push((path, id));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

fn entry_err(path: &Path, detail: String) -> BuildError {
    BuildError::Entry { source_name: "directory".into(), entry: path.display().to_string(), detail }
}

/// Reads a regular file chunk by chunk into the pipeline; chunks that lie wholly in a hole
/// of a sparse file are passed on as zeros without being read.
fn push_file(
    path: &Path,
    md: &Metadata,
    node: NodeId,
    chunk_size: u32,
    pipe: &mut Pipeline,
) -> Result<()> {
    let file = File::open(path).map_err(BuildError::io(path))?;
    let size = md.len();
    let sparse = md.blocks() * 512 < size;
    let cs = u64::from(chunk_size);
    let mut index = 0u64;
    let mut next_data = 0u64;
    while index * cs < size {
        let off = index * cs;
        let len = cs.min(size - off);
        if sparse && next_data < off + len {
            next_data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(off)) {
                Ok(data) => data,
                Err(rustix::io::Errno::NXIO) => u64::MAX,
                Err(e) => return Err(BuildError::Io { path: path.into(), cause: e.into() }),
            };
        }
        if sparse && next_data >= off + len {
            pipe.push(ChunkJob { node, index, data: ChunkData::Zeros(len as u32) })?;
            index += 1;
            continue;
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, off).map_err(|e| {
            let source = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::new(e.kind(), "file shrank while it was being read")
            } else {
                e
            };
            BuildError::Io { path: path.into(), cause: source }
        })?;
        pipe.push(ChunkJob { node, index, data: ChunkData::Bytes(buf) })?;
        index += 1;
    }
    Ok(())
}

/// Metadata of one entry: mode, ids, mtime, xattrs (read without following symlinks).
fn meta_of(path: &Path, md: &Metadata, warnings: &mut Vec<String>) -> Result<Meta> {
    let mut xattrs = Vec::new();
    let names = match xattr::list(path) {
        Ok(n) => n.collect::<Vec<_>>(),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            Vec::new()
        }
        Err(e) => return Err(BuildError::Io { path: path.into(), cause: e }),
    };
    for name in names {
        let nb = name.as_bytes().to_vec();
        if naiad_format::writer::split_xattr_name(&nb).is_err() {
            warnings.push(format!(
                "{}: xattr {:?} skipped (namespace EROFS cannot store)",
                path.display(),
                name
            ));
            continue;
        }
        if let Some(value) = xattr::get(path, &name).map_err(BuildError::io(path))? {
            xattrs.push(Xattr { name: nb, value });
        }
    }
    xattrs.sort();
    Ok(Meta {
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        xattrs,
    })
}
