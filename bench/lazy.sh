#!/usr/bin/env bash
# Benchmark naiad's lazy mounts (fanotify mode: EROFS on the cache files filled through fanotify
# pre-content events; kernel mode: EROFS over FUSE blob views; fuse mode: all in user space;
# fuse-daemon: fuse mode through `naiad daemon` + `naiad ctl mount`) over a shaped link
# against the local eager mount (`naiad mount BOOTSTRAP --blob-dir`: the kernel's EROFS on fully
# local data, "the limit"), side by side.
#   bench/lazy.sh [TREE]       TREE defaults to the Rust toolchain: $(rustc --print sysroot)
#   BENCH_RUNS=N               repetitions per mode (default 3); the median is reported
#   BENCH_WARM_REPEAT=N        warm re-reads per run (default 3; each run's all count towards the median): a warm
#                              re-read takes well under a second, and one alone is as noisy as its ratio to the limit
#   BENCH_CACHE=DIR            the image built from TREE, kept for reruns (default target/bench-images)
#   BENCH_SCRATCH=DIR          mounts, caches and temp files (default ${TMPDIR:-/tmp})
#   BENCH_DELAY_MS=N           extra one-way delay of the proxy in front of the registry (default 10)
#   BENCH_MODES="..."          default "local fanotify kernel fuse fuse-daemon"
#   BENCH_HALT_POLL_NS=N       on a KVM guest with the cpuidle-haltpoll driver: guest_halt_poll_ns for the run
#                              (restored at exit). How long an idle CPU polls before it halts decides what waking a
#                              reader costs, and every lazy-mode request wakes one (docs/design-notes.md)
#   BENCH_FUSE_URING=Y|N       the fuse module's enable_uring for the run (default Y; restored at exit). With Y the
#                              foreground fuse mode is served through FUSE over io_uring (a server thread per CPU);
#                              fuse-daemon's mounts (handed over on a daemon restart) stay on /dev/fuse either way
# Needs root and the Debian packages docker-registry umoci jq curl, iproute2 (ip, tc) and python3.
# The registry runs in a network namespace behind a veth pair shaped to 100 Mbit/s each way
# (tc tbf); a small python3 proxy on 127.0.0.1 adds BENCH_DELAY_MS each way (netem is not in
# every kernel). All traffic stays on loopback and that veth pair; all of it is torn down at exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"   # die now since drop wire mb median machine; the link: net_free net_up net_down registry_up shape_link delay_proxy rtt
TREE=${1:-$(rustc --print sysroot)}
RUNS=${BENCH_RUNS:-3} WARM_REPEAT=${BENCH_WARM_REPEAT:-3} CACHE=${BENCH_CACHE:-$ROOT/target/bench-images} SCRATCH_BASE=${BENCH_SCRATCH:-${TMPDIR:-/tmp}}
DELAY_MS=${BENCH_DELAY_MS:-10} NAIAD=$ROOT/target/release/naiad
NS=naiadbench HV=nb0 NV=nb1 HOST_IP=10.200.0.1 NS_IP=10.200.0.2 RATE=100mbit
read -ra MODES <<<"${BENCH_MODES:-local fanotify kernel fuse fuse-daemon}"   # local first: the limit
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY; export NO_COLOR=1   # traffic stays on loopback/veth

[[ $(id -u) == 0 ]] || die "run as root (network namespace, tc, mounts, drop_caches)"
[[ $RUNS =~ ^[1-9][0-9]*$ && $WARM_REPEAT =~ ^[1-9][0-9]*$ && $DELAY_MS =~ ^[0-9]+$ ]] || die "BENCH_RUNS and BENCH_WARM_REPEAT must be positive integers, BENCH_DELAY_MS a non-negative one"
HALT_POLL=/sys/module/haltpoll/parameters/guest_halt_poll_ns HALT_POLL0=""
URING=/sys/module/fuse/parameters/enable_uring URING0="" FUSE_URING=${BENCH_FUSE_URING:-Y}
[[ $FUSE_URING == [YN] ]] || die "BENCH_FUSE_URING is Y or N"
if [[ -n ${BENCH_HALT_POLL_NS:-} ]]; then
    [[ $BENCH_HALT_POLL_NS =~ ^[0-9]+$ && -w $HALT_POLL ]] || die "BENCH_HALT_POLL_NS needs a number and the cpuidle-haltpoll driver ($HALT_POLL)"
