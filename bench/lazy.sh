#!/usr/bin/env bash
# Benchmark naiad's lazy mounts (fanotify mode: EROFS on the cache files filled through fanotify
# pre-content events; kernel mode: EROFS over FUSE blob views; fuse mode: all in user space;
# fuse-daemon: fuse mode through `naiad daemon` + `naiad ctl mount`) over a shaped link
# against the local eager mount (`naiad mount BOOTSTRAP --blob-dir`: the kernel's EROFS on fully
# local data, "the limit"), and against the peer, Dragonfly Nydus (mode nydus: `nydusd` in FUSE
# mode, registry backend through the same link, blobcache), side by side.
#   bench/lazy.sh [TREE]       TREE defaults to the Rust toolchain: $(rustc --print sysroot)
#   BENCH_RUNS=N               repetitions per mode (default 3); the median is reported
#   BENCH_WARM_REPEAT=N        warm re-reads per run (default 3; each run's all count towards the median): a warm
#                              re-read takes well under a second, and one alone is as noisy as its ratio to the limit
#   BENCH_CACHE=DIR            the images built from TREE, kept for reruns (default target/bench-images)
#   BENCH_SCRATCH=DIR          mounts, caches and temp files (default ${TMPDIR:-/tmp})
#   BENCH_DELAY_MS=N           extra one-way delay of the proxy in front of the registry (default 10)
#   BENCH_MODES="..."          default "local fanotify kernel fuse fuse-daemon nydus"
#   BENCH_NYDUS_DIR=DIR        where nydusd and nydus-image are (default: the nydusd on PATH, else ../shared/anchors beside the checkout);
#                              only needed for mode nydus
#   BENCH_HALT_POLL_NS=N       on a KVM guest with the cpuidle-haltpoll driver: guest_halt_poll_ns for the run
#                              (restored at exit). How long an idle CPU polls before it halts decides what waking a
#                              reader costs, and every lazy-mode request wakes one (docs/design-notes.md)
#   BENCH_FUSE_URING=Y|N       the fuse module's enable_uring for the run (default Y; restored at exit). With Y the
#                              foreground fuse mode is served through FUSE over io_uring (a server thread per CPU);
#                              fuse-daemon's mounts (handed over on a daemon restart) stay on /dev/fuse either way,
#                              and so does nydusd (it does not ask for the ring)
# Needs root and the Debian packages docker-registry umoci jq curl, iproute2 (ip, tc) and python3.
# The registry runs in a network namespace behind a veth pair shaped to 100 Mbit/s each way
# (tc tbf); a small python3 proxy on 127.0.0.1 adds BENCH_DELAY_MS each way (netem is not in
# every kernel). All traffic stays on loopback and that veth pair; all of it is torn down at exit.
# Mode nydus: `nydus-image create -t dir-rafs -v 6 --compressor zstd --chunk-size 0x100000` of TREE (the same
# chunk size and compressor as naiad's defaults; cached in BENCH_CACHE), its blob and its bootstrap (gzip) pushed by
# digest into the registry's repository nydus/lazy (OCI monolithic upload; nydusd's registry backend reads blobs by
# digest, no manifest). Its mount fetches the bootstrap through the link (as naiad's lazy modes fetch theirs), then
# starts nydusd on a fresh blobcache with digest_validate false (Nydus' default) and no prefetch (as naiad's
# --no-prefetch); killing nydusd unmounts it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"   # die now since drop wire mb median machine; the link: net_free net_up net_down registry_up shape_link delay_proxy rtt
TREE=${1:-$(rustc --print sysroot)}
RUNS=${BENCH_RUNS:-3} WARM_REPEAT=${BENCH_WARM_REPEAT:-3} CACHE=${BENCH_CACHE:-$ROOT/target/bench-images} SCRATCH_BASE=${BENCH_SCRATCH:-${TMPDIR:-/tmp}}
DELAY_MS=${BENCH_DELAY_MS:-10} NAIAD=$ROOT/target/release/naiad
NS=naiadbench HV=nb0 NV=nb1 HOST_IP=10.200.0.1 NS_IP=10.200.0.2 RATE=100mbit
read -ra MODES <<<"${BENCH_MODES:-local fanotify kernel fuse fuse-daemon nydus}"   # local first: the limit
NYDUS_DIR=${BENCH_NYDUS_DIR:-$(d=$(command -v nydusd) && dirname "$d" || echo "$ROOT/../shared/anchors")}
NYDUSD=$NYDUS_DIR/nydusd NYDUS_IMAGE=$NYDUS_DIR/nydus-image NYREPO=nydus/lazy
has_mode() { local m; for m in "${MODES[@]}"; do [[ $m == "$1" ]] && return 0; done; return 1; }
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
! has_mode nydus || [[ -x $NYDUSD && -x $NYDUS_IMAGE && -c /dev/fuse ]] || die "mode nydus needs $NYDUSD, $NYDUS_IMAGE and /dev/fuse (set BENCH_NYDUS_DIR, or leave nydus out of BENCH_MODES)"
TREE=$(cd "$TREE" && pwd) || die "$TREE is not a directory"
net_free || die "netns $NS or link $HV exists (another run, or a crashed one: ip netns del $NS; ip link del $HV)"

