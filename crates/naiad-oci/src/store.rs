//! One interface over both transports, so the converter and `check` do not care where an
//! image lives. Every blob read through here is verified: its bytes must hash to its digest
//! and have its size, or the read fails.

use crate::layout::Layout;
use crate::manifest::{sha256_digest, Descriptor};
use crate::reference::ImageRef;
use crate::registry::{Repo, Timeouts};
use crate::{OciError, Result};
use futures_util::StreamExt;
use sha2::Digest as _;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc;

/// A repository of a registry, or an OCI layout.
pub enum Store {
    Registry(Box<Repo>),
    Layout(Layout),
}

/// Called with the number of bytes each time a piece of a blob is read.
pub type ProgressFn = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

impl Store {
    /// Opens the store holding `r`; `create` makes a missing OCI layout. A registry is
    /// given the default [`Timeouts`].
    pub fn open(r: &ImageRef, insecure: bool, create: bool) -> Result<Self> {
        Store::open_within(r, insecure, create, Timeouts::default())
    }

    /// [`Store::open`], a registry within `timeouts`.
    pub fn open_within(
        r: &ImageRef,
        insecure: bool,
        create: bool,
        timeouts: Timeouts,
    ) -> Result<Self> {
        Ok(match r {
            ImageRef::Registry { registry, repository, .. } => Store::Registry(Box::new(
                Repo::with_timeouts(registry, repository, insecure, timeouts),
            )),
            ImageRef::Layout { dir, .. } if create => Store::Layout(Layout::deferred(dir)),
            ImageRef::Layout { dir, .. } => Store::Layout(Layout::open(dir)?),
        })
    }

    /// A printable name.
    pub fn name(&self) -> String {
        match self {
            Store::Registry(r) => r.name(),
            Store::Layout(l) => format!("oci:{}", l.dir.display()),
        }
    }

    /// A manifest or index by tag or digest: `(bytes, media type, digest)`.
    pub async fn manifest(&self, reference: Option<&str>) -> Result<(Vec<u8>, String, String)> {
        match self {
            Store::Registry(r) => r.manifest(reference.unwrap_or("latest")).await,
            Store::Layout(l) => {
                let desc = l.resolve(reference)?;
                let bytes =
                    self.blob_bytes(&desc, crate::manifest::MAX_MANIFEST_BYTES as u64).await?;
                Ok((bytes, desc.media_type, desc.digest))
            }
        }
    }

