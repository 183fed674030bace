//! `naiad inspect`: summary and one entry in detail.

use crate::support as common;

use common::*;
use serde_json::Value;
use std::fs;

#[test]
fn path_shows_the_inode_and_its_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("usr/bin")).unwrap();
    let data: Vec<u8> = (0..(2 << 20) + 100u32).map(|i| (i % 253) as u8).collect();
    fs::write(src.join("usr/bin/tool"), &data).unwrap();
    xattr::set(src.join("usr/bin/tool"), "user.kind", b"binary").unwrap();
    let out = tmp.path().join("out");
    naiad_ok(args!["build", src, "-o", out]);
    let bootstrap = out.join("bootstrap");
    let e: Value = serde_json::from_str(&naiad_ok(args![
        "inspect",
        bootstrap,
        "--path",
        "/usr/bin/tool",
        "--json"
    ]))
    .unwrap();
    assert_eq!(e["size"], data.len());
    assert_eq!(e["chunk_size"], 1 << 20);
    let chunks = e["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[2]["file_offset"], 2 << 20);
    assert_eq!(chunks[2]["size"], 100);
    let blob = chunks[0]["blob"].as_str().unwrap();
    assert!(out.join(blob).is_file(), "chunk names a blob of the image");
    let digest = format!("blake3:{}", blake3::hash(&data[..1 << 20]).to_hex());
    assert_eq!(chunks[0]["digest"], digest);
    assert_eq!(e["xattrs"][0][0], "user.kind");

    let human = naiad_ok(args!["inspect", bootstrap, "--path", "/usr/bin/tool"]);
    assert!(human.contains("chunk 2 @2097152"), "{human}");
    let summary = naiad_ok(args!["inspect", bootstrap]);
    assert!(summary.contains("1 files, 3 directories"), "{summary}");

    let missing = naiad(args!["inspect", bootstrap, "--path", "/nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nope"));
}