echo "== building naiad (release)" >&2
(cd "$ROOT" && cargo build --release -j2 -p naiad --quiet)
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
SCRATCH=$(mktemp -d "$SCRATCH_BASE/naiad-bench-lazy.XXXXXX")
PIDS=() MPID=""
# The processes whose command line names a path under $SCRATCH (their ids; not this script's).
ours() { local f c; for f in /proc/[0-9]*/cmdline; do { c=$(tr '\0' ' ' <"$f"); } 2>/dev/null || continue
    f=${f#/proc/} f=${f%/cmdline}; [[ $c != *"$SCRATCH/"* || $f == "$$" ]] || echo "$f"; done; }
cleanup() {
    set +e
    [[ -z $HALT_POLL0 ]] || echo "$HALT_POLL0" >"$HALT_POLL"
    [[ -z $URING0 ]] || echo "$URING0" >"$URING"
    for p in $MPID "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done   # a lazy mount's process (naiad, nydusd) unmounts it
    # Anything else still running on this run's files (a keeper, a nydusd whose run failed): by id, then the mounts.
    for p in $(ours); do kill "$p" 2>/dev/null; done; for i in {1..50}; do [[ -z $(ours) ]] && break; sleep 0.1; done
    for p in $(ours); do kill -9 "$p" 2>/dev/null; done
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
# The Nydus image (bootstrap, blobs/SHA256HEX), kept in $CACHE too: rebuilt when TREE or nydus-image change.
NYLOCAL=$CACHE/lazy-nydus NYID="$TREE $FILES $TOTAL nydus-image $(stat -c '%s %Y' "$NYDUS_IMAGE" 2>/dev/null)"
if has_mode nydus && [[ $(cat "$NYLOCAL/stamp" 2>/dev/null) != "$NYID" ]]; then
    echo "== nydus-image create $TREE -> $NYLOCAL" >&2
    t0=$(now); rm -rf "$NYLOCAL" "$NYLOCAL.tmp"; mkdir -p "$NYLOCAL.tmp/blobs"
    "$NYDUS_IMAGE" create -t dir-rafs -v 6 --compressor zstd --chunk-size 0x100000 --log-level warn \
        -D "$NYLOCAL.tmp/blobs" -B "$NYLOCAL.tmp/bootstrap" "$TREE" >"$SCRATCH/nydus-build.log" 2>&1 || { cat "$SCRATCH/nydus-build.log" >&2; die "nydus-image create failed"; }
    gzip -c "$NYLOCAL.tmp/bootstrap" >"$NYLOCAL.tmp/bootstrap.gz"
    echo "$NYID" >"$NYLOCAL.tmp/stamp" && mv "$NYLOCAL.tmp" "$NYLOCAL"
    BUILT+="nydus image built in $(since "$t0") s; "
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
# Nydus' blobs and its gzipped bootstrap, by digest into $NYREPO (before the link is shaped; a HEAD skips what is there).
if has_mode nydus; then
    for f in "$NYLOCAL"/blobs/* "$NYLOCAL/bootstrap.gz"; do
        h=$(sha256sum "$f" | cut -d' ' -f1)
        [[ $f != */bootstrap.gz ]] || NYBOOT=$h
        curl -sf -I "http://$REG/v2/$NYREPO/blobs/sha256:$h" >/dev/null && continue
        echo "== pushing $(basename "$f") ($(mb "$(stat -c %s "$f")") MB) -> $REG/$NYREPO@sha256:$h" >&2
        loc=$(curl -sf -X POST -D - -o /dev/null "http://$REG/v2/$NYREPO/blobs/uploads/" | tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
        [[ -n $loc ]] || die "the registry gave no upload location for $NYREPO"
        [[ $loc == http* ]] || loc=http://$REG$loc
        [[ $loc == *\?* ]] && loc+="&digest=sha256:$h" || loc+="?digest=sha256:$h"
        curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$f" -o /dev/null "$loc" || die "uploading $f to $REG/$NYREPO failed"
        curl -sf -I "http://$REG/v2/$NYREPO/blobs/sha256:$h" >/dev/null || die "$REG/$NYREPO has no blob sha256:$h after its upload"
    done
    NYBLOBB=$(stat -c %s "$NYLOCAL"/blobs/* | awk '{s += $1} END {print s}') NYBOOTB=$(stat -c %s "$NYLOCAL/bootstrap") NYBOOTGZ=$(stat -c %s "$NYLOCAL/bootstrap.gz")
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

declare -A MOUNT SMALLS WORK WIREA CACHEA SEQ WSEQ WARM WARMNET FAIL WALK RAND FULL RSS KRSS TRSS NYFETCH
rss() { local k=0 p; for p; do k=$((k + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; mb $((k * 1024)); }   # MB of VmRSS of pids
keepers() { local p c; for p in $(ours); do { c=$(tr '\0' ' ' <"/proc/$p/cmdline"); } 2>/dev/null || continue   # naiad's keepers of run dir $1
    [[ $p == "$MPID" || $c != *-keeper\ * || $c != *"$1/"* ]] || echo "$p"; done; }
# Bytes present in a cache dir: naiad's count; nydusd's blobcache holds sparse files of the uncompressed blobs (allocated bytes).
cached() { if [[ $1 == nydus ]]; then du -sB1 "$2" | cut -f1; else present "$2"; fi; }
run_mode() {   # $1 mode, $2 run: one fresh mount and cache, the measurements, unmount
    local mode=$1 r=$2 d=$SCRATCH/$1-$2 t0 w0 c0=0 st=0 img=docker://$REGHOST/naiad/lazy:1 lazy=(--insecure --no-prefetch)
    local M=$d/mnt api=(--api "$d/api.sock")
    rd() { (cd "$M" && timeout -k 5 600 "$@") >/dev/null 2>>"$d/err" || { head -1 "$d/err" >>"$d/log"; return 1; }; }
    mkdir -p "$M" "$d/cache" "$d/run"
    [[ $mode != nydus ]] || printf '{"device":{"backend":{"type":"registry","config":{"scheme":"http","host":"%s","repo":"%s"}},%s},%s}\n' "$REGHOST" "$NYREPO" \
        '"cache":{"type":"blobcache","config":{"work_dir":"'"$d/cache"'"}}' '"mode":"direct","digest_validate":false,"enable_xattr":true,"fs_prefetch":{"enable":false}' >"$d/nydusd.json"
    [[ $mode != fuse-daemon ]] || { "$NAIAD" daemon "${api[@]}" --cache-dir "$d/cache" --runtime-dir "$d/run" >"$d/log" 2>&1 & MPID=$!
        for i in {1..100}; do [[ -S $d/api.sock ]] && break; sleep 0.1; done; }   # the daemon starts untimed
    drop; t0=$(now)
    case $mode in
    local) "$NAIAD" mount "$LOCAL/bootstrap" "$M" --blob-dir "$LOCAL" --cache-dir "$d/cache" >"$d/log" 2>&1 || return 1 ;;
    fuse-daemon) "$NAIAD" ctl "${api[@]}" mount "$img" "$M" --mode fuse "${lazy[@]}" >>"$d/log" 2>&1 || return 1 ;;
    nydus) # its bootstrap through the link (by digest), then nydusd
        curl -sf "http://$REGHOST/v2/$NYREPO/blobs/sha256:$NYBOOT" | gzip -dc >"$d/bootstrap" || { echo "fetching the nydus bootstrap failed" >>"$d/log"; return 1; }
        NYFETCH[$mode]+="$(since "$t0") "
        "$NYDUSD" --config "$d/nydusd.json" --mountpoint "$M" --bootstrap "$d/bootstrap" --log-level warn --rlimit-nofile 0 >"$d/log" 2>&1 & MPID=$! ;;
    *) "$NAIAD" mount "$img" "$M" --mode "$mode" --cache-dir "$d/cache" --runtime-dir "$d/run" "${lazy[@]}" >"$d/log" 2>&1 & MPID=$! ;;
    esac
    until [[ -e $M/$BIG ]]; do sleep 0.01; (($(date +%s) - ${t0%.*} < 120)) || { echo "no $BIG after 120 s" >>"$d/log"; return 1; }
        [[ -z $MPID ]] || kill -0 "$MPID" 2>/dev/null || { echo "the $mode process exited" >>"$d/log"; return 1; }; done
    MOUNT[$mode]+="$(since "$t0") "
    drop; t0=$(now); rd cat "$SMALL" || return 1; SMALLS[$mode]+="$(since "$t0") "
    drop; w0=$(wire); [[ $mode == local ]] || c0=$(cached "$mode" "$d/cache")
    t0=$(now); rd xargs -0 -a "$SCRATCH/list" cat || return 1; WORK[$mode]+="$(since "$t0") "
    # The serving process's VmRSS now (local: the kernel serves, no process), and naiad's keepers' apart.
    [[ -z $MPID ]] || { k=$(keepers "$d"); RSS[$mode]+="$(rss "$MPID") " TRSS[$mode]+="$(rss "$MPID" $k) "; [[ -z $k ]] || KRSS[$mode]+="$(rss $k) "; }
    [[ $mode == local ]] || WIREA[$mode]+="$(per "$w0" "$(wire)" "$PICKB") " CACHEA[$mode]+="$(per "$c0" "$(cached "$mode" "$d/cache")" "$PICKB") "
    w0=$(wire)
    for ((i = 0; i < WARM_REPEAT; i++)); do drop; t0=$(now); rd xargs -0 -a "$SCRATCH/list" cat || return 1; WARM[$mode]+="$(rate "$PICKB" "$t0") "; done
    WARMNET[$mode]+="$(($(wire) - w0)) "
    drop; t0=$(now); rd cat "$BIG" || return 1; SEQ[$mode]+="$(rate "$BIGB" "$t0") "
    drop; t0=$(now); rd cat "$BIG" || return 1; WSEQ[$mode]+="$(rate "$BIGB" "$t0") "   # now from naiad's (nydusd's) cache
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
    elif [[ $mode == nydus ]]; then kill "$MPID"   # nydusd unmounts on SIGTERM
    else "$NAIAD" umount "$M" >>"$d/log" 2>&1; fi || { echo "unmounting failed" >>"$d/log"; st=1; }
    [[ -z $MPID ]] || for i in {1..100}; do kill -0 "$MPID" 2>/dev/null || break; sleep 0.1; done
    [[ -z $MPID ]] || ! kill -0 "$MPID" 2>/dev/null || { echo "the $mode process still runs 10 s after unmounting" >>"$d/log"; st=1; }
    [[ -z $MPID ]] || wait "$MPID" || { echo "the $mode process exited with status $?" >>"$d/log"; st=1; }
    ! findmnt -rn "$M" >/dev/null || { echo "$M is still mounted" >>"$d/log"; st=1; }
    return $st
}
for ((r = 1; r <= RUNS; r++)); do
    for mode in "${MODES[@]}"; do
        MPID=""
        if ! run_mode "$mode" "$r"; then   # say whether the serving process had exited on its own
            [[ -z $MPID ]] || kill -0 "$MPID" 2>/dev/null || { x=0; wait "$MPID" || x=$?; echo "the $mode process had exited, status $x" >>"$SCRATCH/$mode-$r/log"; MPID=""; }
            FAIL[$mode]+="run $r: $(grep -v '^ *$' "$SCRATCH/$mode-$r/log" | tail -3 | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ')"$'\n'
            echo "   run $r/$RUNS  $(printf '%-11s' "$mode") FAILED; log:" >&2; tail -20 "$SCRATCH/$mode-$r/log" >&2
            [[ -z $MPID ]] || { kill "$MPID" 2>/dev/null; wait "$MPID" 2>/dev/null; } || true
            for m in $(findmnt -rn -o TARGET | awk -v p="$SCRATCH/$mode-$r/" 'index($0, p) == 1' | sort -r); do umount -l "$m" || true; done
            for p in $(keepers "$SCRATCH/$mode-$r"); do kill "$p" 2>/dev/null || true; done
        else
            echo "   run $r/$RUNS  $(printf '%-11s' "$mode") mount $(last "${MOUNT[$mode]}") s, workload $(last "${WORK[$mode]}") s, warm $(last "${WARM[$mode]}") MB/s" >&2
        fi
        rm -rf "$SCRATCH/$mode-$r" || echo "warning: could not remove $SCRATCH/$mode-$r" >&2
    done
done
[[ $DELAY_MS == 0 || -z ${PROXY_PID:-} ]] || kill -0 "$PROXY_PID" 2>/dev/null || LAT_NOTE+="; the delay proxy died during the runs"

# The medians, V[mode,figure]; "-" where a mode has no such figure.
declare -A V
for m in "${MODES[@]}"; do
    for f in MOUNT SMALLS WORK WIREA CACHEA SEQ WSEQ WARM RAND WALK FULL RSS KRSS TRSS; do declare -n a=$f; V[$m,$f]=$(median "${a[$m]:-}"); unset -n a; done
done
rel() { awk -v a="${V[$1,$3]:--}" -v b="${V[$2,$3]:--}" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b}'; }   # mode $1 over mode $2, figure $3
ratio() { rel "$1" local WARM; }; fratio() { rel "$1" local FULL; }
NYVER=$(grep -o 'commit [0-9a-f]\{7,\}[^)]*' "$NYDUS_DIR/README.md" 2>/dev/null | head -1) || true
echo
echo "machine: $(machine)"
[[ ! -r $URING ]] || echo "fuse:    enable_uring $(cat "$URING")${URING0:+ for this run (was $URING0)}: Y = fuse mode served through FUSE over io_uring (fuse-daemon and nydusd never are)"
[[ ! -r $HALT_POLL ]] || echo "idle:    cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null), guest_halt_poll_ns $(cat "$HALT_POLL")${HALT_POLL0:+ for this run (was $HALT_POLL0)}: 0 = an idle CPU halts at once, and waking a reader on it costs a VM exit"
echo "load:    $LOAD0 (1/5/15 min) before, $(cut -d' ' -f1-3 /proc/loadavg) after: other work on this machine (e.g. another build) makes the numbers noisy"
echo "naiad:   $REV (at build time), default options (1 MiB chunks, zstd); lazy modes with --no-prefetch and a fresh cache per run"
has_mode nydus && echo "nydus:   $NYDUS_DIR${NYVER:+ ($NYVER)}: \`nydus-image create -t dir-rafs -v 6 --compressor zstd --chunk-size 0x100000\`," \
    "bootstrap $(mb "$NYBOOTB") MB ($(mb "$NYBOOTGZ") MB gzipped in the registry), blobs $(mb "$NYBLOBB") MB; nydusd in FUSE mode (/dev/fuse, its default" \
    "4 threads), registry backend http://$REGHOST repo $NYREPO (by digest), blobcache in a fresh dir per run, digest_validate false" \
    "(Nydus' default: chunks not verified on read; naiad verifies every chunk it fetches), fs_prefetch off"
echo "tree:    $TREE: $FILES files, $(mb "$TOTAL") MB; registry image $(mb "$IMGB") MB${BUILT:+; $BUILT}"
echo "link:    veth to a netns registry, tbf $RATE each way; $LAT_NOTE; measured: $LINK MB/s for 20 MB of a blob, request RTT $LINK_RTT"
echo "reads:   small file $SMALL ($SMALLB B); workload $NPICK files in whole directories, $(mb "$PICKB") MB ($(awk -v b="$PICKB" -v t="$TOTAL" 'BEGIN {printf "%.1f", 100 * b / t}')%);" \
    "sequential $BIG ($(mb "$BIGB") MB)"
echo "runs:    $RUNS per mode, interleaved; page cache dropped before every step; MB = 10^6 bytes; the warm re-read and all-cached figures are medians of $WARM_REPEAT reads per run"
echo "         mount s: command start until a file is visible (local: includes writing the blob views into its fresh cache;"
echo "         fuse-daemon: \`naiad ctl mount\` to a running daemon; nydus: fetching its bootstrap through the link, by digest, and"
echo "         gunzip, then nydusd${NYFETCH[nydus]:+; the fetch alone: $(median "${NYFETCH[nydus]}") s}); amplif.: bytes received over the veth (compressed, with"
echo "         HTTP/TCP) / bytes read; cache/read: bytes present in the cache / bytes read (nydus: bytes allocated in its blobcache"
echo "         dir); warm re-read: the workload again with the data in naiad's (nydusd's) cache (local: on disk), page cache dropped;"
echo "         warm vs limit: over local's warm re-read; warm seq: the sequential file again, from naiad's (nydusd's) cache;"
echo "         4K rand: 2000 reads of 4 KiB at random offsets of it; walk: find over the whole tree;"
echo "         all cached: the workload again after every file was read once (the whole image in the cache), page cache dropped;"
echo "         RSS MB: VmRSS of the serving process right after the cold workload (the foreground naiad mount; fuse-daemon: the"
echo "         daemon; nydus: nydusd; local: none, the kernel serves it); keeper MB: naiad's keeper processes of that mount, apart"
echo
fmt='%-14s %8s %8s %9s %9s %7s %9s %9s %10s %8s %9s %8s %10s %8s %7s %7s\n'
printf "$fmt" mode "mount s" "small s" "5% work s" "amplif." "cache" "cold seq" "warm seq" "warm re-" "warm vs" "4K rand" "walk s" "all cached" "vs limit" "RSS MB" "keeper"
printf "$fmt" "" "" "(cold)" "" "(wire)" "/read" "MB/s" "MB/s" "read MB/s" "limit" "reads/s" "(warm)" "MB/s" "" "" "MB"
for m in "${MODES[@]}"; do
    name=$m; [[ $m != local ]] || name="local (limit)"
    if [[ -z ${MOUNT[$m]:-} ]]; then printf '%-14s FAILED in every run\n' "$name"; continue; fi
    printf "$fmt" "$name" "${V[$m,MOUNT]}" "${V[$m,SMALLS]}" "${V[$m,WORK]}" "${V[$m,WIREA]}" "${V[$m,CACHEA]}" "${V[$m,SEQ]}" "${V[$m,WSEQ]}" \
        "${V[$m,WARM]}" "$(ratio "$m")" "${V[$m,RAND]}" "${V[$m,WALK]}" "${V[$m,FULL]}" "$(fratio "$m")" "${V[$m,RSS]}" "${V[$m,KRSS]}"
done
OTHERS=0; for m in "${MODES[@]}"; do [[ $m == nydus || -z ${MOUNT[$m]:-} ]] || OTHERS=1; done
if [[ -n ${MOUNT[nydus]:-} && $OTHERS == 1 ]]; then
    echo
    echo "against nydus: each mode's median over nydus' median, figure by figure. Times (s), amplif., cache/read and RSS: below"
    echo "1.00x is less than nydus (naiad ahead); MB/s and reads/s: above 1.00x is faster than nydus (naiad ahead)."
    echo "RSS+keeper: the mode's serving process and its keepers together (median of their sum per run) over nydusd's RSS"
    fmt2='%-14s %8s %8s %9s %9s %7s %9s %9s %10s %9s %8s %10s %7s %7s\n'
    printf "$fmt2" mode "mount s" "small s" "5% work s" "amplif." "cache" "cold seq" "warm seq" "warm re-" "4K rand" "walk s" "all cached" "RSS" "RSS+"
    printf "$fmt2" "/ nydus" "" "(cold)" "" "(wire)" "/read" "MB/s" "MB/s" "read MB/s" "reads/s" "(warm)" "MB/s" "" "keeper"
    for m in "${MODES[@]}"; do
        [[ $m != nydus && -n ${MOUNT[$m]:-} ]] || continue
        name=$m; [[ $m != local ]] || name="local (limit)"
        printf "$fmt2" "$name" "$(rel "$m" nydus MOUNT)" "$(rel "$m" nydus SMALLS)" "$(rel "$m" nydus WORK)" "$(rel "$m" nydus WIREA)" "$(rel "$m" nydus CACHEA)" \
            "$(rel "$m" nydus SEQ)" "$(rel "$m" nydus WSEQ)" "$(rel "$m" nydus WARM)" "$(rel "$m" nydus RAND)" "$(rel "$m" nydus WALK)" "$(rel "$m" nydus FULL)" \
            "$(rel "$m" nydus RSS)" "$(awk -v a="${V[$m,TRSS]}" -v b="${V[nydus,RSS]}" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b}')"
    done
fi
for m in "${MODES[@]}"; do [[ -z ${FAIL[$m]:-} ]] || printf 'failures (%s):\n%s\n' "$m" "$(sed 's/^/  /' <<<"${FAIL[$m]%$'\n'}")"; done
for m in "${MODES[@]}"; do [[ $m == local || -z ${WARMNET[$m]:-} ]] || printf '%s, ' "$m $(median "${WARMNET[$m]}") B"; done | sed 's/^./wire bytes during the warm re-read (median): &/; s/, $/\n/' 
echo
echo "targets:"
check() {   # $1 text, $2 condition; a mode not run is "not run", not a miss
    if [[ $1 == *"(-)" ]]; then echo "  [not run] $1"; elif awk "BEGIN {exit !($2)}" 2>/dev/null; then echo "  [met]     $1"; else echo "  [NOT met] $1"; fi
}
F=fuse; [[ ${V[fuse,WARM]:--} != - || ${V[fuse-daemon,WARM]:--} == - ]] || F=fuse-daemon
check "fanotify warm re-read >= 0.9x the limit  ($(ratio fanotify))" "$(ratio fanotify | tr -d x) >= 0.9"
check "fanotify warm re-read, image all cached, >= 0.9x the limit  ($(fratio fanotify))" "$(fratio fanotify | tr -d x) >= 0.9"
check "kernel warm re-read >= 0.9x the limit  ($(ratio kernel))" "$(ratio kernel | tr -d x) >= 0.9"
check "$F warm re-read >= 0.5x the limit  ($(ratio $F))" "$(ratio $F | tr -d x) >= 0.5"
