//! Hostile and damaged input, driven through the `naiad` binary: every case must fail with a
//! clear message naming the problem, never panic or hang, and never write outside the output
//! directory it was given.
//!
//! Tar layers are crafted by hand (ustar headers with correct checksums, gzip with stored
//! deflate blocks) so that each test controls every byte of the hostile field.

use crate::support as common;

use common::noise;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NAIAD: &str = env!("CARGO_BIN_EXE_naiad");
/// A command still running after this long is killed and the test fails (a hang).
const HARD_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Non-zero exit, no panic, and an `naiad: error:` / `naiad: check:` line on stderr.
    fn assert_clean_failure(&self) {
        assert!(self.code.is_some_and(|c| c != 0), "expected a failure: {}", self.describe());
        assert_ne!(self.code, Some(101), "exit code 101 is a Rust panic: {}", self.describe());
        assert!(!self.stderr.contains("panicked"), "panicked: {}", self.describe());
        assert!(
            self.stderr.contains("naiad: error:") || self.stderr.contains("naiad: check:"),
            "no naiad error line on stderr: {}",
            self.describe()
        );
    }

    fn assert_stderr_has(&self, phrase: &str) {
        assert!(self.stderr.contains(phrase), "stderr lacks {phrase:?}: {}", self.describe());
    }

    fn assert_stderr_has_any(&self, phrases: &[&str]) {
        assert!(
            phrases.iter().any(|p| self.stderr.contains(p)),
            "stderr lacks all of {phrases:?}: {}",
            self.describe()
        );
    }
}

/// Runs `naiad ARGS` with stdout and stderr sent to files (no pipe can fill up), killing it
/// after [`HARD_TIMEOUT`].
fn naiad(args: &[&std::ffi::OsStr]) -> Run {
    run_bounded(NAIAD, args)
}

/// Runs `program ARGS` that way.
fn run_bounded(program: &str, args: &[&std::ffi::OsStr]) -> Run {
    let logs = tempfile::tempdir().unwrap();
    let out_path = logs.path().join("stdout");
    let err_path = logs.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > HARD_TIMEOUT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "{program} {:?} still running after {:?} (hang); stderr so far:\n{}",
                args,
                HARD_TIMEOUT,
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code(),
        stdout: fs::read_to_string(&out_path).unwrap(),
        stderr: fs::read_to_string(&err_path).unwrap(),
        elapsed: started.elapsed(),
    }
}

macro_rules! naiad {
    ($($a:expr),* $(,)?) => { naiad(&[$(std::ffi::OsStr::new(&$a)),*]) };
}

// ---------------------------------------------------------------------------------------------
// A sandbox: a fresh temp dir holding the inputs, the output and an empty sentinel directory
// ---------------------------------------------------------------------------------------------

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("in")).unwrap();
        fs::create_dir(dir.path().join("sentinel")).unwrap();
        Sandbox { dir }
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn input(&self, name: &str) -> PathBuf {
        self.root().join("in").join(name)
    }
    fn out(&self) -> PathBuf {
        self.root().join("out")
    }
    fn sentinel(&self) -> PathBuf {
        self.root().join("sentinel")
    }

    /// Nothing but `in`, `sentinel` and `allowed` appeared in the sandbox, and the sentinel
    /// (also the target of hostile symlinks) is still empty.
    fn assert_nothing_outside(&self, allowed: &[&str]) {
        let mut expect: BTreeSet<String> =
            ["in", "sentinel"].iter().map(|s| s.to_string()).collect();
        expect.extend(allowed.iter().map(|s| s.to_string()));
        let found: BTreeSet<String> = fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let extra: Vec<_> = found.difference(&expect).collect();
        assert!(extra.is_empty(), "unexpected entries next to the output: {extra:?}");
        let inside: Vec<_> =
            fs::read_dir(self.sentinel()).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(inside.is_empty(), "something was written into the sentinel dir: {inside:?}");
    }

    /// A failed build left no bootstrap (and no temporary file) a later run could trust.
    fn assert_no_bootstrap(&self) {
        let Ok(rd) = fs::read_dir(self.out()) else { return };
        for e in rd {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                name != "bootstrap" && !name.starts_with(".naiad-tmp"),
                "failed build left {name} in the output dir"
            );
        }
    }

    /// Builds a layer tar and expects a clean failure with nothing outside `out`.
    fn build_layer_expect_failure(&self, layer_bytes: &[u8]) -> Run {
        let layer = self.input("layer.tar");
        fs::write(&layer, layer_bytes).unwrap();
        let r = naiad!("build", layer, "-o", self.out());
        r.assert_clean_failure();
        self.assert_nothing_outside(&["out"]);
        self.assert_no_bootstrap();
        r
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-made tar and gzip
// ---------------------------------------------------------------------------------------------

const REGULAR: u8 = b'0';
const HARDLINK: u8 = b'1';
const SYMLINK: u8 = b'2';

fn octal(n: u64, width: usize) -> Vec<u8> {
    let s = format!("{n:0w$o}\0", w = width - 1);
    assert_eq!(s.len(), width, "{n} does not fit {width} octal bytes");
    s.into_bytes()
}

/// A 12-byte GNU base-256 field: two's complement, high bit of the first byte set.
fn base256(n: i128) -> [u8; 12] {
    let mut out = [0u8; 12];
    let bytes = n.to_be_bytes(); // 16 bytes, sign-extended
    out.copy_from_slice(&bytes[4..]);
    out[0] |= 0x80;
    out
}

/// One 512-byte ustar header with a correct (or, with `corrupt_checksum`, wrong) checksum.
fn header_raw(
    name: &[u8],
    typ: u8,
    size_field: &[u8],
    link: &[u8],
    corrupt_checksum: bool,
) -> [u8; 512] {
    assert!(name.len() <= 100 && link.len() <= 100 && size_field.len() == 12);
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(&octal(0o644, 8));
    h[108..116].copy_from_slice(&octal(0, 8));
    h[116..124].copy_from_slice(&octal(0, 8));
    h[124..136].copy_from_slice(size_field);
    h[136..148].copy_from_slice(&octal(1_700_000_000, 12));
    h[148..156].copy_from_slice(b"        ");
    h[156] = typ;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let mut sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    if corrupt_checksum {
        sum += 1;
    }
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn header(name: &str, typ: u8, size: u64, link: &str) -> [u8; 512] {
    header_raw(name.as_bytes(), typ, &octal(size, 12), link.as_bytes(), false)
}

/// Data padded to a whole number of 512-byte records.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// A regular file entry with its data.
fn file_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut v = header(name, REGULAR, data.len() as u64, "").to_vec();
    v.extend(padded(data));
    v
}

/// Entries followed by the two zero records that end an archive.
fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Vec<u8> = entries.concat();
    v.extend([0u8; 1024]);
    v
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A valid gzip member of `data` made of stored (uncompressed) deflate blocks.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let blocks: Vec<&[u8]> =
        if data.is_empty() { vec![&[][..]] } else { data.chunks(65535).collect() };
    for (i, b) in blocks.iter().enumerate() {
        v.push(u8::from(i + 1 == blocks.len())); // BFINAL, BTYPE = 00 (stored)
        let len = b.len() as u16;
        v.extend(len.to_le_bytes());
        v.extend((!len).to_le_bytes());
        v.extend_from_slice(b);
    }
    v.extend(crc32(data).to_le_bytes());
    v.extend((data.len() as u32).to_le_bytes());
    v
}

