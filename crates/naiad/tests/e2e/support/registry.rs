//! Test infrastructure for end-to-end tests against an OCI registry: a throwaway local registry
//! (Debian's `docker-registry`, i.e. distribution 2.8), `skopeo` to push and inspect images, and
//! builders for small real images as OCI layouts (`umoci`, `debootstrap`, hand-written indexes).
//!
//! Needs the Debian packages `docker-registry skopeo umoci busybox-static debootstrap
//! apache2-utils` (see `scripts/install-deps.sh`), `openssl` for token auth (`common::token`),
//! and root (umoci unpacks with real ownership). Every function panics with the failing command
//! and its stderr.

use super::token::TokenIssuer;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How long `Registry::start` waits for the registry to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Running tools

/// Runs `cmd` and returns its output (panics only if it cannot be started).
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is it installed? see scripts/install-deps.sh)")
    })
}

/// Runs `cmd`, panicking with the command, its status and its stderr unless it succeeds.
/// Returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The registry

/// How a test registry authenticates clients.
#[derive(Clone, Copy)]
enum Auth<'a> {
    Anonymous,
    /// htpasswd basic auth with this user and password.
    Htpasswd(&'a str, &'a str),
    /// Bearer tokens from this issuer.
    Token(&'a TokenIssuer),
}

