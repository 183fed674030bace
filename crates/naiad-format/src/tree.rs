//! The in-memory filesystem tree a bootstrap is written from.
//!
//! Builders fill a [`Tree`]; [`crate::writer`] lays it out as EROFS. Nodes that are no
//! longer reachable from the root (removed by a whiteout, say) are simply not written.

use std::collections::BTreeMap;

/// Index of a node in [`Tree::nodes`].
pub type NodeId = usize;

/// One extended attribute, with its full name (`user.foo`, `security.capability`, ...).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Metadata every entry has. EROFS keeps a single timestamp per inode, so only the mtime is
/// kept (atime and ctime read back as the mtime).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`); the type comes from
    /// the [`NodeKind`].
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Sorted by name; names unique.
    pub xattrs: Vec<Xattr>,
}

/// Where a chunk of a file's data lives: a blob (index into the image's blob table) and the
/// chunk's offset in that blob's uncompressed view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkAddr {
    pub blob: u32,
    pub view_offset: u64,
}

/// A regular file's data: chunk `i` covers bytes `[i*chunk_size, min((i+1)*chunk_size, size))`.
/// `None` is a hole that reads as zeros.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileData {
    pub size: u64,
    pub chunks: Vec<Option<ChunkAddr>>,
}

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Children by name (no `.` or `..`).
    Dir(BTreeMap<Vec<u8>, NodeId>),
    File(FileData),
    Symlink(Vec<u8>),
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

impl NodeKind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(&self) -> u32 {
        match self {
            NodeKind::Dir(_) => 0o040000,
            NodeKind::File(_) => 0o100000,
            NodeKind::Symlink(_) => 0o120000,
            NodeKind::CharDev { .. } => 0o020000,
            NodeKind::BlockDev { .. } => 0o060000,
            NodeKind::Fifo => 0o010000,
            NodeKind::Socket => 0o140000,
        }
    }
}

/// A node: metadata plus kind. A node referenced from several directory entries is a
/// hardlink; directories must have exactly one parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub meta: Meta,
    pub kind: NodeKind,
}

/// A whole tree. Node 0 is the root directory.
#[derive(Clone, Debug)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// The root's node id.
pub const ROOT: NodeId = 0;

impl Tree {
    /// A tree holding only a root directory with the given metadata.
    pub fn new(root_meta: Meta) -> Self {
        Tree { nodes: vec![Node { meta: root_meta, kind: NodeKind::Dir(BTreeMap::new()) }] }
    }

    /// Adds a node (not yet linked into any directory) and returns its id.
    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The children of a directory node, or `None` if it is not a directory.
    pub fn children(&self, id: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.nodes.get(id)?.kind {
            NodeKind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// Mutable children of a directory node.
    pub fn children_mut(&mut self, id: NodeId) -> Option<&mut BTreeMap<Vec<u8>, NodeId>> {
        match &mut self.nodes.get_mut(id)?.kind {
            NodeKind::Dir(c) => Some(c),
            _ => None,
        }
    }
}
