//! Builds the merged tree from source entries, applying OCI layer rules and refusing hostile
//! paths.
//!
//! Rules:
//! * a path is relative to the image root; a leading `./` or `/` is **not** stripped
//!   silently: an absolute path or a `..` component is an error naming the entry;
//! * a path may not pass through a symlink (a later entry "writing through" a symlink
//!   would otherwise land outside the directory it claims to be in);
//! * a later entry for the same path replaces the earlier one, except that a directory
//!   over a directory only updates the metadata (its children stay);
//! * `.wh.NAME` removes `NAME` as it stands from earlier layers; `.wh..wh..opq` in a
//!   directory removes everything earlier layers put in it;
//! * a hardlink names an existing non-directory entry; a missing target is an error.

use naiad_format::tree::{FileData, Meta, Node, NodeId, NodeKind, Tree, ROOT};
use std::collections::BTreeMap;

/// Whiteout prefix of OCI layers.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Metadata of a directory that a source implies but never describes (a tar that holds
/// `a/b` without an entry for `a`).
pub fn implicit_dir_meta() -> Meta {
    Meta { perm: 0o755, uid: 0, gid: 0, mtime: 0, mtime_nsec: 0, xattrs: Vec::new() }
}

/// Builds a [`Tree`] one entry at a time.
pub struct TreeBuilder {
    tree: Tree,
    /// The layer that last created each node (for opaque directories).
    layer_of: Vec<u32>,
    layer: u32,
}

impl Default for TreeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeBuilder {
    /// A tree with an empty root directory.
    pub fn new() -> Self {
        TreeBuilder { tree: Tree::new(implicit_dir_meta()), layer_of: vec![0], layer: 0 }
    }

    /// Entries added from now on belong to the next layer.
    pub fn next_layer(&mut self) {
        self.layer += 1;
    }

    /// The tree so far.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The tree so far, mutable (to fill in file data).
    pub fn tree_mut(&mut self) -> &mut Tree {
        &mut self.tree
    }

    /// Finishes.
    pub fn into_tree(self) -> Tree {
        self.tree
    }

    /// Splits an entry path into components. Rejects absolute paths, `..`, NUL and
    /// over-long names; drops `.` components and a trailing `/`.
    pub fn split_path(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
        if raw.first() == Some(&b'/') {
            return Err("absolute path".into());
        }
        if raw.contains(&0) {
            return Err("path contains NUL".into());
        }
        let mut out = Vec::new();
        for c in raw.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err("path escapes the root ('..' component)".into()),
                c if c.len() > naiad_format::erofs::MAX_NAME_LEN => {
                    return Err("name longer than 255 bytes".into())
                }
                c => out.push(c),
            }
        }
        Ok(out)
    }

    /// Finds (or, with `create`, makes) the directory holding the last component.
    fn parent(&mut self, comps: &[&[u8]], create: bool) -> Result<Option<NodeId>, String> {
        let mut cur = ROOT;
        for (i, c) in comps.iter().enumerate() {
            let existing = self.tree.children(cur).and_then(|ch| ch.get(*c)).copied();
            cur = match existing {
                Some(id) => match &self.tree.nodes[id].kind {
                    NodeKind::Dir(_) => id,
                    NodeKind::Symlink(_) => {
                        return Err(format!(
                            "path passes through the symlink {:?}",
                            lossy(&comps[..=i])
                        ))
                    }
                    _ => return Err(format!("{:?} is not a directory", lossy(&comps[..=i]))),
                },
                None if create => {
                    let id = self.add_node(Node {
                        meta: implicit_dir_meta(),
                        kind: NodeKind::Dir(BTreeMap::new()),
                    });
                    self.tree.children_mut(cur).expect("cur is a directory").insert(c.to_vec(), id);
                    id
                }
                None => return Ok(None),
            };
        }
        Ok(Some(cur))
    }

    fn add_node(&mut self, node: Node) -> NodeId {
        self.layer_of.push(self.layer);
        self.tree.add(node)
    }

    /// Adds an entry at `path` (components from [`Self::split_path`]); an empty path sets the
    /// root's metadata. Returns the node id (the existing one when a directory is updated).
    pub fn insert(&mut self, comps: &[&[u8]], node: Node) -> Result<NodeId, String> {
        let Some((name, dirs)) = comps.split_last() else {
            if !matches!(node.kind, NodeKind::Dir(_)) {
                return Err("the root must be a directory".into());
            }
            self.tree.nodes[ROOT].meta = node.meta;
            return Ok(ROOT);
        };
        let parent = self.parent(dirs, true)?.expect("created");
        self.insert_at(parent, name, node)
    }

    /// Adds an entry named `name` in directory `parent`.
    pub fn insert_at(&mut self, parent: NodeId, name: &[u8], node: Node) -> Result<NodeId, String> {
        let existing = self.tree.children(parent).and_then(|c| c.get(name)).copied();
        if let Some(id) = existing {
            if matches!(self.tree.nodes[id].kind, NodeKind::Dir(_))
                && matches!(node.kind, NodeKind::Dir(_))
            {
                self.tree.nodes[id].meta = node.meta;
                self.layer_of[id] = self.layer;
                return Ok(id);
            }
        }
        let id = self.add_node(node);
        self.tree
            .children_mut(parent)
            .ok_or("parent is not a directory")?
            .insert(name.to_vec(), id);
        Ok(id)
    }

    /// Links an existing node under another name (a hardlink).
    pub fn link_at(&mut self, parent: NodeId, name: &[u8], target: NodeId) -> Result<(), String> {
        self.tree
            .children_mut(parent)
            .ok_or("parent is not a directory")?
            .insert(name.to_vec(), target);
        Ok(())
    }

    /// Adds a hardlink at `comps` to the existing entry at `target`.
    pub fn hardlink(&mut self, comps: &[&[u8]], target: &[&[u8]]) -> Result<NodeId, String> {
        let id = self
            .lookup(target)
            .ok_or_else(|| format!("hardlink target {:?} does not exist", lossy(target)))?;
        if matches!(self.tree.nodes[id].kind, NodeKind::Dir(_)) {
            return Err(format!("hardlink target {:?} is a directory", lossy(target)));
        }
        let (name, dirs) = comps.split_last().ok_or("hardlink at the root")?;
        if self.lookup(comps) == Some(id) {
            return Ok(id);
        }
        let parent = self.parent(dirs, true)?.expect("created");
        self.link_at(parent, name, id)?;
        Ok(id)
    }

    /// Looks a path up (no symlinks followed).
    pub fn lookup(&self, comps: &[&[u8]]) -> Option<NodeId> {
        let mut cur = ROOT;
        for c in comps {
            cur = *self.tree.children(cur)?.get(*c)?;
        }
        Some(cur)
    }

    /// Applies a whiteout entry `dir/.wh.NAME`: removes `dir/NAME` if an earlier layer made it.
    pub fn whiteout(&mut self, dirs: &[&[u8]], name: &[u8]) -> Result<(), String> {
        if name.is_empty() || name == b"." || name == b".." {
            return Err("whiteout of an invalid name".into());
        }
        let Some(parent) = self.parent(dirs, false)? else { return Ok(()) };
        let layer = self.layer;
        let layer_of = &self.layer_of;
        if let Some(children) = self.tree.children_mut(parent) {
            if children.get(name).is_some_and(|&id| layer_of[id] < layer) {
                children.remove(name);
            }
        }
        Ok(())
    }

    /// Applies `dir/.wh..wh..opq`: empties `dir` of what earlier layers put in it.
    pub fn opaque(&mut self, dirs: &[&[u8]]) -> Result<(), String> {
        let parent = self.parent(dirs, true)?.expect("created");
        let layer = self.layer;
        let layer_of = &self.layer_of;
        if let Some(children) = self.tree.children_mut(parent) {
            children.retain(|_, id| layer_of[*id] >= layer);
        }
        Ok(())
    }
}