/// A `docker-registry` serving plain HTTP on 127.0.0.1, with its storage, config and log in a
/// temporary directory. Killed (and reaped) on drop.
pub struct Registry {
    pub port: u16,
    /// "127.0.0.1:PORT"
    pub addr: String,
    /// The htpasswd user and password, or the token issuer's, if started with auth.
    pub auth: Option<(String, String)>,
    child: Child,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry (with htpasswd basic auth when `auth` is `Some((user, password))`) and
    /// waits until `GET /v2/` answers 200 (401 with auth).
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        Registry::start_with(match auth {
            Some((user, pass)) => Auth::Htpasswd(user, pass),
            None => Auth::Anonymous,
        })
    }

    /// Starts a registry that accepts only bearer tokens of `issuer` (distribution's `token`
    /// auth: its realm, service and issuer name, its certificate as the root bundle), and
    /// waits until `GET /v2/` answers 401. [`Registry::creds`] are the issuer's user and
    /// password, so the skopeo helpers work with it.
    pub fn start_with_token_auth(issuer: &TokenIssuer) -> Registry {
        Registry::start_with(Auth::Token(issuer))
    }

    fn start_with(auth: Auth) -> Registry {
        // The port is found by binding port 0 and dropping the listener, so another process can
        // take it before the registry binds it: try again on a new port when that happens.
        let mut last_failure = String::new();
        for _ in 0..3 {
            match Registry::try_start(auth) {
                Ok(r) => return r,
                Err(e) => last_failure = e,
            }
        }
        panic!("docker-registry did not start:\n{last_failure}");
    }

    fn try_start(auth: Auth) -> Result<Registry, String> {
        let dir = tempfile::Builder::new().prefix("naiad-registry").tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        let q = |p: &Path| serde_json::to_string(p.to_str().expect("utf-8 temp path")).unwrap();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: naiad-test-secret\n",
            q(&data)
        );
        let creds = match auth {
            Auth::Anonymous => None,
            Auth::Htpasswd(user, pass) => {
                let line = run_ok(Command::new("htpasswd").args(["-Bbn", user, pass]));
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, format!("{}\n", line.trim())).unwrap();
                config += &format!(
                    "auth:\n  htpasswd:\n    realm: naiad-test\n    path: {}\n",
                    q(&htpasswd)
                );
                Some((user.to_owned(), pass.to_owned()))
            }
            Auth::Token(issuer) => {
                let s = |v: &str| serde_json::to_string(v).unwrap();
                config += &format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    s(&issuer.realm()),
                    s(super::token::SERVICE),
                    s(super::token::ISSUER),
                    q(&issuer.cert_path())
                );
                Some((issuer.user.clone(), issuer.password.clone()))
            }
        };
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, &config).unwrap();

        let log_path = dir.path().join("registry.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // REGISTRY_* variables override the config file.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run docker-registry: {e} (install the Debian package docker-registry)")
        });
        let mut reg = Registry { port, addr, auth: creds, child, log_path, dir };
        let want = if reg.auth.is_some() { 401 } else { 200 };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last;
        loop {
            if let Some(status) = reg.child.try_wait().unwrap() {
                return Err(format!(
                    "docker-registry exited with {status} before answering; log:\n{}",
                    reg.log()
                ));
            }
            match http_status(&reg.addr, "/v2/") {
                Ok(code) if code == want => return Ok(reg),
                Ok(code) => last = format!("GET /v2/ answered {code}, expected {want}"),
                Err(e) => last = format!("GET /v2/: {e}"),
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry on {} not ready after {START_TIMEOUT:?} ({last}); config:\n{config}\nlog:\n{}",
                    reg.addr,
                    reg.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The registry's log so far (stdout and stderr), for debugging failed tests.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// The credentials it was started with, in the form the skopeo helpers take.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// `docker://127.0.0.1:PORT/REPO_AND_TAG`, e.g. `reg.docker_ref("test/busybox:1")`.
    pub fn docker_ref(&self, repo_and_tag: &str) -> String {
        format!("docker://{}/{repo_and_tag}", self.addr)
    }

    /// Uploads `bytes` as a blob of `repo` with the registry API (a monolithic upload: POST,
    /// then PUT with the digest); anonymous registries only. Returns the digest's hex.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        use std::io::{Read, Write};
        assert!(self.auth.is_none(), "push_blob speaks to anonymous registries");
        let hex = naiad_format::digest::to_hex(&naiad_format::digest::sha256(bytes));
        let request = |head: String, body: &[u8]| -> String {
            let mut c = std::net::TcpStream::connect(&self.addr).unwrap();
            c.write_all(head.as_bytes()).unwrap();
            c.write_all(body).unwrap();
            let mut resp = String::new();
            c.read_to_string(&mut resp).unwrap();
            resp
        };
        let resp = request(format!("POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.addr), b"");
        assert!(resp.starts_with("HTTP/1.1 202"), "starting an upload: {resp}");
        let location = resp
            .lines()
            .find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))
            .expect("upload location")
            .trim();
        let path = location
            .split_once("://")
            .map_or(location, |(_, rest)| &rest[rest.find('/').unwrap_or(0)..]);
        let sep = if path.contains('?') { '&' } else { '?' };
        let resp = request(
            format!("PUT {path}{sep}digest=sha256:{hex} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", self.addr, bytes.len()),
            bytes,
        );
        assert!(resp.starts_with("HTTP/1.1 201"), "finishing the upload: {resp}");
        hex
    }

    /// Kills the registry process (as a crash would); [`Registry::restart`] brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again on the same address and storage, waiting until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let log = fs::OpenOptions::new().append(true).open(&self.log_path).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = cmd.spawn().expect("restarting docker-registry");
        let want = if self.auth.is_some() { 401 } else { 200 };
        let deadline = Instant::now() + START_TIMEOUT;
        while http_status(&self.addr, "/v2/").ok() != Some(want) {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come back on {}; log:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Where the registry stores blobs and manifests.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- docker-registry log ({}) ---\n{}", self.addr, self.log());
        }
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The status code of a plain HTTP/1.1 `GET path` to `addr`.
pub fn http_status(addr: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

// ---------------------------------------------------------------------------------------------
// skopeo (1.9)

fn skopeo_copy_cmd(src: &str, dst: &str, creds: Option<(&str, &str)>, extra: &[&str]) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--quiet",
        "--insecure-policy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ]);
    cmd.args(extra);
    if let Some((u, p)) = creds {
        cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
    }
    cmd.args([src, dst]);
    cmd
}

/// `skopeo copy --insecure-policy --src-tls-verify=false --dest-tls-verify=false
/// [--dest-creds user:pass] EXTRA.. SRC DST`, returning its output whether it failed or not.
pub fn try_skopeo_copy(
    src: &str,
    dst: &str,
    creds: Option<(&str, &str)>,
    extra: &[&str],
) -> Output {
    run(&mut skopeo_copy_cmd(src, dst, creds, extra))
}

/// `skopeo copy` (see `try_skopeo_copy`), panicking with its stderr on failure.
pub fn skopeo_copy(src: &str, dst: &str, creds: Option<(&str, &str)>) -> String {
    run_ok(&mut skopeo_copy_cmd(src, dst, creds, &[]))
}

/// `skopeo copy --all`: copies every image of an index, not only the one for this machine.
pub fn skopeo_copy_all(src: &str, dst: &str, creds: Option<(&str, &str)>) -> String {
    run_ok(&mut skopeo_copy_cmd(src, dst, creds, &["--all"]))
}

/// `skopeo inspect --tls-verify=false [--creds u:p] EXTRA.. IMAGE` as JSON (with `"--raw"` in
/// `extra`: the manifest or index itself).
pub fn skopeo_inspect(image: &str, creds: Option<(&str, &str)>, extra: &[&str]) -> Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]).args(extra);
    if let Some((u, p)) = creds {
        cmd.arg("--creds").arg(format!("{u}:{p}"));
    }
    cmd.arg(image);
    let out = run_ok(&mut cmd);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("skopeo inspect {image}: bad JSON ({e}):\n{out}"))
}

