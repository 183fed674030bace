#!/usr/bin/env bash
# Benchmark `naiad convert` against eStargz (`ctr-remote image convert --estargz --oci`, Debian's
# stargz-snapshotter) on two Debian images in a local registry, side by side, and the saving
# of `naiad convert --chunk-dict`.
#
#   bench/convert.sh
#   BENCH_RUNS=N       conversions per tool and image (default 3); the median is reported
#   BENCH_CACHE=DIR    source images as OCI layouts, built once (default target/bench-images)
#   BENCH_SCRATCH=DIR  registry, containerd and temp files (default ${TMPDIR:-/tmp})
#
# Needs root and the Debian packages docker-registry skopeo umoci debootstrap jq curl, and
# stargz-snapshotter containerd for the eStargz columns (installed if missing); the first run
# downloads Debian packages from the mirror apt uses here.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"   # die, mirror (its median, with two decimals, is its own, below)
RUNS=${BENCH_RUNS:-3} CACHE=${BENCH_CACHE:-$ROOT/target/bench-images} SCRATCH_BASE=${BENCH_SCRATCH:-${TMPDIR:-/tmp}}
NAIAD=$ROOT/target/release/naiad IMAGES=(debian debian-python)
PY_PKGS="python3 python3-pip python3-numpy python3-pandas gcc"   # debian-python's 2nd layer, ~370 MB unpacked

[[ $(id -u) == 0 ]] || die "run as root (debootstrap, chroot, umoci unpack, containerd)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer"
for t in docker-registry skopeo umoci debootstrap jq curl; do command -v "$t" >/dev/null || die "$t not found; install with: apt-get install $t"; done
ESGZ_WHY=""   # why there is no eStargz column, if there is none
if ! command -v ctr-remote >/dev/null || ! command -v containerd >/dev/null; then   # Debian's stargz-snapshotter has ctr-remote
    echo "note: installing the Debian packages stargz-snapshotter containerd for ctr-remote (stargz-snapshotter installed: $(apt-cache policy stargz-snapshotter 2>/dev/null | awk '/Installed:/ {print $2}'))" >&2
    inst() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q stargz-snapshotter containerd >&2; }
    inst || { apt-get update -q >&2 && inst; } || ESGZ_WHY="apt-get install stargz-snapshotter containerd failed"
fi

echo "== building naiad (release)" >&2
(cd "$ROOT" && cargo build --release -j2 -p naiad --quiet)
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
SCRATCH=$(mktemp -d "$SCRATCH_BASE/naiad-bench-convert.XXXXXX")
PIDS=() TMPS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    mounts() { findmnt -rn -o TARGET | awk -v p="$1/" 'index($0, p) == 1' | sort -r; }
    for d in "$SCRATCH" "${TMPS[@]}"; do   # unmount what is left under it, deepest first
        for m in $(mounts "$d"); do umount "$m" || umount -l "$m" || true; done
        if [[ -n $(mounts "$d") ]]; then echo "warning: $d still has mounts; not removed" >&2; else rm -rf "$d"; fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # the EXIT trap still cleans up

