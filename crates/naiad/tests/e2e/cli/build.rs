//! `naiad build`: layers and whiteouts, dedup, the chunk dictionary, options, prefetch list.

use crate::support as common;

use common::*;
use serde_json::Value;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

fn build_json(args: &[&std::ffi::OsStr]) -> Value {
    let mut all = args.to_vec();
    all.push(std::ffi::OsStr::new("--json"));
    serde_json::from_str(&naiad_ok(&all)).expect("build --json prints JSON")
}

/// A layer tar built entry by entry.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }
    fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }
    fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn write_gz(path: &Path, data: &[u8]) {
    let mut gz =
        flate2::write::GzEncoder::new(fs::File::create(path).unwrap(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap();
}

#[test]
fn layers_merge_with_oci_whiteouts_and_every_compression() {
    require!(Root);
    let tmp = tempfile::tempdir().unwrap();
    let l1 = Layer::new()
        .dir("a/")
        .file("a/keep", b"kept")
        .file("a/gone", b"to be deleted")
        .dir("d/")
        .file("d/old", b"hidden by the opaque marker")
        .file("f", b"version 1")
        .bytes();
    let l2 = Layer::new()
        .file("a/.wh.gone", b"")
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"added in layer 2")
        .file("f", b"version 2")
        .hardlink("h", "a/keep")
        .bytes();
    let l3 = Layer::new()
        .file("z/implicit/parent", b"no directory entries above me")
        .file(".wh.f", b"")
        .bytes();
    let p1 = tmp.path().join("l1.tar");
    let p2 = tmp.path().join("l2.tar.gz");
    let p3 = tmp.path().join("l3.tar.zst");
    fs::write(&p1, l1).unwrap();
    write_gz(&p2, &l2);
    fs::write(&p3, zstd::encode_all(&l3[..], 3).unwrap()).unwrap();

    let out = tmp.path().join("out");
    let summary =
        build_json(args!["build", "--layer", p1, "--layer", p2, "--layer", p3, "-o", out]);
    assert_eq!(summary["blobs"].as_array().unwrap().len(), 3, "one blob per layer: {summary}");

    let unpacked = tmp.path().join("unpacked");
    naiad_ok(args!["unpack", out.join("bootstrap"), "--blob-dir", out, "-o", unpacked]);
    let tree = snapshot(&unpacked);
    let paths: Vec<String> = tree.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(
        paths,
        ["", "a", "a/keep", "d", "d/new", "h", "z", "z/implicit", "z/implicit/parent"]
    );
    assert_eq!(fs::read(unpacked.join("a/keep")).unwrap(), b"kept");
    assert_eq!(fs::read(unpacked.join("d/new")).unwrap(), b"added in layer 2");
    assert_eq!(tree[&b"h"[..]].link_group, Some(b"a/keep".to_vec()), "h is a hardlink of a/keep");
    assert_eq!(tree[&b"z/implicit"[..]].perm, 0o755);
}

#[test]
fn identical_chunks_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let data = noise(3 << 20, 7);
    for i in 0..10 {
        fs::write(src.join(format!("copy{i}")), &data).unwrap();
    }
    let out = tmp.path().join("out");
    let s = build_json(args!["build", src, "-o", out]);
    assert_eq!(s["chunks"], 30);
    assert_eq!(s["stored_chunks"], 3);
    assert_eq!(s["dedup_chunks"], 27);
    assert_eq!(s["stored_bytes"], 3 << 20);
    let blob_bytes = s["new_blob_bytes"].as_u64().unwrap();
    assert!(
        blob_bytes < (3 << 20) + (64 << 10),
        "blob holds {blob_bytes} bytes for 3 MiB of unique data"
    );
    let inspect: Value =
        serde_json::from_str(&naiad_ok(args!["inspect", out.join("bootstrap"), "--json"])).unwrap();
    assert_eq!(inspect["files"], 10);
    assert!((inspect["dedup_ratio"].as_f64().unwrap() - 10.0).abs() < 1e-9, "{inspect}");
}