// ---------------------------------------------------------------------------------------------
// OCI layouts

/// Writes `bytes` as a blob of the layout at `dir`; returns its digest ("sha256:…") and size.
pub fn write_blob(dir: &Path, bytes: &[u8]) -> (String, u64) {
    let hex = hex::encode(Sha256::digest(bytes));
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let path = blobs.join(&hex);
    if !path.exists() {
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    (format!("sha256:{hex}"), bytes.len() as u64)
}

/// Reads the blob `digest` ("sha256:…") of the layout at `dir`.
pub fn read_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let (alg, hex) = digest.split_once(':').unwrap_or_else(|| panic!("bad digest {digest}"));
    let path = dir.join("blobs").join(alg).join(hex);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads a JSON blob of the layout at `dir`.
pub fn read_json_blob(dir: &Path, digest: &str) -> Value {
    serde_json::from_slice(&read_blob(dir, digest)).unwrap_or_else(|e| panic!("blob {digest}: {e}"))
}

/// The layout's `index.json`.
pub fn read_index(dir: &Path) -> Value {
    let path = dir.join("index.json");
    let text = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The descriptor that `index.json` holds for `tag` (by `org.opencontainers.image.ref.name`).
pub fn tag_descriptor(dir: &Path, tag: &str) -> Value {
    let index = read_index(dir);
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["annotations"][REF_NAME] == tag)
        .cloned()
        .unwrap_or_else(|| panic!("{}: no tag {tag} in {index}", dir.display()))
}

/// The image manifest that `tag` points to (the tag must name a manifest, not an index).
pub fn image_manifest(dir: &Path, tag: &str) -> Value {
    let desc = tag_descriptor(dir, tag);
    assert_eq!(desc["mediaType"], MT_MANIFEST, "{tag} is not an image manifest: {desc}");
    read_json_blob(dir, desc["digest"].as_str().unwrap())
}

fn umoci(args: &[&std::ffi::OsStr]) -> String {
    run_ok(Command::new("umoci").args(args))
}

macro_rules! os {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}

/// `DIR:TAG`, umoci's image reference.
fn image_ref(dir: &Path, tag: &str) -> String {
    format!("{}:{tag}", dir.to_str().expect("utf-8 layout path"))
}

/// Creates the layout at `dir` unless it is one already.
fn umoci_init(dir: &Path) {
    if !dir.join("index.json").exists() {
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        umoci(os!["init", "--layout", dir]);
    }
}

/// A small real image, tagged `tag` in the OCI layout `dir` (created if needed), with two
/// gzip layers:
/// 1. `/bin/busybox` (static, from Debian's busybox-static) with symlinks `/bin/{sh,ls,cat,echo}`
///    and `/etc/hostname` ("naiad-test\n");
/// 2. `/data/hello.txt` ("hello from layer 2\n") and the whiteout `/etc/.wh.hostname`.
///
/// Its config's Cmd is `["/bin/sh"]`.
pub fn busybox_oci_layout(dir: &Path, tag: &str) {
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.exists(), "/bin/busybox missing: install the Debian package busybox-static");
    umoci_init(dir);
    let image = image_ref(dir, tag);
    let work = tempfile::Builder::new().prefix("naiad-busybox").tempdir().unwrap();
    umoci(os!["new", "--image", image]);

    // Layer 1.
    let bundle = work.path().join("bundle1");
    umoci(os!["unpack", "--image", image, bundle]);
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/hostname"), "naiad-test\n").unwrap();
    umoci(os!["repack", "--image", image, "--history.created_by", "naiad test: busybox", bundle]);
    umoci(os!["config", "--image", image, "--config.cmd", "/bin/sh"]);

    // Layer 2: a new file and a whiteout.
    let bundle = work.path().join("bundle2");
    umoci(os!["unpack", "--image", image, bundle]);
    let rootfs = bundle.join("rootfs");
    fs::create_dir(rootfs.join("data")).unwrap();
    fs::write(rootfs.join("data/hello.txt"), "hello from layer 2\n").unwrap();
    fs::remove_file(rootfs.join("etc/hostname")).unwrap();
    umoci(os![
        "repack",
        "--image",
        image,
        "--history.created_by",
        "naiad test: hello, rm hostname",
        bundle
    ]);
    // Drop the blobs of the intermediate manifests and configs.
    umoci(os!["gc", "--layout", dir]);
}