# Image builders: each makes the OCI layout $1/layout (tag bookworm), working in $1.
build_debian() {
    local w=$1 img=$1/layout:bookworm
    umoci init --layout "$w/layout" && umoci new --image "$img" && umoci unpack --image "$img" "$w/bundle"
    debootstrap --variant=minbase bookworm "$w/bundle/rootfs" "$MIRROR" >"$w/log" 2>&1 || { tail -20 "$w/log" >&2; die "debootstrap failed"; }
    find "$w/bundle/rootfs/var/cache/apt/archives" "$w/bundle/rootfs/var/lib/apt/lists" -maxdepth 1 -type f -delete
    umoci repack --image "$img" --history.created_by "debootstrap --variant=minbase bookworm" "$w/bundle"
    umoci config --image "$img" --config.cmd /bin/bash
}
build_debian-python() {
    local w=$1 img=$1/layout:bookworm r=$1/bundle/rootfs
    cp -a "$CACHE/debian" "$w/layout" && umoci unpack --image "$img" "$w/bundle"
    local ok=0; cp -L /etc/resolv.conf "$r/etc/resolv.conf" && mount -t proc proc "$r/proc"
    chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $PY_PKGS && apt-get clean" >"$w/log" 2>&1 || ok=$?
    umount "$r/proc"
    ((ok == 0)) || { tail -20 "$w/log" >&2; die "apt-get install in the chroot failed"; }
    rm -f "$r/etc/resolv.conf" && find "$r/var/cache/apt/archives" "$r/var/lib/apt/lists" -maxdepth 1 -type f -delete
    umoci repack --image "$img" --history.created_by "apt-get install --no-install-recommends $PY_PKGS" "$w/bundle"
}
BUILT="" MIRROR=$(mirror)
[[ -n $MIRROR ]] || die "no deb source for bookworm found in /etc/apt/sources.list{,.d}"
mkdir -p "$CACHE"
for img in "${IMAGES[@]}"; do
    [[ -f $CACHE/$img/index.json ]] && continue
    echo "== building the source image $img into $CACHE/$img" >&2
    t0=$SECONDS; w=$(mktemp -d "$CACHE/$img.tmp.XXXXXX"); TMPS+=("$w")
    "build_$img" "$w"
    BUILT+="${BUILT:+; }$img built in $((SECONDS - t0)) s ($(du -sm "$w/bundle/rootfs" | cut -f1) MB unpacked)"
    umoci gc --layout "$w/layout" && mv "$w/layout" "$CACHE/$img" && rm -rf "$w"
done

echo "== starting a registry and pushing the source images" >&2
port=$((20000 + RANDOM % 30000))
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((20000 + RANDOM % 30000)); done
REG=127.0.0.1:$port REGDATA=$SCRATCH/registry
printf 'version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: "%s"}, delete: {enabled: true}, %s}\nhttp: {addr: "%s", secret: naiad-bench}\n' \
    "$REGDATA" "maintenance: {uploadpurging: {enabled: false}}" "$REG" >"$SCRATCH/registry.yml"
