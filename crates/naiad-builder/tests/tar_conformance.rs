//! Layers containerd accepts convert to the tree containerd unpacks.
//!
//! containerd reads layers with Go's `archive/tar` and applies them with its own applier;
//! these tests hold the builder to that, on real data:
//! * Go's tar test data (`golang-*-src`) and CPython's (`libpython3.*-testsuite`): every
//!   archive Go's reader accepts builds, and its tree (paths, types, modes, owners, sizes,
//!   contents, symlink targets, device numbers, xattrs) is the one GNU tar extracts where
//!   GNU tar agrees with Go; where they differ the expectation written next to the archive
//!   says what Go (so containerd) reads. Every archive Go refuses is refused, with an error;
//! * GNU tar `--sparse` archives in every sparse format read back byte for byte;
//! * hand-made headers for what Go reads and the old reader refused (empty numeric fields,
//!   repeated long-name and PAX headers, uid 4294967295) and `trusted.*` xattrs.
//!
//! A test whose input or tool is missing prints `skipped: TEST: needs ...` and returns.

use naiad_builder::{build, BuildError, BuildOptions, BuildSummary, Source};
use naiad_format::bootstrap::{Bootstrap, ChunkSlot};
use naiad_format::compression::decompress_into;
use naiad_format::digest::{sha256, to_hex};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Chunk size of the builds, and the window of the content digests.
const CHUNK: u64 = 1 << 20;

/// One entry of a tree, as compared.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// `f`ile, `d`irectory, `l`ink (symbolic), `c`har, `b`lock, `p`ipe, `s`ocket.
    kind: char,
    perm: u32,
    uid: u32,
    gid: u32,
    /// Size of a regular file (0 otherwise).
    size: u64,
    /// Content digest of a regular file (see [`ContentDigest`]).
    content: String,
    /// Symlink target.
    link: Vec<u8>,
    /// Device numbers.
    rdev: (u32, u32),
    /// Xattrs, sorted.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A tree by path (relative, no leading `/`; the root left out).
type Tree = BTreeMap<Vec<u8>, Entry>;

/// SHA-256 over the index and bytes of every `CHUNK`-sized window of a file holding a
/// non-zero byte: the same for a file and its holes-as-zeros copy, and cheap for files of
/// many GB that are mostly holes.
struct ContentDigest {
    parts: Vec<u8>,
}

impl ContentDigest {
    fn new() -> Self {
        ContentDigest { parts: Vec::new() }
    }

    fn window(&mut self, index: u64, data: &[u8]) {
        if data.iter().any(|&b| b != 0) {
            self.parts.extend_from_slice(&index.to_le_bytes());
            self.parts.extend_from_slice(&sha256(data));
        }
    }

    fn finish(self) -> String {
        to_hex(&sha256(&self.parts))
    }
}

