//! Property: any directory tree survives `build` followed by `unpack_to_dir` exactly.
//!
//! A random tree (regular files with random, patterned, zero-run, sparse or duplicated
//! contents; directories; symlinks with arbitrary targets; hardlinks; fifos; byte-string
//! names; setuid/setgid/sticky modes; large uids/gids; nanosecond mtimes; `user.*` xattrs)
//! is materialized in a temporary directory, built with random build options, checked with
//! `naiad_fs::check::check`, unpacked into a fresh directory, and the two trees are compared
//! entry by entry: paths, file type, permission bits, ownership, mtime (seconds and
//! nanoseconds), size, file bytes, symlink targets, xattrs, and hardlink structure.
//!
//! Needs root (chown to arbitrary ids, setuid bits on files owned by others).
//! `PROPTEST_CASES=N` overrides the default case count.

use naiad_builder::{build, BuildOptions, Source};
use naiad_format::bootstrap::Bootstrap;
use naiad_format::compression::Compressor;
use naiad_format::digest::Digester;
use naiad_storage::blob_store::BlobDirs;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use rustix::fs::{AtFlags, FileType, Gid, Mode, Timespec, Timestamps, Uid, CWD};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

const MAX_DEPTH: usize = 4;
const MAX_ENTRIES: usize = 40;
const MAX_FILE_BYTES: usize = 300 * 1024;
const BLOCK: usize = 4096;

// ---------------------------------------------------------------------------------------
// The generated input.

/// Bytes shown as an escaped byte string in failure reports.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// Permission bits shown in octal.
#[derive(Clone, Copy)]
struct Perm(u32);

impl fmt::Debug for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:04o}", self.0)
    }
}

#[derive(Clone, Debug)]
struct MetaSpec {
    perm: Perm,
    uid: u32,
    gid: u32,
    mtime: i64,
    nsec: u32,
    /// Applied to regular files and directories only (Linux refuses `user.*` elsewhere).
    xattrs: BTreeMap<Bytes, Bytes>,
}

#[derive(Clone, Debug)]
enum Fill {
    Random(u64),
    Pattern(Bytes),
    Zero,
    /// 4 KiB blocks in runs of zeros or random bytes, cycling through the runs.
    Runs {
        seed: u64,
        runs: Vec<(bool, u8)>,
    },
    /// Another file's contents: all of it (`whole`), or a prefix cut or padded with random
    /// bytes to this file's size.
    Dup {
        of: Index,
        whole: bool,
    },
}

#[derive(Clone, Debug)]
struct FileSpec {
    size: usize,
    fill: Fill,
    /// Write all-zero 4 KiB blocks as holes in the source.
    sparse: bool,
}

#[derive(Clone, Debug)]
enum Kind {
    File(FileSpec),
    Dir,
    Symlink(Bytes),
    Fifo,
    /// A hardlink to one of the regular files made so far (its own metadata is unused).
    HardLink(Index),
}

#[derive(Clone, Debug)]
struct EntrySpec {
    /// Picks among the directories made so far that can still hold children.
    parent: Index,
    name: Bytes,
    kind: Kind,
    meta: MetaSpec,
}

#[derive(Clone, Debug)]
struct Case {
    chunk_size: u32,
    compressor: Compressor,
    digester: Digester,
    root: MetaSpec,
    entries: Vec<EntrySpec>,
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn name_byte() -> impl Strategy<Value = u8> {
    (1u8..=255).prop_map(|b| if b == b'/' { b'_' } else { b })
}

fn name() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        6 => "[a-zA-Z0-9_.-]{1,12}".prop_map(String::into_bytes),
        3 => vec(name_byte(), 1..=24),
        1 => vec(name_byte(), 200..=255),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
    .prop_map(Bytes)
}