/// A regular file node with no data yet (chunks are filled in when the build finishes).
pub fn file_node(meta: Meta, size: u64) -> Node {
    Node { meta, kind: NodeKind::File(FileData { size, chunks: Vec::new() }) }
}

/// Renders path components for messages.
pub fn lossy(comps: &[&[u8]]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        implicit_dir_meta()
    }

    fn dir() -> Node {
        Node { meta: meta(), kind: NodeKind::Dir(BTreeMap::new()) }
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert!(TreeBuilder::split_path(b"../etc/passwd").is_err());
        assert!(TreeBuilder::split_path(b"a/../../b").is_err());
        assert!(TreeBuilder::split_path(b"/etc/passwd").is_err());
        assert_eq!(TreeBuilder::split_path(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
    }

    #[test]
    fn writes_through_symlinks_are_refused() {
        let mut tb = TreeBuilder::new();
        tb.insert(&[b"link"], Node { meta: meta(), kind: NodeKind::Symlink(b"/etc".to_vec()) })
            .unwrap();
        let err = tb.insert(&[b"link", b"passwd"], file_node(meta(), 0)).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
    }

    #[test]
    fn whiteouts_and_opaque_dirs_follow_oci_rules() {
        let mut tb = TreeBuilder::new();
        tb.insert(&[b"d"], dir()).unwrap();
        tb.insert(&[b"d", b"old"], file_node(meta(), 0)).unwrap();
        tb.insert(&[b"gone"], file_node(meta(), 0)).unwrap();
        tb.next_layer();
        tb.insert(&[b"d", b"new"], file_node(meta(), 0)).unwrap();
        tb.opaque(&[b"d"]).unwrap();
        tb.whiteout(&[], b"gone").unwrap();
        assert!(tb.lookup(&[b"d", b"new"]).is_some());
        assert!(tb.lookup(&[b"d", b"old"]).is_none());
        assert!(tb.lookup(&[b"gone"]).is_none());
    }

    #[test]
    fn hardlink_to_missing_target_is_an_error() {
        let mut tb = TreeBuilder::new();
        let err = tb.hardlink(&[b"a"], &[b"missing"]).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