/// An OCI layout whose `tag` points to an image index (`application/vnd.oci.image.index.v1+json`)
/// of two images, linux/amd64 and linux/arm64. Both have the busybox layers of
/// `busybox_oci_layout` (amd64 binaries: the arm64 image is only metadata, its config says
/// `"architecture": "arm64"`). `dir` is created if needed; other tags in it are kept.
pub fn multiarch_oci_layout(dir: &Path, tag: &str) {
    let work = tempfile::Builder::new().prefix("naiad-multiarch").tempdir().unwrap();
    let base = work.path().join("base");
    busybox_oci_layout(&base, "base");
    let base_manifest = image_manifest(&base, "base");
    let base_config = read_json_blob(&base, base_manifest["config"]["digest"].as_str().unwrap());

    if !dir.join("oci-layout").exists() {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }
    for layer in base_manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        let (copied, _) = write_blob(dir, &read_blob(&base, digest));
        assert_eq!(copied, digest);
    }

    let mut platform_manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut config = base_config.clone();
        config["architecture"] = json!(arch);
        config["os"] = json!("linux");
        let (config_digest, config_size) = write_blob(dir, &serde_json::to_vec(&config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": { "mediaType": MT_CONFIG, "digest": config_digest, "size": config_size },
            "layers": base_manifest["layers"],
        });
        let (digest, size) = write_blob(dir, &serde_json::to_vec(&manifest).unwrap());
        platform_manifests.push(json!({
            "mediaType": MT_MANIFEST,
            "digest": digest,
            "size": size,
            "platform": { "architecture": arch, "os": "linux" },
        }));
    }
    let image_index = json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": platform_manifests,
    });
    let (digest, size) = write_blob(dir, &serde_json::to_vec(&image_index).unwrap());

    // index.json: keep other tags, (re)point `tag` at the image index.
    let mut manifests: Vec<Value> = if dir.join("index.json").exists() {
        read_index(dir)["manifests"].as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    manifests.retain(|d| d["annotations"][REF_NAME] != tag);
    manifests.push(json!({
        "mediaType": MT_INDEX,
        "digest": digest,
        "size": size,
        "annotations": { REF_NAME: tag },
    }));
    let index = json!({ "schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests });
    let tmp = dir.join("index.json.tmp");
    fs::write(&tmp, serde_json::to_vec(&index).unwrap()).unwrap();
    fs::rename(&tmp, dir.join("index.json")).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Debian

/// The Debian mirror apt uses here (the `URIs`/URI of the first enabled `deb` source for the
/// suite `bookworm` in /etc/apt/sources.list or /etc/apt/sources.list.d/*.{list,sources}).
pub fn debian_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd
            .map(|e| e.unwrap().path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("list" | "sources")))
            .collect();
        more.sort();
        files.extend(more);
    }
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else { continue };
        let found = if file.extension().is_some_and(|e| e == "sources") {
            mirror_from_deb822(&text)
        } else {
            mirror_from_one_line(&text)
        };
        if let Some(uri) = found {
            return uri;
        }
    }
    panic!("no `deb` source for bookworm found in {files:?}");
}