fn symlink_target() -> impl Strategy<Value = Bytes> {
    let any_bytes = |r: std::ops::RangeInclusive<usize>| vec(1u8..=255, r);
    prop_oneof![
        4 => "[a-z0-9_.]{1,10}(/[a-z0-9_.]{1,10}){0,3}".prop_map(String::into_bytes),
        2 => any_bytes(1..=64),
        2 => any_bytes(0..=64).prop_map(|t| [b"/".as_slice(), &t].concat()),
        2 => (1usize..=5, any_bytes(0..=32)).prop_map(|(n, t)| [b"../".repeat(n), t].concat()),
        1 => any_bytes(1000..=4095),
    ]
    .prop_map(Bytes)
}

fn meta() -> impl Strategy<Value = MetaSpec> {
    let perm = prop_oneof![
        4 => select(vec![0o644u32, 0o755, 0o600, 0o700, 0o444, 0o000, 0o4755, 0o2755, 0o6755, 0o1777, 0o3777, 0o7777]),
        3 => 0u32..=0o7777,
    ];
    let id = || {
        prop_oneof![
            3 => Just(0u32),
            2 => select(vec![1u32, 1000, 65534, 65535, 65536]),
            3 => 0u32..=4_000_000,
        ]
    };
    let mtime = prop_oneof![
        6 => 1_500_000_000i64..=1_800_000_000,
        2 => 0i64..=4_102_444_800,
        1 => -2_147_483_648i64..0,
        // Up to the largest time ext4 stores.
        1 => 4_102_444_800i64..=15_032_385_535,
        1 => Just(0i64),
    ];
    let nsec = prop_oneof![2 => Just(0u32), 6 => 0u32..1_000_000_000, 1 => Just(999_999_999u32)];
    let xname = prop_oneof![
        4 => "[a-zA-Z0-9._-]{1,16}".prop_map(String::into_bytes),
        1 => vec(1u8..=255, 1..=32),
    ]
    .prop_map(|n| Bytes([b"user.".as_slice(), &n].concat()));
    let xvalue =
        prop_oneof![3 => vec(any::<u8>(), 0..=32), 1 => vec(any::<u8>(), 0..=200)].prop_map(Bytes);
    let xattrs = prop_oneof![3 => Just(BTreeMap::new()), 2 => btree_map(xname, xvalue, 1..=4)];
    (perm, id(), id(), mtime, nsec, xattrs).prop_map(|(perm, uid, gid, mtime, nsec, xattrs)| {
        MetaSpec { perm: Perm(perm), uid, gid, mtime, nsec, xattrs }
    })
}

fn file_spec() -> impl Strategy<Value = FileSpec> {
    let size = prop_oneof![
        6 => 0usize..=64,
        4 => 0usize..=8192,
        2 => 0usize..=MAX_FILE_BYTES,
        // Exact multiples of the 4 KiB and 64 KiB chunk sizes.
        2 => (0usize..=MAX_FILE_BYTES / BLOCK).prop_map(|k| k * BLOCK),
        1 => select(vec![65536usize, 131072, 196608, 262144]),
    ];
    let fill = prop_oneof![
        3 => any::<u64>().prop_map(Fill::Random),
        2 => vec(any::<u8>(), 1..=16).prop_map(|p| Fill::Pattern(Bytes(p))),
        1 => Just(Fill::Zero),
        2 => (any::<u64>(), vec((any::<bool>(), 1u8..=32), 1..=8)).prop_map(|(seed, runs)| Fill::Runs { seed, runs }),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(of, whole)| Fill::Dup { of, whole }),
    ];
    (size, fill, any::<bool>()).prop_map(|(size, fill, sparse)| FileSpec { size, fill, sparse })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        10 => file_spec().prop_map(Kind::File),
        4 => Just(Kind::Dir),
        3 => symlink_target().prop_map(Kind::Symlink),
        1 => Just(Kind::Fifo),
        3 => any::<Index>().prop_map(Kind::HardLink),
    ]
}