env $(compgen -e | grep '^REGISTRY_' | sed 's/^/-u /') docker-registry serve "$SCRATCH/registry.yml" >"$SCRATCH/registry.log" 2>&1 & PIDS+=($!)
for i in {1..100}; do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.2; done
curl -sf "http://$REG/v2/" >/dev/null || { cat "$SCRATCH/registry.log" >&2; die "docker-registry did not start on $REG"; }
for img in "${IMAGES[@]}"; do skopeo copy --quiet --insecure-policy --dest-tls-verify=false "oci:$CACHE/$img:bookworm" "docker://$REG/src/$img:1"; done
manifest() { skopeo inspect --raw --tls-verify=false "docker://$REG/$1"; }
layer_bytes() { manifest "$1" | jq '[.layers[].size] | add'; }
reg_blobs() { find "$REGDATA/docker/registry/v2/blobs" -type f -name data -printf '%s %P\n' | sort; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.3f", b - a}'; }
new_bytes() { comm -13 <(echo "$1") <(reg_blobs) | awk '{s += $1} END {print s + 0}'; }   # since reg_blobs gave $1

CTRD=$SCRATCH/containerd CTR=(ctr-remote --address "$SCRATCH/containerd/sock")
if [[ -z $ESGZ_WHY ]]; then
    echo "== starting a private containerd and pulling the source images into it" >&2
    mkdir "$CTRD"
    printf 'version = 2\nroot = "%s/root"\nstate = "%s/state"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s/sock"\n' \
        "$CTRD" "$CTRD" "$CTRD" >"$CTRD/config.toml"
    containerd --config "$CTRD/config.toml" >"$CTRD/log" 2>&1 & PIDS+=($!)
    for i in {1..100}; do "${CTR[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
    "${CTR[@]}" version >/dev/null 2>&1 || ESGZ_WHY="containerd did not start: $(grep -i -m1 -E 'error|fatal' "$CTRD/log" || tail -1 "$CTRD/log")"
    for img in "${IMAGES[@]}"; do
        [[ -n $ESGZ_WHY ]] || "${CTR[@]}" images pull --plain-http "$REG/src/$img:1" >>"$CTRD/ctr.log" 2>&1 ||
            ESGZ_WHY="ctr-remote images pull failed: $(tail -1 "$CTRD/ctr.log")"
    done
fi

echo "== naiad convert debian -> naiad/debian:1 (untimed warm-up; the chunk dictionary below)" >&2
"$NAIAD" convert "docker://$REG/src/debian:1" "docker://$REG/naiad/debian:1" --insecure --json >"$SCRATCH/dict-base.json"

declare -A SRC NW NB NC NM NP EW EB
for img in "${IMAGES[@]}"; do SRC[$img]=$(layer_bytes "src/$img:1"); done
for ((r = 1; r <= RUNS; r++)); do
    for img in "${IMAGES[@]}"; do
        out=$SCRATCH/naiad-$img-$r.json before=$(reg_blobs) t0=$(date +%s.%N)
        "$NAIAD" convert "docker://$REG/src/$img:1" "docker://$REG/naiad/$img-run$r:1" --insecure --json >"$out" 2>"$out.err" ||
            { cat "$out.err" >&2; die "naiad convert $img failed (run $r)"; }
        w=$(since "$t0")
        [[ $r$img != 1debian-python ]] || NEW0=$(new_bytes "$before")   # without --chunk-dict
        read -r nb c m p warn < <(jq -r '.images[0] | "\(.naiad_bytes) \(.seconds_convert) \(.seconds_merge) \(.seconds_push) \(.warnings | length)"' "$out")
        ((warn == 0)) || { echo "note: naiad reported warnings for $img:" >&2; jq -r '.images[0].warnings[]' "$out" | head -5 >&2; }
        NW[$img]+="$w " NC[$img]+="$c " NM[$img]+="$m " NP[$img]+="$p " NB[$img]=$nb
        msg="   run $r/$RUNS  $(printf '%-14s' "$img") naiad $w s"
        if [[ -z $ESGZ_WHY ]]; then
            dst=$REG/estargz/$img-run$r:1 t0=$(date +%s.%N)
            if "${CTR[@]}" images convert --estargz --oci "$REG/src/$img:1" "$dst" >>"$CTRD/ctr.log" 2>&1; then
                w=$(since "$t0") && EW[$img]+="$w " msg+=", estargz $w s"
                ((r > 1)) || { "${CTR[@]}" images push --plain-http "$dst" >>"$CTRD/ctr.log" 2>&1 &&   # the size, from its manifest
                    EB[$img]=$(layer_bytes "estargz/$img-run1:1"); } || ESGZ_WHY="ctr-remote images push failed: $(tail -1 "$CTRD/ctr.log")"
                "${CTR[@]}" images rm --sync "$dst" >>"$CTRD/ctr.log" 2>&1 || true
            else ESGZ_WHY="ctr-remote image convert failed: $(tail -1 "$CTRD/ctr.log")"; fi
        fi
        echo "$msg" >&2
    done
done

echo "== naiad convert debian-python --chunk-dict naiad/debian:1" >&2
before=$(reg_blobs) t0=$(date +%s.%N)
"$NAIAD" convert "docker://$REG/src/debian-python:1" "docker://$REG/naiad/debian-python-dict:1" --insecure --json \
    --chunk-dict "docker://$REG/naiad/debian:1" >"$SCRATCH/dict.json"
DICT_S=$(since "$t0") DICT_NEW=$(new_bytes "$before")
shared() {   # bytes of an image's blobs that are blobs of the dictionary image too
    jq -n --argjson d "$(manifest naiad/debian:1)" --argjson m "$(manifest "$1")" \
        '[$d.layers[].digest] as $dd | [$m.layers[] | select(.digest as $x | $dd | index($x)) | .size] | add // 0'; }
SH0=$(shared naiad/debian-python-run1:1) SH1=$(shared naiad/debian-python-dict:1)
for f in naiad-debian-python-1 dict; do jq -r '.images[0] | "\(.naiad_bytes) \(.stored_chunks) \(.dict_chunks)"' "$SCRATCH/$f.json"; done >"$SCRATCH/d"
{ read -r D0B D0S _ && read -r D1B D1S D1C; } <"$SCRATCH/d"
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR] = $1} END {printf "%.2f\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }

echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -r)"
echo "load:    $LOAD0 (1/5/15 min) before, $(cut -d' ' -f1-3 /proc/loadavg) after: other work on the machine adds noise"
echo "naiad:   $REV (at build time), default options (1 MiB chunks, zstd); estargz: stargz-snapshotter $(dpkg-query -W -f '${Version}' stargz-snapshotter 2>/dev/null), gzip level 9 (its default)"
echo "images:  debian-python = debian + $PY_PKGS; ${BUILT:-both from the cache $CACHE}"
echo "runs:    $RUNS per tool and image, interleaved; local registry $REG over HTTP; MB = 10^6 bytes"
echo "naiad s: end to end: pull from the registry + convert + merge + push, each run to a new repository"
echo "estargz s: the local conversion only, in a private containerd that pulled the source before (untimed); size from pushing the result"
echo
fmt='%-14s %11s %9s %9s %10s %10s %11s %13s\n'
printf "$fmt" image "source MB" "naiad s" "naiad MB" naiad/orig "estargz s" "estargz MB" estargz/orig
printf "$fmt" "" "(gzip)" "(median)" "" "" "(median)" "" ""
for img in "${IMAGES[@]}"; do
    s=${SRC[$img]} es=- eb=- er=-
    if [[ -n ${EB[$img]:-} ]]; then es=$(median "${EW[$img]}") eb=$(mb "${EB[$img]}") er=$(awk -v a="${EB[$img]}" -v b="$s" 'BEGIN {printf "%.3fx", a / b}'); fi
    printf "$fmt" "$img" "$(mb "$s")" "$(median "${NW[$img]}")" "$(mb "${NB[$img]}")" \
        "$(awk -v a="${NB[$img]}" -v b="$s" 'BEGIN {printf "%.3fx", a / b}')" "$es" "$eb" "$er"
