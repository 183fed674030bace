//! End-to-end tests of `naiad convert` (and `naiad check IMAGE`) against a real registry
//! (`docker-registry`) and OCI layouts, with `skopeo` as the independent OCI tool that must
//! accept what Naiad pushes.
//!
//! Needs what `common::registry` needs (docker-registry, skopeo, umoci, busybox-static,
//! debootstrap, apache2-utils) and root.

use crate::support as common;

use common::registry::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NAIAD: &str = env!("CARGO_BIN_EXE_naiad");
const NAIAD_BLOB: &str = "application/vnd.naiad.blob.v1";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ANN_BLOB: &str = "dev.naiad.blob";
const ANN_BOOTSTRAP: &str = "dev.naiad.bootstrap";
const ANN_SOURCE: &str = "dev.naiad.source-digest";
const ANN_VERSION: &str = "dev.naiad.format-version";
const ANN_OPTIONS: &str = "dev.naiad.options";
const NAIAD_FEATURE: &str = "naiad.image.v1";
/// A `naiad` command still running after this long is killed and the test fails (a hang).
const HARD_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Running naiad with a docker config of our own

/// What one `naiad` run did.
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "naiad {:?}: exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "expected success: {}", self.describe());
        self
    }

    /// Exit 1 (not a panic's 101, not a signal), a `naiad: error:` line, and no panic text.
    fn assert_clean_failure(&self) -> &Self {
        assert_eq!(self.code, Some(1), "expected exit 1: {}", self.describe());
        assert!(!self.stderr.contains("panicked"), "panicked: {}", self.describe());
        assert!(
            self.stderr.contains("naiad: error:"),
            "no `naiad: error:` line: {}",
            self.describe()
        );
        self
    }

    fn assert_stderr_has(&self, phrase: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&phrase.to_lowercase()),
            "stderr lacks {phrase:?}: {}",
            self.describe()
        );
        self
    }

    fn json(&self) -> Value {
        self.assert_ok();
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.describe()))
    }
}

/// `$DOCKER_CONFIG` for naiad commands: a temporary directory whose `config.json` holds
/// credentials for `registry` (`host:port`), or no `auths` entry at all; its `tmp/` is the
/// commands' `$TMPDIR`.
struct DockerConfig(tempfile::TempDir);

