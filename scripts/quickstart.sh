#!/usr/bin/env bash
# Installs what Naiad needs, builds it, and runs the built-in example: an image built from a
# sample tree, mounted lazily by a Naiad daemon in the best mode this kernel has, one file
# read, the bytes fetched printed against the image's size, unmounted.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -j2 --locked -p naiad
exec examples/sample-image.sh target/release/naiad
