#!/usr/bin/env bash
# Benchmark `naiad build` against the peer, Dragonfly Nydus (`nydus-image create -t dir-rafs -v 6
# --compressor zstd --chunk-size 0x100000`: RAFS v6, the same chunk size and compressor as naiad's
# defaults), mkfs.erofs (chunked, uncompressed) and tar | zstd -3 on one directory tree, side by side.
#
#   bench/build.sh [TREE]      TREE defaults to the Rust toolchain: $(rustc --print sysroot)
#   BENCH_RUNS=N               repetitions per tool (default 3); the median is reported
#   BENCH_SCRATCH=DIR          where temp outputs go (default ${TMPDIR:-/tmp})
#   BENCH_NYDUS_DIR=DIR        where nydus-image is (default: the nydus-image on PATH, else ../shared/anchors beside the checkout)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TREE=${1:-$(rustc --print sysroot)}
RUNS=${BENCH_RUNS:-3}
SCRATCH_BASE=${BENCH_SCRATCH:-${TMPDIR:-/tmp}}
NAIAD=$ROOT/target/release/naiad
NYDUS_DIR=${BENCH_NYDUS_DIR:-$(d=$(command -v nydus-image) && dirname "$d" || echo "$ROOT/../shared/anchors")}
NYDUS_IMAGE=$NYDUS_DIR/nydus-image

for t in mkfs.erofs zstd tar; do
    command -v "$t" >/dev/null || { echo "error: $t not found; install with: apt-get install erofs-utils zstd" >&2; exit 1; }
