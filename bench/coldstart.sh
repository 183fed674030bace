#!/usr/bin/env bash
# Container cold start: pull, then start a container whose command reads a little
# (python3 -c 'import json; print(1)'), plain OCI (containerd's overlayfs snapshotter, `ctr images
# pull` + `ctr run`) against Naiad (`naiad pull` + `ctr run --snapshotter naiad` through
# `naiad snapshotter`), side by side, over the shaped link of bench/lazy.sh.
#   bench/coldstart.sh
#   RUNS=N                    repetitions per image and method (default 3, or BENCH_RUNS); the median is reported
#   BENCH_CACHE=DIR           the source images (OCI layout) and the registry's storage, kept for
#                             reruns (default /var/tmp/naiad-bench-coldstart)
#   BENCH_SCRATCH=DIR         containerd roots, mounts and temp files (default ${TMPDIR:-/tmp})
#   BENCH_DELAY_MS=N          extra one-way delay of the proxy in front of the registry (default 10)
#   BENCH_METHODS="..."       default "plain naiad"; "plain" measures plain OCI alone
#   BENCH_FILLER_MB=N         size of the never-read files of the second image (default 1000)
# Images: `python3` = Debian bookworm minbase + python3 (debootstrap); `python3 + 1 GB unread` =
# the same plus a layer of incompressible files under /opt/filler that the command never reads.
# Cold: every run has a fresh containerd (root, state, socket), a fresh naiad snapshotter root and
# cache, and the page cache dropped; runs interleave methods and images. Writes the table to
# stdout and to bench/results/coldstart.md, and a bar chart to bench/results/coldstart.png.
# Needs root and the Debian packages containerd runc docker-registry skopeo umoci debootstrap
# jq curl gnuplot-nox, iproute2 (ip, tc) and python3 (scripts/install-deps.sh installs them).
# The first run downloads Debian packages from the mirror apt uses here.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"   # die now since drop wire mb median machine; the link: net_free net_up net_down registry_up shape_link delay_proxy rtt
RUNS=${RUNS:-${BENCH_RUNS:-3}} CACHE=${BENCH_CACHE:-/var/tmp/naiad-bench-coldstart} SCRATCH_BASE=${BENCH_SCRATCH:-${TMPDIR:-/tmp}}
DELAY_MS=${BENCH_DELAY_MS:-10} FILLER_MB=${BENCH_FILLER_MB:-1000} NAIAD=$ROOT/target/release/naiad OUT=$ROOT/bench/results
NS=naiadcold HV=nc0 NV=nc1 HOST_IP=10.200.1.1 NS_IP=10.200.1.2 RATE=100mbit   # not lazy.sh's names: either may run while the other's leftovers exist
read -ra METHODS <<<"${BENCH_METHODS:-plain naiad}"
IMAGES=(python filler) CMD=(python3 -c 'import json; print(1)')
declare -A LABEL=([python]="python3" [filler]="python3 + $(awk -v m="$FILLER_MB" 'BEGIN {if (m >= 1000) printf "%g GB", m / 1000; else printf "%g MB", m}') unread")
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY; export NO_COLOR=1   # traffic stays on loopback/veth

[[ $(id -u) == 0 ]] || die "run as root (network namespace, tc, containerd, mounts, drop_caches)"
[[ $RUNS =~ ^[1-9][0-9]*$ && $DELAY_MS =~ ^[0-9]+$ && $FILLER_MB =~ ^[1-9][0-9]*$ ]] ||
    die "RUNS and BENCH_FILLER_MB must be positive integers, BENCH_DELAY_MS a non-negative one"
