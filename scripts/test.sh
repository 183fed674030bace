#!/usr/bin/env bash
# Runs every test (unit, property, end to end) as root: the end-to-end tests create device
# nodes, set ownership and mount EROFS.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