fi
for t in docker-registry umoci jq curl ip tc python3 findmnt; do command -v "$t" >/dev/null || die "$t not found"; done
TREE=$(cd "$TREE" && pwd) || die "$TREE is not a directory"
net_free || die "netns $NS or link $HV exists (another run, or a crashed one: ip netns del $NS; ip link del $HV)"

echo "== building naiad (release)" >&2
(cd "$ROOT" && cargo build --release -j2 -p naiad --quiet)
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
SCRATCH=$(mktemp -d "$SCRATCH_BASE/naiad-bench-lazy.XXXXXX")
PIDS=() MPID=""
cleanup() {
    set +e
    [[ -z $HALT_POLL0 ]] || echo "$HALT_POLL0" >"$HALT_POLL"
    [[ -z $URING0 ]] || echo "$URING0" >"$URING"
    for p in $MPID "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done   # a lazy mount's process unmounts it
    mounts() { findmnt -rn -o TARGET | awk -v p="$SCRATCH/" 'index($0, p) == 1' | sort -r; }
    for m in $(mounts); do umount "$m" 2>/dev/null || umount -l "$m"; done
    net_down
    if [[ -n $(mounts) ]]; then echo "warning: $SCRATCH still has mounts; not removed" >&2; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # the EXIT trap still cleans up
[[ -z ${BENCH_HALT_POLL_NS:-} ]] || { HALT_POLL0=$(cat "$HALT_POLL"); echo "$BENCH_HALT_POLL_NS" >"$HALT_POLL"; }
if [[ -w $URING ]]; then URING0=$(cat "$URING"); echo "$FUSE_URING" >"$URING"
elif [[ $FUSE_URING == Y ]]; then echo "note: this kernel has no FUSE over io_uring ($URING): fuse mode uses /dev/fuse" >&2; fi

rate() { awk -v b="$1" -v a="$2" -v c="$(now)" 'BEGIN {printf "%.1f", b / 1e6 / (c - a)}'; }   # MB/s of b bytes since a
last() { awk '{print $NF}' <<<"$1"; }; per() { awk -v a="$1" -v b="$2" -v r="$3" 'BEGIN {printf "%.3f", (b - a) / r}'; }
present() { "$NAIAD" cache ls --cache-dir "$1" --json | jq '[.[].present_bytes] | add // 0'; }

echo "== choosing the workload (about 5% of the bytes, whole directories in a fixed pseudo-random order)" >&2
python3 - "$TREE" "$SCRATCH/list" >"$SCRATCH/pick" <<'EOF'
import hashlib, os, sys
tree, out, dirs, total = sys.argv[1], sys.argv[2], {}, 0
for d, ds, fs in os.walk(tree):
    for p in (os.path.join(d, f) for f in fs if not os.path.islink(os.path.join(d, f))):
        s = os.path.getsize(p); total += s; dirs.setdefault(os.path.relpath(d, tree), []).append((os.path.relpath(p, tree), s))
h = lambda s: hashlib.sha256(s.encode()).hexdigest()
allf = sorted(x for v in dirs.values() for x in v)
big = max(allf, key=lambda x: x[1])   # the cold sequential read; not part of the workload
pick, n, target = [], 0, total * 0.05
for d in sorted(dirs, key=h):
    fs = sorted(x for x in dirs[d] if x[1] <= 16e6 and x != big); s = sum(x[1] for x in fs)
    if fs and n + s <= target * 1.05: pick += fs; n += s
    if n >= target * 0.95: break
taken = {os.path.dirname(x[0]) for x in pick}
small = min((x for x in allf if 1024 <= x[1] <= 16384 and os.path.dirname(x[0]) not in taken), key=lambda x: h(x[0]))
open(out, "wb").write(b"".join(p.encode() + b"\0" for p, _ in pick))
print(len(allf), total, len(pick), n, small[1], big[1], small[0], big[0], sep="\n")
EOF
mapfile -t P <"$SCRATCH/pick"
FILES=${P[0]} TOTAL=${P[1]} NPICK=${P[2]} PICKB=${P[3]} SMALLB=${P[4]} BIGB=${P[5]} SMALL=${P[6]} BIG=${P[7]}

# The images, kept in $CACHE: lazy-local (naiad build), lazy-registry (registry storage after `naiad convert`); rebuilt when TREE or the format crates change.
ID="$TREE $FILES $TOTAL $(git -C "$ROOT" log -1 --format=%h -- crates/naiad-format crates/naiad-builder crates/naiad-oci 2>/dev/null)"
LOCAL=$CACHE/lazy-local REGDATA=$CACHE/lazy-registry BUILT=""
mkdir -p "$CACHE"
if [[ $(cat "$LOCAL/stamp" 2>/dev/null) != "$ID" ]]; then
    echo "== naiad build $TREE -> $LOCAL" >&2
    t0=$(now); rm -rf "$LOCAL" "$LOCAL.tmp"
    "$NAIAD" build "$TREE" -o "$LOCAL.tmp" --json >"$SCRATCH/build.json" || die "naiad build failed"
    echo "$ID" >"$LOCAL.tmp/stamp" && mv "$LOCAL.tmp" "$LOCAL"
    BUILT+="local image built in $(since "$t0") s; "
fi

echo "== network namespace $NS, veth $HV/$NV, registry on $NS_IP:5000" >&2
net_up
REG=$NS_IP:5000
[[ $(cat "$REGDATA/stamp" 2>/dev/null) == "$ID" ]] || rm -rf "$REGDATA"; mkdir -p "$REGDATA"
registry_up "$REGDATA" "$REG"
if [[ ! -f $REGDATA/stamp ]]; then   # converted before the link is shaped
    echo "== OCI image of $TREE (umoci) -> naiad convert -> $REG/naiad/lazy:1" >&2
    t0=$(now) W=$SCRATCH/oci img=$SCRATCH/oci/layout:lazy
    { mkdir "$W" && umoci init --layout "$W/layout" && umoci new --image "$img" && umoci unpack --image "$img" "$W/bundle" &&
        cp -a "$TREE/." "$W/bundle/rootfs/" && umoci repack --image "$img" "$W/bundle" && rm -rf "$W/bundle"; } || die "umoci failed"
    "$NAIAD" convert "oci:$img" "docker://$REG/naiad/lazy:1" --insecure --json >"$SCRATCH/convert.json" || die "naiad convert failed"
    echo "$ID" >"$REGDATA/stamp" && rm -rf "$W"
    BUILT+="registry image built and converted in $(since "$t0") s; "
fi
shape_link
delay_proxy "$REG" "$DELAY_MS"   # REGHOST LAT_NOTE PROXY_PID
# The link as measured: request round trip, and 20 MB of the largest blob through it.
ACC='Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json'
MAN=$(curl -sf -H "$ACC" "http://$REG/v2/naiad/lazy/manifests/1")
D=$(jq -r '.manifests[0].digest // empty' <<<"$MAN"); [[ -z $D ]] || MAN=$(curl -sf -H "$ACC" "http://$REG/v2/naiad/lazy/manifests/$D")
BLOB=$(jq -r '[.layers[]] | max_by(.size) | .digest' <<<"$MAN") IMGB=$(jq '[.layers[].size] | add' <<<"$MAN")
LINK=$(curl -sf -r 0-19999999 -o /dev/null -w '%{size_download} %{time_total}' "http://$REGHOST/v2/naiad/lazy/blobs/$BLOB" | awk '{printf "%.1f", $1 / 1e6 / $2}')
LINK_RTT="$(rtt "$REGHOST") ms through $REGHOST ($(rtt "$REG") ms direct)"

declare -A MOUNT SMALLS WORK WIREA CACHEA SEQ WSEQ WARM WARMNET FAIL WALK RAND FULL
run_mode() {   # $1 mode, $2 run: one fresh mount and cache, the measurements, unmount
    local mode=$1 r=$2 d=$SCRATCH/$1-$2 t0 w0 c0=0 st=0 img=docker://$REGHOST/naiad/lazy:1 lazy=(--insecure --no-prefetch)
    local M=$d/mnt api=(--api "$d/api.sock")
    rd() { (cd "$M" && timeout -k 5 600 "$@") >/dev/null 2>>"$d/err" || { head -1 "$d/err" >>"$d/log"; return 1; }; }
    mkdir -p "$M" "$d/cache" "$d/run"
    [[ $mode != fuse-daemon ]] || { "$NAIAD" daemon "${api[@]}" --cache-dir "$d/cache" --runtime-dir "$d/run" >"$d/log" 2>&1 & MPID=$!
        for i in {1..100}; do [[ -S $d/api.sock ]] && break; sleep 0.1; done; }   # the daemon starts untimed
    drop; t0=$(now)
    case $mode in
    local) "$NAIAD" mount "$LOCAL/bootstrap" "$M" --blob-dir "$LOCAL" --cache-dir "$d/cache" >"$d/log" 2>&1 || return 1 ;;
    fuse-daemon) "$NAIAD" ctl "${api[@]}" mount "$img" "$M" --mode fuse "${lazy[@]}" >>"$d/log" 2>&1 || return 1 ;;
    *) "$NAIAD" mount "$img" "$M" --mode "$mode" --cache-dir "$d/cache" --runtime-dir "$d/run" "${lazy[@]}" >"$d/log" 2>&1 & MPID=$! ;;
    esac
    until [[ -e $M/$BIG ]]; do sleep 0.01; (($(date +%s) - ${t0%.*} < 120)) || { echo "no $BIG after 120 s" >>"$d/log"; return 1; }
        [[ -z $MPID ]] || kill -0 "$MPID" 2>/dev/null || { echo "the naiad process exited" >>"$d/log"; return 1; }; done
    MOUNT[$mode]+="$(since "$t0") "
    drop; t0=$(now); rd cat "$SMALL" || return 1; SMALLS[$mode]+="$(since "$t0") "
    drop; w0=$(wire); [[ $mode == local ]] || c0=$(present "$d/cache")
    t0=$(now); rd xargs -0 -a "$SCRATCH/list" cat || return 1; WORK[$mode]+="$(since "$t0") "
    [[ $mode == local ]] || WIREA[$mode]+="$(per "$w0" "$(wire)" "$PICKB") " CACHEA[$mode]+="$(per "$c0" "$(present "$d/cache")" "$PICKB") "
    w0=$(wire)
    for ((i = 0; i < WARM_REPEAT; i++)); do drop; t0=$(now); rd xargs -0 -a "$SCRATCH/list" cat || return 1; WARM[$mode]+="$(rate "$PICKB" "$t0") "; done
    WARMNET[$mode]+="$(($(wire) - w0)) "
    drop; t0=$(now); rd cat "$BIG" || return 1; SEQ[$mode]+="$(rate "$BIGB" "$t0") "
    drop; t0=$(now); rd cat "$BIG" || return 1; WSEQ[$mode]+="$(rate "$BIGB" "$t0") "   # now from naiad's cache
    # Warm: the big file is cached now. 4 KiB reads at 2000 pseudo-random offsets (reads/s), and
    # a metadata walk of the whole tree (stat of every entry), page cache dropped before each.
    drop; t0=$(now); rd python3 -c 'import os, random, sys; f = os.open(sys.argv[1], os.O_RDONLY); n = os.fstat(f).st_size; r = random.Random(7); [os.pread(f, 4096, r.randrange(0, max(1, n - 4096))) for _ in range(2000)]' "$BIG" || return 1
    RAND[$mode]+="$(awk -v a="$t0" -v c="$(now)" 'BEGIN {printf "%.0f", 2000 / (c - a)}') "
    drop; t0=$(now); rd find . -printf '%s\n' || return 1; WALK[$mode]+="$(since "$t0") "
    # Every file read once (untimed: the whole image comes over), then the workload again:
    # warm with the whole image cached (a fanotify mount then has no watched file left).
    rd sh -c 'find . -type f -print0 | xargs -0 cat' || return 1
    for ((i = 0; i < WARM_REPEAT; i++)); do drop; t0=$(now); rd xargs -0 -a "$SCRATCH/list" cat || return 1; FULL[$mode]+="$(rate "$PICKB" "$t0") "; done
    cmp -s "$M/$SMALL" "$TREE/$SMALL" && cmp -s "$M/$BIG" "$TREE/$BIG" && (cd "$M" && xargs -0 -a "$SCRATCH/list" cat) |
        cmp -s - <(cd "$TREE" && xargs -0 -a "$SCRATCH/list" cat) || { echo "content differs from $TREE" >>"$d/log"; st=1; }
    if [[ $mode == fuse-daemon ]]; then "$NAIAD" ctl "${api[@]}" umount "$M" >>"$d/log" 2>&1 && kill "$MPID"
    else "$NAIAD" umount "$M" >>"$d/log" 2>&1; fi || { echo "unmounting failed" >>"$d/log"; st=1; }
    [[ -z $MPID ]] || for i in {1..100}; do kill -0 "$MPID" 2>/dev/null || break; sleep 0.1; done
    [[ -z $MPID ]] || ! kill -0 "$MPID" 2>/dev/null || { echo "the naiad process still runs 10 s after unmounting" >>"$d/log"; st=1; }
    [[ -z $MPID ]] || wait "$MPID" || { echo "the naiad process exited with status $?" >>"$d/log"; st=1; }
    return $st
}
for ((r = 1; r <= RUNS; r++)); do
    for mode in "${MODES[@]}"; do
        MPID=""
        if ! run_mode "$mode" "$r"; then   # say whether the naiad process had exited on its own
            [[ -z $MPID ]] || kill -0 "$MPID" 2>/dev/null || { x=0; wait "$MPID" || x=$?; echo "the naiad process had exited, status $x" >>"$SCRATCH/$mode-$r/log"; MPID=""; }
            FAIL[$mode]+="run $r: $(grep -v '^ *$' "$SCRATCH/$mode-$r/log" | tail -3 | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ')"$'\n'
            echo "   run $r/$RUNS  $(printf '%-11s' "$mode") FAILED; log:" >&2; tail -20 "$SCRATCH/$mode-$r/log" >&2
            [[ -z $MPID ]] || { kill "$MPID" 2>/dev/null; wait "$MPID" 2>/dev/null; } || true
            for m in $(findmnt -rn -o TARGET | awk -v p="$SCRATCH/$mode-$r/" 'index($0, p) == 1' | sort -r); do umount -l "$m" || true; done
        else
            echo "   run $r/$RUNS  $(printf '%-11s' "$mode") mount $(last "${MOUNT[$mode]}") s, workload $(last "${WORK[$mode]}") s, warm $(last "${WARM[$mode]}") MB/s" >&2
        fi
        rm -rf "$SCRATCH/$mode-$r" || echo "warning: could not remove $SCRATCH/$mode-$r" >&2
    done
