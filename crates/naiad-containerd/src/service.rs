//! The snapshots gRPC service containerd calls as a proxy plugin: each call runs the
//! blocking [`Snapshotter`] logic (database, mounts, the daemon) on tokio's blocking pool.

use crate::api::snapshots::{
    self as pb,
    snapshots_server::{Snapshots, SnapshotsServer},
};
use crate::api::types::Mount;
use crate::snapshotter::{MountOut, Snapshotter};
use crate::store::{Kind, Snapshot};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct Service {
    sn: Arc<Snapshotter>,
}

/// Serves the snapshotter on `address` (mode 0600) until `shutdown` completes.
pub async fn serve(
    sn: Arc<Snapshotter>,
    address: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir.display()))?;
    }
    let listener = crate::bind_unix(address).map_err(Error::io(address.display()))?;
    let routes = tonic::service::Routes::new(SnapshotsServer::new(Service { sn }));
    crate::serve_unix(listener, routes, shutdown)
        .await
        .map_err(|e| Error::Internal(format!("serving {}: {e}", address.display())))
}

impl Service {
    async fn run<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&Snapshotter) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        let sn = self.sn.clone();
        let out = tokio::task::spawn_blocking(move || f(&sn))
            .await
            .map_err(|e| Status::internal(format!("{what}: {e}")))?;
        out.map_err(|e| {
            match &e {
                Error::NotFound(_) | Error::AlreadyExists(_) => tracing::debug!("{what}: {e}"),
                _ => tracing::warn!("{what}: {e}"),
            }
            Status::from(e)
        })
    }
}

fn mounts(m: Vec<MountOut>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn labels(l: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

fn timestamp((seconds, nanos): (i64, u32)) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: nanos as i32 })
}

fn info(name: &str, s: &Snapshot) -> pb::Info {
    pb::Info {
        name: name.to_string(),
        parent: s.parent.clone(),
        kind: match s.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: timestamp(s.created),
        updated_at: timestamp(s.updated),
        labels: s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// containerd's filter syntax, the part snapshot walks use: filters are alternatives, each
/// a comma-separated conjunction of `field==value` / `field!=value` (values may be quoted);
/// fields are `name`, `parent`, `kind` and `labels."KEY"` (or `labels.KEY`). A clause we do
/// not understand matches, so containerd (which checks what it gets) still sees the snapshot.
pub fn matches(filters: &[String], i: &pb::Info) -> bool {
    if filters.iter().all(|f| f.trim().is_empty()) {
        return true;
    }
    filters.iter().filter(|f| !f.trim().is_empty()).any(|f| {
        f.split(',').all(|clause| {
            let (field, value, equal) = match clause.split_once("!=") {
                Some((a, b)) => (a, b, false),
                None => match clause.split_once("==") {
                    Some((a, b)) => (a, b, true),
                    None => return true,
                },
            };
            let unquote = |s: &str| s.trim().trim_matches('"').to_string();
            let (field, value) = (field.trim(), unquote(value));
            let actual = match field {
                "name" => Some(i.name.clone()),
                "parent" => Some(i.parent.clone()),
                "kind" => Some(
                    pb::Kind::try_from(i.kind)
                        .map(|k| k.as_str_name().to_ascii_lowercase())
                        .unwrap_or_default(),
                ),
                _ => match field.strip_prefix("labels.") {
                    Some(k) => Some(i.labels.get(&unquote(k)).cloned().unwrap_or_default()),
                    None => return true,
                },
            };
            (actual.as_deref() == Some(value.as_str())) == equal
        })
    })
}

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        r: Request<pb::PrepareSnapshotRequest>,
    ) -> std::result::Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        let m = self
            .run(format!("prepare {:?}", r.key), move |sn| {
                sn.prepare(&r.key, &r.parent, labels(r.labels), Kind::Active)
            })
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts: mounts(m) }))
    }

    async fn view(
        &self,
        r: Request<pb::ViewSnapshotRequest>,
    ) -> std::result::Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        let m = self
            .run(format!("view {:?}", r.key), move |sn| {
                sn.prepare(&r.key, &r.parent, labels(r.labels), Kind::View)
            })
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts: mounts(m) }))
    }

    async fn mounts(
        &self,
        r: Request<pb::MountsRequest>,
    ) -> std::result::Result<Response<pb::MountsResponse>, Status> {
        let r = r.into_inner();
        let m = self.run(format!("mounts {:?}", r.key), move |sn| sn.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(
        &self,
        r: Request<pb::CommitSnapshotRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        let r = r.into_inner();
        self.run(format!("commit {:?} as {:?}", r.key, r.name), move |sn| {
            sn.commit(&r.name, &r.key, labels(r.labels)).map(|_| ())
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        r: Request<pb::RemoveSnapshotRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        let r = r.into_inner();
        self.run(format!("remove {:?}", r.key), move |sn| sn.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<pb::StatSnapshotRequest>,
    ) -> std::result::Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = r.into_inner().key;
        let i = self
            .run(format!("stat {key:?}"), move |sn| sn.store().need(&key).map(|s| info(&key, &s)))
            .await?;
        Ok(Response::new(pb::StatSnapshotResponse { info: Some(i) }))
    }

    async fn update(
        &self,
        r: Request<pb::UpdateSnapshotRequest>,
    ) -> std::result::Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let Some(new) = r.info else {
            return Err(Status::invalid_argument("update without snapshot info"));
        };
        let fields = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let i = self
            .run(format!("update {:?}", new.name), move |sn| {
                sn.update_labels(&new.name, labels(new.labels), &fields)
                    .map(|s| info(&new.name, &s))
            })
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse { info: Some(i) }))
    }

    type ListStream = tokio_stream::Iter<
        std::vec::IntoIter<std::result::Result<pb::ListSnapshotsResponse, Status>>,
    >;

    async fn list(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> std::result::Result<Response<Self::ListStream>, Status> {
        let filters = r.into_inner().filters;
        let all = self.run("list".into(), |sn| sn.store().list()).await?;
        let infos: Vec<pb::Info> =
            all.iter().map(|(k, s)| info(k, s)).filter(|i| matches(&filters, i)).collect();
        // A few hundred per message keeps each well under gRPC's message size limit.
        let batches: Vec<_> =
            infos.chunks(200).map(|c| Ok(pb::ListSnapshotsResponse { info: c.to_vec() })).collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(
        &self,
        r: Request<pb::UsageRequest>,
    ) -> std::result::Result<Response<pb::UsageResponse>, Status> {
        let key = r.into_inner().key;
        let (size, inodes) = self.run(format!("usage {key:?}"), move |sn| sn.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse { size, inodes }))
    }

    async fn cleanup(
        &self,
        _r: Request<pb::CleanupRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        self.run("cleanup".into(), |sn| sn.cleanup()).await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_like_containerd_walks() {
        let i = pb::Info {
            name: "n1".into(),
            parent: "p".into(),
            kind: pb::Kind::Committed as i32,
            created_at: None,
            updated_at: None,
            labels: [("containerd.io/snapshot.ref".to_string(), "sha256:x".to_string())].into(),
        };
        assert!(matches(&[], &i));
        assert!(matches(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:x,parent=="p""#.into()],
            &i
        ));
        assert!(!matches(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:y,parent=="p""#.into()],
            &i
        ));
        assert!(!matches(&[r#"parent=="q""#.into()], &i));
        assert!(matches(&[r#"parent=="q""#.into(), "kind==committed".into()], &i), "alternatives");
        assert!(matches(&["name!=other".into()], &i));
    }
}
