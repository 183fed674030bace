#!/usr/bin/env bash
# Makes the seed corpora of the fuzz targets from real images built on this machine:
#   bootstrap  bootstraps of `naiad build` (a small tree with every kind of entry, a layer
#              tar) and of `naiad convert` (a umoci image, busybox) ;
#   blob_toc   the blobs of those builds (three compressors, both digesters);
#   tar_layer  layer tars: GNU tar (pax with xattrs, GNU sparse, gzip, zstd, whiteouts) and
#              the layers umoci wrote, plus the gzip'd bootstrap layer of a converted image;
#   manifest   index.json, manifests of umoci, `naiad convert` (OCI) and `skopeo --format
#              v2s2` (Docker), and a multi-platform index.
# Seeds larger than SEED_MAX_BYTES (default 128 KiB) are skipped, so the committed corpus
# stays small; run with SEED_MAX_BYTES=4000000 for bigger ones (the busybox blob and layer).
#
# Usage: fuzz/seed.sh [OUT_DIR]     (default fuzz/corpus; seeds land in OUT_DIR/<target>/)
# Seeds already there with the same bytes are not copied again.
# Needs root (device nodes, ownership, trusted.* xattrs), umoci, skopeo, busybox-static,
# GNU tar, zstd and gzip (scripts/install-deps.sh installs them).
set -euo pipefail
out=$(realpath -m "${1:-$(dirname "$0")/corpus}")
cd "$(dirname "$0")/.."
max=${SEED_MAX_BYTES:-131072}
# NAIAD=path/to/naiad uses that binary instead of building one.
if [[ -z ${NAIAD:-} ]]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo build -q -p naiad
fi
naiad=$(realpath "${NAIAD:-target/debug/naiad}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"/{bootstrap,blob_toc,tar_layer,manifest}

# seed TARGET NAME FILE: copies FILE in as OUT_DIR/TARGET/NAME unless it is too big or that
# target has a seed with the same bytes already.
seed() {
    local size f
    size=$(stat -c %s "$3")
    if ((size > max)); then
        echo "skipped $1/$2 ($size bytes > $max)" >&2
        return 0
    fi
    for f in "$out/$1"/*; do
        if [[ -f $f ]] && cmp -s "$f" "$3"; then return 0; fi
    done
    cp "$3" "$out/$1/$2"
    chmod 644 "$out/$1/$2"
}
# seed_build NAME DIR: the bootstrap and every blob of a build output directory.
seed_build() {
    seed bootstrap "$1" "$2/bootstrap"
    local i=0 blob
    for blob in "$2"/*; do
        [[ $(basename "$blob") =~ ^[0-9a-f]{64}$ ]] || continue
        seed blob_toc "$1-$i" "$blob"
        i=$((i + 1))
    done
}
# seed_layout NAME DIR: index.json and every manifest, index and gzip layer of an OCI layout.
seed_layout() {
    seed manifest "$1-index.json" "$2/index.json"
    local blob kind n=0
    for blob in "$2"/blobs/sha256/*; do
        n=$((n + 1))
        kind=$(python3 -c 'import json,sys
try: d = json.load(open(sys.argv[1]))
except Exception: d = None
print("other" if not isinstance(d, dict) else "manifest" if "layers" in d else "index" if "manifests" in d else "config")' "$blob")
        case $kind in
            manifest|index) seed manifest "$1-$kind-$n.json" "$blob" ;;
            other) [[ $(head -c2 "$blob" | od -An -tx1 | tr -d ' ') == 1f8b ]] && seed tar_layer "$1-layer-$n.tar.gz" "$blob" ;;
        esac
    done
    return 0
}

# 1. A small tree holding every kind of entry Naiad keeps.
tree=$work/tree
mkdir -p "$tree/dir/sub" "$tree/many"
printf 'hello naiad\n' > "$tree/dir/hello"
: > "$tree/dir/empty"
head -c 20000 /bin/busybox > "$tree/dir/multi_chunk"
printf 'x%.0s' {1..5000} > "$tree/dir/sub/zeros_and_x"
truncate -s 40000 "$tree/dir/sub/zeros_and_x"
ln "$tree/dir/hello" "$tree/dir/hardlink"
ln -s hello "$tree/dir/symlink"
ln -s "$(printf 'long/%.0s' {1..100})target" "$tree/dir/long_symlink"
mkfifo "$tree/dir/fifo"
mknod "$tree/dir/chardev" c 1 3
mknod "$tree/dir/blockdev" b 8 1
python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$tree/dir/socket"
python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.naiad", b"seed"); os.setxattr(sys.argv[2], "trusted.overlay.opaque", b"y")' \
    "$tree/dir/hello" "$tree/dir/sub"
chmod 4755 "$tree/dir/multi_chunk"
chown 1000:1000 "$tree/dir/hello"
touch "$tree/$(printf 'non-utf8-\xff')"
for i in $(seq 1 300); do : > "$tree/many/entry-with-a-longer-name-$i"; done
printf '/dir/hello\n/dir/multi_chunk\n' > "$work/prefetch"
"$naiad" build --chunk-size 4K --prefetch-list "$work/prefetch" -o "$work/b-zstd" "$tree" >/dev/null
seed_build tree-zstd "$work/b-zstd"
"$naiad" build --chunk-size 8K --compressor lz4 --digester sha256 -o "$work/b-lz4" "$tree/dir" >/dev/null
seed_build dir-lz4-sha256 "$work/b-lz4"
"$naiad" build --chunk-size 4K --compressor none -o "$work/b-none" "$tree/dir" >/dev/null
seed_build dir-none "$work/b-none"

# 2. Layer tars of that tree.
# (GNU tar skips the socket: a tar cannot hold one.)
tar --format=pax --xattrs --xattrs-include='*' -C "$tree" -cf "$work/pax.tar" dir
seed tar_layer pax-xattrs.tar "$work/pax.tar"
tar --format=gnu --sparse -C "$tree" -cf "$work/gnu-sparse.tar" dir
seed tar_layer gnu-sparse.tar "$work/gnu-sparse.tar"
gzip -9 -n -c "$work/pax.tar" > "$work/pax.tar.gz"
seed tar_layer pax-xattrs.tar.gz "$work/pax.tar.gz"
zstd -q -19 -c "$work/gnu-sparse.tar" > "$work/gnu-sparse.tar.zst"
seed tar_layer gnu-sparse.tar.zst "$work/gnu-sparse.tar.zst"
wh=$work/whiteouts
mkdir -p "$wh/dir/sub"
: > "$wh/dir/.wh.hello"
: > "$wh/dir/sub/.wh..wh..opq"
printf 'new\n' > "$wh/dir/sub/new"
tar --format=ustar -C "$wh" -cf "$work/whiteouts.tar" dir
seed tar_layer whiteouts.tar "$work/whiteouts.tar"
"$naiad" build --chunk-size 4K -o "$work/b-layers" --layer "$work/pax.tar" --layer "$work/whiteouts.tar" >/dev/null
seed_build layers "$work/b-layers"

# 3. Real OCI images: a small one made with umoci (two layers, a whiteout), and busybox.
lay=$work/layout
umoci init --layout "$lay"
umoci new --image "$lay:small"
umoci unpack --image "$lay:small" "$work/bundle1" >/dev/null
cp -a "$tree/dir" "$work/bundle1/rootfs/"
rm "$work/bundle1/rootfs/dir/socket" # tar has no sockets
umoci repack --image "$lay:small" "$work/bundle1" >/dev/null
umoci config --image "$lay:small" --config.cmd /bin/sh --config.env A=b
umoci unpack --image "$lay:small" "$work/bundle2" >/dev/null
rm "$work/bundle2/rootfs/dir/hello"
printf 'layer 2\n' > "$work/bundle2/rootfs/dir/layer2"
umoci repack --image "$lay:small" "$work/bundle2" >/dev/null
umoci new --image "$lay:busybox"
umoci unpack --image "$lay:busybox" "$work/bundle3" >/dev/null
mkdir -p "$work/bundle3/rootfs/bin"
cp /bin/busybox "$work/bundle3/rootfs/bin/busybox"
for applet in sh ls cat echo; do ln -s busybox "$work/bundle3/rootfs/bin/$applet"; done
umoci repack --image "$lay:busybox" "$work/bundle3" >/dev/null
umoci gc --layout "$lay"
seed_layout umoci "$lay"
skopeo copy -q --insecure-policy --format v2s2 "oci:$lay:small" "dir:$work/docker" >/dev/null
seed manifest docker-v2s2.json "$work/docker/manifest.json"

# 4. Those images converted to Naiad images.
"$naiad" convert --chunk-size 4K "oci:$lay:small" "oci:$work/naiad:small" >/dev/null
"$naiad" convert --chunk-size 64K "oci:$lay:busybox" "oci:$work/naiad:busybox" >/dev/null
seed_layout naiad "$work/naiad"
for tag in small busybox; do
    # The bootstrap layer is the last layer of the Naiad manifest.
    boot=$(python3 -c 'import json,sys
idx = json.load(open(sys.argv[1] + "/index.json"))
m = next(d for d in idx["manifests"] if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == sys.argv[2])
man = json.load(open(sys.argv[1] + "/blobs/sha256/" + m["digest"][7:]))
print(man["layers"][-1]["digest"][7:])' "$work/naiad" "$tag")
    tar -xzf "$work/naiad/blobs/sha256/$boot" -C "$work" naiad/bootstrap
    seed bootstrap "converted-$tag" "$work/naiad/bootstrap"
    rm "$work/naiad/bootstrap"
done
n=0
for blob in "$work"/naiad/blobs/sha256/*; do
    n=$((n + 1))
    [[ $(tail -c 64 "$blob" | head -c 8) == NAIADBL1 ]] && seed blob_toc "converted-$n" "$blob"
done

# 5. A multi-platform index, Docker manifest list style.
python3 - "$out/manifest/docker-list.json" <<'EOF'
import json, sys
d = "sha256:" + "ab" * 32
json.dump({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
           "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": d, "size": 527,
                          "platform": {"architecture": a, "os": "linux", **({"variant": v} if v else {})}}
                         for a, v in [("amd64", None), ("arm64", "v8"), ("arm", "v7")]]}, open(sys.argv[1], "w"))
EOF
for t in bootstrap blob_toc tar_layer manifest; do
    echo "$t: $(find "$out/$t" -type f | wc -l) seeds, $(du -sb "$out/$t" | cut -f1) bytes"
done
