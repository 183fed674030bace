#!/usr/bin/env bash
# Installs what Naiad needs, builds it, and runs the built-in example: build an image from a
# sample tree, check it, mount it with the kernel's EROFS, read from it, unmount it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -j2 -p naiad
exec examples/sample-image.sh target/release/naiad