fn entry() -> impl Strategy<Value = EntrySpec> {
    (any::<Index>(), name(), kind(), meta()).prop_map(|(parent, name, kind, meta)| EntrySpec {
        parent,
        name,
        kind,
        meta,
    })
}

fn case() -> impl Strategy<Value = Case> {
    (
        select(vec![4096u32, 65536, 1 << 20]),
        select(vec![Compressor::Zstd, Compressor::Lz4, Compressor::None]),
        select(vec![Digester::Blake3, Digester::Sha256]),
        meta(),
        vec(entry(), 0..=MAX_ENTRIES),
    )
        .prop_map(|(chunk_size, compressor, digester, root, entries)| Case {
            chunk_size,
            compressor,
            digester,
            root,
            entries,
        })
}

// ---------------------------------------------------------------------------------------
// Materializing a case.

/// splitmix64 stream: deterministic "random" file bytes.
fn random_bytes(seed: u64, out: &mut [u8]) {
    let mut s = seed;
    for chunk in out.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

fn contents(spec: &FileSpec, earlier: &[Vec<u8>]) -> Vec<u8> {
    let size = spec.size;
    let mut data = vec![0u8; size];
    match &spec.fill {
        Fill::Random(seed) => random_bytes(*seed, &mut data),
        Fill::Pattern(p) => {
            for (d, s) in data.iter_mut().zip(p.0.iter().cycle()) {
                *d = *s;
            }
        }
        Fill::Zero => {}
        Fill::Runs { seed, runs } => {
            let mut off = 0;
            for (i, &(zero, blocks)) in runs.iter().cycle().enumerate() {
                if off >= size {
                    break;
                }
                let end = (off + usize::from(blocks) * BLOCK).min(size);
                if !zero {
                    random_bytes(seed.wrapping_add(i as u64), &mut data[off..end]);
                }
                off = end;
            }
        }
        Fill::Dup { of, whole } => {
            if earlier.is_empty() {
                random_bytes(size as u64, &mut data);
            } else {
                let src = &earlier[of.index(earlier.len())];
                if *whole {
                    return src.clone();
                }
                let n = src.len().min(size);
                data[..n].copy_from_slice(&src[..n]);
                random_bytes(!(size as u64), &mut data[n..]);
            }
        }
    }
    data
}

type R<T> = Result<T, String>;

fn ctx<T, E: fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> R<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

fn write_file(path: &Path, data: &[u8], sparse: bool) -> R<()> {
    let mut f = ctx(std::fs::OpenOptions::new().write(true).create_new(true).open(path), || {
        format!("create {}", path.display())
    })?;
    if sparse {
        for (i, blk) in data.chunks(BLOCK).enumerate() {
            if blk.iter().all(|&b| b == 0) {
                continue;
            }
            ctx(f.write_all_at(blk, (i * BLOCK) as u64), || format!("write {}", path.display()))?;
        }
        ctx(f.set_len(data.len() as u64), || format!("set_len {}", path.display()))?;
    } else {
        ctx(f.write_all(data), || format!("write {}", path.display()))?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    File,
    Dir,
    Symlink,
    Fifo,
}

/// Ownership, then permissions (chown may clear setuid), then xattrs, then times, without
/// following symlinks.
fn apply_meta(path: &Path, m: &MetaSpec, ty: Ty) -> R<()> {
    let at = || path.display().to_string();
    ctx(
        rustix::fs::chownat(
            CWD,
            path,
            Some(Uid::from_raw(m.uid)),
            Some(Gid::from_raw(m.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ),
        || format!("chown {}", at()),
    )?;
    if ty != Ty::Symlink {
        ctx(
            rustix::fs::chmodat(CWD, path, Mode::from_raw_mode(m.perm.0), AtFlags::empty()),
            || format!("chmod {}", at()),
        )?;
    }
    if matches!(ty, Ty::File | Ty::Dir) {
        for (k, v) in &m.xattrs {
            ctx(xattr::set(path, OsStr::from_bytes(&k.0), &v.0), || {
                format!("setxattr {:?} on {}", k, at())
            })?;
        }
    }
    let t = Timespec { tv_sec: m.mtime, tv_nsec: m.nsec as _ };
    ctx(
        rustix::fs::utimensat(
            CWD,
            path,
            &Timestamps { last_access: t, last_modification: t },
            AtFlags::SYMLINK_NOFOLLOW,
        ),
        || format!("utimensat {}", at()),
    )?;
    Ok(())
}

struct DirSlot {
    path: PathBuf,
    depth: usize,
    names: HashSet<Vec<u8>>,
}

/// What a materialized tree holds, for the coverage line printed per case.
#[derive(Default, Debug)]
struct Made {
    files: usize,
    dirs: usize,
    symlinks: usize,
    fifos: usize,
    hardlinks: usize,
    skipped: usize,
    bytes: usize,
}

/// Creates the tree of `case` at `root` (which must not exist).
fn materialize(case: &Case, root: &Path) -> R<Made> {
    ctx(std::fs::create_dir(root), || format!("mkdir {}", root.display()))?;
    let mut made = Made::default();
    let mut dirs = vec![DirSlot { path: root.to_path_buf(), depth: 0, names: HashSet::new() }];
    let mut files: Vec<PathBuf> = Vec::new();
    let mut datas: Vec<Vec<u8>> = Vec::new();
    let mut later: Vec<(PathBuf, &MetaSpec, Ty)> = Vec::new();
    let mut dir_meta: Vec<(PathBuf, &MetaSpec)> = Vec::new();
    for e in &case.entries {
        let open: Vec<usize> = (0..dirs.len()).filter(|&i| dirs[i].depth < MAX_DEPTH).collect();
        let slot = open[e.parent.index(open.len())];
        if !dirs[slot].names.insert(e.name.0.clone()) {
            made.skipped += 1;
            continue;
        }
        let path = dirs[slot].path.join(OsStr::from_bytes(&e.name.0));
        let depth = dirs[slot].depth + 1;
        match &e.kind {
            Kind::File(spec) => {
                let data = contents(spec, &datas);
                write_file(&path, &data, spec.sparse)?;
                made.files += 1;
                made.bytes += data.len();
                datas.push(data);
                files.push(path.clone());
                later.push((path, &e.meta, Ty::File));
            }
            Kind::Dir => {
                ctx(std::fs::create_dir(&path), || format!("mkdir {}", path.display()))?;
                made.dirs += 1;
                dirs.push(DirSlot { path: path.clone(), depth, names: HashSet::new() });
                dir_meta.push((path, &e.meta));
            }
            Kind::Symlink(target) => {
                ctx(std::os::unix::fs::symlink(OsStr::from_bytes(&target.0), &path), || {
                    format!("symlink {}", path.display())
                })?;
                made.symlinks += 1;
                later.push((path, &e.meta, Ty::Symlink));
            }
            Kind::Fifo => {
                ctx(
                    rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o644), 0),
                    || format!("mkfifo {}", path.display()),
                )?;
                made.fifos += 1;
                later.push((path, &e.meta, Ty::Fifo));
            }
            Kind::HardLink(which) => {
                if files.is_empty() {
                    dirs[slot].names.remove(&e.name.0);
                    made.skipped += 1;
                    continue;
                }
                let target = &files[which.index(files.len())];
                ctx(std::fs::hard_link(target, &path), || {
                    format!("link {} -> {}", path.display(), target.display())
                })?;
                made.hardlinks += 1;
            }
        }
    }
    for (path, m, ty) in &later {
        apply_meta(path, m, *ty)?;
    }
    // Directories last, children before parents, so their mtimes stay put.
    for (path, m) in dir_meta.iter().rev() {
        apply_meta(path, m, Ty::Dir)?;
    }
    apply_meta(root, &case.root, Ty::Dir)?;
    Ok(made)
}

// ---------------------------------------------------------------------------------------
// Comparing two trees.

#[derive(Debug, PartialEq)]
struct Snap {
    ty: u32,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    nsec: i64,
    nlink: u64,
    /// Regular files and symlinks only (a directory's size is the file system's business).
    size: Option<u64>,
    data: Option<Vec<u8>>,
    target: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    ino: u64,
}

fn snap_one(path: &Path) -> R<Snap> {
    let md = ctx(std::fs::symlink_metadata(path), || format!("lstat {}", path.display()))?;
    let ft = md.file_type();
    let data = if ft.is_file() {
        Some(ctx(std::fs::read(path), || format!("read {}", path.display()))?)
    } else {
        None
    };
    let target = if ft.is_symlink() {
        Some(
            ctx(std::fs::read_link(path), || format!("readlink {}", path.display()))?
                .as_os_str()
                .as_bytes()
                .to_vec(),
        )
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    for name in ctx(xattr::list(path), || format!("listxattr {}", path.display()))? {
        let v = ctx(xattr::get(path, &name), || format!("getxattr {}", path.display()))?;
        xattrs.insert(name.as_bytes().to_vec(), v.unwrap_or_default());
    }
    Ok(Snap {
        ty: md.mode() & 0o170000,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        nsec: md.mtime_nsec(),
        nlink: md.nlink(),
        size: (ft.is_file() || ft.is_symlink()).then_some(md.len()),
        data,
        target,
        xattrs,
        ino: md.ino(),
    })
}

/// Every entry under `root` (itself as the empty path), keyed by its relative path bytes.
fn snapshot(root: &Path) -> R<BTreeMap<Vec<u8>, Snap>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((path, rel)) = stack.pop() {
        let s = snap_one(&path)?;
        let is_dir = s.ty == 0o040000;
        out.insert(rel.clone(), s);
        if is_dir {
            for ent in ctx(std::fs::read_dir(&path), || format!("readdir {}", path.display()))? {
                let ent = ctx(ent, || format!("readdir {}", path.display()))?;
                let name = ent.file_name();
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(name.as_bytes());
                stack.push((path.join(&name), r));
            }
        }
    }
    Ok(out)
}

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        format!("/{}", p.escape_ascii())
    }
}