// ---------------------------------------------------------------------------------------------
// Control: the hand-made formats are valid, so the failures below come from the damage alone
// ---------------------------------------------------------------------------------------------

#[test]
fn control_handmade_tar_and_gzip_build_and_check() {
    let sb = Sandbox::new();
    let tar = tar_of(&[
        header("dir/", b'5', 0, "").to_vec(),
        file_entry("dir/payload", &noise(200_000, 1)),
        header("dir/link", SYMLINK, 0, "payload").to_vec(),
        header("dir/hard", HARDLINK, 0, "dir/payload").to_vec(),
        file_entry("small", b"hello"),
    ]);
    fs::write(sb.input("plain.tar"), &tar).unwrap();
    fs::write(sb.input("layer.tar.gz"), gzip_stored(&tar)).unwrap();
    for (src, out) in [("plain.tar", "out"), ("layer.tar.gz", "out-gz")] {
        let out = sb.root().join(out);
        let r = naiad!("build", sb.input(src), "-o", out);
        assert_eq!(r.code, Some(0), "{src}: {}", r.describe());
        let r = naiad!("check", out.join("bootstrap"), "--blob-dir", out);
        assert_eq!(r.code, Some(0), "{src}: {}", r.describe());
    }
    // Both give the same blob (same data, same chunking).
    let names = |d: &str| -> BTreeSet<String> {
        fs::read_dir(sb.root().join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names("out"), names("out-gz"));
    sb.assert_nothing_outside(&["out", "out-gz"]);
}

// ---------------------------------------------------------------------------------------------
// Hostile tar layers
// ---------------------------------------------------------------------------------------------

/// 1. `../evil` escapes the root.
#[test]
fn tar_entry_with_dotdot_is_refused() {
    let sb = Sandbox::new();
    let r = sb.build_layer_expect_failure(&tar_of(&[file_entry("../evil", b"pwned")]));
    r.assert_stderr_has("\"../evil\"");
    r.assert_stderr_has("'..'");
    r.assert_stderr_has("escapes the root");
    assert!(!sb.root().join("evil").exists());
}

/// 1b. `..` in the middle of a path, after a real directory.
#[test]
fn tar_entry_with_inner_dotdot_is_refused() {
    let sb = Sandbox::new();
    let r = sb
        .build_layer_expect_failure(&tar_of(&[file_entry("a/b/../../../sentinel/evil", b"pwned")]));
    r.assert_stderr_has("\"a/b/../../../sentinel/evil\"");
    r.assert_stderr_has("'..'");
}

/// 2. `/etc/evil` is absolute: refused, not silently made relative.
#[test]
fn tar_entry_with_absolute_path_is_refused() {
    let sb = Sandbox::new();
    let target = sb.sentinel().join("evil");
    let name = target.to_str().unwrap().to_string();
    for name in ["/etc/evil".to_string(), name] {
        let r = sb.build_layer_expect_failure(&tar_of(&[file_entry(&name, b"pwned")]));
        r.assert_stderr_has(&format!("{name:?}"));
        r.assert_stderr_has("absolute path");
    }
    assert!(!target.exists());
}

/// 3. A symlink to a directory outside, then a file "inside" it: a write through the symlink.
#[test]
fn tar_write_through_symlink_is_refused() {
    let sb = Sandbox::new();
    let outside = sb.sentinel();
    for target in ["/tmp", outside.to_str().unwrap()] {
        let r = sb.build_layer_expect_failure(&tar_of(&[
            header("link", SYMLINK, 0, target).to_vec(),
            file_entry("link/evil", b"pwned"),
        ]));
        r.assert_stderr_has("\"link/evil\"");
        r.assert_stderr_has("symlink");
        r.assert_stderr_has("\"link\"");
    }
    // Also a directory entry and a hardlink placed under the symlink.
    let r = sb.build_layer_expect_failure(&tar_of(&[
        header("link", SYMLINK, 0, outside.to_str().unwrap()).to_vec(),
        header("link/sub/", b'5', 0, "").to_vec(),
    ]));
    r.assert_stderr_has("symlink");
    let r = sb.build_layer_expect_failure(&tar_of(&[
        file_entry("real", b"data"),
        header("link", SYMLINK, 0, outside.to_str().unwrap()).to_vec(),
        header("link/evil", HARDLINK, 0, "real").to_vec(),
    ]));
    r.assert_stderr_has("\"link/evil\"");
    r.assert_stderr_has("symlink");
}

/// 4. A hardlink to a path no earlier entry made.
#[test]
fn tar_hardlink_to_missing_target_is_refused() {
    let sb = Sandbox::new();
    let r = sb.build_layer_expect_failure(&tar_of(&[
        file_entry("present", b"x"),
        header("a", HARDLINK, 0, "missing").to_vec(),
    ]));
    r.assert_stderr_has("entry \"a\"");
    r.assert_stderr_has("\"missing\"");
    r.assert_stderr_has("does not exist");
    // A hardlink whose target escapes the root is refused as such.
    let r = sb.build_layer_expect_failure(&tar_of(&[
        header("b", HARDLINK, 0, "../../etc/passwd").to_vec()
    ]));
    r.assert_stderr_has("entry \"b\"");
    r.assert_stderr_has("hardlink target");
    r.assert_stderr_has("'..'");
}

/// Case 5: a regular file claiming 1 TiB (base-256) or 8 GiB (largest octal) in a tiny stream
/// gets a clear "ends after" error, at once.
#[test]
fn tar_entry_claiming_huge_size_fails_fast() {
    let sb = Sandbox::new();
    let tib: u64 = 1 << 40;
    let fields: [(Vec<u8>, u64); 2] =
        [(base256(i128::from(tib)).to_vec(), tib), (b"77777777777\0".to_vec(), 0o77777777777)];
    for (field, claimed) in fields {
        let mut layer = header_raw(b"big", REGULAR, &field, b"", false).to_vec();
        layer.extend(padded(b"only a few bytes follow"));
        let r = sb.build_layer_expect_failure(&layer);
        r.assert_stderr_has("entry \"big\"");
        r.assert_stderr_has("ends after");
        r.assert_stderr_has(&claimed.to_string());
        assert!(r.elapsed < Duration::from_secs(10), "took {:?}: {}", r.elapsed, r.describe());
    }
}

/// 6a. Size field -1 in base-256.
#[test]
fn tar_entry_with_negative_size_minus_one_is_refused() {
    let sb = Sandbox::new();
    let mut layer = header_raw(b"neg", REGULAR, &base256(-1), b"", false).to_vec();
    layer.extend(padded(b"hello"));
    layer.extend([0u8; 1024]);
    let r = sb.build_layer_expect_failure(&layer);
    r.assert_stderr_has("size");
    assert!(r.elapsed < Duration::from_secs(10), "{}", r.describe());
}

/// 6b. Size field -1024 in base-256.
#[test]
fn tar_entry_with_negative_size_minus_1024_is_refused() {
    let sb = Sandbox::new();
    let mut layer = header_raw(b"neg", REGULAR, &base256(-1024), b"", false).to_vec();
    layer.extend(padded(b"hello"));
    layer.extend([0u8; 1024]);
    let r = sb.build_layer_expect_failure(&layer);
    r.assert_stderr_has("\"neg\"");
    r.assert_stderr_has_any(&["size", "ends after"]);
    assert!(r.elapsed < Duration::from_secs(10), "{}", r.describe());
}

/// 6c. A negative base-256 size whose low 64 bits read as 5 (-(2^64) + 5, field
/// `ff ff ff ff 00 00 00 00 00 00 00 05`). It is negative, so the entry must be refused, not
/// read as a 5-byte file.
#[test]
fn tar_entry_with_negative_size_whose_low_bits_look_small_is_refused() {
    let sb = Sandbox::new();
    let field = base256(-(1i128 << 64) + 5);
    assert_eq!(field, [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 5]);
    let mut layer = header_raw(b"neg", REGULAR, &field, b"", false).to_vec();
    layer.extend(padded(b"hello"));
    layer.extend([0u8; 1024]);
    let r = sb.build_layer_expect_failure(&layer);
    r.assert_stderr_has_any(&["negative", "size"]);
}

/// 7. A header whose checksum is off by one.
#[test]
fn tar_header_with_bad_checksum_is_refused() {
    let sb = Sandbox::new();
    let mut layer = header_raw(b"f", REGULAR, &octal(5, 12), b"", true).to_vec();
    layer.extend(padded(b"hello"));
    layer.extend([0u8; 1024]);
    let r = sb.build_layer_expect_failure(&layer);
    r.assert_stderr_has("checksum");
    r.assert_stderr_has("tar header");

    // The same after a good entry: the error still comes, and nothing of the first entry
    // is kept as a bootstrap.
    let mut layer = file_entry("good", b"fine");
    layer.extend(header_raw(b"bad", REGULAR, &octal(5, 12), b"", true));
    layer.extend(padded(b"hello"));
    layer.extend([0u8; 1024]);
    let r = sb.build_layer_expect_failure(&layer);
    r.assert_stderr_has("checksum");
}

/// 8. A gzip layer cut in the middle of an entry's data, and one cut in its header.
#[test]
fn truncated_gzip_layer_is_refused() {
    let sb = Sandbox::new();
    let tar = tar_of(&[file_entry("first", b"abc"), file_entry("payload", &noise(300_000, 2))]);
    let gz = gzip_stored(&tar);
    // Cut inside the data of "payload" (well past the 1024 bytes of "first").
    let r = sb.build_layer_expect_failure(&gz[..gz.len() / 2]);
    r.assert_stderr_has("\"payload\"");
    r.assert_stderr_has_any(&[
        "deflate",
        "unexpected end",
        "ends after",
        "truncated",
        "incomplete",
        "eof",
        "EOF",
    ]);
    // Cut inside the gzip header itself.
    let r = sb.build_layer_expect_failure(&gz[..6]);
    r.assert_stderr_has("layer");
    // Cut inside the tar header of the second entry.
    let r = sb.build_layer_expect_failure(&gz[..10 + 5 + 1024 + 100]);
    r.assert_stderr_has("layer");
}

/// 8b. A gzip layer whose every tar byte is present but whose gzip trailer (CRC-32 and
/// length) is cut off, or whose CRC-32 is wrong: the layer's integrity cannot be (or is not)
/// established, so it must be refused rather than built.
#[test]
fn gzip_layer_with_missing_or_wrong_trailer_is_refused() {
    let sb = Sandbox::new();
    let tar = tar_of(&[file_entry("first", b"abc"), file_entry("payload", &noise(300_000, 2))]);
    let gz = gzip_stored(&tar);
    // Cut just before the CRC/size trailer.
    let r = sb.build_layer_expect_failure(&gz[..gz.len() - 8]);
    r.assert_stderr_has("layer");
    // Whole, but with a wrong CRC-32.
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 8] ^= 0xff;
    let r = sb.build_layer_expect_failure(&bad);
    r.assert_stderr_has("layer");
}