done
[[ $DELAY_MS == 0 || -z ${PROXY_PID:-} ]] || kill -0 "$PROXY_PID" 2>/dev/null || LAT_NOTE+="; the delay proxy died during the runs"

declare -A MW; for m in "${MODES[@]}"; do MW[$m]=$(median "${WARM[$m]:-}"); done
ratio() { awk -v a="${MW[$1]:--}" -v b="${MW[local]:--}" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b}'; }
declare -A MF; for m in "${MODES[@]}"; do MF[$m]=$(median "${FULL[$m]:-}"); done
fratio() { awk -v a="${MF[$1]:--}" -v b="${MF[local]:--}" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b}'; }
echo
echo "machine: $(machine)"
[[ ! -r $URING ]] || echo "fuse:    enable_uring $(cat "$URING")${URING0:+ for this run (was $URING0)}: Y = fuse mode served through FUSE over io_uring (fuse-daemon never is)"
[[ ! -r $HALT_POLL ]] || echo "idle:    cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null), guest_halt_poll_ns $(cat "$HALT_POLL")${HALT_POLL0:+ for this run (was $HALT_POLL0)}: 0 = an idle CPU halts at once, and waking a reader on it costs a VM exit"
echo "load:    $LOAD0 (1/5/15 min) before, $(cut -d' ' -f1-3 /proc/loadavg) after: other work on this machine (e.g. another build) makes the numbers noisy"
echo "naiad:   $REV (at build time), default options (1 MiB chunks, zstd); lazy modes with --no-prefetch and a fresh cache per run"
echo "tree:    $TREE: $FILES files, $(mb "$TOTAL") MB; registry image $(mb "$IMGB") MB${BUILT:+; $BUILT}"
echo "link:    veth to a netns registry, tbf $RATE each way; $LAT_NOTE; measured: $LINK MB/s for 20 MB of a blob, request RTT $LINK_RTT"
echo "reads:   small file $SMALL ($SMALLB B); workload $NPICK files in whole directories, $(mb "$PICKB") MB ($(awk -v b="$PICKB" -v t="$TOTAL" 'BEGIN {printf "%.1f", 100 * b / t}')%);" \
    "sequential $BIG ($(mb "$BIGB") MB)"
