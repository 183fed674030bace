//! End to end against a real containerd (Debian's 1.6): starts a private containerd whose
//! root, state and sockets live in a temporary directory, talks to it with the generated
//! clients, and serves a proxy snapshotter plugin to it.
//!
//! Skipped (with a message) unless run as root with `containerd` installed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use naiad_containerd::api::content::content_client::ContentClient;
use naiad_containerd::api::content::{
    ReadContentRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use naiad_containerd::api::images::images_client::ImagesClient;
use naiad_containerd::api::images::{CreateImageRequest, GetImageRequest, Image};
use naiad_containerd::api::leases::leases_client::LeasesClient;
use naiad_containerd::api::leases::{CreateRequest as CreateLeaseRequest, DeleteRequest};
use naiad_containerd::api::snapshots::snapshots_client::SnapshotsClient;
use naiad_containerd::api::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use naiad_containerd::api::snapshots::*;
use naiad_containerd::api::types::{Descriptor, Mount};
use naiad_containerd::{bind_unix, connect, namespace_of, serve_unix, with_namespace};
use naiad_containerd::{with_namespace_and_lease, NAMESPACE_HEADER};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const NAMESPACE: &str = "naiad-test";
const PROXY_SNAPSHOTTER: &str = "testsn";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Where containerd is looked for.
fn containerd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/usr/sbin".into());
    std::env::split_paths(&path).map(|dir| dir.join("containerd")).find(|p| p.is_file())
}

/// A containerd process of our own; stopped (SIGTERM, then SIGKILL) when dropped, so a
/// failing assertion does not leave it running.
struct Containerd {
    child: Child,
    log: PathBuf,
}

impl Containerd {
    fn start(binary: &Path, dir: &Path) -> Self {
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(dir)).unwrap();
        let log = dir.join("containerd.log");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("containerd.stderr")).unwrap())
            .spawn()
            .unwrap();
        Containerd { child, log }
    }

    fn log(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let stderr = self.log.with_file_name("containerd.stderr");
        text.push_str(&std::fs::read_to_string(stderr).unwrap_or_default());
        text
    }

    /// Connects to containerd's socket once it accepts connections.
    async fn connect(&mut self, socket: &Path) -> Channel {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("containerd exited early ({status}):\n{}", self.log());
            }
            if socket.exists() {
                if let Ok(channel) = connect(socket).await {
                    return channel;
                }
            }
            assert!(Instant::now() < deadline, "containerd did not start:\n{}", self.log());
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // Our own child, not yet reaped: its pid is still its own.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A containerd config that keeps everything inside `dir`: no CRI, and only the snapshotters
/// a test needs (the proxy plugin and `native`).
fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs",
]

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[proxy_plugins.{PROXY_SNAPSHOTTER}]
  type = "snapshot"
  address = "{d}/sn.sock"
"#
    )
}

/// One call the test snapshotter received.
#[derive(Debug, Clone)]
struct SeenCall {
    method: &'static str,
    namespace: Option<String>,
    snapshotter: String,
    key: String,
    parent: String,
    labels: HashMap<String, String>,
}

/// A proxy snapshotter that answers Prepare with a fixed bind mount, List with nothing, and
/// everything else with Unimplemented; it records what it was asked.
#[derive(Clone, Default)]
struct TestSnapshotter {
    seen: Arc<Mutex<Vec<SeenCall>>>,
}

impl TestSnapshotter {
    fn record(&self, method: &'static str, namespace: Option<&str>, snapshotter: &str, key: &str) {
        self.seen.lock().unwrap().push(SeenCall {
            method,
            namespace: namespace.map(str::to_owned),
            snapshotter: snapshotter.to_owned(),
            key: key.to_owned(),
            parent: String::new(),
            labels: HashMap::new(),
        });
    }
}

fn fixed_mount() -> Mount {
    Mount {
        r#type: "bind".into(),
        source: "/naiad/test/source".into(),
        target: String::new(),
        options: vec!["rbind".into(), "ro".into()],
    }
}

type ListStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for TestSnapshotter {
    async fn prepare(
        &self,
        request: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let namespace = namespace_of(&request).map(str::to_owned);
        let r = request.into_inner();
        self.seen.lock().unwrap().push(SeenCall {
            method: "Prepare",
            namespace,
            snapshotter: r.snapshotter,
            key: r.key,
            parent: r.parent,
            labels: r.labels,
        });
        Ok(Response::new(PrepareSnapshotResponse { mounts: vec![fixed_mount()] }))
    }

    async fn view(
        &self,
        r: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        self.record("View", namespace_of(&r), &r.get_ref().snapshotter, &r.get_ref().key);
        Err(Status::unimplemented("View"))
    }

    async fn mounts(&self, r: Request<MountsRequest>) -> Result<Response<MountsResponse>, Status> {
        self.record("Mounts", namespace_of(&r), &r.get_ref().snapshotter, &r.get_ref().key);
        Err(Status::unimplemented("Mounts"))
    }

    async fn commit(&self, r: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        self.record("Commit", namespace_of(&r), &r.get_ref().snapshotter, &r.get_ref().key);
        Err(Status::unimplemented("Commit"))
    }

    async fn remove(&self, r: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        self.record("Remove", namespace_of(&r), &r.get_ref().snapshotter, &r.get_ref().key);
        Err(Status::unimplemented("Remove"))
    }

    async fn stat(
        &self,
        r: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        self.record("Stat", namespace_of(&r), &r.get_ref().snapshotter, &r.get_ref().key);
        Err(Status::unimplemented("Stat"))
    }

    async fn update(
        &self,
        r: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        self.record("Update", namespace_of(&r), &r.get_ref().snapshotter, "");
        Err(Status::unimplemented("Update"))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        r: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        self.record("List", namespace_of(&r), &r.get_ref().snapshotter, "");
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn usage(&self, r: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        self.record("Usage", namespace_of(&r), &r.get_ref().snapshotter, &r.get_ref().key);
        Err(Status::unimplemented("Usage"))
    }

    async fn cleanup(&self, r: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        self.record("Cleanup", namespace_of(&r), &r.get_ref().snapshotter, "");
        Err(Status::unimplemented("Cleanup"))
    }
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes `blob` through Content.Write under `lease`: STAT (opens the writer for `ref`,
/// announcing total and expected digest), WRITE at offset 0, COMMIT at the end offset.
async fn write_blob(
    channel: &Channel,
    lease: &str,
    reference: &str,
    blob: &[u8],
) -> Vec<WriteContentResponse> {
    let size = blob.len() as i64;
    let digest = sha256_digest(blob);
    let messages = vec![
        WriteContentRequest {
            action: WriteAction::Stat.into(),
            r#ref: reference.into(),
            total: size,
            expected: digest.clone(),
            ..Default::default()
        },
        WriteContentRequest {
            action: WriteAction::Write.into(),
            r#ref: reference.into(),
            offset: 0,
            data: blob.to_vec(),
            ..Default::default()
        },
        WriteContentRequest {
            action: WriteAction::Commit.into(),
            r#ref: reference.into(),
            offset: size,
            total: size,
            expected: digest,
            labels: HashMap::from([("naiad.test/label".into(), "1".into())]),
            ..Default::default()
        },
    ];
    let request = with_namespace_and_lease(tokio_stream::iter(messages), NAMESPACE, lease).unwrap();
    let mut responses =
        ContentClient::new(channel.clone()).write(request).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(response) = responses.next().await {
        out.push(response.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_to_containerd_1_6() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run containerd");
        return;
    }
    let Some(binary) = containerd_binary() else {
        eprintln!("skipped: containerd is not installed");
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();

    // The proxy snapshotter plugin listens before containerd starts.
    let snapshotter = TestSnapshotter::default();
    let listener = bind_unix(&dir.path().join("sn.sock")).unwrap();
    let (stop_plugin, plugin_stopped) = tokio::sync::oneshot::channel::<()>();
    let plugin = tokio::spawn(serve_unix(
        listener,
        Routes::new(SnapshotsServer::new(snapshotter.clone())),
        async {
            let _ = plugin_stopped.await;
        },
    ));

    let mut containerd = Containerd::start(&binary, dir.path());
    let channel = containerd.connect(&dir.path().join("c.sock")).await;

    // Namespaced services refuse a request without the namespace header.
    let err = ImagesClient::new(channel.clone())
        .get(GetImageRequest { name: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    // A lease, so the blob is not garbage collected before an image refers to it.
    let lease = LeasesClient::new(channel.clone())
        .create(
            with_namespace(
                CreateLeaseRequest { id: "naiad-test-lease".into(), labels: HashMap::new() },
                NAMESPACE,
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(lease.id, "naiad-test-lease");

    // Content.Write then Content.Read.
    let blob = b"naiad writes this blob into containerd's content store\n".repeat(100);
    let digest = sha256_digest(&blob);
    let responses = write_blob(&channel, &lease.id, "naiad-test-ref", &blob).await;
    eprintln!("Write responses: {responses:#?}");
    let stat = &responses[0];
    assert_eq!(stat.action, WriteAction::Stat as i32);
    assert_eq!((stat.offset, stat.total), (0, blob.len() as i64));
    let written = &responses[1];
    assert_eq!(written.action, WriteAction::Write as i32);
    assert_eq!(written.offset, blob.len() as i64);
    let committed = &responses[2];
    assert_eq!(committed.action, WriteAction::Commit as i32);
    assert_eq!(committed.digest, digest);

    let mut read = ContentClient::new(channel.clone())
        .read(
            with_namespace(
                ReadContentRequest { digest: digest.clone(), offset: 0, size: 0 },
                NAMESPACE,
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    while let Some(chunk) = read.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.offset, back.len() as i64);
        back.extend_from_slice(&chunk.data);
    }
    assert_eq!(back, blob);

    // Images.Create then Images.Get.
    let target = Descriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: digest.clone(),
        size: blob.len() as i64,
        annotations: HashMap::new(),
    };
    let name = "naiad.test/hello:latest";
    let image = Image {
        name: name.into(),
        labels: HashMap::from([("naiad.test/image".into(), "yes".into())]),
        target: Some(target.clone()),
        created_at: None,
        updated_at: None,
    };
    let mut images = ImagesClient::new(channel.clone());
    let created = images
        .create(with_namespace(CreateImageRequest { image: Some(image) }, NAMESPACE).unwrap())
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert!(created.created_at.is_some());
    let got = images
        .get(with_namespace(GetImageRequest { name: name.into() }, NAMESPACE).unwrap())
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(got.name, name);
    assert_eq!(got.target, Some(target));
    assert_eq!(got.labels.get("naiad.test/image").map(String::as_str), Some("yes"));

    // Snapshots.Prepare through containerd reaches the proxy plugin.
    let labels = HashMap::from([
        ("containerd.io/snapshot/naiad.test".to_string(), "inherited".to_string()),
        ("naiad.test/not-inherited".to_string(), "dropped".to_string()),
    ]);
    let prepared = SnapshotsClient::new(channel.clone())
        .prepare(
            with_namespace(
                PrepareSnapshotRequest {
                    snapshotter: PROXY_SNAPSHOTTER.into(),
                    key: "naiad-test-key".into(),
                    parent: String::new(),
                    labels,
                },
                NAMESPACE,
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prepared.mounts, vec![fixed_mount()]);

    let seen = snapshotter.seen.lock().unwrap().clone();
    eprintln!("the proxy snapshotter saw: {seen:#?}");
    let prepare =
        seen.iter().find(|c| c.method == "Prepare").expect("no Prepare reached the plugin");
    // containerd's metadata layer renames keys to "<namespace>/<sequence>/<key>" and passes on
    // only inheritable labels.
    let parts: Vec<&str> = prepare.key.splitn(3, '/').collect();
    assert_eq!(parts.len(), 3, "{}", prepare.key);
    assert_eq!(parts[0], NAMESPACE);
    assert!(parts[1].parse::<u64>().is_ok(), "{}", prepare.key);
    assert_eq!(parts[2], "naiad-test-key");
    assert_eq!(prepare.snapshotter, PROXY_SNAPSHOTTER);
    assert_eq!(prepare.parent, "");
    assert_eq!(
        prepare.labels,
        HashMap::from([("containerd.io/snapshot/naiad.test".to_string(), "inherited".to_string())])
    );
    // containerd 1.6 does not forward the namespace header to proxy plugins (the namespace is
    // only in the key); accept it either way, but never a wrong one.
    assert!(
        matches!(prepare.namespace.as_deref(), None | Some(NAMESPACE)),
        "{NAMESPACE_HEADER}: {:?}",
        prepare.namespace
    );

    // Tidy up in containerd, then stop it and the plugin.
    LeasesClient::new(channel.clone())
        .delete(with_namespace(DeleteRequest { id: lease.id, sync: false }, NAMESPACE).unwrap())
        .await
        .unwrap();
    drop(channel);
    containerd.stop();
    let _ = stop_plugin.send(());
    plugin.await.unwrap().unwrap();
    assert!(!dir.path().join("sn.sock").exists(), "serve_unix removes its socket");
    eprintln!("containerd test took {:?}", started.elapsed());
}