// ---------------------------------------------------------------------------------------------
// Damaged images: bootstrap and blobs
// ---------------------------------------------------------------------------------------------

/// A valid image of a small tree (a few KB files, one of 3 MB) in `img/`, its blobs in
/// `blobs/`; returns (bootstrap path, blob dir, blob digests).
fn build_image(sb: &Sandbox) -> (PathBuf, PathBuf, Vec<String>) {
    let tree = sb.input("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    fs::write(tree.join("a.txt"), noise(3000, 3)).unwrap();
    fs::write(tree.join("sub/b.bin"), noise(5000, 4)).unwrap();
    fs::write(tree.join("sub/deeper/c"), noise(7000, 5)).unwrap();
    fs::write(tree.join("big"), noise(3 << 20, 6)).unwrap();
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    let img = sb.root().join("img");
    let r = naiad!("build", tree, "-o", img);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let blobs = sb.root().join("blobs");
    fs::create_dir(&blobs).unwrap();
    let mut digests = Vec::new();
    for e in fs::read_dir(&img).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "bootstrap" {
            assert_eq!(name.len(), 64, "unexpected file {name} in the output");
            fs::rename(e.path(), blobs.join(&name)).unwrap();
            digests.push(name);
        }
    }
    assert_eq!(digests.len(), 1, "one source, one blob");
    let bootstrap = img.join("bootstrap");
    let r = naiad!("check", bootstrap, "--blob-dir", blobs);
    assert_eq!(r.code, Some(0), "the fresh image must check clean: {}", r.describe());
    (bootstrap, blobs, digests)
}