done
[[ -x $NYDUS_IMAGE ]] || { echo "error: $NYDUS_IMAGE not found; set BENCH_NYDUS_DIR to the directory of Nydus' nydus-image" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time not found; install with: apt-get install time" >&2; exit 1; }
[[ -d $TREE ]] || { echo "error: $TREE is not a directory" >&2; exit 1; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "error: BENCH_RUNS must be a positive integer" >&2; exit 1; }
TREE=$(cd "$TREE" && pwd)

echo "== building naiad (release)" >&2
(cd "$ROOT" && cargo build --release -j2 -p naiad --quiet)
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')   # the source just built

SCRATCH=$(mktemp -d "$SCRATCH_BASE/naiad-bench.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
trap 'exit 130' INT TERM   # the EXIT trap still cleans up

read -r FILES SRC_BYTES < <(find "$TREE" -type f -printf '%s\n' | awk '{n++; s+=$1} END {print n+0, s+0}')

# The tools; each writes everything it produces into directory $1.
run_naiad()     { "$NAIAD" build "$TREE" -o "$1" --json >"$1.json"; }
run_naiad_lz4() { "$NAIAD" build "$TREE" -o "$1" --compressor lz4 --json >"$1.json"; }
run_erofs()     { mkfs.erofs --quiet --chunksize=1048576 --blobdev="$1/blob" "$1/meta" "$TREE"; }
run_tarzstd()   { set -o pipefail; tar -cf - -C "$TREE" . | zstd -3 -T0 -q -o "$1/tree.tar.zst"; }
# Nydus writes the bootstrap (plus an 8 KiB bootstrap.external) and its blobs, named by their sha256, into $1.
run_nydus()     { mkdir "$1/blobs" && "$NYDUS_IMAGE" create -t dir-rafs -v 6 --compressor zstd --chunk-size 0x100000 --log-level warn \
                      -D "$1/blobs" -B "$1/bootstrap" "$TREE"; }
export -f run_naiad run_naiad_lz4 run_erofs run_tarzstd run_nydus
export TREE NAIAD NYDUS_IMAGE

TOOLS=(naiad naiad-lz4 nydus mkfs.erofs "tar|zstd")
declare -A FN=([naiad]=run_naiad [naiad-lz4]=run_naiad_lz4 [nydus]=run_nydus [mkfs.erofs]=run_erofs ["tar|zstd"]=run_tarzstd)
declare -A WALL USR SYS SIZE

echo "== warming the page cache (tar of the tree into /dev/null)" >&2
tar -cf - -C "$TREE" . | cat >/dev/null

for ((r = 1; r <= RUNS; r++)); do
    for t in "${TOOLS[@]}"; do
        out=$SCRATCH/$r-${FN[$t]}
        mkdir "$out"
        t0=$(date +%s.%N)
        if ! /usr/bin/time -f '%U %S' -o "$out.time" bash -c "${FN[$t]} \"\$1\"" _ "$out" >"$out.log" 2>&1; then
            echo "error: $t failed (run $r):" >&2; cat "$out.log" >&2; exit 1
        fi
        t1=$(date +%s.%N)
        read -r u s <"$out.time"
        w=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
        WALL[$t]+="$w "
        USR[$t]+="$u "; SYS[$t]+="$s "
        SIZE[$t]=$(find "$out" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
        if [[ -s $out.log ]]; then echo "note: $t printed on stderr/stdout (run $r):" >&2; head -20 "$out.log" >&2; fi
        if [[ -f $out.json ]] && ! grep -q '"warnings": \[\]' "$out.json"; then
            echo "note: $t reported warnings (run $r):" >&2; sed -n '/"warnings"/,/\]/p' "$out.json" | head -20 >&2
        fi
        echo "   run $r/$RUNS  $(printf '%-11s' "$t") wall $w s (user $u, sys $s)" >&2
        rm -rf "$out"
    done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

declare -A MED
for t in "${TOOLS[@]}"; do MED[$t]=$(median "${WALL[$t]}"); done
REF_S=${MED["tar|zstd"]}; REF_B=${SIZE["tar|zstd"]}; NY_S=${MED[nydus]}; NY_B=${SIZE[nydus]}

echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -r)"
echo "naiad:   $REV (at build time), 1 MiB chunks; zstd level 3 unless noted"
echo "tree:    $TREE"
echo "source:  $FILES regular files, $SRC_BYTES bytes ($(awk -v b="$SRC_BYTES" 'BEGIN {printf "%.1f", b/1e6}') MB, apparent size)"
echo "nydus:   $NYDUS_IMAGE$(v=$(grep -o 'commit [0-9a-f]\{7,\}[^)]*' "$NYDUS_DIR/README.md" 2>/dev/null | head -1) && echo " ($v)"):" \
    "create -t dir-rafs -v 6 --compressor zstd --chunk-size 0x100000 (blake3 chunk digests, its default)"
echo "runs:    $RUNS per tool, interleaved; page cache warmed first, so all tools read from cache; MB = 10^6 bytes"
echo "         output MB: every file the tool wrote (naiad: bootstrap + blobs; nydus: bootstrap, bootstrap.external + blobs);"
echo "         time/speed/size vs X: the tool's median time, MB/s and output size over X's (for naiad's rows against nydus:"
echo "         Naiad/Nydus; time and size below 1, speed above 1: naiad ahead)"
echo
fmt='%-11s %9s %9s %10s %11s %9s %9s %9s %9s %9s %9s %9s\n'
printf "$fmt" tool "median s" "MB/s" "files/s" "output MB" "speed vs" "size vs" "time vs" "speed vs" "size vs" "user s" "sys s"
printf "$fmt" "" "" "" "" "" "tar|zstd" "tar|zstd" "nydus" "nydus" "nydus" "(median)" "(median)"
for t in "${TOOLS[@]}"; do
    awk -v t="$t" -v s="${MED[$t]}" -v b="${SIZE[$t]}" -v f="$FILES" -v src="$SRC_BYTES" \
        -v rs="$REF_S" -v rb="$REF_B" -v ns="$NY_S" -v nb="$NY_B" -v u="$(median "${USR[$t]}")" -v y="$(median "${SYS[$t]}")" -v fmt="$fmt" \
        'BEGIN {printf fmt, t, sprintf("%.2f", s), sprintf("%.1f", src/1e6/s), sprintf("%.0f", f/s),
                sprintf("%.1f", b/1e6), sprintf("%.2fx", rs/s), sprintf("%.3fx", b/rb),
                sprintf("%.2fx", s/ns), sprintf("%.2fx", ns/s), sprintf("%.3fx", b/nb), sprintf("%.2f", u), sprintf("%.2f", y)}'
done

echo
echo "targets:"
check() { if awk "BEGIN {exit !($2)}"; then echo "  [met]     $1"; else echo "  [NOT met] $1"; fi; }
N=${MED[naiad]}; E=${MED[mkfs.erofs]}; NB=${SIZE[naiad]}
check "naiad throughput >= 0.9x tar|zstd   ($(awk "BEGIN {printf \"%.2f\", $REF_S/$N}")x)" "$REF_S / $N >= 0.9"
check "naiad faster than mkfs.erofs        (${N} s vs ${E} s)" "$N < $E"
check "naiad output <= 1.05x tar|zstd size ($(awk "BEGIN {printf \"%.3f\", $NB/$REF_B}")x)" "$NB / $REF_B <= 1.05"
