//! The snapshotter's metadata: one redb table of snapshots by key (committed snapshots by
//! name), each a JSON record. Every change is one redb write transaction, so a crash leaves
//! either the old or the new state, never half of one.

use crate::{Error, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// What a committed snapshot stands for when its content is not a directory of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Remote {
    /// A data blob layer of a Naiad image: empty, its files are in the image's bootstrap.
    Blob { digest: String },
    /// The bootstrap layer of a Naiad image: the whole image, mounted lazily at `mountpoint`.
    Image {
        /// The image reference the daemon mounts (pinned by manifest digest).
        source: String,
        mountpoint: PathBuf,
        /// The image's data blobs (digests), whose cache entries go when it is removed.
        blobs: Vec<String>,
        #[serde(default)]
        insecure: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    /// The parent's key (committed snapshots are keyed by name); empty for none.
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: (i64, u32),
    pub updated: (i64, u32),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<Remote>,
}

pub fn now() -> (i64, u32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path).map_err(|e| Error::db(path, e))?;
        let s = Store { db, path: path.to_path_buf() };
        // Create the tables so that reads of an empty database find them.
        s.write(|_, _| Ok(()))?;
        Ok(s)
    }

    fn dberr(&self, e: impl std::fmt::Display) -> Error {
        Error::db(&self.path, e)
    }

    /// Runs `f` in one write transaction, committed only if it returns Ok.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>, &mut redb::Table<&str, u64>) -> Result<T>,
    ) -> Result<T> {
        let tx = self.db.begin_write().map_err(|e| self.dberr(e))?;
        let out = {
            let mut snaps = tx.open_table(SNAPSHOTS).map_err(|e| self.dberr(e))?;
            let mut counters = tx.open_table(COUNTERS).map_err(|e| self.dberr(e))?;
            f(&mut snaps, &mut counters)?
        };
        tx.commit().map_err(|e| self.dberr(e))?;
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Result<Option<Snapshot>> {
        let tx = self.db.begin_read().map_err(|e| self.dberr(e))?;
        let t = tx.open_table(SNAPSHOTS).map_err(|e| self.dberr(e))?;
        let v = t.get(key).map_err(|e| self.dberr(e))?;
        v.map(|v| decode(key, v.value())).transpose()
    }

    /// The snapshot at `key`, or NotFound naming it.
    pub fn need(&self, key: &str) -> Result<Snapshot> {
        self.get(key)?.ok_or_else(|| Error::NotFound(format!("snapshot {key:?}")))
    }

    pub fn list(&self) -> Result<Vec<(String, Snapshot)>> {
        let tx = self.db.begin_read().map_err(|e| self.dberr(e))?;
        let t = tx.open_table(SNAPSHOTS).map_err(|e| self.dberr(e))?;
        let mut out = Vec::new();
        for r in t.iter().map_err(|e| self.dberr(e))? {
            let (k, v) = r.map_err(|e| self.dberr(e))?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Adds a snapshot under `key` with a new id; the parent must exist and be committed.
    pub fn create(
        &self,
        key: &str,
        kind: Kind,
        parent: &str,
        labels: BTreeMap<String, String>,
        remote: Option<Remote>,
    ) -> Result<Snapshot> {
        if key.is_empty() {
            return Err(Error::Invalid("a snapshot key must not be empty".into()));
        }
        self.write(|snaps, counters| {
            if snaps.get(key).map_err(|e| self.dberr(e))?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
            }
            if !parent.is_empty() {
                let p = snaps
                    .get(parent)
                    .map_err(|e| self.dberr(e))?
                    .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent:?}")))?;
                if decode(parent, p.value())?.kind != Kind::Committed {
                    return Err(Error::Invalid(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
            }
            let id =
                counters.get("next_id").map_err(|e| self.dberr(e))?.map(|v| v.value()).unwrap_or(1);
            counters.insert("next_id", id + 1).map_err(|e| self.dberr(e))?;
            let t = now();
            let s = Snapshot {
                id,
                kind,
                parent: parent.to_string(),
                labels,
                created: t,
                updated: t,
                remote,
            };
            snaps.insert(key, encode(&s).as_slice()).map_err(|e| self.dberr(e))?;
            Ok(s)
        })
    }

    /// Turns the active snapshot `key` into the committed snapshot `name`.
    pub fn commit(
        &self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Snapshot> {
        self.write(|snaps, _| {
            let mut s = match snaps.get(key).map_err(|e| self.dberr(e))? {
                Some(v) => decode(key, v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key:?}"))),
            };
            if s.kind != Kind::Active {
                return Err(Error::Invalid(format!("snapshot {key:?} is not active")));
            }
            if snaps.get(name).map_err(|e| self.dberr(e))?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {name:?}")));
            }
            s.kind = Kind::Committed;
            s.labels.extend(labels);
            s.updated = now();
            snaps.remove(key).map_err(|e| self.dberr(e))?;
            snaps.insert(name, encode(&s).as_slice()).map_err(|e| self.dberr(e))?;
            Ok(s)
        })
    }

    /// Replaces the labels (all of them, or only the keys in `fields`).
    pub fn update_labels(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        fields: &[String],
    ) -> Result<Snapshot> {
        self.write(|snaps, _| {
            let mut s = match snaps.get(key).map_err(|e| self.dberr(e))? {
                Some(v) => decode(key, v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key:?}"))),
            };
            if fields.is_empty() {
                s.labels = labels;
            } else {
                for f in fields {
                    let Some(l) = f.strip_prefix("labels.") else {
                        if f == "labels" {
                            s.labels = labels.clone();
                            continue;
                        }
                        return Err(Error::Invalid(format!(
                            "cannot update field {f:?} of a snapshot"
                        )));
                    };
                    match labels.get(l) {
                        Some(v) => s.labels.insert(l.to_string(), v.clone()),
                        None => s.labels.remove(l),
                    };
                }
            }
            s.updated = now();
            snaps.insert(key, encode(&s).as_slice()).map_err(|e| self.dberr(e))?;
            Ok(s)
        })
    }

    /// Removes `key`; refused while another snapshot has it as parent.
    pub fn remove(&self, key: &str) -> Result<Snapshot> {
        self.write(|snaps, _| {
            let s = match snaps.get(key).map_err(|e| self.dberr(e))? {
                Some(v) => decode(key, v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key:?}"))),
            };
            for r in snaps.iter().map_err(|e| self.dberr(e))? {
                let (k, v) = r.map_err(|e| self.dberr(e))?;
                if decode(k.value(), v.value())?.parent == key {
                    return Err(Error::Invalid(format!(
                        "snapshot {key:?} has a child, {:?}",
                        k.value()
                    )));
                }
            }
            snaps.remove(key).map_err(|e| self.dberr(e))?;
            Ok(s)
        })
    }
}

fn encode(s: &Snapshot) -> Vec<u8> {
    serde_json::to_vec(s).expect("a snapshot record serializes")
}

fn decode(key: &str, bytes: &[u8]) -> Result<Snapshot> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal(format!("snapshot record {key:?} is damaged: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_persist_and_keep_their_tree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let s = Store::open(&path).unwrap();
            let a = s.create("a", Kind::Active, "", BTreeMap::new(), None).unwrap();
            assert!(matches!(
                s.create("a", Kind::Active, "", BTreeMap::new(), None),
                Err(Error::AlreadyExists(_))
            ));
            assert!(
                matches!(
                    s.create("b", Kind::Active, "a", BTreeMap::new(), None),
                    Err(Error::Invalid(_))
                ),
                "parent must be committed"
            );
            let c = s.commit("a", "layer1", BTreeMap::from([("x".into(), "1".into())])).unwrap();
            assert_eq!(c.id, a.id);
            assert!(s.get("a").unwrap().is_none());
            let b = s.create("b", Kind::Active, "layer1", BTreeMap::new(), None).unwrap();
            assert_ne!(b.id, a.id);
            assert!(matches!(s.remove("layer1"), Err(Error::Invalid(_))), "has a child");
            assert!(matches!(
                s.create("c", Kind::View, "nope", BTreeMap::new(), None),
                Err(Error::NotFound(_))
            ));
        }
        let s = Store::open(&path).unwrap();
        let l = s.need("layer1").unwrap();
        assert_eq!(l.kind, Kind::Committed);
        assert_eq!(l.labels["x"], "1");
        let u = s
            .update_labels(
                "layer1",
                BTreeMap::from([("y".into(), "2".into())]),
                &["labels.y".into(), "labels.x".into()],
            )
            .unwrap();
        assert_eq!(u.labels, BTreeMap::from([("y".into(), "2".into())]));
        s.remove("b").unwrap();
        s.remove("layer1").unwrap();
        assert!(s.list().unwrap().is_empty());
        // Ids are never reused.
        let d = s.create("d", Kind::Active, "", BTreeMap::new(), None).unwrap();
        assert!(d.id > 2);
    }
}