/// Unpacks to `out` (a dir, or a tar file with `--tar`) and expects a clean failure with
/// nothing written outside it. Returns the run.
fn unpack_expect_failure(sb: &Sandbox, bootstrap: &Path, blobs: &Path, tar: bool) -> Run {
    let _ = fs::remove_dir_all(sb.out());
    let _ = fs::remove_file(sb.out());
    let r = if tar {
        naiad!("unpack", bootstrap, "--blob-dir", blobs, "-o", sb.out(), "--tar")
    } else {
        naiad!("unpack", bootstrap, "--blob-dir", blobs, "-o", sb.out())
    };
    r.assert_clean_failure();
    sb.assert_nothing_outside(&["out", "img", "blobs"]);
    if tar {
        assert!(!sb.out().exists(), "a failed --tar unpack left its output behind");
    }
    r
}

/// 9. A bootstrap cut to half its length (and by one byte, to 10 bytes and to 0 bytes).
#[test]
fn truncated_bootstrap_is_refused_by_check_and_unpack() {
    let sb = Sandbox::new();
    let (bootstrap, blobs, _) = build_image(&sb);
    let full = fs::read(&bootstrap).unwrap();
    for len in [full.len() / 2, full.len() - 1, 10, 0] {
        fs::write(&bootstrap, &full[..len]).unwrap();
        let r = naiad!("check", bootstrap);
        r.assert_clean_failure();
        assert_eq!(r.code, Some(1), "{}", r.describe());
        r.assert_stderr_has("naiad: check: bootstrap");
        r.assert_stderr_has("trailer");
        r.assert_stderr_has("truncated");
        let r = naiad!("check", bootstrap, "--blob-dir", blobs);
        assert_eq!(r.code, Some(1), "{}", r.describe());
        r.assert_stderr_has("trailer");
        for tar in [false, true] {
            let r = unpack_expect_failure(&sb, &bootstrap, &blobs, tar);
            r.assert_stderr_has("is not valid");
            r.assert_stderr_has("trailer");
            assert!(
                !sb.out().exists() || fs::read_dir(sb.out()).unwrap().next().is_none(),
                "unpack of a bad bootstrap wrote entries"
            );
        }
    }
}

