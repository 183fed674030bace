#!/usr/bin/env bash
# Runs the style gate, then every test (unit, property, end to end). As root, the end-to-end
# tests also create device nodes, set ownership and mount EROFS, FUSE and fanotify mounts; as
# an ordinary user they skip those, each saying why, and run the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

echo "== style: cargo fmt --check, clippy -D warnings, module cycles"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
python3 scripts/module-cycles.py crates

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