impl DockerConfig {
    fn new(registry: &str, creds: Option<(&str, &str)>) -> Self {
        let dir = tempfile::Builder::new().prefix("naiad-docker-config").tempdir().unwrap();
        let auths = match creds {
            Some((u, p)) => json!({ registry: { "auth": base64(format!("{u}:{p}").as_bytes()) } }),
            None => json!({}),
        };
        fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(&json!({ "auths": auths })).unwrap(),
        )
        .unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        DockerConfig(dir)
    }

    /// A config with no credentials.
    fn anonymous() -> Self {
        DockerConfig::new("unused.invalid", None)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Runs `naiad ARGS` with `DOCKER_CONFIG` pointing here; stdout and stderr go to files (no
    /// pipe can fill up) and the command is killed after [`HARD_TIMEOUT`].
    fn naiad(&self, args: &[&str]) -> Run {
        self.naiad_env(args, &[])
    }

    /// [`Self::naiad`] with more environment variables.
    fn naiad_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Run {
        let logs = tempfile::tempdir().unwrap();
        let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
        let started = Instant::now();
        let mut child = Command::new(NAIAD)
            .args(args)
            .env("DOCKER_CONFIG", self.path())
            .env_remove("NAIAD_LOG")
            // Temporary files go below the config directory, removed with it.
            .env("TMPDIR", self.path().join("tmp"))
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("spawn naiad");
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > HARD_TIMEOUT {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!(
                    "naiad {args:?} still running after {HARD_TIMEOUT:?} (hang); stderr so far:\n{}",
                    fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: status.code(),
            stdout: fs::read_to_string(&out_path).unwrap(),
            stderr: fs::read_to_string(&err_path).unwrap(),
            elapsed: started.elapsed(),
        }
    }

    /// `naiad convert SRC DST --json EXTRA..`, which must succeed; returns the summary.
    fn convert(&self, src: &str, dst: &str, extra: &[&str]) -> Value {
        let mut args = vec!["convert", src, dst, "--json"];
        args.extend_from_slice(extra);
        let run = self.naiad(&args);
        let summary = run.json();
        eprintln!("convert {src} -> {dst} {extra:?}: {:?}", run.elapsed);
        check_summary_shape(&summary, src, dst);
        summary
    }

    /// `naiad check IMAGE [--source SRC] --insecure`, which must succeed and (with a source)
    /// report that every image has the same tree as the source.
    fn check_ok(&self, image: &str, source: Option<&str>) -> Run {
        let mut args = vec!["check", image, "--insecure"];
        if let Some(s) = source {
            args.extend_from_slice(&["--source", s]);
        }
        let run = self.naiad(&args);
        run.assert_ok();
        assert!(run.stdout.starts_with("ok: "), "{}", run.describe());
        assert!(!run.stderr.contains("naiad: check:"), "{}", run.describe());
        if source.is_some() {
            for line in run.stdout.lines() {
                assert!(
                    line.ends_with("; same tree as the source"),
                    "not compared with the source: {}",
                    run.describe()
                );
            }
        }
        eprintln!("check {image}: {:?}", run.elapsed);
        run
    }
}

/// Standard base64 (with padding).
fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            out.push(if i <= c.len() { T[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[test]
fn base64_matches_known_answers() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"user:pa:ss"), "dXNlcjpwYTpzcw==");
}

/// The summary `--json` prints has every documented field, with the types documented.
fn check_summary_shape(s: &Value, src: &str, dst: &str) {
    let keys: Vec<&str> = s
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {s}"))
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut want = vec!["source", "destination", "digest", "media_type", "images", "seconds_total"];
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want, "{s}");
    assert_eq!(s["source"], src, "{s}");
    assert_eq!(s["destination"], dst, "{s}");
    assert!(is_digest(&s["digest"]), "{s}");
    assert!(s["media_type"] == MT_MANIFEST || s["media_type"] == MT_INDEX, "{s}");
    assert!(s["seconds_total"].as_f64().is_some_and(|t| t >= 0.0), "{s}");
    let images = s["images"].as_array().unwrap();
    assert!(!images.is_empty(), "{s}");
    for img in images {
        let mut got: Vec<&str> = img.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        got.sort();
        let mut want = vec![
            "platform",
            "source_digest",
            "digest",
            "source_bytes",
            "naiad_bytes",
            "bootstrap_bytes",
            "layers",
            "blobs",
            "cached_layers",
            "chunks",
            "stored_chunks",
            "dedup_chunks",
            "dict_chunks",
            "uploaded_blobs",
            "seconds_convert",
            "seconds_merge",
            "seconds_push",
            "warnings",
        ];
        want.sort();
        assert_eq!(got, want, "{img}");
        assert!(is_digest(&img["source_digest"]) && is_digest(&img["digest"]), "{img}");
        for k in [
            "source_bytes",
            "naiad_bytes",
            "bootstrap_bytes",
            "layers",
            "blobs",
            "cached_layers",
            "chunks",
            "stored_chunks",
            "dedup_chunks",
            "dict_chunks",
            "uploaded_blobs",
        ] {
            assert!(img[k].is_u64(), "{k}: {img}");
        }
        for k in ["seconds_convert", "seconds_merge", "seconds_push"] {
            assert!(img[k].as_f64().is_some_and(|t| t >= 0.0), "{k}: {img}");
        }
        assert!(img["warnings"].is_array(), "{img}");
        assert!(img["platform"].is_null() || img["platform"].is_string(), "{img}");
        assert!(img["cached_layers"].as_u64() <= img["layers"].as_u64(), "{img}");
        assert!(img["bootstrap_bytes"].as_u64().unwrap() > 0, "{img}");
        assert!(img["naiad_bytes"].as_u64().unwrap() > 0, "{img}");
    }
}

fn is_digest(v: &Value) -> bool {
    v.as_str().is_some_and(|d| {
        d.len() == 71
            && d.starts_with("sha256:")
            && d[7..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

// ---------------------------------------------------------------------------------------------
// skopeo, raw

fn skopeo_cmd(creds: Option<(&str, &str)>, args: &[&str]) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if let Some((u, p)) = creds {
        cmd.arg("--creds").arg(format!("{u}:{p}"));
    }
    cmd.args(args);
    cmd
}

/// The raw bytes of a manifest or index (`skopeo inspect --raw` writes them unchanged).
fn raw_manifest(image: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
    let out = run(&mut skopeo_cmd(creds, &["--raw", image]));
    assert!(
        out.status.success(),
        "skopeo inspect --raw {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The raw bytes of an image's config (`skopeo inspect --config --raw`).
fn raw_config(image: &str, creds: Option<(&str, &str)>, extra: &[&str]) -> Vec<u8> {
    let mut args = extra.to_vec();
    args.extend_from_slice(&["--config", "--raw", image]);
    let out = run(&mut skopeo_cmd(creds, &args));
    assert!(
        out.status.success(),
        "skopeo inspect --config --raw {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Asserts that `image` (a registry reference) does not exist: skopeo cannot inspect it.
fn assert_no_image(image: &str, creds: Option<(&str, &str)>) {
    let out = run(&mut skopeo_cmd(creds, &["--raw", image]));
    assert!(
        !out.status.success(),
        "{image} exists but should not: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("manifest unknown")
            || stderr.contains("not found")
            || stderr.contains("name unknown"),
        "{stderr}"
    );
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

// ---------------------------------------------------------------------------------------------
// Checking the structure of a Naiad manifest

/// Checks a Naiad manifest and its config against the documented structure; `source_config`
/// is the config it was converted from. Returns the digests of its data blobs.
fn assert_naiad_manifest(
    manifest: &Value,
    config_bytes: &[u8],
    source_manifest_digest: &str,
    source_config: &Value,
    blobs: u64,
) -> Vec<String> {
    assert_eq!(manifest["schemaVersion"], 2, "{manifest}");
    assert_eq!(manifest["mediaType"], MT_MANIFEST, "{manifest}");
    assert_eq!(manifest["config"]["mediaType"], MT_CONFIG, "{manifest}");
    assert_eq!(
        manifest["config"]["digest"],
        sha256_digest(config_bytes),
        "config digest: {manifest}"
    );
    assert_eq!(manifest["config"]["size"], config_bytes.len() as u64, "config size: {manifest}");

    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len() as u64, blobs + 1, "layers = blobs + bootstrap: {manifest}");
    let (boot, data) = layers.split_last().unwrap();
    for l in data {
        assert_eq!(l["mediaType"], NAIAD_BLOB, "{l}");
        assert_eq!(l["annotations"], json!({ ANN_BLOB: "true" }), "{l}");
        assert!(is_digest(&l["digest"]) && l["size"].as_u64().unwrap() > 0, "{l}");
    }
    assert_eq!(boot["mediaType"], OCI_LAYER_GZIP, "{boot}");
    assert_eq!(boot["annotations"], json!({ ANN_BOOTSTRAP: "true" }), "{boot}");

    let ann = manifest["annotations"].as_object().unwrap();
    assert_eq!(ann[ANN_SOURCE], source_manifest_digest, "{manifest}");
    assert_eq!(ann[ANN_VERSION], "1", "{manifest}");
    assert_eq!(
        ann[ANN_OPTIONS], "chunk-size=1048576,compressor=zstd,digester=blake3",
        "{manifest}"
    );
    assert_eq!(ann.len(), 3, "{manifest}");

    // The config: the source's, with rootfs.diff_ids rewritten (one per layer; a data blob's
    // is its own digest).
    let config = parse(config_bytes);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(diff_ids.len(), layers.len(), "{config}");
    for (d, l) in diff_ids.iter().zip(data) {
        assert_eq!(d, &l["digest"]);
    }
    assert!(is_digest(diff_ids.last().unwrap()));
    let (mut a, mut b) = (config.clone(), source_config.clone());
    a.as_object_mut().unwrap().remove("rootfs");
    b.as_object_mut().unwrap().remove("rootfs");
    assert_eq!(a, b, "the config differs from the source's beyond rootfs");
    data.iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect()
}

/// The bootstrap inside a bootstrap layer (a gzip tar holding `naiad/bootstrap`), and the
/// sha256 of the tar (its diff_id).
fn unwrap_bootstrap(layer: &[u8]) -> (Vec<u8>, String) {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(layer).read_to_end(&mut tar).unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let mut found = None;
    let mut names = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == "naiad/bootstrap" {
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            found = Some(b);
        }
        names.push(name);
    }
    assert_eq!(names, ["naiad/bootstrap"], "the bootstrap layer holds exactly naiad/bootstrap");
    (found.unwrap(), sha256_digest(&tar))
}

// ---------------------------------------------------------------------------------------------
// Fixtures

struct Busybox {
    _tmp: tempfile::TempDir,
    layout: PathBuf,
    /// `oci:LAYOUT:bb`
    oci: String,
}

fn busybox() -> Busybox {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("busybox");
    busybox_oci_layout(&layout, "bb");
    let oci = format!("oci:{}:bb", layout.display());
    Busybox { _tmp: tmp, layout, oci }
}

/// The digest of the manifest `tag` names in a layout.
fn layout_digest(dir: &Path, tag: &str) -> String {
    tag_descriptor(dir, tag)["digest"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// 1. busybox, registry to registry

#[test]
fn busybox_registry_to_registry_is_a_valid_naiad_image() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/bb:1");
    let dst = reg.docker_ref("naiad/bb:1");
    skopeo_copy(&bb.oci, &src, None);
    let src_digest = sha256_digest(&raw_manifest(&src, None));
    assert_eq!(src_digest, layout_digest(&bb.layout, "bb"), "skopeo kept the manifest as it was");
    let src_config = parse(&raw_config(&src, None, &[]));

    let s = cfg.convert(&src, &dst, &["--insecure"]);
    assert_eq!(s["media_type"], MT_MANIFEST, "{s}");
    let images = s["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{s}");
    let img = &images[0];
    assert_eq!(img["platform"], Value::Null, "{img}");
    assert_eq!(img["source_digest"], src_digest, "{img}");
    assert_eq!(img["digest"], s["digest"], "a single manifest is what the tag points at: {s}");
    assert_eq!(img["layers"], 2, "{img}");
    assert_eq!(img["blobs"], 2, "one blob per source layer: {img}");
    assert_eq!(img["cached_layers"], 0, "{img}");
    assert_eq!(img["dict_chunks"], 0, "{img}");
    assert_eq!(img["uploaded_blobs"], 2, "{img}");
    assert!(img["chunks"].as_u64().unwrap() >= 2, "{img}");
    assert_eq!(
        img["chunks"].as_u64(),
        Some(img["stored_chunks"].as_u64().unwrap() + img["dedup_chunks"].as_u64().unwrap()),
        "{img}"
    );
    let source_bytes: u64 = image_manifest(&bb.layout, "bb")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert_eq!(img["source_bytes"], source_bytes, "{img}");
    assert_eq!(img["warnings"], json!([]), "{img}");

    // What the registry holds.
    let raw = raw_manifest(&dst, None);
    assert_eq!(sha256_digest(&raw), s["digest"], "the digest printed is the digest pushed");
    let manifest = parse(&raw);
    let config_bytes = raw_config(&dst, None, &[]);
    let blobs = assert_naiad_manifest(
        &manifest,
        &config_bytes,
        &src_digest,
        &src_config,
        img["blobs"].as_u64().unwrap(),
    );
    let layer_bytes: u64 =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum();
    assert_eq!(img["naiad_bytes"], layer_bytes, "naiad_bytes = blobs + bootstrap layer: {img}");
    assert_eq!(parse(&config_bytes)["config"]["Cmd"], json!(["/bin/sh"]));

    // skopeo reads it, as a normal image.
    let info = skopeo_inspect(&dst, None, &[]);
    assert_eq!(info["Digest"], s["digest"], "{info}");
    assert_eq!(info["Layers"].as_array().unwrap().len(), blobs.len() + 1, "{info}");
    assert_eq!(info["Os"], "linux", "{info}");

    // naiad check: every digest and chunk, and the same tree as the source.
    cfg.check_ok(&dst, Some(&src));

    // skopeo copies it to another repository unchanged, and the copy checks out too.
    let copy = reg.docker_ref("copy/bb:1");
    skopeo_copy(&dst, &copy, None);
    assert_eq!(
        sha256_digest(&raw_manifest(&copy, None)),
        s["digest"],
        "skopeo copy kept the manifest"
    );
    cfg.check_ok(&copy, Some(&src));

    // Unpacking it by hand: skopeo fetches it into a layout, the bootstrap comes out of the
    // last layer, and `naiad unpack` gives the source's files.
    let work = tempfile::tempdir().unwrap();
    let fetched = work.path().join("fetched");
    skopeo_copy(&dst, &format!("oci:{}:nb", fetched.display()), None);
    let m = image_manifest(&fetched, "nb");
    assert_eq!(m, manifest, "skopeo copied the manifest unchanged to the layout");
    let boot_layer = read_blob(
        &fetched,
        m["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap(),
    );
    let (bootstrap, tar_digest) = unwrap_bootstrap(&boot_layer);
    assert_eq!(
        parse(&config_bytes)["rootfs"]["diff_ids"].as_array().unwrap().last().unwrap(),
        &tar_digest,
        "bootstrap diff_id"
    );
    let boot_path = work.path().join("bootstrap");
    fs::write(&boot_path, &bootstrap).unwrap();
    let blob_dir = work.path().join("blobs");
    fs::create_dir(&blob_dir).unwrap();
    for d in &blobs {
        fs::copy(fetched.join("blobs/sha256").join(&d[7..]), blob_dir.join(&d[7..])).unwrap();
    }
    let out = work.path().join("out");
    let b = boot_path.to_str().unwrap();
    cfg.naiad(&[
        "unpack",
        b,
        "--blob-dir",
        blob_dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .assert_ok();
    assert!(
        fs::read(out.join("bin/busybox")).unwrap() == fs::read("/bin/busybox").unwrap(),
        "bin/busybox differs from /bin/busybox"
    );
    for applet in ["sh", "ls", "cat", "echo"] {
        assert_eq!(
            fs::read_link(out.join("bin").join(applet)).unwrap(),
            Path::new("busybox"),
            "{applet}"
        );
    }
    assert_eq!(fs::read_to_string(out.join("data/hello.txt")).unwrap(), "hello from layer 2\n");
    assert!(out.join("etc").is_dir(), "/etc stays");
    assert!(
        fs::symlink_metadata(out.join("etc/hostname")).is_err(),
        "/etc/hostname was whited out"
    );
    assert!(
        fs::symlink_metadata(out.join("etc/.wh.hostname")).is_err(),
        "no whiteout file in the merged tree"
    );
    let mut etc: Vec<_> =
        fs::read_dir(out.join("etc")).unwrap().map(|e| e.unwrap().file_name()).collect();
    etc.sort();
    assert!(etc.is_empty(), "/etc holds {etc:?}");
    eprintln!("busybox_registry_to_registry_is_a_valid_naiad_image: {:?}", t.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. OCI layout to OCI layout: the same result as registry to registry

#[test]
fn layout_to_layout_gives_the_same_digest_as_registry_to_registry() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/bb:1");
    skopeo_copy(&bb.oci, &src, None);
    let via_registry = cfg.convert(&src, &reg.docker_ref("naiad/bb:1"), &["--insecure"]);

    let out = tempfile::tempdir().unwrap();
    let dst_dir = out.path().join("naiad-layout");
    let dst = format!("oci:{}:nb", dst_dir.display());
    let via_layout = cfg.convert(&bb.oci, &dst, &[]);
    assert_eq!(
        via_layout["images"][0]["source_digest"],
        via_registry["images"][0]["source_digest"]
    );
    assert_eq!(
        via_layout["digest"], via_registry["digest"],
        "the output depends on the source only"
    );
    assert_eq!(via_layout["media_type"], MT_MANIFEST);

    // The layout is a complete OCI layout: index.json tags the manifest; every blob is there.
    let desc = tag_descriptor(&dst_dir, "nb");
    assert_eq!(desc["digest"], via_layout["digest"], "{desc}");
    assert_eq!(desc["mediaType"], MT_MANIFEST, "{desc}");
    let manifest = image_manifest(&dst_dir, "nb");
    for d in
        manifest["layers"].as_array().unwrap().iter().chain(std::iter::once(&manifest["config"]))
    {
        let bytes = read_blob(&dst_dir, d["digest"].as_str().unwrap());
        assert_eq!(sha256_digest(&bytes), d["digest"]);
        assert_eq!(bytes.len() as u64, d["size"].as_u64().unwrap());
    }
    assert_eq!(manifest, parse(&raw_manifest(&reg.docker_ref("naiad/bb:1"), None)));
    cfg.check_ok(&dst, Some(&bb.oci));

    // Converting again into the same layout changes nothing.
    let again = cfg.convert(&bb.oci, &dst, &[]);
    assert_eq!(again["digest"], via_layout["digest"]);
    assert_eq!(
        read_index(&dst_dir)["manifests"].as_array().unwrap().len(),
        1,
        "{}",
        read_index(&dst_dir)
    );
    eprintln!("layout_to_layout_gives_the_same_digest_as_registry_to_registry: {:?}", t.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 3. Basic auth

#[test]
fn registry_with_basic_auth_uses_the_docker_config() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let reg = Registry::start(Some(("naiad", "s3cret pass")));
    let src = reg.docker_ref("src/bb:1");
    let dst = reg.docker_ref("naiad/bb:1");
    skopeo_copy(&bb.oci, &src, reg.creds());

    let failures = [
        ("no docker config entry", DockerConfig::anonymous()),
        (
            "no credentials for this registry",
            DockerConfig::new("127.0.0.1:1", Some(("naiad", "s3cret pass"))),
        ),
        ("wrong password", DockerConfig::new(&reg.addr, Some(("naiad", "wrong")))),
        ("wrong user", DockerConfig::new(&reg.addr, Some(("nobody", "s3cret pass")))),
    ];
    for (what, cfg) in &failures {
        let run = cfg.naiad(&["convert", &src, &dst, "--insecure"]);
        run.assert_clean_failure().assert_stderr_has("authentication");
        assert!(
            !run.stderr.contains("s3cret"),
            "{what}: the password shows in a message: {}",
            run.describe()
        );
        assert_no_image(&dst, reg.creds());
        let run = cfg.naiad(&["check", &src, "--insecure"]);
        run.assert_clean_failure().assert_stderr_has("authentication");
    }
    let repos = reg.storage_dir().join("docker/registry/v2/repositories");
    assert!(
        !repos.join("naiad").exists(),
        "a failed conversion wrote to the destination repository"
    );

    let cfg = DockerConfig::new(&reg.addr, reg.creds());
    let s = cfg.convert(&src, &dst, &["--insecure"]);
    let raw = raw_manifest(&dst, reg.creds());
    assert_eq!(sha256_digest(&raw), s["digest"]);
    assert_eq!(parse(&raw)["annotations"][ANN_SOURCE], layout_digest(&bb.layout, "bb"));
    cfg.check_ok(&dst, Some(&src));

    // Credentials stored as an http:// key work too.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&json!({ "auths": { format!("http://{}", reg.addr): { "auth": base64(b"naiad:s3cret pass") } } })).unwrap(),
    )
    .unwrap();
    fs::create_dir(dir.path().join("tmp")).unwrap();
    let cfg2 = DockerConfig(dir);
    let s2 = cfg2.convert(&src, &reg.docker_ref("naiad/bb:2"), &["--insecure"]);
    assert_eq!(s2["digest"], s["digest"]);
    eprintln!("registry_with_basic_auth_uses_the_docker_config: {:?}", t.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 4. Multi-arch

#[test]
fn multiarch_index_converts_per_platform() {
    require!(Root);
    let t = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    multiarch_oci_layout(&layout, "multi");
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/multi:1");
    skopeo_copy_all(&format!("oci:{}:multi", layout.display()), &src, None);
    let src_index = parse(&raw_manifest(&src, None));
    assert_eq!(src_index["mediaType"], MT_INDEX);
    let src_entries = src_index["manifests"].as_array().unwrap().clone();
    assert_eq!(src_entries.len(), 2);

    // All platforms: an index of two Naiad manifests.
    let dst = reg.docker_ref("naiad/multi:1");
    let s = cfg.convert(&src, &dst, &["--insecure"]);
    assert_eq!(s["media_type"], MT_INDEX, "{s}");
    let raw = raw_manifest(&dst, None);
    assert_eq!(sha256_digest(&raw), s["digest"]);
    let index = parse(&raw);
    assert_eq!(index["mediaType"], MT_INDEX, "{index}");
    assert_eq!(index["schemaVersion"], 2, "{index}");
    let entries = index["manifests"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{index}");
    let images = s["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{s}");
    for (i, (arch, e)) in ["amd64", "arm64"].iter().zip(&entries).enumerate() {
        assert_eq!(e["mediaType"], MT_MANIFEST, "{e}");
        assert_eq!(
            e["platform"],
            json!({ "architecture": arch, "os": "linux", "os.features": [NAIAD_FEATURE] }),
            "{e}"
        );
        assert_eq!(images[i]["platform"], format!("linux/{arch}"), "{s}");
        assert_eq!(images[i]["digest"], e["digest"], "{s}");
        assert_eq!(images[i]["source_digest"], src_entries[i]["digest"], "{s}");
        let mref = format!("{}@{}", reg.docker_ref("naiad/multi"), e["digest"].as_str().unwrap());
        let mbytes = raw_manifest(&mref, None);
        assert_eq!(sha256_digest(&mbytes), e["digest"]);
        assert_eq!(mbytes.len() as u64, e["size"].as_u64().unwrap());
        let m = parse(&mbytes);
        let config_bytes = raw_config(&mref, None, &[]);
        let src_ref = format!(
            "{}@{}",
            reg.docker_ref("src/multi"),
            src_entries[i]["digest"].as_str().unwrap()
        );
        let src_config = parse(&raw_config(&src_ref, None, &[]));
        assert_naiad_manifest(
            &m,
            &config_bytes,
            src_entries[i]["digest"].as_str().unwrap(),
            &src_config,
            images[i]["blobs"].as_u64().unwrap(),
        );
        assert_eq!(parse(&config_bytes)["architecture"], *arch);
    }
    cfg.check_ok(&dst, Some(&src));
    for arch in ["amd64", "arm64"] {
        let info = skopeo_inspect(&dst, None, &["--override-arch", arch, "--override-os", "linux"]);
        assert_eq!(info["Architecture"], arch, "{info}");
    }

    // One platform: a single manifest, the same one as in the index.
    let one = reg.docker_ref("naiad/multi-arm64:1");
    let s1 = cfg.convert(&src, &one, &["--insecure", "--platform", "linux/arm64"]);
    assert_eq!(s1["media_type"], MT_MANIFEST, "{s1}");
    assert_eq!(s1["images"].as_array().unwrap().len(), 1, "{s1}");
    assert_eq!(s1["images"][0]["platform"], "linux/arm64", "{s1}");
    let raw1 = raw_manifest(&one, None);
    assert_eq!(sha256_digest(&raw1), s1["digest"]);
    assert_eq!(parse(&raw1)["mediaType"], MT_MANIFEST);
    assert_eq!(s1["digest"], entries[1]["digest"], "the arm64 manifest is the index's arm64 entry");
    assert_eq!(parse(&raw_config(&one, None, &[]))["architecture"], "arm64");
    cfg.check_ok(&one, None);
    let run = cfg.naiad(&[
        "convert",
        &src,
        &reg.docker_ref("naiad/multi-s390x:1"),
        "--insecure",
        "--platform",
        "linux/s390x",
    ]);
    run.assert_clean_failure().assert_stderr_has("not found").assert_stderr_has("linux/s390x");
    assert_no_image(&reg.docker_ref("naiad/multi-s390x:1"), None);

    // Merged: the original manifests first, then the Naiad ones.
    let merged = reg.docker_ref("naiad/multi-merged:1");
    let sm = cfg.convert(&src, &merged, &["--insecure", "--merge-platform"]);
    assert_eq!(sm["media_type"], MT_INDEX, "{sm}");
    let rawm = raw_manifest(&merged, None);
    assert_eq!(sha256_digest(&rawm), sm["digest"]);
    let mi = parse(&rawm);
    let me = mi["manifests"].as_array().unwrap();
    assert_eq!(me.len(), 4, "{mi}");
    assert_eq!(me[0], src_entries[0], "{mi}");
    assert_eq!(me[1], src_entries[1], "{mi}");
    assert_eq!(me[2], entries[0], "{mi}");
    assert_eq!(me[3], entries[1], "{mi}");
    for e in &me[..2] {
        let mref =
            format!("{}@{}", reg.docker_ref("naiad/multi-merged"), e["digest"].as_str().unwrap());
        assert_eq!(
            sha256_digest(&raw_manifest(&mref, None)),
            e["digest"],
            "the original manifest is in the destination"
        );
    }
    cfg.check_ok(&merged, Some(&src));
    let copy = reg.docker_ref("copy/multi-merged:1");
    skopeo_copy_all(&merged, &copy, None);
    assert_eq!(sha256_digest(&raw_manifest(&copy, None)), sm["digest"]);
    // A runtime without Naiad (skopeo) picks the original image for its platform.
    // (skopeo reports the index's digest as `Digest`; the layers tell which image it chose.)
    let info = skopeo_inspect(&copy, None, &["--override-arch", "amd64", "--override-os", "linux"]);
    assert_eq!(info["Digest"], sm["digest"], "{info}");
    let original = read_json_blob(&layout, src_entries[0]["digest"].as_str().unwrap());
    let original_layers: Vec<&Value> =
        original["layers"].as_array().unwrap().iter().map(|l| &l["digest"]).collect();
    assert_eq!(
        info["Layers"].as_array().unwrap().iter().collect::<Vec<_>>(),
        original_layers,
        "skopeo picked the original image: {info}"
    );
    cfg.check_ok(&copy, Some(&src));
    eprintln!("multiarch_index_converts_per_platform: {:?}", t.elapsed());
}

/// A multi-platform source in an OCI layout, converted into an OCI layout: the image index
/// there names its platform manifests by digest only (they are blobs, not `index.json`
/// entries), and the converter and `check` must find them.
#[test]
fn multiarch_layout_to_layout() {
    require!(Root);
    let t = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    multiarch_oci_layout(&layout, "multi");
    let cfg = DockerConfig::anonymous();
    let src = format!("oci:{}:multi", layout.display());
    let out_dir = tmp.path().join("out");
    let out = format!("oci:{}:nm", out_dir.display());
    let s = cfg.convert(&src, &out, &[]);
    assert_eq!(s["media_type"], MT_INDEX, "{s}");
    let desc = tag_descriptor(&out_dir, "nm");
    assert_eq!(desc["digest"], s["digest"]);
    let index = read_json_blob(&out_dir, desc["digest"].as_str().unwrap());
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    for (e, arch) in entries.iter().zip(["amd64", "arm64"]) {
        assert_eq!(
            e["platform"],
            json!({ "architecture": arch, "os": "linux", "os.features": [NAIAD_FEATURE] }),
            "{e}"
        );
        let m = read_json_blob(&out_dir, e["digest"].as_str().unwrap());
        assert_eq!(
            m["layers"].as_array().unwrap().last().unwrap()["annotations"][ANN_BOOTSTRAP],
            "true"
        );
    }
    cfg.check_ok(&out, Some(&src));
    // One platform of it.
    let one = format!("oci:{}:arm", out_dir.display());
    let s1 = cfg.convert(&src, &one, &["--platform", "linux/arm64"]);
    assert_eq!(s1["media_type"], MT_MANIFEST, "{s1}");
    assert_eq!(s1["digest"], entries[1]["digest"], "{s1}");
    eprintln!("multiarch_layout_to_layout: {:?}", t.elapsed());
}

/// `naiad check` of a Naiad image index kept in an OCI layout (fetched there by skopeo):
/// its platform manifests are found by digest.
#[test]
fn check_finds_the_manifests_of_an_index_in_a_layout() {
    require!(Root);
    let t = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    multiarch_oci_layout(&layout, "multi");
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/multi:1");
    skopeo_copy_all(&format!("oci:{}:multi", layout.display()), &src, None);
    let dst = reg.docker_ref("naiad/multi:1");
    let s = cfg.convert(&src, &dst, &["--insecure"]);
    let fetched = tmp.path().join("fetched");
    skopeo_copy_all(&dst, &format!("oci:{}:nm", fetched.display()), None);
    assert_eq!(tag_descriptor(&fetched, "nm")["digest"], s["digest"]);
    cfg.check_ok(&format!("oci:{}:nm", fetched.display()), Some(&src));
    eprintln!("check_finds_the_manifests_of_an_index_in_a_layout: {:?}", t.elapsed());
}

/// `--merge-platform` of a single-manifest source: an index of the original manifest (with the
/// platform its config names) and the Naiad one, which carries the same platform plus the
/// `naiad.image.v1` OS feature, like the entries of a converted multi-platform index.
#[test]
fn merge_platform_of_a_single_manifest_marks_the_naiad_entry() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/bb:1");
    skopeo_copy(&bb.oci, &src, None);
    let merged = reg.docker_ref("naiad/bb-merged:1");
    let s = cfg.convert(&src, &merged, &["--insecure", "--merge-platform"]);
    assert_eq!(s["media_type"], MT_INDEX, "{s}");
    let raw = raw_manifest(&merged, None);
    assert_eq!(sha256_digest(&raw), s["digest"]);
    let index = parse(&raw);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    let src_config = parse(&raw_config(&src, None, &[]));
    let arch = src_config["architecture"].as_str().unwrap();
    assert_eq!(entries[0]["digest"], layout_digest(&bb.layout, "bb"), "{index}");
    assert_eq!(entries[0]["platform"], json!({ "architecture": arch, "os": "linux" }), "{index}");
    assert_eq!(entries[1]["digest"], s["images"][0]["digest"], "{index}");
    cfg.check_ok(&merged, Some(&src));

    // The merged index serves as a chunk dictionary: its Naiad entry is the one picked.
    let dst = reg.docker_ref("naiad/bb-dict:1");
    let run = cfg.naiad(&["convert", &src, &dst, "--insecure", "--json", "--chunk-dict", &merged]);
    let s2 = run.json();
    assert_eq!(s2["images"][0]["stored_chunks"], 0, "{s2}");
    cfg.check_ok(&dst, Some(&src));

    assert_eq!(
        entries[1]["platform"],
        json!({ "architecture": arch, "os": "linux", "os.features": [NAIAD_FEATURE] }),
        "the Naiad entry of a merged index has no platform / no naiad.image.v1 feature: {index}"
    );
    eprintln!("merge_platform_of_a_single_manifest_marks_the_naiad_entry: {:?}", t.elapsed());
}

/// A multi-platform index with a BuildKit-style attestation manifest (platform
/// unknown/unknown, in-toto layers): the attestation is skipped, the two images converted.
#[test]
fn attestation_manifests_are_skipped() {
    require!(Root);
    let t = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    multiarch_oci_layout(&layout, "multi");
    // Add the attestation to the image index.
    let desc = tag_descriptor(&layout, "multi");
    let mut index = read_json_blob(&layout, desc["digest"].as_str().unwrap());
    let (statement, statement_size) = write_blob(&layout, br#"{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[],"predicate":{}}"#);
    let (config, config_size) = write_blob(&layout, br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#);
    let amd64 = index["manifests"][0]["digest"].clone();
    let attestation = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": { "mediaType": MT_CONFIG, "digest": config, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.in-toto+json", "digest": statement, "size": statement_size,
                     "annotations": { "in-toto.io/predicate-type": "https://spdx.dev/Document" } }],
    });
    let (att, att_size) = write_blob(&layout, &serde_json::to_vec(&attestation).unwrap());
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": MT_MANIFEST, "digest": att, "size": att_size,
        "platform": { "architecture": "unknown", "os": "unknown" },
        "annotations": { "vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": amd64 },
    }));
    let (idx, idx_size) = write_blob(&layout, &serde_json::to_vec(&index).unwrap());
    let top = json!({ "schemaVersion": 2, "mediaType": MT_INDEX,
                      "manifests": [{ "mediaType": MT_INDEX, "digest": idx, "size": idx_size, "annotations": { REF_NAME: "multi" } }] });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/multi:1");
    skopeo_copy_all(&format!("oci:{}:multi", layout.display()), &src, None);
    assert_eq!(parse(&raw_manifest(&src, None))["manifests"].as_array().unwrap().len(), 3);
    let dst = reg.docker_ref("naiad/multi:1");
    let s = cfg.convert(&src, &dst, &["--insecure"]);
    let platforms: Vec<&Value> =
        s["images"].as_array().unwrap().iter().map(|i| &i["platform"]).collect();
    assert_eq!(platforms, [&json!("linux/amd64"), &json!("linux/arm64")], "{s}");
    let out = parse(&raw_manifest(&dst, None));
    assert_eq!(out["manifests"].as_array().unwrap().len(), 2, "{out}");
    cfg.check_ok(&dst, Some(&src));
    eprintln!("attestation_manifests_are_skipped: {:?}", t.elapsed());
}

/// A Docker v2 schema 2 source (Docker media types for manifest, config and layers).
#[test]
fn docker_schema2_source_converts() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/bb-docker:1");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--insecure-policy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &bb.oci,
        &src,
    ]));
    let src_manifest = parse(&raw_manifest(&src, None));
    assert_eq!(
        src_manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json",
        "{src_manifest}"
    );
    let dst = reg.docker_ref("naiad/bb-docker:1");
    let s = cfg.convert(&src, &dst, &["--insecure"]);
    let manifest = parse(&raw_manifest(&dst, None));
    let src_config = parse(&raw_config(&src, None, &[]));
    assert_naiad_manifest(
        &manifest,
        &raw_config(&dst, None, &[]),
        s["images"][0]["source_digest"].as_str().unwrap(),
        &src_config,
        s["images"][0]["blobs"].as_u64().unwrap(),
    );
    assert_eq!(s["images"][0]["source_digest"], sha256_digest(&raw_manifest(&src, None)));
    cfg.check_ok(&dst, Some(&src));
    eprintln!("docker_schema2_source_converts: {:?}", t.elapsed());
}

/// `naiad check` is not vacuous: a source with another tree, and a damaged blob in the
/// registry, are both reported (exit 1, `naiad: check:` lines).
#[test]
fn check_reports_a_different_source_and_a_damaged_blob() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/bb:1");
    skopeo_copy(&bb.oci, &src, None);
    let dst = reg.docker_ref("naiad/bb:1");
    cfg.convert(&src, &dst, &["--insecure"]);

    // The busybox image without its second layer: /etc/hostname is back, /data is gone.
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("one-layer");
    copy_layout(&bb.layout, &other);
    edit_manifest(&other, "bb", |m| {
        let first = m["layers"][0].clone();
        m["layers"] = json!([first]);
    });
    let run = cfg.naiad(&[
        "check",
        &dst,
        "--insecure",
        "--source",
        &format!("oci:{}:bb", other.display()),
    ]);
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    assert!(
        run.stderr.contains("naiad: check:") && run.stderr.contains("against the source"),
        "{}",
        run.describe()
    );
    assert!(run.stderr.contains("etc/hostname"), "{}", run.describe());
    assert!(run.stderr.contains("data"), "{}", run.describe());

    // Damage the first data blob where the registry keeps it.
    let manifest = parse(&raw_manifest(&dst, None));
    let blob = manifest["layers"][0]["digest"].as_str().unwrap();
    let data = reg
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&blob[7..9])
        .join(&blob[7..])
        .join("data");
    let mut bytes = fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let run = cfg.naiad(&["check", &dst, "--insecure"]);
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    assert!(
        run.stderr.contains(&blob[7..]) || run.stderr.contains(blob),
        "the damaged blob is named: {}",
        run.describe()
    );
    eprintln!("check_reports_a_different_source_and_a_damaged_blob: {:?}", t.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 5. Build cache

#[test]
fn build_cache_reuses_converted_layers() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/bb:1");
    skopeo_copy(&bb.oci, &src, None);
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = cache.path().to_str().unwrap();

    let first = cfg.convert(
        &src,
        &reg.docker_ref("naiad/bb:1"),
        &["--insecure", "--build-cache", cache_arg],
    );
    let f = &first["images"][0];
    assert_eq!(f["cached_layers"], 0, "{first}");
    assert_eq!(f["layers"], 2, "{first}");
    assert!(f["stored_chunks"].as_u64().unwrap() > 0, "{first}");
    let entries: Vec<_> = fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(entries.len(), 2, "one cache entry per layer: {entries:?}");

    // Into another repository, so the blobs must come from the cache.
    let dst2 = reg.docker_ref("naiad/bb2:1");
    let second = cfg.convert(&src, &dst2, &["--insecure", "--build-cache", cache_arg]);
    let s = &second["images"][0];
    assert_eq!(s["cached_layers"], s["layers"], "{second}");
    assert_eq!(second["digest"], first["digest"], "the cached conversion gives the same image");
    assert_eq!(s["blobs"], f["blobs"], "{second}");
    assert_eq!(s["naiad_bytes"], f["naiad_bytes"], "{second}");
    assert_eq!(s["bootstrap_bytes"], f["bootstrap_bytes"], "{second}");
    cfg.check_ok(&dst2, Some(&src));

    // Other options miss the cache.
    let third = cfg.convert(
        &src,
        &reg.docker_ref("naiad/bb3:1"),
        &["--insecure", "--build-cache", cache_arg, "--chunk-size", "64K"],
    );
    assert_eq!(third["images"][0]["cached_layers"], 0, "{third}");
    assert_ne!(third["digest"], first["digest"]);
    eprintln!("build_cache_reuses_converted_layers: {:?}", t.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 6. Chunk dictionary

#[test]
fn chunk_dict_references_the_dictionarys_chunks() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("src/bb:1");
    skopeo_copy(&bb.oci, &src, None);
    let dict = reg.docker_ref("naiad/bb:1");
    let d = cfg.convert(&src, &dict, &["--insecure"]);
    let dict_manifest = parse(&raw_manifest(&dict, None));
    let dict_blobs: Vec<&Value> = dict_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == NAIAD_BLOB)
        .collect();

    let dst = reg.docker_ref("naiad/bb2:1");
    let s = cfg.convert(&src, &dst, &["--insecure", "--chunk-dict", &dict]);
    let img = &s["images"][0];
    assert_eq!(img["stored_chunks"], 0, "every chunk is in the dictionary: {s}");
    assert!(img["dict_chunks"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(img["dict_chunks"], d["images"][0]["stored_chunks"], "{s}");
    assert_eq!(
        img["uploaded_blobs"], img["blobs"],
        "the dictionary's blobs are new to naiad/bb2: {s}"
    );

    // The new manifest lists the dictionary's blobs, and the bb2 repository has them.
    let manifest = parse(&raw_manifest(&dst, None));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len() as u64, img["blobs"].as_u64().unwrap() + 1, "{manifest}");
    // Nothing was stored, so every data blob is one of the dictionary's, and every chunk of
    // the dictionary is used, so every one of its blobs is referenced.
    let mut got: Vec<&Value> =
        layers.iter().filter(|l| l["mediaType"] == NAIAD_BLOB).map(|l| &l["digest"]).collect();
    let mut want: Vec<&Value> = dict_blobs.iter().map(|l| &l["digest"]).collect();
    got.sort_by_key(|v| v.to_string());
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want, "{manifest}");
    // They came into naiad/bb2 by a cross-repository mount, not a download and upload.
    let log = reg.log();
    for b in &dict_blobs {
        let hex = &b["digest"].as_str().unwrap()[7..];
        assert!(
            log.lines().any(|l| l.contains("POST /v2/naiad/bb2/blobs/uploads/?")
                && l.contains("from=naiad%2Fbb")
                && l.contains(hex)
                && l.contains("\" 201 ")),
            "blob {hex} was not mounted from naiad/bb"
        );
    }
    let config_bytes = raw_config(&dst, None, &[]);
    let src_config = parse(&raw_config(&src, None, &[]));
    assert_naiad_manifest(
        &manifest,
        &config_bytes,
        &layout_digest(&bb.layout, "bb"),
        &src_config,
        img["blobs"].as_u64().unwrap(),
    );
    cfg.check_ok(&dst, Some(&src));

    // A copy elsewhere (no dictionary around) is complete on its own.
    let copy = reg.docker_ref("copy/bb2:1");
    skopeo_copy(&dst, &copy, None);
    cfg.check_ok(&copy, Some(&src));

    // The same with the dictionary in an OCI layout and the output in another.
    let tmp = tempfile::tempdir().unwrap();
    let dict_layout = format!("oci:{}:dict", tmp.path().join("dict").display());
    cfg.convert(&bb.oci, &dict_layout, &[]);
    let out = format!("oci:{}:out", tmp.path().join("out").display());
    let s2 = cfg.convert(&bb.oci, &out, &["--chunk-dict", &dict_layout]);
    assert_eq!(s2["images"][0]["stored_chunks"], 0, "{s2}");
    assert_eq!(s2["digest"], s["digest"], "a dictionary in a layout gives the same image");
    cfg.check_ok(&out, Some(&bb.oci));
    eprintln!("chunk_dict_references_the_dictionarys_chunks: {:?}", t.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input

/// A copy of the busybox layout to damage.
fn copy_layout(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// A gzip tar holding one file.
fn gzip_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, content).unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

/// Rewrites the manifest `tag` names with `edit`, re-hashed, and points `tag` at it.
fn edit_manifest(dir: &Path, tag: &str, edit: impl FnOnce(&mut Value)) {
    let mut m = image_manifest(dir, tag);
    edit(&mut m);
    let (digest, size) = write_blob(dir, &serde_json::to_vec(&m).unwrap());
    let mut index = read_index(dir);
    for d in index["manifests"].as_array_mut().unwrap() {
        if d["annotations"][REF_NAME] == tag {
            d["digest"] = json!(digest);
            d["size"] = json!(size);
        }
    }
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn bad_sources_fail_cleanly_and_push_nothing() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let tmp = tempfile::tempdir().unwrap();
    let manifest = image_manifest(&bb.layout, "bb");
    let layer = |i: usize| manifest["layers"][i]["digest"].as_str().unwrap().to_owned();
    let blob_path = |dir: &Path, digest: &str| dir.join("blobs/sha256").join(&digest[7..]);

    // Each case: a damaged layout, what the error must say.
    let mut cases: Vec<(&str, PathBuf, Vec<String>)> = Vec::new();

    // A layer whose bytes are another valid gzip tar (smaller), under the old name.
    let dir = tmp.path().join("other-bytes");
    copy_layout(&bb.layout, &dir);
    fs::write(
        blob_path(&dir, &layer(1)),
        gzip_tar("data/evil.txt", b"not the layer the manifest names\n"),
    )
    .unwrap();
    cases.push((
        "layer replaced by another gzip tar",
        dir,
        vec!["digest or size mismatch".into(), layer(1)],
    ));

    // A layer of exactly the same size and the same contents, only its gzip header's MTIME
    // changed: a valid gzip stream that decodes to the very same tar. Only the digest tells.
    let dir = tmp.path().join("same-size");
    copy_layout(&bb.layout, &dir);
    let mut replaced = fs::read(blob_path(&dir, &layer(1))).unwrap();
    assert_eq!(replaced[..3], [0x1f, 0x8b, 8]);
    replaced[4] ^= 0x55;
    fs::write(blob_path(&dir, &layer(1)), &replaced).unwrap();
    cases.push((
        "same-size layer, gzip MTIME changed",
        dir,
        vec!["digest or size mismatch".into(), layer(1)],
    ));

    // The gzip trailer's CRC flipped: same size, the decoder fails before the digest is known.
    let dir = tmp.path().join("bad-crc");
    copy_layout(&bb.layout, &dir);
    let mut replaced = fs::read(blob_path(&dir, &layer(1))).unwrap();
    let n = replaced.len();
    replaced[n - 8] ^= 0xff;
    fs::write(blob_path(&dir, &layer(1)), &replaced).unwrap();
    cases.push(("same-size layer, gzip CRC flipped", dir, vec![layer(1)]));

    // A truncated layer.
    let dir = tmp.path().join("truncated");
    copy_layout(&bb.layout, &dir);
    let p = blob_path(&dir, &layer(0));
    let len = fs::metadata(&p).unwrap().len();
    fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len / 2).unwrap();
    cases.push(("truncated layer", dir, vec!["digest or size mismatch".into(), layer(0)]));

    // A missing layer blob.
    let dir = tmp.path().join("missing");
    copy_layout(&bb.layout, &dir);
    fs::remove_file(blob_path(&dir, &layer(1))).unwrap();
    cases.push(("missing layer blob", dir, vec!["not found".into(), layer(1)]));

    // An unknown layer media type.
    let dir = tmp.path().join("media-type");
    copy_layout(&bb.layout, &dir);
    edit_manifest(&dir, "bb", |m| {
        m["layers"][1]["mediaType"] = json!("application/vnd.example.unknown.v1")
    });
    cases.push((
        "unknown layer media type",
        dir,
        vec!["unknown media type".into(), "application/vnd.example.unknown.v1".into(), layer(1)],
    ));

    // A manifest with no layers.
    let dir = tmp.path().join("no-layers");
    copy_layout(&bb.layout, &dir);
    edit_manifest(&dir, "bb", |m| m["layers"] = json!([]));
    cases.push(("no layers", dir, vec!["no layers".into()]));

    for (i, (what, dir, needles)) in cases.iter().enumerate() {
        let dst = reg.docker_ref(&format!("naiad/bad{i}:1"));
        let run = cfg.naiad(&["convert", &format!("oci:{}:bb", dir.display()), &dst, "--insecure"]);
        eprintln!("{what}: {}", run.stderr.trim());
        run.assert_clean_failure();
        for n in needles {
            run.assert_stderr_has(n);
        }
        assert_no_image(&dst, None);
        // Into a layout: the tag is not created there either.
        let out = tmp.path().join(format!("out{i}"));
        let run = cfg.naiad(&[
            "convert",
            &format!("oci:{}:bb", dir.display()),
            &format!("oci:{}:nb", out.display()),
        ]);
        run.assert_clean_failure();
        if out.join("index.json").exists() {
            assert_eq!(read_index(&out)["manifests"], json!([]), "{what}: a tag was written");
        }
    }
    let repos = reg.storage_dir().join("docker/registry/v2/repositories");
    assert!(!repos.join("naiad").exists(), "a failed conversion pushed something");

    // A source that is not in the registry (tag, repository, digest).
    let src = reg.docker_ref("src/bb:1");
    skopeo_copy(&bb.oci, &src, None);
    let missing_digest = format!("{}@sha256:{}", reg.docker_ref("src/bb"), "0".repeat(64));
    for missing in [reg.docker_ref("src/bb:nope"), reg.docker_ref("nothere/bb:1"), missing_digest] {
        let dst = reg.docker_ref("naiad/missing:1");
        let run = cfg.naiad(&["convert", &missing, &dst, "--insecure"]);
        eprintln!("{missing}: {}", run.stderr.trim());
        run.assert_clean_failure().assert_stderr_has("not found");
        assert_no_image(&dst, None);
    }
    // A missing layout and a missing tag in a layout.
    let run = cfg.naiad(&[
        "convert",
        &format!("oci:{}:bb", tmp.path().join("nowhere").display()),
        &reg.docker_ref("naiad/missing:1"),
        "--insecure",
    ]);
    run.assert_clean_failure().assert_stderr_has("not found");
    let run = cfg.naiad(&[
        "convert",
        &format!("oci:{}:nope", bb.layout.display()),
        &reg.docker_ref("naiad/missing:1"),
        "--insecure",
    ]);
    run.assert_clean_failure().assert_stderr_has("not found");
    assert_no_image(&reg.docker_ref("naiad/missing:1"), None);
    assert!(!tmp.path().join("nowhere").exists(), "a missing source layout was created");

    // A destination given by digest.
    let run = cfg.naiad(&[
        "convert",
        &src,
        &format!("{}@sha256:{}", reg.docker_ref("naiad/x"), "1".repeat(64)),
        "--insecure",
    ]);
    run.assert_clean_failure().assert_stderr_has("needs a tag");

    // Without --insecure, a plain HTTP registry is refused (TLS) and nothing is pushed.
    let run = cfg.naiad(&["convert", &src, &reg.docker_ref("naiad/tls:1")]);
    run.assert_clean_failure();
    assert_no_image(&reg.docker_ref("naiad/tls:1"), None);

    // `naiad check` of an image that is not a Naiad image.
    let run = cfg.naiad(&["check", &src, "--insecure"]);
    run.assert_clean_failure().assert_stderr_has("not a Naiad image");
    eprintln!("bad_sources_fail_cleanly_and_push_nothing: {:?}", t.elapsed());
}

/// A conversion that fails leaves no temporary files behind (`$TMPDIR` is as empty as before),
/// also when one layer fails while another is still being converted.
#[test]
fn failed_conversion_leaves_no_temporary_files() {
    require!(Root);
    let t = Instant::now();
    let bb = busybox();
    let cfg = DockerConfig::anonymous();
    let tmp = tempfile::tempdir().unwrap();
    // Layer 2 (tiny) is damaged or missing, so it fails at once while layer 1 (busybox, 1 MB)
    // is still being converted.
    let layer =
        image_manifest(&bb.layout, "bb")["layers"][1]["digest"].as_str().unwrap().to_owned();
    let damaged = tmp.path().join("damaged");
    copy_layout(&bb.layout, &damaged);
    let path = damaged.join("blobs/sha256").join(&layer[7..]);
    let mut bytes = fs::read(&path).unwrap();
    bytes[4] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    let truncated = tmp.path().join("truncated");
    copy_layout(&bb.layout, &truncated);
    fs::OpenOptions::new()
        .write(true)
        .open(truncated.join("blobs/sha256").join(&layer[7..]))
        .unwrap()
        .set_len(20)
        .unwrap();
    let missing = tmp.path().join("missing");
    copy_layout(&bb.layout, &missing);
    fs::remove_file(missing.join("blobs/sha256").join(&layer[7..])).unwrap();

    let leftovers = |dir: &Path| -> Vec<String> {
        let mut found = Vec::new();
        for e in walk(dir) {
            found.push(e.strip_prefix(dir).unwrap().display().to_string());
        }
        found
    };
    // A successful conversion cleans up.
    let scratch = tempfile::tempdir().unwrap();
    let out = format!("oci:{}:ok", tmp.path().join("out-ok").display());
    cfg.naiad_env(&["convert", &bb.oci, &out, "--jobs", "2"], &[("TMPDIR", scratch.path())])
        .assert_ok();
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new(), "after a successful conversion");
    // Failed ones too.
    for (what, bad, error) in [
        ("damaged layer", &damaged, "digest or size mismatch"),
        ("truncated layer", &truncated, "digest or size mismatch"),
        ("missing layer", &missing, "not found"),
    ] {
        let scratch = tempfile::tempdir().unwrap();
        let out = format!("oci:{}:bad", tmp.path().join("out-bad").display());
        let run = cfg.naiad_env(
            &["convert", &format!("oci:{}:bb", bad.display()), &out, "--jobs", "2"],
            &[("TMPDIR", scratch.path())],
        );
        run.assert_clean_failure().assert_stderr_has(error);
        let left = leftovers(scratch.path());
        assert!(
            left.is_empty(),
            "{what}: the failed conversion left temporary files behind in $TMPDIR: {left:?}"
        );
    }
    eprintln!("failed_conversion_leaves_no_temporary_files: {:?}", t.elapsed());
}

/// Every path below `dir` (not `dir` itself).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// 8. Debian

/// `target/test-images` (the parent of CARGO_TARGET_TMPDIR is the target directory).
fn test_images_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-images")
}

#[test]
fn debian_minbase_converts_to_the_same_tree() {
    require!(Root);
    let t = Instant::now();
    let layout = debian_oci_layout(&test_images_dir());
    eprintln!("debian layout ready after {:?}", t.elapsed());
    let reg = Registry::start(None);
    let cfg = DockerConfig::anonymous();
    let src = reg.docker_ref("debian/minbase:bookworm");
    skopeo_copy(&format!("oci:{}:bookworm", layout.display()), &src, None);
    let dst = reg.docker_ref("naiad/debian:bookworm");
    let s = cfg.convert(&src, &dst, &["--insecure"]);
    let img = &s["images"][0];
    assert_eq!(img["layers"], 1, "{s}");
    assert_eq!(img["blobs"], 1, "{s}");
    assert!(img["chunks"].as_u64().unwrap() > 100, "{s}");
    assert_eq!(img["source_digest"], layout_digest(&layout, "bookworm"), "{s}");
    eprintln!("debian summary: {s}");
    let manifest = parse(&raw_manifest(&dst, None));
    let src_config = parse(&raw_config(&src, None, &[]));
    assert_naiad_manifest(
        &manifest,
        &raw_config(&dst, None, &[]),
        &layout_digest(&layout, "bookworm"),
        &src_config,
        1,
    );
    cfg.check_ok(&dst, Some(&src));
    eprintln!("debian_minbase_converts_to_the_same_tree: {:?}", t.elapsed());
}
