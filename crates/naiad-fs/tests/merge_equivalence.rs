//! Converting layers one by one and merging their bootstraps (what `naiad convert` does, so
//! that layers convert in parallel and cache by digest) gives the same tree as building all
//! layers in one pass.

use naiad_builder::merge::merge_layers;
use naiad_builder::{build, BuildOptions, Source};
use naiad_format::bootstrap::Bootstrap;
use naiad_storage::blob_store::BlobDirs;
use std::path::{Path, PathBuf};

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

fn layer(path: &Path, entries: &[(&str, tar::EntryType, &[u8], u32)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, mode) in entries {
        let mut h = header(
            *kind,
            *mode,
            if *kind == tar::EntryType::Regular { data.len() as u64 } else { 0 },
            1_700_000_123,
        );
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                b.append_link(&mut h, name, std::str::from_utf8(data).unwrap()).unwrap()
            }
            _ => b.append_data(&mut h, name, *data).unwrap(),
        }
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

fn open(dir: &Path) -> Bootstrap {
    Bootstrap::open(std::fs::read(dir.join("bootstrap")).unwrap()).unwrap()
}

#[test]
fn per_layer_builds_merge_to_the_one_pass_tree() {
    use tar::EntryType::*;
    let tmp = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let l1 = tmp.path().join("l1.tar");
    let l2 = tmp.path().join("l2.tar");
    let l3 = tmp.path().join("l3.tar");
    layer(
        &l1,
        &[
            ("etc/", Directory, b"", 0o700),
            ("etc/passwd", Regular, b"root:x:0:0", 0o644),
            ("etc/gone", Regular, b"deleted later", 0o644),
            ("opt/", Directory, b"", 0o755),
            ("opt/old", Regular, b"hidden by opaque", 0o644),
            ("bin/", Directory, b"", 0o755),
            ("bin/tool", Regular, &big, 0o755),
            ("bin/tool-link", Link, b"bin/tool", 0o755),
            ("bin/sh", Symlink, b"tool", 0o777),
        ],
    );
    layer(
        &l2,
        &[
            ("etc/.wh.gone", Regular, b"", 0o644),
            ("etc/new/deep/file", Regular, b"implicit parents, etc keeps its 0700", 0o600),
            ("opt/.wh..wh..opq", Regular, b"", 0o644),
            ("opt/fresh", Regular, b"added with the opaque marker", 0o644),
            ("bin/tool", Regular, b"replaced", 0o755),
        ],
    );
    layer(
        &l3,
        &[(".wh.opt", Regular, b"", 0o644), ("etc/passwd", Regular, b"root:x:0:0:new", 0o600)],
    );

    let one_pass = tmp.path().join("one");
    build(
        Source::Layers(vec![l1.clone(), l2.clone(), l3.clone()]),
        BuildOptions::default(),
        &one_pass,
    )
    .unwrap();

    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut boots = Vec::new();
    for (i, l) in [&l1, &l2, &l3].into_iter().enumerate() {
        let d = tmp.path().join(format!("layer{i}"));
        build(
            Source::Layers(vec![l.clone()]),
            BuildOptions { keep_whiteouts: true, ..BuildOptions::default() },
            &d,
        )
        .unwrap();
        boots.push(open(&d));
        dirs.push(d);
    }
    // The layer bootstraps keep their whiteouts.
    assert!(boots[1].lookup(b"/etc/.wh.gone").is_ok());
    let merged = merge_layers(&boots, &[b"/bin/tool".to_vec(), b"/nope".to_vec()]).unwrap();
    assert_eq!(merged.blobs.len(), 3);
    assert!(merged.warnings.iter().any(|w| w.contains("/nope")), "{:?}", merged.warnings);
    let merged_bs = Bootstrap::open(merged.bootstrap).unwrap();
    assert!(merged_bs.lookup(b"/etc/gone").is_err() && merged_bs.lookup(b"/opt").is_err());
    assert_eq!(merged_bs.lookup(b"/etc").unwrap().mode & 0o7777, 0o700);
    assert_eq!(merged_bs.extension().prefetch, vec![b"/bin/tool".to_vec()]);

    let diffs = naiad_fs::compare::compare_images(
        &open(&one_pass),
        &BlobDirs::new(vec![one_pass.clone()]),
        &merged_bs,
        &BlobDirs::new(dirs),
    )
    .unwrap();
    assert!(diffs.is_empty(), "{diffs:#?}");
    let report = naiad_fs::check::check(
        merged_bs.bytes().to_vec(),
        Some(&BlobDirs::new((0..3).map(|i| tmp.path().join(format!("layer{i}"))).collect())),
    );
    assert!(report.ok(), "{:?}", report.problems);
}