fn tree_with(dir: &Path, extra: bool) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("big"), noise(5 << 20, 1)).unwrap();
    for i in 0..50 {
        fs::write(dir.join("sub").join(format!("small{i}")), noise(1000 + i * 37, i as u64 + 2))
            .unwrap();
    }
    if extra {
        fs::write(dir.join("new"), noise(2 << 20, 99)).unwrap();
    }
}

fn blob_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "bootstrap")
        .collect();
    v.sort();
    v
}

#[test]
fn chunk_dict_references_instead_of_storing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree_with(&src, false);
    let first = tmp.path().join("first");
    let s1 = build_json(args!["build", src, "-o", first]);
    let dict = first.join("bootstrap");

    // The same tree again: nothing new is stored and no blob is written.
    let again = tmp.path().join("again");
    let s2 = build_json(args!["build", src, "-o", again, "--chunk-dict", dict]);
    assert_eq!(s2["stored_chunks"], 0, "{s2}");
    assert_eq!(s2["new_blob_bytes"], 0);
    assert_eq!(s2["dict_chunks"], s1["stored_chunks"]);
    assert!(blob_files(&again).is_empty(), "no new blob: {:?}", blob_files(&again));
    let un = tmp.path().join("un");
    naiad_ok(args!["unpack", again.join("bootstrap"), "--blob-dir", first, "-o", un]);
    assert_same_tree(
        "dict-only image",
        &snapshot(&src),
        &snapshot(&un),
        Skip { dir_mtime: false, ..Skip::default() },
    );
    naiad_ok(args!["check", again.join("bootstrap"), "--blob-dir", first]);

    // A related tree: only the new file's chunks are stored.
    let src2 = tmp.path().join("src2");
    tree_with(&src2, true);
    let second = tmp.path().join("second");
    let s3 = build_json(args!["build", src2, "-o", second, "--chunk-dict", dict]);
    assert_eq!(s3["stored_chunks"], 2, "{s3}");
    assert_eq!(s3["stored_bytes"], 2 << 20);
    let un2 = tmp.path().join("un2");
    naiad_ok(args![
        "unpack",
        second.join("bootstrap"),
        "--blob-dir",
        second,
        "--blob-dir",
        first,
        "-o",
        un2
    ]);
    assert_same_tree("dict + new blob", &snapshot(&src2), &snapshot(&un2), Skip::default());

    // Without the dictionary's blobs the image cannot be read, and says which blob is missing.
    let out = naiad(args!["check", second.join("bootstrap"), "--blob-dir", second]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A dictionary with another digest is refused.
    let out = naiad(args![
        "build",
        src,
        "-o",
        tmp.path().join("x"),
        "--chunk-dict",
        dict,
        "--digester",
        "sha256"
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("blake3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn options_change_the_image_but_never_the_content() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree_with(&src, true);
    let expected = snapshot(&src);
    for (i, (cs, comp, dig)) in
        [("4K", "zstd", "sha256"), ("16M", "lz4", "blake3"), ("64K", "none", "blake3")]
            .into_iter()
            .enumerate()
    {
        let out = tmp.path().join(format!("out{i}"));
        let s = build_json(args![
            "build",
            src,
            "-o",
            out,
            "--chunk-size",
            cs,
            "--compressor",
            comp,
            "--digester",
            dig
        ]);
        let inspect: Value =
            serde_json::from_str(&naiad_ok(args!["inspect", out.join("bootstrap"), "--json"]))
                .unwrap();
        assert_eq!(inspect["digester"], dig);
        assert_eq!(inspect["blobs"][0]["compressor"], comp);
        let want_cs = match cs {
            "4K" => 4096,
            "16M" => 16 << 20,
            _ => 64 << 10,
        };
        assert_eq!(inspect["chunk_size"], want_cs);
        if comp == "none" {
            assert!(s["new_blob_bytes"].as_u64().unwrap() >= s["stored_bytes"].as_u64().unwrap());
        }
        naiad_ok(args!["check", out.join("bootstrap"), "--blob-dir", out]);
        let un = tmp.path().join(format!("un{i}"));
        naiad_ok(args!["unpack", out.join("bootstrap"), "--blob-dir", out, "-o", un]);
        assert_same_tree(&format!("{cs}/{comp}/{dig}"), &expected, &snapshot(&un), Skip::default());
    }
    for bad in ["3000", "32M", "2K", "1X"] {
        let out = naiad(args!["build", src, "-o", tmp.path().join("bad"), "--chunk-size", bad]);
        assert!(!out.status.success(), "chunk size {bad} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("size"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn prefetch_list_is_recorded_and_unknown_paths_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree_with(&src, false);
    let list = tmp.path().join("prefetch.txt");
    fs::write(&list, "/big\n# a comment\nsub/small3\n/not/there\n").unwrap();
    let out = tmp.path().join("out");
    let s = build_json(args!["build", src, "-o", out, "--prefetch-list", list]);
    let warnings = s["warnings"].to_string();
    assert!(warnings.contains("/not/there"), "{warnings}");
    let inspect: Value =
        serde_json::from_str(&naiad_ok(args!["inspect", out.join("bootstrap"), "--json"])).unwrap();
    assert_eq!(inspect["prefetch"], serde_json::json!(["/big", "/sub/small3"]));
}

#[test]
fn tar_and_directory_sources_give_the_same_tree() {
    require!(Root);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree_with(&src, true);
    let from_dir = tmp.path().join("from_dir");
    naiad_ok(args!["build", src, "-o", from_dir]);
    // The directory image written as a tar, then built again from that tar.
    let tar_path = tmp.path().join("tree.tar");
    naiad_ok(args![
        "unpack",
        from_dir.join("bootstrap"),
        "--blob-dir",
        from_dir,
        "--tar",
        "-o",
        tar_path
    ]);
    let from_tar = tmp.path().join("from_tar");
    naiad_ok(args!["build", tar_path, "-o", from_tar]);
    let un = tmp.path().join("un");
    naiad_ok(args!["unpack", from_tar.join("bootstrap"), "--blob-dir", from_tar, "-o", un]);
    assert_same_tree("dir -> tar -> image", &snapshot(&src), &snapshot(&un), Skip::default());
    // Same data, same chunks: the blobs are identical.
    let names = |d: &Path| {
        blob_files(d).iter().map(|p| p.file_name().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(names(&from_dir), names(&from_tar));
}

#[test]
fn a_layer_missing_only_its_final_padding_is_read_but_a_short_file_is_not() {
    require!(Root);
    let tmp = tempfile::tempdir().unwrap();
    let full =
        Layer::new().dir("d/").file("d/a", b"first file").file("d/last", &[7u8; 700]).bytes();
    // Headers: d/ at 0, d/a at 512 (data 1024..1034), d/last at 1536 (data 2048..2748).
    let data_end = 2048 + 700;
    // umoci 0.4's `insert` ends a layer right after the last data byte, gzip-compressed.
    let cut = tmp.path().join("cut.tar.gz");
    write_gz(&cut, &full[..data_end]);
    let out = tmp.path().join("out");
    let summary = build_json(args!["build", "--layer", cut, "-o", out]);
    let warnings = summary["warnings"].to_string();
    assert!(warnings.contains("without the padding of its last entry"), "{summary}");
    let unpacked = tmp.path().join("unpacked");
    naiad_ok(args!["unpack", out.join("bootstrap"), "--blob-dir", out, "-o", unpacked]);
    assert_eq!(fs::read(unpacked.join("d/a")).unwrap(), b"first file");
    assert_eq!(fs::read(unpacked.join("d/last")).unwrap(), vec![7u8; 700]);

    // One data byte missing: an error naming the layer, never a file padded with a zero.
    let short = tmp.path().join("short.tar");
    fs::write(&short, &full[..data_end - 1]).unwrap();
    let r = naiad(args!["build", "--layer", short, "-o", tmp.path().join("out2")]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("short.tar"), "{err}");
}