echo "runs:    $RUNS per mode, interleaved; page cache dropped before every step; MB = 10^6 bytes; the warm re-read and all-cached figures are medians of $WARM_REPEAT reads per run"
echo "         mount s: command start until a file is visible (local: includes writing the blob views into its fresh cache;"
echo "         fuse-daemon: \`naiad ctl mount\` to a running daemon); amplif.: bytes received over the veth (compressed, with"
echo "         HTTP/TCP) / bytes read; cache/read: bytes present in the cache / bytes read; warm re-read: the workload again"
echo "         with the data in naiad's cache (local: on disk), page cache dropped; warm vs limit: over local's warm re-read;"
echo "         warm seq: the sequential file again, from naiad's cache; 4K rand: 2000 reads of 4 KiB at random offsets of it;"
echo "         walk: find over the whole tree;"
echo "         all cached: the workload again after every file was read once (the whole image in the cache), page cache dropped"
echo
fmt='%-14s %8s %8s %9s %9s %7s %9s %9s %10s %8s %9s %8s %10s %8s\n'
printf "$fmt" mode "mount s" "small s" "5% work s" "amplif." "cache" "cold seq" "warm seq" "warm re-" "warm vs" "4K rand" "walk s" "all cached" "vs limit"
printf "$fmt" "" "" "(cold)" "" "(wire)" "/read" "MB/s" "MB/s" "read MB/s" "limit" "reads/s" "(warm)" "MB/s" ""
for m in "${MODES[@]}"; do
    name=$m; [[ $m != local ]] || name="local (limit)"
    if [[ -z ${MOUNT[$m]:-} ]]; then printf '%-14s FAILED in every run\n' "$name"; continue; fi
    amp=- cam=-; [[ $m == local ]] || amp=$(median "${WIREA[$m]:-}") cam=$(median "${CACHEA[$m]:-}")
    printf "$fmt" "$name" "$(median "${MOUNT[$m]}")" "$(median "${SMALLS[$m]:-}")" "$(median "${WORK[$m]:-}")" "$amp" "$cam" \
        "$(median "${SEQ[$m]:-}")" "$(median "${WSEQ[$m]:-}")" "${MW[$m]}" "$(ratio "$m")" "$(median "${RAND[$m]:-}")" "$(median "${WALK[$m]:-}")" \
        "${MF[$m]}" "$(fratio "$m")"