((${#METHODS[@]})) || die "BENCH_METHODS is empty"
for m in "${METHODS[@]}"; do [[ $m == plain || $m == naiad ]] || die "unknown method '$m' in BENCH_METHODS (plain, naiad)"; done
for t in containerd ctr runc docker-registry skopeo umoci debootstrap jq curl ip tc python3 findmnt gnuplot timeout; do
    command -v "$t" >/dev/null || die "$t not found (scripts/install-deps.sh installs what the benchmarks need)"
done
net_free || die "netns $NS or link $HV exists (another run, or a crashed one: ip netns del $NS; ip link del $HV)"
has() { [[ " ${METHODS[*]} " == *" $1 "* ]]; }
if has naiad; then
    echo "== building naiad (release)" >&2
    (cd "$ROOT" && cargo build --release -j2 -p naiad --quiet) || die "cargo build -p naiad failed"
    for c in pull snapshotter; do
        "$NAIAD" "$c" --help >/dev/null 2>&1 || die "\`naiad $c\` is not available in $NAIAD (\`naiad $c --help\` failed): the Naiad side of this benchmark needs \`naiad pull\` and \`naiad snapshotter\`; BENCH_METHODS=plain measures plain OCI alone"
    done
fi
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$SCRATCH_BASE" && SCRATCH=$(realpath "$(mktemp -d "$SCRATCH_BASE/naiad-bench-coldstart.XXXXXX")")   # canonical: naiad and findmnt name it so
[[ -d /run/containerd ]] && RUNCTRD=1 || RUNCTRD=0   # the shims put sockets in /run/containerd/s whatever the config says
PIDS=() TMPS=() RUNPIDS=() CGROUP=naiad-bench-coldstart-$$   # the containers' cgroups go below /CGROUP

# Processes whose command line names the directory $1 (containerd's shims, a daemon the
# snapshotter started): ours, since the directory is ours. The pattern goes through a pipe so
# that grep does not find itself.
strays() { grep -lsF -f <(printf '%s/\n' "$1") /proc/[0-9]*/cmdline | cut -d/ -f3 | grep -vx -e "$$" -e "${BASHPID:-$$}" || true; }
stop() {   # stop the processes $@ (TERM, then KILL after 10 s), and wait for them
    local p i
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for p in "$@"; do
        for i in {1..100}; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
    done
}
mounts() { findmnt -rn -o TARGET | awk -v p="$1/" 'index($0, p) == 1' | sort -r; }
unmount_under() { local m; for m in $(mounts "$1"); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done; }
teardown() {   # $1: a run's directory; everything started for the run stops, its mounts go, then the directory
    local d=$1
    if [[ -S $d/ctrd.sock ]]; then   # a container left by an interrupted run
        local id; for id in $(ctr -a "$d/ctrd.sock" tasks ls -q 2>/dev/null); do ctr -a "$d/ctrd.sock" tasks kill -s KILL "$id" >/dev/null 2>&1 || true; done
    fi
    stop "${RUNPIDS[@]}"; RUNPIDS=()
    stop $(strays "$d")
    unmount_under "$d"
    if [[ -n $(mounts "$d") ]]; then echo "warning: $d still has mounts; not removed" >&2; else rm -rf "$d"; fi
}
cleanup() {
    set +e
    for d in "$SCRATCH"/run-*; do [[ -d $d ]] && teardown "$d"; done
    stop "${PIDS[@]}"
    net_down
    for d in "$SCRATCH" "${TMPS[@]}"; do
        stop $(strays "$d"); unmount_under "$d"
        if [[ -n $(mounts "$d") ]]; then echo "warning: $d still has mounts; not removed" >&2; else rm -rf "$d"; fi
    done
    ((RUNCTRD)) || rmdir /run/containerd/s /run/containerd 2>/dev/null   # only if empty, and only if this made them
    rmdir /sys/fs/cgroup/"$CGROUP" /sys/fs/cgroup/*/"$CGROUP" 2>/dev/null
    true
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # the EXIT trap still cleans up

# The source images, as one OCI layout with the tags python and filler, built once into $CACHE/oci.
# python3-minimal alone has no json module (it is in libpython3.11-stdlib): the image takes python3.
IMGID="bookworm minbase +python3; filler ${FILLER_MB} MB in 4 MB files; v2"
BUILT=""
mkdir -p "$CACHE"
if [[ $(cat "$CACHE/oci.stamp" 2>/dev/null) != "$IMGID" || ! -f $CACHE/oci/index.json ]]; then
    MIRROR=$(mirror); [[ -n $MIRROR ]] || die "no deb source for bookworm found in /etc/apt/sources.list{,.d}"
    echo "== building the images (debootstrap from $MIRROR, umoci) into $CACHE/oci" >&2
    t0=$(now) w=$(mktemp -d "$CACHE/build.XXXXXX"); TMPS+=("$w")
    img=$w/layout:python r=$w/bundle/rootfs
    { umoci init --layout "$w/layout" && umoci new --image "$img" && umoci unpack --image "$img" "$w/bundle"; } || die "umoci failed"
    debootstrap --variant=minbase --include=python3 bookworm "$r" "$MIRROR" >"$w/log" 2>&1 || { tail -20 "$w/log" >&2; die "debootstrap failed (mirror $MIRROR)"; }
    find "$r/var/cache/apt/archives" "$r/var/lib/apt/lists" -maxdepth 1 -type f -delete
    chroot "$r" "${CMD[@]}" >/dev/null || die "the image's python3 cannot run: ${CMD[*]}"
    PYMB=$(du -sm "$r" | cut -f1)
    { umoci repack --image "$img" --history.created_by "debootstrap --variant=minbase --include=python3 bookworm" "$w/bundle" &&
        umoci config --image "$img" --no-history --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --config.env LANG=C.UTF-8 --config.cmd "${CMD[0]}" --config.cmd "${CMD[1]}" --config.cmd "${CMD[2]}" &&
        rm -rf "$w/bundle" && umoci tag --image "$img" filler; } || die "umoci failed"
    # (Not `umoci insert`: umoci 0.4.7's leaves the layer's tar without its end, which naiad convert rejects.)
    umoci unpack --image "$w/layout:filler" "$w/bundle" && mkdir "$r/opt/filler" || die "umoci unpack failed"
    for ((i = 0; i < (FILLER_MB + 3) / 4; i++)); do
        head -c $((FILLER_MB * 1000000 - i * 4000000 < 4000000 ? FILLER_MB * 1000000 - i * 4000000 : 4000000)) /dev/urandom >"$(printf '%s/opt/filler/%03d.bin' "$r" "$i")"
    done
    umoci repack --image "$w/layout:filler" --history.created_by "${FILLER_MB} MB of random data in $i files under /opt/filler, never read" "$w/bundle" || die "umoci repack failed"
    rm -rf "$w/bundle" && umoci gc --layout "$w/layout" && rm -rf "$CACHE/oci" && mv "$w/layout" "$CACHE/oci" && rm -rf "$w"
    echo "$IMGID" >"$CACHE/oci.stamp"
    BUILT+="images built in $(since "$t0") s (python3 rootfs $PYMB MB); "
fi

# The registry in the namespace; its storage is kept in $CACHE/registry: the images as pushed,
# and their Naiad conversions (redone when the format, builder or OCI crates change).
echo "== network namespace $NS, veth $HV/$NV, registry on $NS_IP:5000" >&2
net_up
REG=$NS_IP:5000 REGDATA=$CACHE/registry
fmt_id() { echo "$(git -C "$ROOT" log -1 --format=%h -- crates/naiad-format crates/naiad-builder crates/naiad-oci 2>/dev/null)" \
    "$(git -C "$ROOT" diff HEAD -- crates/naiad-format crates/naiad-builder crates/naiad-oci 2>/dev/null | sha256sum | cut -c1-12)"; }
[[ $(cat "$REGDATA/stamp" 2>/dev/null) == "$IMGID" ]] || rm -rf "$REGDATA"; mkdir -p "$REGDATA"
registry_up "$REGDATA" "$REG"
if [[ ! -f $REGDATA/stamp ]]; then   # pushed before the link is shaped
    echo "== pushing the images to $REG" >&2
    t0=$(now)
    for i in "${IMAGES[@]}"; do
        skopeo copy --quiet --insecure-policy --dest-tls-verify=false "oci:$CACHE/oci:$i" "docker://$REG/bench/$i:1" || die "skopeo copy of $i failed"
    done
    echo "$IMGID" >"$REGDATA/stamp"
    BUILT+="pushed in $(since "$t0") s; "
fi
if has naiad && [[ $(cat "$REGDATA/stamp-naiad" 2>/dev/null) != "$IMGID $(fmt_id)" ]]; then
    echo "== naiad convert -> $REG/bench/IMAGE:1-naiad" >&2
    t0=$(now)
    for i in "${IMAGES[@]}"; do
        "$NAIAD" convert --insecure "docker://$REG/bench/$i:1" "docker://$REG/bench/$i:1-naiad" >"$SCRATCH/convert-$i.log" 2>&1 ||
            { tail -20 "$SCRATCH/convert-$i.log" >&2; die "naiad convert of $i failed"; }
    done
    echo "$IMGID $(fmt_id)" >"$REGDATA/stamp-naiad"
    BUILT+="converted to Naiad in $(since "$t0") s; "
fi
shape_link
delay_proxy "$REG" "$DELAY_MS"   # REGHOST LAT_NOTE PROXY_PID

# Sizes from the manifests, and the link as measured: request round trip, 20 MB of the largest blob.
ACC='Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json'
manifest() {   # $1 repo, $2 tag: the manifest (for an index, its first manifest's)
    local m d; m=$(curl -sf -H "$ACC" "http://$REG/v2/$1/manifests/$2") || return 1
    d=$(jq -r '.manifests[0].digest // empty' <<<"$m"); if [[ -n $d ]]; then curl -sf -H "$ACC" "http://$REG/v2/$1/manifests/$d"; else echo "$m"; fi
}
declare -A SIZE
for i in "${IMAGES[@]}"; do
    for m in "${METHODS[@]}"; do
        tag=1; [[ $m == plain ]] || tag=1-naiad
        SIZE[$i,$m]=$(manifest "bench/$i" "$tag" | jq '[.layers[].size] | add') || die "no manifest for bench/$i:$tag in $REG"
    done
done
BLOB=$(manifest bench/filler 1 | jq -r '[.layers[]] | max_by(.size) | .digest')
LINK=$(curl -sf -r 0-19999999 -o /dev/null -w '%{size_download} %{time_total}' "http://$REGHOST/v2/bench/filler/blobs/$BLOB" | awk '{printf "%.1f", $1 / 1e6 / $2}')
LINK_RTT="$(rtt "$REGHOST") ms through $REGHOST ($(rtt "$REG") ms direct)"

# One cold start: a fresh containerd (and naiad snapshotter), page cache dropped, then the timed
# pull and run. $1 image, $2 method, $3 run; the results go to PULL RUN TOTAL NET.
declare -A PULL RUN TOTAL NET FAIL
why() { grep -m3 -iE 'error|panicked|fatal|failed' "$1" || tail -3 "$1"; } 2>/dev/null   # a failed command's log, in short
run_one() {
    local img=$1 m=$2 r=$3 d=$SCRATCH/run-$3-$1-$2 t0 t1 w0 tp tr tt bytes i
    local sock=$d/ctrd.sock ref=$REGHOST/bench/$1:1 id=coldstart-$$-$3-$1-$2 snap=()
    local ctr=(ctr -a "$d/ctrd.sock")
    mkdir -p "$d/fifo"
    cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[proxy_plugins.naiad]
  type = "snapshot"
  address = "$d/snapshotter.sock"
EOF
    containerd --config "$d/containerd.toml" >"$d/containerd.log" 2>&1 & RUNPIDS+=($!)
    for i in {1..100}; do "${ctr[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
    "${ctr[@]}" version >/dev/null 2>&1 || { why "$d/containerd.log" >>"$d/log"; echo "containerd did not start" >>"$d/log"; return 1; }
    if [[ $m == naiad ]]; then
        ref+=-naiad snap=(--snapshotter naiad)
        printf '[registries."%s"]\ninsecure = true\n[registries."%s"]\ninsecure = true\n' "$REGHOST" "$REG" >"$d/naiad.toml"   # (it puts its daemon and cache under --root)
        "$NAIAD" snapshotter --address "$d/snapshotter.sock" --root "$d/naiad" --config "$d/naiad.toml" >"$d/snapshotter.log" 2>&1 & RUNPIDS+=($!)
        for i in {1..200}; do [[ -S $d/snapshotter.sock ]] && break; kill -0 "$!" 2>/dev/null || break; sleep 0.1; done
        [[ -S $d/snapshotter.sock ]] || { why "$d/snapshotter.log" >>"$d/log"; echo "naiad snapshotter did not start (no $d/snapshotter.sock)" >>"$d/log"; return 1; }
    fi
    drop; w0=$(wire); t0=$(now)
    if [[ $m == plain ]]; then timeout -k 5 1800 "${ctr[@]}" images pull --plain-http "$ref" >"$d/pull.log" 2>&1
    else timeout -k 5 1800 "$NAIAD" pull --containerd-socket "$sock" --insecure "$ref" >"$d/pull.log" 2>&1; fi ||
        { why "$d/pull.log" >>"$d/log"; echo "pull failed" >>"$d/log"; return 1; }
    tp=$(since "$t0") t1=$(now)
    timeout -k 5 1800 "${ctr[@]}" run --rm --runc-root "$d/runc" --fifo-dir "$d/fifo" "${snap[@]}" --cgroup "/$CGROUP/$id" "$ref" "$id" "${CMD[@]}" >"$d/out" 2>"$d/run.log" ||
        { why "$d/run.log" >>"$d/log"; echo "ctr run failed" >>"$d/log"; return 1; }
    tr=$(since "$t1") tt=$(since "$t0") bytes=$(($(wire) - w0))
    [[ $(cat "$d/out") == 1 ]] || { echo "the command printed '$(head -c 200 "$d/out")', not 1" >>"$d/log"; return 1; }
    PULL[$img,$m]+="$tp " RUN[$img,$m]+="$tr " TOTAL[$img,$m]+="$tt " NET[$img,$m]+="$bytes "
}
echo "== $RUNS runs of ${METHODS[*]} for ${IMAGES[*]}, interleaved, each cold" >&2
T0=$(now)
for ((r = 1; r <= RUNS; r++)); do
    for img in "${IMAGES[@]}"; do
        for m in "${METHODS[@]}"; do
            d=$SCRATCH/run-$r-$img-$m
            if run_one "$img" "$m" "$r"; then
                echo "   run $r/$RUNS  $(printf '%-6s %-22s' "$m" "${LABEL[$img]}") pull $(awk '{print $NF}' <<<"${PULL[$img,$m]}") s," \
                    "run $(awk '{print $NF}' <<<"${RUN[$img,$m]}") s, total $(awk '{print $NF}' <<<"${TOTAL[$img,$m]}") s, $(mb "$(awk '{print $NF}' <<<"${NET[$img,$m]}")") MB over the link" >&2
            else
                FAIL[$img,$m]+="run $r: $(grep -v '^ *$' "$d/log" | tail -4 | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ')"$'\n'
                echo "   run $r/$RUNS  $(printf '%-6s %-22s' "$m" "${LABEL[$img]}") FAILED; log:" >&2; sed 's/^/     /' "$d/log" >&2
            fi
            teardown "$d"
        done
    done
done
ELAPSED=$(since "$T0")
[[ $DELAY_MS == 0 || -z ${PROXY_PID:-} ]] || kill -0 "$PROXY_PID" 2>/dev/null || LAT_NOTE+="; the delay proxy died during the runs"

# The report: markdown, to stdout and $OUT/coldstart.md.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b}'; }
pick() {   # $1 totals, $2 values: the value of the run whose total is the median (the lower middle one for an even count)
    awk -v t="$1" -v v="$2" 'BEGIN {n = split(t, T, " "); split(v, V, " "); for (i = 1; i <= n; i++) I[i] = i
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (T[I[j]] < T[I[i]]) {x = I[i]; I[i] = I[j]; I[j] = x}
        print n ? V[I[int((n + 1) / 2)]] : 0}'; }
report() {
    local i m base tot
    echo "# Container cold start: plain OCI vs Naiad"
    echo
    echo "- machine: $(machine)"
    echo "- load: $LOAD0 (1/5/15 min) before, $(cut -d' ' -f1-3 /proc/loadavg) after: other work on this machine makes the numbers noisy"
    echo "- naiad: $REV (at build time); containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR == 1 {print $3}')"
    echo "- link: registry in a network namespace behind a veth pair, tbf $RATE each way; $LAT_NOTE;" \
        "measured: $LINK MB/s for 20 MB of a blob, request RTT $LINK_RTT"
    echo "- images (Debian bookworm minbase + python3; the second plus $FILLER_MB MB of random files under /opt/filler, never read):" \
        "$(for i in "${IMAGES[@]}"; do for m in "${METHODS[@]}"; do printf '%s %s %s MB; ' "${LABEL[$i]}" "$m" "$(mb "${SIZE[$i,$m]}")"; done; done | sed 's/; $//')${BUILT:+; ${BUILT%; }}"
    echo "- command: \`${CMD[0]} ${CMD[1]} '${CMD[2]}'\`; plain: \`ctr images pull --plain-http\` (overlayfs snapshotter, unpacks every layer)" \
        "then \`ctr run --rm\`; naiad: \`naiad pull\` then \`ctr run --rm --snapshotter naiad\`"
    echo "- runs: $RUNS per image and method, interleaved, $ELAPSED s in all; each cold: fresh containerd root, fresh naiad root and cache," \
        "page cache dropped; medians; pull s and run s are medians of their own; MB over link: bytes received on the veth (MB = 10^6 bytes)" \
        "during pull and run; vs plain: median total over plain OCI's"
    echo
    echo "| image | method | pull s | run s | total s | MB over link | vs plain |"
    echo "|---|---|--:|--:|--:|--:|--:|"
    for i in "${IMAGES[@]}"; do
        base=-; [[ -z ${TOTAL[$i,plain]:-} ]] || base=$(median "${TOTAL[$i,plain]}")
        for m in "${METHODS[@]}"; do
            if [[ -z ${TOTAL[$i,$m]:-} ]]; then echo "| ${LABEL[$i]} | $m | FAILED in every run | | | | |"; continue; fi
            tot=$(median "${TOTAL[$i,$m]}")
            echo "| ${LABEL[$i]} | $m | $(median "${PULL[$i,$m]}") | $(median "${RUN[$i,$m]}") | $tot | $(mb "$(median "${NET[$i,$m]}")") | $(ratio "$tot" "$base") |"
        done
    done
    for i in "${IMAGES[@]}"; do for m in "${METHODS[@]}"; do
        [[ -z ${FAIL[$i,$m]:-} ]] || printf '\nfailures (%s, %s):\n\n%s\n' "${LABEL[$i]}" "$m" "$(sed 's/^/    /' <<<"${FAIL[$i,$m]%$'\n'}")"
    done; done
}
mkdir -p "$OUT"
report | tee "$OUT/coldstart.md"

# The chart: per image a group of bars, one per method, each the run with the median total,
# split into pull and run.
: >"$SCRATCH/chart.dat"
for i in "${IMAGES[@]}"; do
    for m in "${METHODS[@]}"; do
        name=$m; [[ $m != plain ]] || name="plain OCI"
        if [[ -n ${TOTAL[$i,$m]:-} ]]; then
            printf '"%s" %s %s %s\n' "$name" "$(pick "${TOTAL[$i,$m]}" "${PULL[$i,$m]}")" "$(pick "${TOTAL[$i,$m]}" "${RUN[$i,$m]}")" "$(median "${TOTAL[$i,$m]}")"
        else printf '"%s (failed)" 0 0 0\n' "$name"; fi
    done >>"$SCRATCH/chart.dat"
    printf '\n\n' >>"$SCRATCH/chart.dat"   # a gnuplot data block per image
done
{
    echo "set terminal pngcairo size 800,480 font 'sans,10'"
    echo "set output '$OUT/coldstart.png'"
    echo "set title \"Container cold start: pull + run of python3 -c 'import json' (median of $RUNS runs)\\n${RATE%mbit} Mbit/s link, +$DELAY_MS ms each way\""
    echo "set style data histograms; set style histogram rowstacked title offset 0,-1.2; set bmargin 4.5; set style fill solid 0.85 border -1; set boxwidth 0.6"
    echo "set ylabel 'seconds'; set yrange [0:*]; set grid ytics; set key top left; set xtics nomirror scale 0; set offsets 0, 0, graph 0.08, 0"
    n=${#METHODS[@]} plot="plot"
    for k in "${!IMAGES[@]}"; do
        x=$((k * (n + 1))) t1="title 'pull'" t2="title 'start + command'"; ((k == 0)) || t1=notitle t2=notitle
        plot+=" newhistogram \"${LABEL[${IMAGES[$k]}]}\" at $x, '$SCRATCH/chart.dat' index $k using 2:xtic(1) $t1 lc rgb '#4e79a7', '' index $k using 3 $t2 lc rgb '#f28e2b',"
        plot+=" '' index $k using (\$0 + $x):(\$2 + \$3):(sprintf('%.1f s', \$4)) with labels offset 0,0.7 notitle,"
    done
    echo "${plot%,}"
} >"$SCRATCH/chart.gp"
gnuplot "$SCRATCH/chart.gp" 2>"$SCRATCH/gnuplot.log" || { cat "$SCRATCH/gnuplot.log" >&2; die "gnuplot failed"; }
echo "== wrote $OUT/coldstart.md and $OUT/coldstart.png ($(($(stat -c %s "$OUT/coldstart.png") / 1024)) KB)" >&2
for i in "${IMAGES[@]}"; do for m in "${METHODS[@]}"; do [[ -z ${FAIL[$i,$m]:-} ]] || exit 1; done; done