fn skipped(test: &str, needs: &str) {
    eprintln!("skipped: {test}: needs {needs}");
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Builds a layer file into `out`.
fn build_layer(layer: &Path, out: &Path) -> Result<BuildSummary, BuildError> {
    let opts = BuildOptions { chunk_size: CHUNK as u32, ..BuildOptions::default() };
    build(Source::Layers(vec![layer.to_path_buf()]), opts, out)
}

/// Builds a layer held in memory.
fn build_bytes(tar: &[u8], out: &Path) -> Result<BuildSummary, BuildError> {
    let opts = BuildOptions { chunk_size: CHUNK as u32, ..BuildOptions::default() };
    let reader = Box::new(std::io::Cursor::new(tar.to_vec()));
    build(Source::Stream { reader, name: "test".into() }, opts, out)
}

/// The tree of a built image, every chunk read back from its blob and verified.
fn image_tree(out: &Path) -> Tree {
    let bs = Bootstrap::open(std::fs::read(out.join("bootstrap")).unwrap()).unwrap();
    let ext = bs.extension();
    let mut tree = Tree::new();
    let mut blobs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut zero_digests = BTreeMap::new();
    bs.walk(|path, _ty, ino| -> Result<(), naiad_format::FormatError> {
        if path.is_empty() {
            return Ok(());
        }
        let kind = match ino.type_bits() {
            0o100000 => 'f',
            0o040000 => 'd',
            0o120000 => 'l',
            0o020000 => 'c',
            0o060000 => 'b',
            0o010000 => 'p',
            _ => 's',
        };
        let mut e = Entry {
            kind,
            perm: ino.mode & 0o7777,
            uid: ino.uid,
            gid: ino.gid,
            size: 0,
            content: String::new(),
            link: Vec::new(),
            rdev: (0, 0),
            xattrs: bs.xattrs(ino)?,
        };
        e.xattrs.sort();
        match kind {
            'f' => {
                e.size = ino.size;
                let mut d = ContentDigest::new();
                let cs = ino.chunk_size();
                assert!(ino.size == 0 || cs == CHUNK, "{}", String::from_utf8_lossy(path));
                for i in 0..ino.chunk_count() {
                    let len = cs.min(ino.size - i * cs) as usize;
                    match bs.chunk(ino, i)? {
                        ChunkSlot::Hole => {}
                        ChunkSlot::Data(rec) => {
                            let zero = *zero_digests.entry(rec.size).or_insert_with(|| {
                                ext.digester.digest(&vec![0u8; rec.size as usize])
                            });
                            if rec.digest == zero {
                                continue;
                            }
                            let blob = blobs.entry(rec.blob_index).or_insert_with(|| {
                                let digest = ext.blobs[rec.blob_index as usize].digest;
                                std::fs::read(out.join(to_hex(&digest))).unwrap()
                            });
                            let start = rec.compressed_offset as usize;
                            let compressed = &blob[start..start + rec.compressed_size as usize];
                            let mut frame = Vec::new();
                            decompress_into(
                                rec.compressor,
                                compressed,
                                rec.frame_size,
                                &mut frame,
                                || "frame".into(),
                            )
                            .unwrap();
                            let off = rec.frame_offset as usize;
                            let data = &frame[off..off + rec.size as usize];
                            assert_eq!(ext.digester.digest(data), rec.digest);
                            assert_eq!(data.len(), len);
                            d.window(i, data);
                        }
                    }
                }
                e.content = d.finish();
            }
            'l' => e.link = bs.symlink_target(ino)?,
            'c' | 'b' => e.rdev = ino.rdev(),
            _ => {}
        }
        tree.insert(path[1..].to_vec(), e);
        Ok(())
    })
    .unwrap();
    tree
}

/// The tree under a directory (as GNU tar extracted it).
fn dir_tree(root: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for ent in std::fs::read_dir(&dir).unwrap() {
            let path = ent.unwrap().path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let kind = if ft.is_file() {
                'f'
            } else if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else if ft.is_fifo() {
                'p'
            } else {
                's'
            };
            let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&path)
                .map(|names| names.collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|n| {
                    let v = xattr::get(&path, &n).ok()??;
                    Some((n.as_bytes().to_vec(), v))
                })
                .collect();
            xattrs.sort();
            let mut e = Entry {
                kind,
                perm: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: 0,
                content: String::new(),
                link: Vec::new(),
                rdev: (0, 0),
                xattrs,
            };
            match kind {
                'f' => {
                    e.size = md.len();
                    e.content = file_digest(&path);
                }
                'd' => stack.push(path.clone()),
                'l' => e.link = std::fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec(),
                'c' | 'b' => e.rdev = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())),
                _ => {}
            }
            let rel = path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
            tree.insert(rel, e);
        }
    }
    tree
}