done
for m in "${MODES[@]}"; do [[ -z ${FAIL[$m]:-} ]] || printf 'failures (%s):\n%s\n' "$m" "$(sed 's/^/  /' <<<"${FAIL[$m]%$'\n'}")"; done
for m in "${MODES[@]}"; do [[ $m == local || -z ${WARMNET[$m]:-} ]] || printf '%s, ' "$m $(median "${WARMNET[$m]}") B"; done | sed 's/^./wire bytes during the warm re-read (median): &/; s/, $/\n/' 
echo
echo "targets:"
check() {   # $1 text, $2 condition; a mode not run is "not run", not a miss
    if [[ $1 == *"(-)" ]]; then echo "  [not run] $1"; elif awk "BEGIN {exit !($2)}" 2>/dev/null; then echo "  [met]     $1"; else echo "  [NOT met] $1"; fi
}
F=fuse; [[ ${MW[fuse]:--} != - || ${MW[fuse-daemon]:--} == - ]] || F=fuse-daemon
check "fanotify warm re-read >= 0.9x the limit  ($(ratio fanotify))" "$(ratio fanotify | tr -d x) >= 0.9"
check "fanotify warm re-read, image all cached, >= 0.9x the limit  ($(fratio fanotify))" "$(fratio fanotify | tr -d x) >= 0.9"
check "kernel warm re-read >= 0.9x the limit  ($(ratio kernel))" "$(ratio kernel | tr -d x) >= 0.9"
check "$F warm re-read >= 0.5x the limit  ($(ratio $F))" "$(ratio $F | tr -d x) >= 0.5"