/// Hardlink groups (paths sharing an inode, two or more) of non-directories.
fn link_groups(t: &BTreeMap<Vec<u8>, Snap>) -> BTreeSet<Vec<Vec<u8>>> {
    let mut by_ino: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    for (p, s) in t {
        if s.ty != 0o040000 {
            by_ino.entry(s.ino).or_default().push(p.clone());
        }
    }
    by_ino
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect()
}

/// Every difference between the two trees, one line each.
fn compare(src: &BTreeMap<Vec<u8>, Snap>, out: &BTreeMap<Vec<u8>, Snap>) -> Vec<String> {
    let mut diffs = Vec::new();
    for p in src.keys().filter(|p| !out.contains_key(*p)) {
        diffs.push(format!("{}: missing from the unpacked tree", show(p)));
    }
    for p in out.keys().filter(|p| !src.contains_key(*p)) {
        diffs.push(format!("{}: in the unpacked tree but not the source", show(p)));
    }
    for (p, a) in src {
        let Some(b) = out.get(p) else { continue };
        let mut field = |name: &str, x: String, y: String| {
            if x != y {
                diffs.push(format!("{}: {name}: source {x}, unpacked {y}", show(p)));
            }
        };
        field("file type", format!("0o{:o}", a.ty), format!("0o{:o}", b.ty));
        field("permissions", format!("0o{:04o}", a.perm), format!("0o{:04o}", b.perm));
        field("uid", a.uid.to_string(), b.uid.to_string());
        field("gid", a.gid.to_string(), b.gid.to_string());
        field("mtime", format!("{}.{:09}", a.mtime, a.nsec), format!("{}.{:09}", b.mtime, b.nsec));
        field("nlink", a.nlink.to_string(), b.nlink.to_string());
        field("size", format!("{:?}", a.size), format!("{:?}", b.size));
        field(
            "symlink target",
            format!("{:?}", a.target.as_ref().map(|t| Bytes(t.clone()))),
            format!("{:?}", b.target.as_ref().map(|t| Bytes(t.clone()))),
        );
        let xs = |x: &BTreeMap<Vec<u8>, Vec<u8>>| {
            format!(
                "{:?}",
                x.iter().map(|(k, v)| (Bytes(k.clone()), Bytes(v.clone()))).collect::<Vec<_>>()
            )
        };
        field("xattrs", xs(&a.xattrs), xs(&b.xattrs));
        if let (Some(x), Some(y)) = (&a.data, &b.data) {
            if x != y {
                let first = x
                    .iter()
                    .zip(y.iter())
                    .position(|(u, v)| u != v)
                    .unwrap_or(x.len().min(y.len()));
                diffs.push(format!(
                    "{}: file bytes differ: source {} bytes, unpacked {} bytes, first difference at offset {first}",
                    show(p),
                    x.len(),
                    y.len()
                ));
            }
        }
    }
    let (ga, gb) = (link_groups(src), link_groups(out));
    if ga != gb {
        let fmt_groups = |g: &BTreeSet<Vec<Vec<u8>>>| {
            format!(
                "{:?}",
                g.iter().map(|v| v.iter().map(|p| show(p)).collect::<Vec<_>>()).collect::<Vec<_>>()
            )
        };
        diffs.push(format!(
            "hardlink groups differ: source {}, unpacked {}",
            fmt_groups(&ga),
            fmt_groups(&gb)
        ));
    }
    diffs
}