done
[[ -z $ESGZ_WHY ]] || echo "estargz: not measured: $ESGZ_WHY"
for img in "${IMAGES[@]}"; do echo "naiad $img stages (median s): convert $(median "${NC[$img]}") (with the pull), merge $(median "${NM[$img]}"), push $(median "${NP[$img]}")"; done
echo
awk -v b0="$D0B" -v b1="$D1B" -v sh0="$SH0" -v sh1="$SH1" -v s0="$D0S" -v s1="$D1S" -v c1="$D1C" -v r0="$NEW0" -v r1="$DICT_NEW" \
    -v t="$DICT_S" 'BEGIN { st1 = b1 - sh1   # stored: what the conversion wrote, less the dictionary blobs it refers to
    printf "dict:    debian-python --chunk-dict naiad/debian:1 (%.1f s): stored %.1f MB vs %.1f MB without (saving %.1f MB, %.1f%%);", t, st1 / 1e6, b0 / 1e6, (b0 - st1) / 1e6, 100 * (b0 - st1) / b0
    printf " chunks stored %d vs %d, %d from the dictionary\n", s1, s0, c1
    printf "         image total %.1f MB (of it %.1f MB dictionary blobs) vs %.1f MB; new in the registry %.1f MB vs %.1f MB without", b1 / 1e6, sh1 / 1e6, b0 / 1e6, r1 / 1e6, r0 / 1e6
    if (sh0 > 0) printf " (without the dictionary, %.1f MB of the blobs were byte-identical to naiad/debian:1 blobs already there)", sh0 / 1e6
    print "" }'