/// 9b. One damaged trailer is one problem, not two.
#[test]
fn truncated_bootstrap_problem_is_reported_once() {
    let sb = Sandbox::new();
    let (bootstrap, _, _) = build_image(&sb);
    let full = fs::read(&bootstrap).unwrap();
    fs::write(&bootstrap, &full[..full.len() / 2]).unwrap();
    let r = naiad!("check", bootstrap);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    let lines = r.stderr.lines().filter(|l| l.contains("trailer")).count();
    assert_eq!(lines, 1, "the trailer problem should be listed once: {}", r.describe());
    r.assert_stderr_has("1 problem(s)");
}

/// Offset of the root inode's mtime in a bootstrap (superblock at 1024: `root_nid` u16 at
/// +14, `meta_blkaddr` u32 at +40; an extended inode keeps `i_mtime` at +32).
fn root_inode_mtime_offset(bs: &[u8]) -> usize {
    let sb = &bs[1024..1024 + 128];
    assert_eq!(&sb[..4], &0xE0F5_E1E2u32.to_le_bytes(), "EROFS superblock magic");
    let root_nid = u16::from_le_bytes([sb[14], sb[15]]) as usize;
    let meta_blkaddr = u32::from_le_bytes(sb[40..44].try_into().unwrap()) as usize;
    let inode = meta_blkaddr * 4096 + root_nid * 32;
    let format = u16::from_le_bytes([bs[inode], bs[inode + 1]]);
    assert_eq!(format & 1, 1, "root inode is extended");
    inode + 32
}

/// 10. One bit flipped inside an inode of the EROFS area.
#[test]
fn bootstrap_bit_flip_in_an_inode_is_found_and_located() {
    let sb = Sandbox::new();
    let (bootstrap, blobs, _) = build_image(&sb);
    let mut bytes = fs::read(&bootstrap).unwrap();
    let at = root_inode_mtime_offset(&bytes);
    assert!(at > 1152 && at < 4096, "the flipped byte {at} lies in block 0 after the superblock");
    bytes[at] ^= 0x01;
    fs::write(&bootstrap, &bytes).unwrap();
    for with_blobs in [false, true] {
        let r = if with_blobs {
            naiad!("check", bootstrap, "--blob-dir", blobs)
        } else {
            naiad!("check", bootstrap)
        };
        r.assert_clean_failure();
        assert_eq!(r.code, Some(1), "{}", r.describe());
        r.assert_stderr_has("digest mismatch");
        r.assert_stderr_has("bootstrap block 0");
        r.assert_stderr_has("damaged");
        // The block holds the root inode, so the root is named as an owner.
        let line = r.stderr.lines().find(|l| l.contains("bootstrap block 0")).unwrap();
        assert!(line.contains("holds /"), "damaged block should name the root: {line}");
    }
    for tar in [false, true] {
        let r = unpack_expect_failure(&sb, &bootstrap, &blobs, tar);
        r.assert_stderr_has("is not valid");
        r.assert_stderr_has("digest mismatch");
    }
}

/// Flips one byte in the middle of a blob's frames (before its TOC).
fn flip_blob_data_byte(blob: &Path) {
    let mut b = fs::read(blob).unwrap();
    let trailer = &b[b.len() - 64..];
    assert_eq!(&trailer[..8], b"NAIADBL1");
    let toc_offset = u64::from_le_bytes(trailer[8..16].try_into().unwrap()) as usize;
    assert!(toc_offset > 1 << 20, "frames hold the 3 MB of data");
    b[toc_offset / 2] ^= 0x5a;
    fs::write(blob, b).unwrap();
}

/// 11. One byte flipped in a blob's data.
#[test]
fn blob_with_flipped_data_byte_fails_check_and_unpack() {
    let sb = Sandbox::new();
    let (bootstrap, blobs, digests) = build_image(&sb);
    let digest = &digests[0];
    flip_blob_data_byte(&blobs.join(digest));
    let r = naiad!("check", bootstrap, "--blob-dir", blobs);
    r.assert_clean_failure();
    assert_eq!(r.code, Some(1), "{}", r.describe());
    r.assert_stderr_has(&format!("naiad: check: blob {digest}"));
    r.assert_stderr_has("digest");
    // Without blobs the bootstrap alone is sound.
    let r = naiad!("check", bootstrap);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    for tar in [false, true] {
        let r = unpack_expect_failure(&sb, &bootstrap, &blobs, tar);
        r.assert_stderr_has(&format!("blob {digest}"));
        r.assert_stderr_has("chunk at view offset");
        r.assert_stderr_has_any(&["digest mismatch", "decompression"]);
    }
}

