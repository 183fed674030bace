#!/usr/bin/env bash
# Installs what building and running Naiad needs on Debian (run as root): a C compiler for
# the crates that build C, FUSE (fuse mode, kernel mode's blob views), and the kernel's
# EROFS. The tests need more: scripts/install-test-deps.sh.
# Rust itself comes from rustup (https://rustup.rs); Debian's own rustc is too old.
set -euo pipefail

need=()
command -v cc >/dev/null || need+=(gcc)
command -v fusermount3 >/dev/null || need+=(fuse3)
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
    exit 1
fi
# The kernel's EROFS (file-backed mounts need Linux >= 6.12).
grep -qw erofs /proc/filesystems || modprobe erofs 2>/dev/null || true