// ---------------------------------------------------------------------------------------
// The property.

fn roundtrip(case: &Case) -> R<()> {
    let tmp = ctx(tempfile::tempdir(), || "tempdir".into())?;
    let src = tmp.path().join("src");
    let img = tmp.path().join("img");
    let out = tmp.path().join("out");
    let made = materialize(case, &src)?;

    let opts = BuildOptions {
        chunk_size: case.chunk_size,
        compressor: case.compressor,
        digester: case.digester,
        ..BuildOptions::default()
    };
    let summary = ctx(build(Source::Dir(src.clone()), opts, &img), || "build".into())?;
    if !summary.warnings.is_empty() {
        return Err(format!("build warned: {:?}", summary.warnings));
    }
    let bytes = ctx(std::fs::read(&summary.bootstrap), || "read bootstrap".into())?;
    let dirs = BlobDirs::new(vec![img.clone()]);

    let report = naiad_fs::check::check(bytes.clone(), Some(&dirs));
    if !report.ok() {
        return Err(format!("check found problems: {:?}", report.problems));
    }
    let bs = ctx(Bootstrap::open(bytes), || "Bootstrap::open".into())?;
    ctx(naiad_fs::unpack::unpack_to_dir(&bs, &dirs, &out), || "unpack_to_dir".into())?;

    let a = snapshot(&src)?;
    let b = snapshot(&out)?;
    let diffs = compare(&a, &b);
    eprintln!(
        "case: chunk {} {:?} {:?}: {} entries ({:?}); chunks {} zero chunks {} dedup {} stored {}",
        case.chunk_size,
        case.compressor,
        case.digester,
        a.len(),
        made,
        summary.chunks,
        summary.zero_chunks,
        summary.dedup_chunks,
        summary.stored_chunks,
    );
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!("{} difference(s):\n  {}", diffs.len(), diffs.join("\n  ")))
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn build_then_unpack_roundtrips_exactly(case in case()) {
        // The cases set any owner and setuid bits on files owned by others.
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: build_then_unpack_roundtrips_exactly: needs root (it sets ownership)");
            return Ok(());
        }
        if let Err(e) = roundtrip(&case) {
            return Err(TestCaseError::fail(e));
        }
    }
}