    /// A small blob (config, manifest, bootstrap layer), verified, at most `limit` bytes.
    pub async fn blob_bytes(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>> {
        if desc.size > limit {
            return Err(OciError::invalid(
                self.name(),
                format!(
                    "blob {} claims {} bytes, more than the {limit} expected",
                    desc.digest, desc.size
                ),
            ));
        }
        let mut r = self.blob_reader(desc, None).await?;
        tokio::task::block_in_place(|| {
            let mut out = Vec::with_capacity(desc.size as usize);
            r.read_to_end(&mut out).map_err(|e| read_error(&self.name(), desc, e))?;
            Ok(out)
        })
    }

    /// A blob as a blocking reader that fails at the end if the bytes do not match the
    /// descriptor's digest and size (and at once if there are too many).
    pub async fn blob_reader(
        &self,
        desc: &Descriptor,
        progress: Option<ProgressFn>,
    ) -> Result<Box<dyn Read + Send>> {
        let expected = crate::manifest::digest_hex(&desc.digest, &self.name())?.to_string();
        let inner: Box<dyn Read + Send> = match self {
            Store::Layout(l) => {
                let p = l.blob_path(&desc.digest)?;
                let f = std::fs::File::open(&p).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => OciError::NotFound {
                        what: format!("blob {}", desc.digest),
                        image: self.name(),
                    },
                    _ => OciError::Io { path: p.display().to_string(), cause: e },
                })?;
                Box::new(f)
            }
            Store::Registry(r) => {
                let limit = r.timeouts().for_blob(desc.size);
                let deadline = tokio::time::Instant::now() + limit;
                let mut stream = r.blob_stream(desc).await?;
                let (tx, rx) = mpsc::sync_channel::<std::io::Result<bytes::Bytes>>(16);
                let digest = desc.digest.clone();
                tokio::spawn(async move {
                    loop {
                        let item = match tokio::time::timeout_at(deadline, stream.next()).await {
                            Ok(Some(item)) => item,
                            Ok(None) => break,
                            Err(_) => Err(blob_timed_out(&digest, limit)),
                        };
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            break;
                        }
                    }
                });
                Box::new(ChannelReader { rx, current: bytes::Bytes::new() })
            }
        };
        Ok(Box::new(VerifyingReader {
            inner,
            hasher: sha2::Sha256::new(),
            read: 0,
            size: desc.size,
            expected,
            progress,
            done: false,
        }))
    }

    /// Whether the store holds a blob.
    pub async fn has_blob(&self, digest: &str) -> Result<bool> {
        match self {
            Store::Registry(r) => r.has_blob(digest).await,
            Store::Layout(l) => l.has_blob(digest),
        }
    }

    /// Stores a local file as a blob (skipped if present).
    pub async fn put_blob_file(&self, path: &Path, digest: &str, size: u64) -> Result<()> {
        if self.has_blob(digest).await? {
            return Ok(());
        }
        match self {
            Store::Registry(r) => r.put_blob_file(path, digest, size).await,
            Store::Layout(l) => l.put_blob_file(path, digest),
        }
    }

    /// Stores bytes as a blob (skipped if present).
    pub async fn put_blob_bytes(&self, bytes: Vec<u8>, digest: &str) -> Result<()> {
        if sha256_digest(&bytes) != digest {
            return Err(OciError::Digest {
                what: format!("upload to {}", self.name()),
                expected: digest.into(),
                actual: sha256_digest(&bytes),
            });
        }
        if self.has_blob(digest).await? {
            return Ok(());
        }
        match self {
            Store::Registry(r) => r.put_blob_bytes(bytes, digest).await,
            Store::Layout(l) => l.put_blob_bytes(&bytes, digest),
        }
    }

    /// Copies a blob from another store unless this one has it: a cross-repository mount
    /// when both are repositories of the same registry, else a streamed copy through a
    /// temporary file (verified on the way).
    pub async fn copy_blob_from(
        &self,
        from: &Store,
        desc: &Descriptor,
        tmp_dir: &Path,
    ) -> Result<()> {
        if self.has_blob(&desc.digest).await? {
            return Ok(());
        }
        if let (Store::Registry(to), Store::Registry(src)) = (self, from) {
            if to.same_registry(src) && to.mount_from(src.repository(), &desc.digest).await {
                return Ok(());
            }
        }
        let tmp = tmp_dir.join(format!("copy-{}", &desc.digest[7..]));
        let mut reader = from.blob_reader(desc, None).await?;
        let tmp2 = tmp.clone();
        let name = from.name();
        let d = desc.clone();
        tokio::task::block_in_place(move || -> Result<()> {
            let mut f = std::fs::File::create(&tmp2).map_err(OciError::io(tmp2.display()))?;
            std::io::copy(&mut reader, &mut f).map_err(|e| read_error(&name, &d, e))?;
            Ok(())
        })?;
        let r = self.put_blob_file(&tmp, &desc.digest, desc.size).await;
        let _ = std::fs::remove_file(&tmp);
        r
    }

    /// Stores a manifest or index under a tag or by digest.
    pub async fn put_manifest(
        &self,
        bytes: &[u8],
        media_type: &str,
        reference: Option<&str>,
    ) -> Result<()> {
        match self {
            Store::Registry(r) => {
                r.put_manifest(bytes, media_type, reference.unwrap_or(&sha256_digest(bytes))).await
            }
            Store::Layout(l) => l
                .put_manifest(bytes, media_type, reference.filter(|r| !r.starts_with("sha256:")))
                .map(|_| ()),
        }
    }
}

/// The error of a blob not complete within `limit`.
fn blob_timed_out(digest: &str, limit: std::time::Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "blob {digest}: timed out: not complete within {} s (the limit for its size)",
            limit.as_secs()
        ),
    )
}

fn read_error(image: &str, desc: &Descriptor, e: std::io::Error) -> OciError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<DigestMismatch>()) {
        Some(m) => OciError::Digest {
            what: format!("blob {} of {image}", desc.digest),
            expected: m.expected.clone(),
            actual: m.actual.clone(),
        },
        None => OciError::Registry {
            image: image.into(),
            detail: format!("reading blob {}: {e}", desc.digest),
            transient: OciError::io_is_transient(&e),
        },
    }
}

/// The error a [`VerifyingReader`] returns when the bytes are wrong.
#[derive(Debug)]
pub struct DigestMismatch {
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for DigestMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blob content does not match its descriptor: expected {}, got {}",
            self.expected, self.actual
        )
    }
}

impl std::error::Error for DigestMismatch {}

struct VerifyingReader {
    inner: Box<dyn Read + Send>,
    hasher: sha2::Sha256,
    read: u64,
    size: u64,
    expected: String,
    progress: Option<ProgressFn>,
    done: bool,
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.hasher.update(&buf[..n]);
        if let Some(p) = &self.progress {
            p(n as u64);
        }
        let mismatch = |actual: String| {
            std::io::Error::other(DigestMismatch {
                expected: format!("sha256:{} ({} bytes)", self.expected, self.size),
                actual,
            })
        };
        if self.read > self.size {
            return Err(mismatch(format!("more than {} bytes", self.size)));
        }
        if n == 0 {
            self.done = true;
            let actual = hex::encode(self.hasher.clone().finalize());
            if self.read != self.size || actual != self.expected {
                return Err(mismatch(format!("sha256:{actual} ({} bytes)", self.read)));
            }
        }
        Ok(n)
    }
}

/// A blocking reader over pieces sent by an async task.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.current = b,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}
