#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 600), one after the other, and prints a table:
# target, executions, corpus size at the end, findings (files libFuzzer left in
# fuzz/artifacts/TARGET/ during this run: crash-*, oom-*, timeout-*, leak-*).
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]        (default: every target in fuzz_targets/)
#
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the -Z flags it needs
# (sanitizer, coverage instrumentation). Builds are release with debug assertions and
# AddressSanitizer (cargo-fuzz's defaults). New inputs go to fuzz/work/corpus/TARGET/ (not
# committed); the committed seeds in fuzz/corpus/TARGET/ are read, never written; the
# dictionary fuzz/dicts/TARGET.dict (magics, keys, edge values) is used if present. libFuzzer
# stops a target at its first finding: fix it, copy the input to fuzz/regressions/TARGET/
# (replayed by `cargo nextest run -p naiad-fuzz`) and run again.
#
# Environment: TIMEOUT_SECONDS (one input taking longer is a finding, default 60),
# RSS_LIMIT_MB (default 2048), CARGO_BUILD_JOBS (default 2), TMPDIR (default /dev/shm: the
# tar_layer target writes a small image per input), FUZZ_ARGS (more libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
if (($#)); then
    targets=("$@")
else
    targets=()
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
if [[ -z ${TMPDIR:-} && -d /dev/shm ]]; then export TMPDIR=/dev/shm; fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: run scripts/install-deps.sh" >&2; exit 1; }

cargo fuzz build >&2
mkdir -p logs
rows=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "work/corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | sort)
    echo "fuzzing $t for ${secs}s (log: fuzz/logs/$t.log)" >&2
    dict=()
    [[ -f dicts/$t.dict ]] && dict=(-dict="dicts/$t.dict")
    # shellcheck disable=SC2086
    cargo fuzz run "$t" "work/corpus/$t" "corpus/$t" -- "${dict[@]}" \
        -max_total_time="$secs" -timeout="${TIMEOUT_SECONDS:-60}" -rss_limit_mb="${RSS_LIMIT_MB:-2048}" \
        -print_final_stats=1 ${FUZZ_ARGS:-} >"logs/$t.log" 2>&1 || true
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "logs/$t.log" | tail -1)
    corpus=$(grep -o 'corp: [0-9]*' "logs/$t.log" | tail -1 | awk '{print $2}')
    new=$(comm -13 <(echo "$before") <(find "artifacts/$t" -type f | sort) | sed '/^$/d')
    findings=$(printf '%s' "$new" | grep -c . || true)
    ((findings == 0)) || failed=1
    rows+=("$(printf '%-10s %14s %8s %9s  %s' "$t" "${execs:-?}" "${corpus:-?}" "$findings" "$(echo $new)")")
done
printf '%-10s %14s %8s %9s  %s\n' target executions corpus findings files
printf '%s\n' "${rows[@]}"
exit $failed
