//! A test tree with every kind of entry and metadata.
#![allow(dead_code)]

use super::noise;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

pub fn set_mtime(path: &Path, secs: i64, nsec: i64) {
    let t = rustix::fs::Timespec { tv_sec: secs, tv_nsec: nsec as _ };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps { last_access: t, last_modification: t },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Makes a tree holding every kind of entry and metadata Naiad keeps; with `huge`, also a
/// sparse file over 4 GiB.
pub fn make_tree(root: &Path, huge: bool) {
    const MIB: u64 = 1 << 20;
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("files")).unwrap();
    fs::write(p("files/empty"), b"").unwrap();
    fs::write(p("files/tiny"), b"x").unwrap();
    fs::write(p("files/one_chunk"), noise(MIB as usize, 1)).unwrap();
    fs::write(p("files/multi_chunk"), noise(3 * MIB as usize + 12345, 2)).unwrap();
    fs::write(p("files/text"), "hello naiad\n".repeat(50_000)).unwrap();
    use std::os::unix::fs::FileExt;
    if huge {
        // Over 4 GiB, sparse: data at the start, in the middle of a chunk, and at the end.
        let big = fs::File::create(p("files/huge_sparse")).unwrap();
        big.set_len(4 * 1024 * MIB + 3 * MIB + 17).unwrap();
        big.write_all_at(b"start", 0).unwrap();
        big.write_all_at(&noise(10_000, 3), 2 * 1024 * MIB + 4096 * 3).unwrap();
        big.write_all_at(b"the end", 4 * 1024 * MIB + 3 * MIB + 10).unwrap();
    }
    // Sparse with a hole inside a chunk.
    let holey = fs::File::create(p("files/holey")).unwrap();
    holey.write_all_at(&[7u8; 8192], 0).unwrap();
    holey.write_all_at(&[9u8; 100], 512 * 1024).unwrap();
    holey.set_len(2 * MIB).unwrap();
    // Duplicates and hardlinks.
    fs::write(p("files/dup"), noise(MIB as usize, 1)).unwrap();
    fs::hard_link(p("files/text"), p("files/text_link")).unwrap();
    fs::create_dir(p("links")).unwrap();
    fs::hard_link(p("files/tiny"), p("links/tiny_again")).unwrap();

    // Thousands of entries in one directory.
    fs::create_dir(p("many")).unwrap();
    for i in 0..4000 {
        fs::write(p(&format!("many/entry-{i:05}")), i.to_string()).unwrap();
    }

    // Other entry types.
    fs::create_dir(p("special")).unwrap();
    symlink("../files/tiny", p("special/rel_link")).unwrap();
    symlink("/etc/passwd", p("special/abs_link")).unwrap();
    symlink("x".repeat(1000), p("special/long_link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p("special/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p("special/blk"),
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o660),
        rustix::fs::makedev(259, 70000),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p("special/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(p("special/socket")).unwrap());

    // Ownership and mode bits.
    fs::create_dir(p("perms")).unwrap();
    fs::write(p("perms/setuid"), b"#!/bin/sh\n").unwrap();
    rustix::fs::chown(
        p("perms/setuid"),
        Some(rustix::fs::Uid::from_raw(100_000)),
        Some(rustix::fs::Gid::from_raw(200_000)),
    )
    .unwrap();
    fs::set_permissions(p("perms/setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(p("perms/setgid"), b"").unwrap();
    fs::set_permissions(p("perms/setgid"), fs::Permissions::from_mode(0o2711)).unwrap();
    fs::create_dir(p("perms/sticky")).unwrap();
    fs::set_permissions(p("perms/sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(p("perms/none"), b"secret").unwrap();
    fs::set_permissions(p("perms/none"), fs::Permissions::from_mode(0o000)).unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        p("special/abs_link"),
        Some(rustix::fs::Uid::from_raw(4_000_000)),
        Some(rustix::fs::Gid::from_raw(65_536)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();

    // Xattrs, including file capabilities and an overlay opaque marker.
    fs::create_dir(p("xattrs")).unwrap();
    fs::write(p("xattrs/ping"), b"ping").unwrap();
    // vfs_cap_data revision 2, effective, permitted = CAP_NET_RAW (13).
    let cap: [u8; 20] = [0x01, 0, 0, 0x02, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    xattr::set(p("xattrs/ping"), "security.capability", &cap).unwrap();
    xattr::set(p("xattrs/ping"), "user.note", b"a note").unwrap();
    xattr::set(p("xattrs/ping"), "user.binary", &[0u8, 255, 1, 2]).unwrap();
    fs::create_dir(p("xattrs/opaque")).unwrap();
    xattr::set(p("xattrs/opaque"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(p("xattrs/opaque"), "user.big", &vec![b'v'; 3000]).unwrap();

    // Names: non-UTF-8, 255 bytes, deep paths.
    fs::create_dir(p("names")).unwrap();
    fs::write(p("names").join(OsStr::from_bytes(b"bad-\xff\xfe-utf8")), b"latin").unwrap();
    fs::write(p("names").join("n".repeat(255)), b"long name").unwrap();
    let mut deep = p("names/deep");
    for i in 0..60 {
        deep.push(format!("level-{i:02}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"deep").unwrap();

    // Nanosecond mtimes everywhere, set bottom-up so directory mtimes stick.
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        all.push(d.clone());
        if fs::symlink_metadata(&d).unwrap().is_dir() {
            for e in fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for (i, path) in all.iter().enumerate() {
        set_mtime(path, 1_600_000_000 + i as i64 * 1000, (i as i64 * 7919) % 1_000_000_000);
    }
    set_mtime(&p("files/tiny"), -86_400, 123_456_789);
}