fn mirror_from_one_line(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut word = words.next()?;
        if word.starts_with('[') {
            // Options: [key=value ...]
            while !word.ends_with(']') {
                word = words.next()?;
            }
            word = words.next()?;
        }
        let uri = word;
        if words.next() == Some("bookworm") {
            return Some(uri.to_owned());
        }
    }
    None
}

fn mirror_from_deb822(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    for stanza in lines.split(|l| l.trim().is_empty()) {
        let field = |name: &str| -> Vec<&str> {
            stanza
                .iter()
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split_whitespace())
                .collect()
        };
        if field("Enabled").first().is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if field("Types").contains(&"deb") && field("Suites").contains(&"bookworm") {
            if let Some(uri) = field("URIs").first() {
                return Some((*uri).to_owned());
            }
        }
    }
    None
}

/// A Debian bookworm image (`debootstrap --variant=minbase`, one gzip layer, Cmd `/bin/bash`,
/// tag `bookworm`) as the OCI layout `cache_dir/debian-minbase`, built once: a later call finds
/// it and returns at once. Like Debian's official images it has no .debs in /var/cache/apt and no
/// apt lists. Building takes a minute or two and needs the Debian mirror apt uses here.
pub fn debian_oci_layout(cache_dir: &Path) -> PathBuf {
    let layout = cache_dir.join("debian-minbase");
    if layout.join("index.json").exists() {
        return layout;
    }
    fs::create_dir_all(cache_dir).unwrap_or_else(|e| panic!("{}: {e}", cache_dir.display()));
    let work = tempfile::Builder::new().prefix("debian-minbase.tmp").tempdir_in(cache_dir).unwrap();
    let tmp_layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let image = image_ref(&tmp_layout, "bookworm");
    umoci(os!["init", "--layout", tmp_layout]);
    umoci(os!["new", "--image", image]);
    umoci(os!["unpack", "--image", image, bundle]);
    let rootfs = bundle.join("rootfs");
    let debootstrap = ["/usr/sbin/debootstrap", "/sbin/debootstrap"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("debootstrap");
    let mirror = debian_mirror();
    run_ok(
        Command::new(debootstrap).args(["--variant=minbase", "bookworm"]).arg(&rootfs).arg(&mirror),
    );
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let Ok(rd) = fs::read_dir(rootfs.join(d)) else { continue };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::remove_file(e.path()).unwrap();
            }
        }
    }
    umoci(os![
        "repack",
        "--image",
        image,
        "--history.created_by",
        "debootstrap --variant=minbase bookworm",
        bundle
    ]);
    umoci(os!["config", "--image", image, "--config.cmd", "/bin/bash"]);
    umoci(os!["gc", "--layout", tmp_layout]);
    match fs::rename(&tmp_layout, &layout) {
        Ok(()) => {}
        // Another process finished first.
        Err(_) if layout.join("index.json").exists() => {}
        Err(e) => panic!("rename {} -> {}: {e}", tmp_layout.display(), layout.display()),
    }
    layout
}
