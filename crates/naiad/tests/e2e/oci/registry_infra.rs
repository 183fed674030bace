//! Checks the registry test infrastructure (`common::registry`) itself: a local registry with and
//! without auth, skopeo, and the OCI layouts the end-to-end tests of `naiad convert` push.

use crate::support as common;

use common::registry::*;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The paths in a gzip layer blob of `layout`.
fn layer_paths(layout: &Path, digest: &str) -> Vec<String> {
    let gz = read_blob(layout, digest);
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().trim_start_matches("./").to_owned();
            let mut sink = Vec::new();
            e.read_to_end(&mut sink).unwrap();
            path
        })
        .collect()
}

#[test]
fn busybox_layout_has_two_layers_and_a_whiteout() {
    require!(Root);
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    busybox_oci_layout(&layout, "latest");
    let manifest = image_manifest(&layout, "latest");
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers.len(), 2, "{manifest}");
    let first = layer_paths(&layout, layers[0]);
    for p in ["bin/busybox", "bin/sh", "bin/ls", "bin/cat", "bin/echo", "etc/hostname"] {
        assert!(first.iter().any(|x| x == p), "{p} not in layer 1: {first:?}");
    }
    let second = layer_paths(&layout, layers[1]);
    assert!(second.iter().any(|x| x == "data/hello.txt"), "{second:?}");
    assert!(second.iter().any(|x| x == "etc/.wh.hostname"), "{second:?}");
    let config = read_json_blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/sh"]), "{config}");
    // Garbage-collected: manifest, config and the two layers.
    assert_eq!(std::fs::read_dir(layout.join("blobs/sha256")).unwrap().count(), 4);

    // A multi-arch tag can live next to it (and survives a later gc).
    multiarch_oci_layout(&layout, "multi");
    busybox_oci_layout(&layout, "again");
    assert_eq!(tag_descriptor(&layout, "multi")["mediaType"], MT_INDEX);
    let index =
        read_json_blob(&layout, tag_descriptor(&layout, "multi")["digest"].as_str().unwrap());
    for m in index["manifests"].as_array().unwrap() {
        let manifest = read_json_blob(&layout, m["digest"].as_str().unwrap());
        for l in manifest["layers"].as_array().unwrap() {
            read_blob(&layout, l["digest"].as_str().unwrap());
        }
    }
    image_manifest(&layout, "latest");
}

#[test]
fn registry_without_auth_takes_a_push() {
    require!(Root);
    let t = Instant::now();
    let reg = Registry::start(None);
    eprintln!("registry without auth started in {:?}", t.elapsed());
    assert_eq!(reg.addr, format!("127.0.0.1:{}", reg.port));

    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    busybox_oci_layout(&layout, "latest");
    let dst = reg.docker_ref("test/busybox:1");
    skopeo_copy(&format!("oci:{}:latest", layout.display()), &dst, None);

    let info = skopeo_inspect(&dst, None, &[]);
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2, "{info}");
    assert_eq!(info["Os"], "linux");
    let raw = skopeo_inspect(&dst, None, &["--raw"]);
    assert_eq!(raw["layers"], image_manifest(&layout, "latest")["layers"], "{raw}");
    assert!(reg.log().contains("response completed"), "{}", reg.log());
}

#[test]
fn registry_with_auth_needs_credentials() {
    require!(Root);
    let t = Instant::now();
    let reg = Registry::start(Some(("naiad", "s3cret pass")));
    eprintln!("registry with auth started in {:?}", t.elapsed());
    assert_eq!(reg.creds(), Some(("naiad", "s3cret pass")));

    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    busybox_oci_layout(&layout, "latest");
    let src = format!("oci:{}:latest", layout.display());
    let dst = reg.docker_ref("test/busybox:1");

    let out = try_skopeo_copy(&src, &dst, None, &[]);
    assert!(!out.status.success(), "push without credentials succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "{stderr}"
    );
    let out = try_skopeo_copy(&src, &dst, Some(("naiad", "wrong")), &[]);
    assert!(!out.status.success(), "push with a wrong password succeeded");

    skopeo_copy(&src, &dst, reg.creds());
    let info = skopeo_inspect(&dst, reg.creds(), &[]);
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2, "{info}");
}

#[test]
fn multiarch_layout_pushes_as_an_index() {
    require!(Root);
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    multiarch_oci_layout(&layout, "multi");

    // The layout itself: index.json -> image index -> two manifests with platforms.
    let desc = tag_descriptor(&layout, "multi");
    assert_eq!(desc["mediaType"], MT_INDEX);
    let index = read_json_blob(&layout, desc["digest"].as_str().unwrap());
    assert_eq!(index["mediaType"], MT_INDEX);
    let arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);

    let reg = Registry::start(None);
    let dst = reg.docker_ref("test/multi:1");
    skopeo_copy_all(&format!("oci:{}:multi", layout.display()), &dst, None);
    let raw = skopeo_inspect(&dst, None, &["--raw"]);
    assert_eq!(raw["mediaType"], MT_INDEX, "{raw}");
    let manifests = raw["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{raw}");
    assert_eq!(raw, index, "the registry serves the index as written");
    for m in manifests {
        let arch = m["platform"]["architecture"].as_str().unwrap();
        let info = skopeo_inspect(&dst, None, &["--override-arch", arch]);
        assert_eq!(info["Architecture"], arch, "{info}");
        assert_eq!(info["Layers"].as_array().unwrap().len(), 2, "{info}");
    }
}

#[test]
fn debian_mirror_is_read_from_apt_sources() {
    let mirror = debian_mirror();
    assert!(mirror.starts_with("http://") || mirror.starts_with("https://"), "{mirror}");
}

/// `target/test-images` (the parent of CARGO_TARGET_TMPDIR is the target directory).
fn test_images_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-images")
}

#[test]
fn debian_minbase_image_is_built_and_cached() {
    require!(Root);
    let cache = test_images_dir();
    let t = Instant::now();
    let layout = debian_oci_layout(&cache);
    eprintln!("debian_oci_layout (first call) took {:?}", t.elapsed());
    assert_eq!(layout, cache.join("debian-minbase"));
    let manifest = image_manifest(&layout, "bookworm");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1, "{manifest}");
    let config: Value = read_json_blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/bash"]), "{config}");
    let layer = &manifest["layers"][0];
    assert!(layer["size"].as_u64().unwrap() > 10 << 20, "{layer}");

    let t = Instant::now();
    assert_eq!(debian_oci_layout(&cache), layout);
    assert!(t.elapsed() < Duration::from_secs(1), "cached call took {:?}", t.elapsed());
}