/// 11b. The unpack error chain is printed once, not repeated.
#[test]
fn unpack_error_message_is_not_repeated() {
    let sb = Sandbox::new();
    let (bootstrap, blobs, digests) = build_image(&sb);
    flip_blob_data_byte(&blobs.join(&digests[0]));
    let r = unpack_expect_failure(&sb, &bootstrap, &blobs, false);
    let n = r.stderr.matches("chunk at view offset").count();
    assert_eq!(n, 1, "the same error is printed {n} times: {}", r.describe());
}

/// 12. A blob cut to half its length (and by one byte, and to 10 bytes).
#[test]
fn truncated_blob_fails_check_and_unpack() {
    let sb = Sandbox::new();
    let (bootstrap, blobs, digests) = build_image(&sb);
    let digest = &digests[0];
    let path = blobs.join(digest);
    let full = fs::read(&path).unwrap();
    for len in [full.len() / 2, full.len() - 1, 10] {
        fs::write(&path, &full[..len]).unwrap();
        let r = naiad!("check", bootstrap, "--blob-dir", blobs);
        r.assert_clean_failure();
        assert_eq!(r.code, Some(1), "{len} bytes: {}", r.describe());
        r.assert_stderr_has(&format!("naiad: check: blob {digest}"));
        r.assert_stderr_has("truncated");
    }
    // Cut in the frames: unpack cannot read the data and must say which blob.
    fs::write(&path, &full[..full.len() / 2]).unwrap();
    for tar in [false, true] {
        let r = unpack_expect_failure(&sb, &bootstrap, &blobs, tar);
        r.assert_stderr_has(&format!("blob {digest}"));
        r.assert_stderr_has("chunk");
    }
    // Cut by one byte, in the blob trailer: unpack reads only frames, each verified against
    // the bootstrap's digests, so it may succeed, but then every file must be exact.
    fs::write(&path, &full[..full.len() - 1]).unwrap();
    let _ = fs::remove_dir_all(sb.out());
    let r = naiad!("unpack", bootstrap, "--blob-dir", blobs, "-o", sb.out());
    assert!(!r.stderr.contains("panicked"), "{}", r.describe());
    sb.assert_nothing_outside(&["out", "img", "blobs"]);
    if r.code == Some(0) {
        let tree = sb.input("tree");
        for f in ["a.txt", "sub/b.bin", "sub/deeper/c", "big"] {
            assert!(
                fs::read(sb.out().join(f)).unwrap() == fs::read(tree.join(f)).unwrap(),
                "{f} differs after unpack"
            );
        }
    } else {
        r.assert_clean_failure();
        r.assert_stderr_has(&format!("blob {digest}"));
    }
}

/// 12b. An unpack error on a truncated blob names a real chunk: view offsets are 4 KiB
/// aligned, so the offset printed must be one.
#[test]
fn truncated_blob_unpack_error_names_an_aligned_view_offset() {
    let sb = Sandbox::new();
    let (bootstrap, blobs, digests) = build_image(&sb);
    let path = blobs.join(&digests[0]);
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() / 2]).unwrap();
    let r = unpack_expect_failure(&sb, &bootstrap, &blobs, true);
    let key = "chunk at view offset ";
    let at = r.stderr.find(key).unwrap_or_else(|| panic!("no view offset named: {}", r.describe()));
    let digits: String =
        r.stderr[at + key.len()..].chars().take_while(char::is_ascii_digit).collect();
    let off: u64 = digits.parse().unwrap();
    assert_eq!(off % 4096, 0, "view offset {off} is not block aligned (a blob file offset reported as a view offset?): {}", r.describe());
}

