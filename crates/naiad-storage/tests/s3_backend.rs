//! The S3 backend against a real `s3s-fs` on 127.0.0.1 (installed by
//! `scripts/install-deps.sh`): blobs written with `put` read back exactly by range, chunks
//! through the fetcher byte-exact, and typed errors for a missing object, refused
//! credentials and a range past the end.

use naiad_builder::{build, BuildOptions, Source};
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::digest::{sha256, to_hex};
use naiad_storage::backend::{Backend, S3Backend, S3Credentials, S3Location, S3Options};
use naiad_storage::cache::ChunkCache;
use naiad_storage::fetch::{Fetcher, DEFAULT_MERGE_LIMIT_BYTES};
use naiad_storage::lazy::LazyBlob;
use naiad_storage::StorageError;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUCKET: &str = "blobs";
const ACCESS_KEY: &str = "storagetest";
const SECRET_KEY: &str = "storage-test-secret-91b7";

/// `s3s-fs` on a free port of 127.0.0.1 over a temporary directory; killed on drop.
struct S3Server {
    endpoint: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl S3Server {
    fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(BUCKET)).unwrap();
        for _ in 0..3 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new("s3s-fs")
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--access-key",
                    ACCESS_KEY,
                    "--secret-key",
                    SECRET_KEY,
                ])
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run s3s-fs: {e} (install it with scripts/install-deps.sh)")
                });
            let started = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server {
                        endpoint: format!("http://127.0.0.1:{port}"),
                        child,
                        _dir: dir,
                    };
                }
                assert!(started.elapsed() < Duration::from_secs(20), "s3s-fs did not listen");
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("s3s-fs did not start");
    }

    fn backend(&self, prefix: &str, credentials: Option<S3Credentials>) -> S3Backend {
        let location = S3Location {
            endpoint: Some(self.endpoint.clone()),
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            region: None,
        };
        S3Backend::new(S3Options {
            location,
            credentials,
            insecure: true,
            timeout: Duration::from_secs(2),
            attempts: 2,
        })
        .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn good() -> Option<S3Credentials> {
    Some(S3Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    })
}

#[test]
fn ranges_read_back_exactly_and_errors_are_typed() {
    let s3 = S3Server::start();
    let b = s3.backend("some/prefix", good());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let digest = sha256(&data);
    b.put(&digest, data.clone()).unwrap();
    for (off, len) in
        [(0u64, 1u64), (0, data.len() as u64), (12_345, 4096), (data.len() as u64 - 7, 7)]
    {
        assert_eq!(
            b.read(&digest, off, len).unwrap(),
            &data[off as usize..(off + len) as usize],
            "{off}+{len}"
        );
    }
    let err = b.read(&digest, data.len() as u64 - 7, 8).unwrap_err();
    assert!(matches!(err, StorageError::Backend { .. }), "past the end: {err}");
    // A blob not in the bucket: typed, naming the object key.
    let missing = [0x42; 32];
    match b.read(&missing, 0, 10).unwrap_err() {
        StorageError::BlobMissing { dirs, .. } => assert!(
            dirs.contains(&format!("object key some/prefix/{}", to_hex(&missing))),
            "{dirs}"
        ),
        other => panic!("expected BlobMissing, got {other}"),
    }
    // The same object under another prefix is another object.
    assert!(matches!(
        s3.backend("", good()).read(&digest, 0, 1).unwrap_err(),
        StorageError::BlobMissing { .. }
    ));
    // Refused credentials: an error naming the backend and the object, never the secret.
    for creds in [
        None,
        Some(S3Credentials { secret_access_key: "wrong-secret-3c1d".into(), ..good().unwrap() }),
    ] {
        let err = s3.backend("some/prefix", creds).read(&digest, 0, 1).unwrap_err().to_string();
        assert!(
            err.contains(&format!("s3 {} bucket {BUCKET} prefix some/prefix", s3.endpoint))
                && err.contains("access denied"),
            "{err}"
        );
        assert!(!err.contains("wrong-secret-3c1d") && !err.contains(SECRET_KEY), "{err}");
    }
}

#[test]
fn chunks_come_through_the_fetcher_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big: Vec<u8> =
        (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(src.join("big"), &big).unwrap();
    build(Source::Dir(src), BuildOptions::default(), &dir.path().join("out")).unwrap();
    let bs = Bootstrap::open(std::fs::read(dir.path().join("out/bootstrap")).unwrap()).unwrap();
    let s3 = S3Server::start();
    let b = s3.backend("naiad", good());
    for blob in &bs.extension().blobs {
        b.put(
            &blob.digest,
            std::fs::read(dir.path().join("out").join(to_hex(&blob.digest))).unwrap(),
        )
        .unwrap();
    }
    let ext = bs.extension();
    let fetcher = Arc::new(Fetcher::new(Arc::new(b), ext.digester, DEFAULT_MERGE_LIMIT_BYTES));
    let cache = ChunkCache::open(&dir.path().join("cache")).unwrap();
    let ino = bs.lookup(b"/big").unwrap();
    let mut out = Vec::new();
    for i in 0..ino.chunk_count() {
        let ChunkSlot::Data(r) = bs.chunk(&ino, i).unwrap() else { panic!("hole") };
        let blob = cache.image_blob(ext, r.blob_index as usize).unwrap();
        let chunks = ext.blob_chunks(r.blob_index).to_vec();
        LazyBlob::new(blob.clone(), chunks, fetcher.clone())
            .ensure(std::slice::from_ref(r))
            .unwrap();
        let mut buf = vec![0u8; r.size as usize];
        blob.read_at(std::slice::from_ref(r), &mut buf, r.view_offset).unwrap();
        out.extend_from_slice(&buf);
    }
    assert_eq!(out, big);
}
