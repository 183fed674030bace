#!/usr/bin/env bash
# Installs what the tests need on Debian (run as root), beyond what Naiad itself needs
# (scripts/install-deps.sh, run first): the real components the end-to-end tests start, the
# S3 test server, the fuzzing toolchain, and the style gate's tools.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

need=()
command -v fsck.erofs >/dev/null || need+=(erofs-utils)
command -v zstd >/dev/null || need+=(zstd)
# End-to-end tests of `naiad convert` (crates/naiad/tests/e2e/support/registry.rs): a local registry, skopeo to push,
# umoci/debootstrap/busybox to build images, htpasswd for registry auth.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v htpasswd >/dev/null || need+=(apache2-utils)
# The containerd tests (crates/naiad/tests/e2e/containerd.rs) and the cold-start benchmark
# (bench/coldstart.sh): a private containerd with runc, and
# gnuplot for its chart.
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
# The benchmarks (bench/*.sh) read manifests and registry answers with jq and curl.
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
# The token issuer of the bearer-auth tests (crates/naiad/tests/e2e/support/token.rs) makes and signs with openssl.
command -v openssl >/dev/null || need+=(openssl)
# The test images need a static /bin/busybox (Debian's `busybox` package is dynamically linked).
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
# The tar conformance tests (crates/naiad-builder/tests/tar_conformance.rs) read Go's and CPython's tar test data.
dpkg-query -W -f='${Status}' golang-1.19-src 2>/dev/null | grep -q 'ok installed' || need+=(golang-1.19-src)
dpkg-query -W -f='${Status}' libpython3.11-testsuite 2>/dev/null | grep -q 'ok installed' || need+=(libpython3.11-testsuite)
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The style gate of scripts/test.sh.
for c in fmt clippy; do
    if ! cargo "$c" --version >/dev/null 2>&1; then
        echo "cargo $c not found: rustup component add ${c/fmt/rustfmt}" >&2
        exit 1
    fi
done
# The S3 tests (crates/naiad/tests/e2e/lazy/s3.rs) run s3s-fs, an S3 server over a plain
# directory, pinned to a release that builds on this toolchain (rustc 1.95).
S3S_FS_VERSION=0.14.1
if [[ "$(s3s-fs --version 2>/dev/null)" != "s3s-fs $S3S_FS_VERSION" ]]; then
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked
fi
# Fuzzing (fuzz/run.sh): cargo-fuzz, pinned. The toolchain is stable; fuzz/run.sh sets
# RUSTC_BOOTSTRAP=1 for the -Z flags cargo-fuzz passes to rustc and cargo.
CARGO_FUZZ_VERSION=0.13.2
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