/// 13. A blob missing from the blob dir.
#[test]
fn missing_blob_fails_check_and_unpack() {
    let sb = Sandbox::new();
    let (bootstrap, blobs, digests) = build_image(&sb);
    let digest = &digests[0];
    fs::remove_file(blobs.join(digest)).unwrap();
    let r = naiad!("check", bootstrap, "--blob-dir", blobs);
    r.assert_clean_failure();
    assert_eq!(r.code, Some(1), "{}", r.describe());
    r.assert_stderr_has(&format!("blob {digest}"));
    r.assert_stderr_has("not found");
    for tar in [false, true] {
        let r = unpack_expect_failure(&sb, &bootstrap, &blobs, tar);
        r.assert_stderr_has(&format!("blob {digest} not found"));
        // The blob is looked for before anything is written.
        assert!(!sb.out().exists() || fs::read_dir(sb.out()).unwrap().next().is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 6, hostile input: hardlinks out of the tree, devices built unprivileged, bogus PAX
// headers, duplicate entries
// ---------------------------------------------------------------------------------------------

/// Recomputes the checksum of a header edited after [`header_raw`].
fn rechecksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A PAX extended header (`x`) holding `body` as its data, as is (so a test can make the
/// records themselves hostile).
fn pax_raw(body: &[u8]) -> Vec<u8> {
    let mut v =
        header_raw(b"PaxHeaders/entry", b'x', &octal(body.len() as u64, 12), b"", false).to_vec();
    v.extend(padded(body));
    v
}

/// Well-formed PAX records `len key=value\n` (the length counts itself).
fn pax_records(records: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = format!(" {k}={v}\n");
        let mut len = rest.len() + 1;
        while len.to_string().len() + rest.len() != len {
            len += 1;
        }
        body.extend(format!("{len}{rest}").into_bytes());
    }
    body
}

/// A hardlink whose target lies outside the tree (`../outside`, an absolute path, a path
/// through a symlink to the outside) is refused, naming the entry, and nothing is written.
#[test]
fn tar_hardlink_pointing_out_of_the_tree_is_refused() {
    let sb = Sandbox::new();
    fs::write(sb.input("outside"), b"secret").unwrap();
    let r = sb.build_layer_expect_failure(&tar_of(&[
        file_entry("a", b"x"),
        header("h", HARDLINK, 0, "../outside").to_vec(),
    ]));
    r.assert_stderr_has("entry \"h\"");
    r.assert_stderr_has("hardlink target");
    r.assert_stderr_has("'..'");
    let abs = sb.input("outside");
    for target in ["/etc/passwd", abs.to_str().unwrap()] {
        let r =
            sb.build_layer_expect_failure(&tar_of(&[header("h", HARDLINK, 0, target).to_vec()]));
        r.assert_stderr_has("entry \"h\"");
        r.assert_stderr_has("hardlink target");
        r.assert_stderr_has("absolute path");
    }
    // Through a symlink that leads out: the target is looked up in the image without
    // following symlinks, so it does not exist there.
    let r = sb.build_layer_expect_failure(&tar_of(&[
        header("out", SYMLINK, 0, sb.root().join("in").to_str().unwrap()).to_vec(),
        header("h", HARDLINK, 0, "out/outside").to_vec(),
    ]));
    r.assert_stderr_has("entry \"h\"");
    r.assert_stderr_has_any(&["symlink", "does not exist"]);
    assert_eq!(fs::read(sb.input("outside")).unwrap(), b"secret");
}

/// A char or block device entry with numbers and an owner.
fn device_entry(name: &str, typ: u8, major: u64, minor: u64, uid: u64) -> Vec<u8> {
    let mut h = header(name, typ, 0, "");
    h[108..116].copy_from_slice(&octal(uid, 8));
    h[116..124].copy_from_slice(&octal(uid, 8));
    h[329..337].copy_from_slice(&octal(major, 8));
    h[337..345].copy_from_slice(&octal(minor, 8));
    rechecksum(&mut h);
    h.to_vec()
}

const NOBODY: u32 = 65534;

/// Runs `naiad ARGS` as uid/gid 65534 with no supplementary groups.
fn naiad_unprivileged(args: &[&std::ffi::OsStr]) -> Run {
    let mut all: Vec<&std::ffi::OsStr> = vec![
        std::ffi::OsStr::new("--reuid=65534"),
        std::ffi::OsStr::new("--regid=65534"),
        std::ffi::OsStr::new("--clear-groups"),
        std::ffi::OsStr::new(NAIAD),
    ];
    all.extend_from_slice(args);
    run_bounded("setpriv", &all)
}

/// Device files in a tar layer, built by an unprivileged user: building needs no privilege
/// (a device is metadata in the image) and records the devices; unpacking them to a
/// directory as that user cannot make device nodes and fails with a clear error naming the
/// node, while `unpack --tar` (no mknod) works and keeps the numbers.
#[test]
fn tar_devices_build_unprivileged_and_unpack_refuses_mknod() {
    require!(Root);
    let sb = Sandbox::new();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(sb.root(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(sb.root().join("in"), fs::Permissions::from_mode(0o755)).unwrap();
    let work = sb.root().join("work");
    fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY)).unwrap();
    let layer = sb.input("dev.tar");
    fs::write(
        &layer,
        tar_of(&[
            device_entry("null", b'3', 1, 3, u64::from(NOBODY)),
            device_entry("sda", b'4', 8, 0, u64::from(NOBODY)),
        ]),
    )
    .unwrap();
    fs::set_permissions(&layer, fs::Permissions::from_mode(0o644)).unwrap();

    let img = work.join("img");
    let r = naiad_unprivileged(&[
        std::ffi::OsStr::new("build"),
        layer.as_os_str(),
        "-o".as_ref(),
        img.as_os_str(),
    ]);
    assert_eq!(r.code, Some(0), "unprivileged build from a tar: {}", r.describe());
    let bootstrap = img.join("bootstrap");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&fs::metadata(&bootstrap).unwrap()), NOBODY);

    // The devices are in the image, with their numbers: an unpack to tar shows them.
    let tar_out = work.join("out.tar");
    let r = naiad_unprivileged(&[
        std::ffi::OsStr::new("unpack"),
        bootstrap.as_os_str(),
        "--blob-dir".as_ref(),
        img.as_os_str(),
        "-o".as_ref(),
        tar_out.as_os_str(),
        "--tar".as_ref(),
    ]);
    assert_eq!(r.code, Some(0), "unprivileged unpack --tar: {}", r.describe());
    let bytes = fs::read(&tar_out).unwrap();
    let mut found = Vec::new();
    for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        if matches!(h.entry_type(), tar::EntryType::Char | tar::EntryType::Block) {
            found.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type(),
                h.device_major().unwrap(),
                h.device_minor().unwrap(),
            ));
        }
    }
    assert!(found.contains(&("null".into(), tar::EntryType::Char, Some(1), Some(3))), "{found:?}");
    assert!(found.contains(&("sda".into(), tar::EntryType::Block, Some(8), Some(0))), "{found:?}");

    // To a directory: mknod is not permitted, so the unpack fails naming the device node.
    let out = work.join("out");
    let r = naiad_unprivileged(&[
        std::ffi::OsStr::new("unpack"),
        bootstrap.as_os_str(),
        "--blob-dir".as_ref(),
        img.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    r.assert_clean_failure();
    r.assert_stderr_has_any(&["null", "sda"]);
    r.assert_stderr_has_any(&["Operation not permitted", "EPERM", "permission"]);
    for name in ["null", "sda"] {
        if let Ok(m) = fs::symlink_metadata(out.join(name)) {
            use std::os::unix::fs::FileTypeExt;
            assert!(
                !m.file_type().is_char_device() && !m.file_type().is_block_device(),
                "{name} became a device node"
            );
        }
    }
    sb.assert_nothing_outside(&["work"]);
}

/// PAX records with bogus values: a non-numeric or negative `size`, a garbage `mtime`, a
/// `path` record whose length field is huge, and a record whose length prefix runs past the
/// PAX data. Each is refused with an error naming the PAX header, quickly.
#[test]
fn tar_pax_headers_with_bogus_values_are_refused() {
    let malformed = "bad PAX record: malformed pax extension";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("size=abc", pax_records(&[("size", "abc")]), "bad PAX size"),
        ("size=-5", pax_records(&[("size", "-5")]), "bad PAX size"),
        ("size past u64", pax_records(&[("size", "99999999999999999999999")]), "bad PAX size"),
        ("mtime=garbage", pax_records(&[("mtime", "garbage")]), "bad PAX mtime"),
        ("mtime=1e9", pax_records(&[("mtime", "1e9")]), "bad PAX mtime"),
        ("uid too big", pax_records(&[("uid", "99999999999")]), "uid does not fit 32 bits"),
        ("path length huge", b"99999999999999999999 path=x\n".to_vec(), malformed),
        ("length past the data", b"400 path=short\n".to_vec(), malformed),
        ("length not a number", b"zz path=x\n".to_vec(), malformed),
        ("no '='", b"9 pathx\n\n".to_vec(), malformed),
    ];
    for (what, body, expect) in cases {
        let sb = Sandbox::new();
        let mut layer = pax_raw(&body);
        layer.extend(file_entry("victim", b"hello"));
        layer.extend([0u8; 1024]);
        let r = sb.build_layer_expect_failure(&layer);
        r.assert_stderr_has("entry \"victim\"");
        r.assert_stderr_has(expect);
        assert!(r.elapsed < Duration::from_secs(10), "{what}: {}", r.describe());
    }
}