/// The content digest of a file on disk.
fn file_digest(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut d = ContentDigest::new();
    let mut buf = vec![0u8; CHUNK as usize];
    for index in 0.. {
        let mut got = 0;
        while got < buf.len() {
            match f.read(&mut buf[got..]).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        if got == 0 {
            break;
        }
        d.window(index, &buf[..got]);
    }
    d.finish()
}

/// The content digest of bytes.
fn bytes_digest(data: &[u8]) -> String {
    let mut d = ContentDigest::new();
    for (i, w) in data.chunks(CHUNK as usize).enumerate() {
        d.window(i as u64, w);
    }
    d.finish()
}

/// Extracts a tar with GNU tar as root keeping owners, modes and xattrs; false if GNU tar
/// failed.
fn gnu_extract(tar: &Path, dest: &Path) -> bool {
    std::fs::create_dir_all(dest).unwrap();
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "--same-owner", "-p"])
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(dest)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("GNU tar on {}: {}", tar.display(), String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// GNU tar, if it can be run.
fn have_gnu_tar() -> bool {
    Command::new("tar")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar"))
}

/// Differences of two trees, for a failure message.
fn diff(got: &Tree, want: &Tree) -> String {
    let mut out = String::new();
    for (p, w) in want {
        match got.get(p) {
            None => out += &format!("missing {:?}: {w:?}\n", String::from_utf8_lossy(p)),
            Some(g) if g != w => {
                out += &format!("{:?}:\n  got  {g:?}\n  want {w:?}\n", String::from_utf8_lossy(p))
            }
            _ => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        out += &format!("unexpected {:?}: {:?}\n", String::from_utf8_lossy(p), got[p]);
    }
    out
}

/// Where Go's tar test data is.
fn go_testdata() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/share")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("go-")))
        .map(|p| p.join("src/archive/tar/testdata"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// What an archive of Go's test data must give.
enum Expect {
    /// The tree GNU tar extracts (GNU tar agrees with Go).
    GnuTar,
    /// The tree GNU tar extracts, with the differences of Go's reading applied by `fix`.
    GnuTarExcept(fn(&mut Tree)),
    /// These paths and kinds, what Go reads where GNU tar reads otherwise.
    Paths(&'static [(&'static str, char)]),
    /// A sparse file of 6e10 bytes, "0123456789" ten times ending at every 1e10.
    BigSparse(&'static str),
    /// Exactly these regular files, with these MD5 sums of their contents (as Go's
    /// `reader_test.go` lists them), where GNU tar does not read the archive.
    GoMd5(&'static [(&'static str, &'static str)]),
    /// Refused, the error holding this text. Go refuses these (`reader_test.go` expects
    /// ErrHeader), or Go reads them but containerd cannot apply them.
    Refused(&'static str),
}

/// Per archive of Go's test data, what Go (so containerd) reads; facts from Go's
/// `reader_test.go` and `writer_test.go`.
fn go_expectation(name: &str) -> Option<Expect> {
    use Expect::*;
    Some(match name {
        // Go: ErrHeader.
        "pax-bad-hdr-file.tar" => Refused("PAX"),
        "pax-bad-mtime-file.tar" => Refused("PAX"),
        "pax-nul-xattrs.tar" => Refused("PAX"),
        "pax-nul-path.tar" => Refused("PAX"),
        "neg-size.tar" => Refused("tar header"),
        "issue10968.tar" => Refused("tar header"),
        "issue11169.tar" => Refused("tar header"),
        "issue12435.tar" => Refused("tar header"),
        // Go reads the headers, but the 16 GiB of data are not in the file.
        "writer-big.tar" | "writer-big-long.tar" => Refused("ends after"),
        // Go reads it; containerd refuses the GNU dumpdir type 'D' ("unhandled tar header
        // type").
        "gnu-incremental.tar" => Refused("unsupported tar entry type 'D'"),
        // GNU tar applies the global path record to later members; Go (and containerd)
        // apply global headers to nothing.
        "pax-global-records.tar" => {
            Paths(&[("file1", 'f'), ("file2", 'f'), ("file3", 'f'), ("file4", 'f')])
        }
        // A pre-Go 1.8 GNU header with a USTAR prefix: Go reads the prefix, GNU tar not.
        "invalid-go17.tar" => GnuTarExcept(|t| {
            let file = t.remove(&b"foo"[..]).unwrap();
            let dir = vec![b'a'; 100 - "/foo".len() + 1];
            let mut path = dir.clone();
            path.extend_from_slice(b"/foo");
            t.insert(path, file);
            t.insert(dir, implicit_dir());
        }),
        // GNU tar 1.34 stops with "Unexpected EOF in archive" on the PAX 1.0 member; Go
        // reads all five members, the four sparse ones with the same contents.
        "sparse-formats.tar" => GoMd5(&[
            ("end", "b0061974914468de549a2af8ced10316"),
            ("sparse-gnu", "6f53234398c2449fe67c1812d993012f"),
            ("sparse-posix-0.0", "6f53234398c2449fe67c1812d993012f"),
            ("sparse-posix-0.1", "6f53234398c2449fe67c1812d993012f"),
            ("sparse-posix-1.0", "6f53234398c2449fe67c1812d993012f"),
        ]),
        "gnu-sparse-big.tar" => BigSparse("gnu-sparse"),
        "pax-sparse-big.tar" => BigSparse("pax-sparse"),
        _ => GnuTar,
    })
}

/// A directory the layer implies without an entry.
fn implicit_dir() -> Entry {
    Entry {
        kind: 'd',
        perm: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        content: String::new(),
        link: Vec::new(),
        rdev: (0, 0),
        xattrs: Vec::new(),
    }
}

/// Checks one archive against its expectation; returns a failure, if any.
fn check_archive(tar: &Path, expect: &Expect, scratch: &Path) -> Option<String> {
    let name = tar.file_name().unwrap().to_string_lossy().into_owned();
    let out = scratch.join(format!("{name}.img"));
    let built = build_layer(tar, &out);
    let result = match (expect, built) {
        (Expect::Refused(text), Err(e)) => {
            let msg = e.to_string();
            (!msg.contains(text)).then(|| format!("{name}: refused, but not for {text:?}: {msg}"))
        }
        (Expect::Refused(_), Ok(_)) => Some(format!("{name}: built, but must be refused")),
        (_, Err(e)) => Some(format!("{name}: refused: {e}")),
        (Expect::Paths(paths), Ok(_)) => {
            let got: Vec<(String, char)> = image_tree(&out)
                .into_iter()
                .map(|(p, e)| (String::from_utf8_lossy(&p).into_owned(), e.kind))
                .collect();
            let want: Vec<(String, char)> =
                paths.iter().map(|(p, k)| (p.to_string(), *k)).collect();
            (got != want).then(|| format!("{name}: got {got:?}, want {want:?}"))
        }
        (Expect::BigSparse(file), Ok(_)) => {
            let got = image_tree(&out);
            let mut d = ContentDigest::new();
            let block: Vec<u8> = b"0123456789".repeat(10);
            for k in 1..=6u64 {
                // Each data run ends at k * 1e10 and lies in one window here.
                let end = k * 10_000_000_000;
                let index = (end - 100) / CHUNK;
                assert_eq!((end - 1) / CHUNK, index);
                let mut w = vec![0u8; CHUNK.min(60_000_000_000 - index * CHUNK) as usize];
                let at = (end - 100 - index * CHUNK) as usize;
                w[at..at + 100].copy_from_slice(&block);
                d.window(index, &w);
            }
            let e = got.get(file.as_bytes());
            (e.map(|e| (e.size, e.content.clone())) != Some((60_000_000_000, d.finish())))
                .then(|| format!("{name}: {file}: {e:?}"))
        }
        (Expect::GoMd5(files), Ok(_)) => {
            let got: Vec<(String, char)> = image_tree(&out)
                .into_iter()
                .map(|(p, e)| (String::from_utf8_lossy(&p).into_owned(), e.kind))
                .collect();
            let want: Vec<(String, char)> =
                files.iter().map(|(p, _)| (p.to_string(), 'f')).collect();
            let sums: Vec<(String, String)> = files
                .iter()
                .map(|(p, _)| (p.to_string(), md5(&read_file(&out, &format!("/{p}")))))
                .collect();
            let want_sums: Vec<(String, String)> =
                files.iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
            (got != want || sums != want_sums)
                .then(|| format!("{name}: got {got:?} {sums:?}, want {want:?} {want_sums:?}"))
        }
        (Expect::GnuTar | Expect::GnuTarExcept(_), Ok(_)) => {
            let dest = scratch.join(format!("{name}.gnu"));
            if !gnu_extract(tar, &dest) {
                return Some(format!("{name}: GNU tar failed on an archive Go reads"));
            }
            let mut want = dir_tree(&dest);
            // Naiad drops trusted.* xattrs of a layer (containerd does not set them).
            for e in want.values_mut() {
                e.xattrs.retain(|(n, _)| !n.starts_with(b"trusted."));
            }
            if let Expect::GnuTarExcept(fix) = expect {
                fix(&mut want);
            }
            let mut got = image_tree(&out);
            // Linux shows every symlink as 0777; the image keeps the header's bits.
            for e in got.values_mut().chain(want.values_mut()).filter(|e| e.kind == 'l') {
                e.perm = 0o777;
            }
            let _ = std::fs::remove_dir_all(&dest);
            (got != want).then(|| format!("{name}:\n{}", diff(&got, &want)))
        }
    };
    let _ = std::fs::remove_dir_all(&out);
    result
}

/// Every `.tar` of Go's `archive/tar` test data builds to the tree Go reads, or is refused
/// where Go (or containerd's applier) refuses it. The old reader failed here on
/// `nil-uid.tar` (an empty uid field), `gnu-multi-hdrs.tar` and `pax-multi-hdrs.tar`
/// (repeated long-name and PAX headers), and made `GNUSparseFile.0/...` paths of the PAX
/// sparse files of `sparse-formats.tar`, `pax-nil-sparse-*.tar` and `pax-sparse-big.tar`.
#[test]
fn go_tar_test_data_builds_as_go_reads_it() {
    let test = "go_tar_test_data_builds_as_go_reads_it";
    let Some(dir) = go_testdata() else {
        return skipped(test, "Go's tar test data (apt-get install golang-1.19-src)");
    };
    if !is_root() || !have_gnu_tar() {
        return skipped(test, "root and GNU tar (the reference extraction keeps owners)");
    }
    let scratch = tempfile::tempdir().unwrap();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    names.sort();
    assert!(names.len() >= 40, "only {} archives in {}", names.len(), dir.display());
    let mut failures = Vec::new();
    for tar in &names {
        let name = tar.file_name().unwrap().to_string_lossy().into_owned();
        let expect = go_expectation(&name).unwrap();
        match check_archive(tar, &expect, scratch.path()) {
            Some(f) => failures.push(f),
            None => eprintln!("{name}: as Go reads it"),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// CPython's `testtar.tar` (every member type, GNU and PAX long names, every sparse
/// format, V7 and signed-checksum headers, a uid of 4294967295 in base-256).
///
/// As it is, it is refused, as containerd refuses it: `misc/regtype-suntar` is preceded by
/// a Solaris extended header (type 'X', its USTAR prefix `/tmp/PaxHeaders.378`), which Go
/// returns as a member of its own, named `/tmp/PaxHeaders.378/misc/regtype-suntar`, that
/// containerd cannot apply ("unhandled tar
/// header type"); Naiad refuses it (an absolute path, and a type it does not take).
///
/// Without that header it builds to the tree GNU tar extracts. GNU tar agrees with Go on
/// every member then, with two notes:
/// * `gnu/regtype-gnu-uid` has uid and gid 4294967295, which `lchown` takes as "leave as
///   it is": GNU tar's extraction and containerd's both leave the file to root;
/// * `ustar/conttype` is a contiguous file (type '7'), which GNU tar extracts as a regular
///   file and containerd refuses ("unhandled tar header type"); Naiad takes it as GNU tar
///   does.
///
/// The old reader refused the archive without the 'X' header (the uid), and read its PAX
/// sparse files as `GNUSparseFile.0/...` paths.
#[test]
fn cpython_testtar_builds_as_gnu_tar_extracts_it() {
    let test = "cpython_testtar_builds_as_gnu_tar_extracts_it";
    let candidates = [
        "/usr/lib/python3.11/test/testtar.tar",
        "/usr/lib/python3.12/test/archivetestdata/testtar.tar",
        "/usr/lib/python3.13/test/archivetestdata/testtar.tar",
    ];
    let Some(tar) = candidates.iter().map(Path::new).find(|p| p.is_file()) else {
        return skipped(test, "CPython's testtar.tar (apt-get install libpython3.11-testsuite)");
    };
    if !is_root() || !have_gnu_tar() {
        return skipped(test, "root and GNU tar (the reference extraction keeps owners)");
    }
    let scratch = tempfile::tempdir().unwrap();
    let err = build_layer(tar, &scratch.path().join("img")).expect_err("built");
    assert!(err.to_string().contains("entry \"/tmp/PaxHeaders.378/misc/regtype-suntar\""), "{err}");
    let mut bytes = std::fs::read(tar).unwrap();
    let x = (0..bytes.len() / 512)
        .map(|i| i * 512)
        .find(|&at| {
            bytes[at + 156] == b'X' && bytes[at + 345..].starts_with(b"/tmp/PaxHeaders.378")
        })
        .expect("the Solaris 'X' header");
    let size_field = String::from_utf8_lossy(&bytes[x + 124..x + 135]).into_owned();
    let size = usize::from_str_radix(size_field.trim_matches(['\0', ' ']), 8).unwrap();
    bytes.drain(x..x + 512 + size.div_ceil(512) * 512);
    let without_x = scratch.path().join("testtar-without-X.tar");
    std::fs::write(&without_x, bytes).unwrap();
    if let Some(f) = check_archive(&without_x, &Expect::GnuTar, scratch.path()) {
        panic!("{f}");
    }
}

// ---------------------------------------------------------------------------------------------
// GNU tar --sparse, every format
// ---------------------------------------------------------------------------------------------

/// A file with holes and data at odd offsets: data at the start, runs that start and end
/// off any block boundary, a run crossing a chunk boundary, a hole at the end.
fn sparse_file(path: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let size = 3 * CHUNK + 12_345;
    let runs: [(u64, usize); 5] = [
        (0, 777),
        (70_001, 5_000),
        (CHUNK - 3_333, 10_000),
        (2 * CHUNK + 4_097, 1),
        (2 * CHUNK + 600_003, 65_537),
    ];
    let mut want = vec![0u8; size as usize];
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, (off, len)) in runs.iter().enumerate() {
        let data: Vec<u8> = (0..*len).map(|j| (j * 7 + i * 13 + 1) as u8 | 1).collect();
        f.write_all_at(&data, *off).unwrap();
        want[*off as usize..*off as usize + len].copy_from_slice(&data);
    }
    want
}

/// GNU tar `--sparse` archives in every format it writes (old GNU, PAX 0.0, 0.1 and 1.0)
/// build to a file that reads back byte for byte. The old reader made `GNUSparseFile.0/...`
/// paths of the PAX ones.
#[test]
fn gnu_tar_sparse_archives_read_back_byte_for_byte() {
    let test = "gnu_tar_sparse_archives_read_back_byte_for_byte";
    if !have_gnu_tar() {
        return skipped(test, "GNU tar");
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let want = sparse_file(&src.join("holes.bin"));
    let formats: [(&str, &[&str]); 4] = [
        ("gnu", &["--format=gnu"]),
        ("pax-0.0", &["--format=posix", "--sparse-version=0.0"]),
        ("pax-0.1", &["--format=posix", "--sparse-version=0.1"]),
        ("pax-1.0", &["--format=posix"]),
    ];
    for (what, args) in formats {
        let tar = scratch.path().join(format!("{what}.tar"));
        let st = Command::new("tar")
            .args(["--sparse", "--numeric-owner", "--owner=0", "--group=0"])
            .args(args)
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg("holes.bin")
            .status()
            .unwrap();
        assert!(st.success(), "{what}: GNU tar failed");
        let bytes = std::fs::read(&tar).unwrap();
        if what != "gnu" {
            assert!(
                bytes.windows(11).any(|w| w == b"GNU.sparse."),
                "{what}: GNU tar wrote no PAX sparse records"
            );
        }
        let out = scratch.path().join(format!("{what}.img"));
        build_layer(&tar, &out).unwrap_or_else(|e| panic!("{what}: {e}"));
        let tree = image_tree(&out);
        let names: Vec<_> = tree.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        assert_eq!(names, ["holes.bin"], "{what}");
        let e = &tree[&b"holes.bin"[..]];
        assert_eq!((e.kind, e.size), ('f', want.len() as u64), "{what}");
        assert_eq!(e.content, bytes_digest(&want), "{what}: contents differ");
        assert_eq!(read_file(&out, "/holes.bin"), want, "{what}: contents differ");
    }
}

/// The MD5 sum of bytes, by `md5sum`.
fn md5(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// The whole contents of one file of a built image.
fn read_file(out: &Path, path: &str) -> Vec<u8> {
    let bs = Bootstrap::open(std::fs::read(out.join("bootstrap")).unwrap()).unwrap();
    let ext = bs.extension();
    let ino = bs.lookup(path.as_bytes()).unwrap();
    let mut data = vec![0u8; ino.size as usize];
    let cs = ino.chunk_size();
    for i in 0..ino.chunk_count() {
        if let ChunkSlot::Data(rec) = bs.chunk(&ino, i).unwrap() {
            let digest = ext.blobs[rec.blob_index as usize].digest;
            let blob = std::fs::read(out.join(to_hex(&digest))).unwrap();
            let start = rec.compressed_offset as usize;
            let mut frame = Vec::new();
            decompress_into(
                rec.compressor,
                &blob[start..start + rec.compressed_size as usize],
                rec.frame_size,
                &mut frame,
                || "frame".into(),
            )
            .unwrap();
            let off = rec.frame_offset as usize;
            let at = (i * cs) as usize;
            data[at..at + rec.size as usize].copy_from_slice(&frame[off..off + rec.size as usize]);
        }
    }
    data
}

// ---------------------------------------------------------------------------------------------
// Hand-made headers
// ---------------------------------------------------------------------------------------------

/// An octal field of `width` bytes, NUL-terminated.
fn octal(v: u64, width: usize) -> Vec<u8> {
    let mut s = format!("{v:0w$o}", w = width - 1).into_bytes();
    s.push(0);
    s
}

/// A USTAR header; `fields` overwrite byte ranges before the checksum is computed.
fn header(name: &str, typ: u8, size: u64, fields: &[(usize, &[u8])]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(&octal(0o644, 8));
    h[108..116].copy_from_slice(&octal(1000, 8));
    h[116..124].copy_from_slice(&octal(1000, 8));
    h[124..136].copy_from_slice(&octal(size, 12));
    h[136..148].copy_from_slice(&octal(1_700_000_000, 12));
    h[156] = typ;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    for (at, bytes) in fields {
        h[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(&octal(u64::from(sum), 8));
    h
}

/// Data padded to whole blocks.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// A member with its data.
fn member(h: Vec<u8>, data: &[u8]) -> Vec<u8> {
    let mut v = h;
    v.extend(padded(data));
    v
}

/// PAX records `len key=value\n`.
fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest_len = 1 + k.len() + 1 + v.len() + 1;
        let mut len = rest_len + 1;
        while len.to_string().len() + rest_len != len {
            len += 1;
        }
        body.extend(format!("{len} {k}=").into_bytes());
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    body
}

/// A PAX header member holding `records`.
fn pax_member(records: &[(&str, &[u8])]) -> Vec<u8> {
    let body = pax(records);
    member(header("PaxHeaders/x", b'x', body.len() as u64, &[]), &body)
}

/// A whole archive: members, then the two zero blocks.
fn archive(members: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Vec<u8> = members.concat();
    v.extend([0u8; 1024]);
    v
}

/// Builds a hand-made archive and returns its tree.
fn built_tree(tar: &[u8]) -> (Tree, BuildSummary) {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("img");
    let summary = build_bytes(tar, &out).unwrap_or_else(|e| panic!("refused: {e}"));
    (image_tree(&out), summary)
}

/// Empty numeric uid, gid and mtime fields (all NULs, or all spaces) read as 0, as Go reads
/// them (`nil-uid.tar` of Go's test data is such a file). The old reader refused them.
#[test]
fn empty_numeric_fields_read_as_zero() {
    let tar = archive(&[
        member(header("nuls", b'0', 5, &[(108, &[0; 8]), (116, &[0; 8])]), b"hello"),
        member(header("spaces", b'0', 3, &[(108, b"        "), (116, b"       \0")]), b"abc"),
    ]);
    let (tree, _) = built_tree(&tar);
    for name in ["nuls", "spaces"] {
        let e = &tree[name.as_bytes()];
        assert_eq!((e.kind, e.uid, e.gid), ('f', 0, 0), "{name}");
    }
    assert_eq!(tree[&b"nuls"[..]].content, bytes_digest(b"hello"));
}

/// Two GNU long names (and two long links) before one member: the last of each wins, as in
/// Go, GNU and BSD tar. The old reader refused the layer.
#[test]
fn repeated_gnu_long_names_last_one_wins() {
    let long = |typ: u8, name: &str| {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        member(header("././@LongLink", typ, data.len() as u64, &[]), &data)
    };
    let tar = archive(&[
        long(b'L', "first/long-name"),
        long(b'L', "second/long-name"),
        long(b'K', "first-target"),
        long(b'K', "second-target"),
        header("short", b'2', 0, &[]),
    ]);
    let (tree, _) = built_tree(&tar);
    let names: Vec<_> = tree.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(names, ["second", "second/long-name"]);
    let e = &tree[&b"second/long-name"[..]];
    assert_eq!((e.kind, e.link.as_slice()), ('l', &b"second-target"[..]));
}

/// Two PAX headers before one member: the last one wins, as in Go (the reader containerd
/// uses), which takes the last header whole: a record of the first that the second does
/// not repeat is dropped too. The old reader refused the layer.
#[test]
fn repeated_pax_headers_last_one_wins() {
    let tar = archive(&[
        pax_member(&[("path", b"first-name"), ("uid", b"111"), ("SCHILY.xattr.user.a", b"1")]),
        pax_member(&[("path", b"second-name"), ("gid", b"222"), ("SCHILY.xattr.user.b", b"2")]),
        member(header("header-name", b'0', 2, &[]), b"hi"),
    ]);
    let (tree, _) = built_tree(&tar);
    let names: Vec<_> = tree.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(names, ["second-name"]);
    let e = &tree[&b"second-name"[..]];
    assert_eq!((e.uid, e.gid), (1000, 222));
    assert_eq!(e.xattrs, vec![(b"user.b".to_vec(), b"2".to_vec())]);
}

/// uid and gid 4294967295 (in base-256 header fields, or PAX records), and PAX -1: `lchown`
/// takes them as "leave the owner as it is", so containerd leaves such a file to the user
/// it runs as, root. The old reader refused the layer.
#[test]
fn uid_4294967295_is_owned_by_root() {
    let b256: &[u8] = &[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
    let tar = archive(&[
        member(header("base256", b'0', 1, &[(108, b256), (116, b256)]), b"a"),
        pax_member(&[("uid", b"4294967295"), ("gid", b"-1")]),
        member(header("pax", b'0', 1, &[]), b"b"),
        pax_member(&[("uid", b"4294967294")]),
        member(header("largest", b'0', 1, &[]), b"c"),
    ]);
    let (tree, _) = built_tree(&tar);
    assert_eq!((tree[&b"base256"[..]].uid, tree[&b"base256"[..]].gid), (0, 0));
    assert_eq!((tree[&b"pax"[..]].uid, tree[&b"pax"[..]].gid), (0, 0));
    assert_eq!((tree[&b"largest"[..]].uid, tree[&b"largest"[..]].gid), (4_294_967_294, 1000));
}

/// A `trusted.overlay.opaque` xattr in a layer is dropped (with a warning), so a layer can
/// never hand overlayfs its own attributes; `user.x` on the same file is kept. The old
/// reader kept it.
#[test]
fn trusted_xattrs_of_a_layer_are_dropped() {
    let tar = archive(&[
        pax_member(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.x", b"kept"),
        ]),
        header("dir/", b'5', 0, &[]),
    ]);
    let (tree, summary) = built_tree(&tar);
    assert_eq!(tree[&b"dir"[..]].xattrs, vec![(b"user.x".to_vec(), b"kept".to_vec())]);
    assert!(
        summary.warnings.iter().any(|w| w.contains("trusted.* xattr(s) dropped")),
        "{:?}",
        summary.warnings
    );
}

/// A directory source keeps its `trusted.*` xattrs (setting them needs root).
#[test]
fn trusted_xattrs_of_a_directory_source_are_kept() {
    let test = "trusted_xattrs_of_a_directory_source_are_kept";
    if !is_root() {
        return skipped(test, "root (to set trusted.* xattrs)");
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    if let Err(e) = xattr::set(src.join("d"), "trusted.overlay.opaque", b"y") {
        return skipped(test, &format!("a filesystem with trusted.* xattrs ({e})"));
    }
    let out = scratch.path().join("img");
    let opts = BuildOptions { chunk_size: CHUNK as u32, ..BuildOptions::default() };
    build(Source::Dir(src), opts, &out).unwrap();
    let tree = image_tree(&out);
    assert_eq!(tree[&b"d"[..]].xattrs, vec![(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())]);
}

/// Hostile sparse maps are refused before anything is allocated from them: a PAX 1.0 map
/// claiming more entries than its data could hold, a 0.1 map whose count disagrees with its
/// list, an old GNU map running past the file, and data left over after the map's runs.
#[test]
fn hostile_sparse_maps_are_refused() {
    let sparse_1_0 = |map: &[u8], real: &[u8]| {
        archive(&[
            pax_member(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"f"),
                ("GNU.sparse.realsize", real),
            ]),
            member(header("GNUSparseFile.0/f", b'0', padded(map).len() as u64, &[]), map),
        ])
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("1.0 huge count", sparse_1_0(b"999999999999\n", b"10"), "entries"),
        ("1.0 past the file", sparse_1_0(b"1\n5\n10\n", b"10"), "past the file"),
        (
            "0.1 count disagrees",
            archive(&[
                pax_member(&[
                    ("GNU.sparse.numblocks", b"3"),
                    ("GNU.sparse.map", b"0,1"),
                    ("GNU.sparse.size", b"10"),
                ]),
                member(header("f", b'0', 1, &[]), b"x"),
            ]),
            "numblocks",
        ),
        (
            "0.1 unreferenced data",
            archive(&[
                pax_member(&[
                    ("GNU.sparse.numblocks", b"1"),
                    ("GNU.sparse.map", b"0,1"),
                    ("GNU.sparse.size", b"10"),
                ]),
                member(header("f", b'0', 2, &[]), b"xy"),
            ]),
            "sparse map lists 1 bytes",
        ),
    ];
    for (what, tar, text) in cases {
        let scratch = tempfile::tempdir().unwrap();
        let err = build_bytes(&tar, &scratch.path().join("img"))
            .err()
            .unwrap_or_else(|| panic!("{what}: built"));
        let msg = err.to_string();
        assert!(msg.contains(text), "{what}: {msg}");
        assert!(msg.contains("entry \"f\""), "{what}: the error names the entry: {msg}");
    }
}