/// Lists an image's tree through `naiad unpack --tar`: (path, type, data).
fn image_listing(sb: &Sandbox, img: &Path) -> Vec<(String, tar::EntryType, Vec<u8>)> {
    let t = sb.root().join("listing.tar");
    let _ = fs::remove_file(&t);
    let r = naiad!("unpack", img.join("bootstrap"), "--blob-dir", img, "-o", t, "--tar");
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let bytes = fs::read(&t).unwrap();
    fs::remove_file(&t).unwrap();
    let mut out = Vec::new();
    for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
        let ty = e.header().entry_type();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.push((p, ty, data));
    }
    out.retain(|(p, _, _)| !p.is_empty() && p != ".");
    out
}

/// Duplicate entries follow tar and OCI: the last entry for a path wins (a directory over a
/// directory keeps the children). File then file, file then dir, dir (with a child) then
/// file.
#[test]
fn tar_duplicate_entries_last_one_wins() {
    let sb = Sandbox::new();
    let layer = sb.input("dup.tar");
    fs::write(
        &layer,
        tar_of(&[
            file_entry("f", b"first"),
            file_entry("f", b"second, longer"),
            file_entry("fd", b"a file"),
            header("fd/", b'5', 0, "").to_vec(),
            header("df/", b'5', 0, "").to_vec(),
            file_entry("df/child", b"gone"),
            file_entry("df", b"now a file"),
            header("dd/", b'5', 0, "").to_vec(),
            file_entry("dd/kept", b"kept"),
            header("dd/", b'5', 0, "").to_vec(),
        ]),
    )
    .unwrap();
    let img = sb.root().join("img");
    let r = naiad!("build", layer, "-o", img);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let r = naiad!("check", img.join("bootstrap"), "--blob-dir", img);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let got = image_listing(&sb, &img);
    let find = |p: &str| got.iter().filter(|(q, _, _)| q == p).collect::<Vec<_>>();
    for p in ["f", "fd", "df", "dd", "dd/kept"] {
        assert_eq!(find(p).len(), 1, "{p} once: {got:?}");
    }
    assert_eq!(find("f")[0].2, b"second, longer");
    assert_eq!(find("fd")[0].1, tar::EntryType::Directory);
    assert_eq!(find("df")[0].1, tar::EntryType::Regular);
    assert_eq!(find("df")[0].2, b"now a file");
    assert!(find("df/child").is_empty(), "the replaced directory's child survived: {got:?}");
    assert_eq!(find("dd/kept")[0].2, b"kept");
    sb.assert_nothing_outside(&["img"]);
}
