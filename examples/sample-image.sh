#!/usr/bin/env bash
# The built-in example: an image served lazily. A sample tree is built into an image (a
# bootstrap and its blobs in a local blob directory standing in for a registry), a Naiad
# daemon mounts it in the best lazy mode this kernel has, one file is read, and the bytes
# the daemon fetched are printed against the image's size; then it is unmounted.
# Usage: examples/sample-image.sh [path/to/naiad]   (as root: it mounts)
set -euo pipefail
naiad=$(realpath "${1:-target/release/naiad}")
work=$(mktemp -d "${TMPDIR:-/tmp}/naiad-example.XXXXXX")
mnt="$work/mnt" api="$work/run/api.sock" daemon=""
cleanup() {
    if [[ -n $daemon ]]; then
        kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null   # SIGTERM: it unmounts everything
    fi
    if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
    rm -rf "$work"
}
trap cleanup EXIT
[[ $(id -u) == 0 ]] || { echo "run as root: the example mounts an image" >&2; exit 1; }

echo "== a sample tree"
src="$work/rootfs"
mkdir -p "$src/etc" "$src/usr/bin" "$src/usr/lib" "$src/usr/share/doc"
echo "naiad-example" > "$src/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$src/etc/passwd"
for lib in a b c d e f g h; do head -c 4000000 /dev/urandom > "$src/usr/lib/lib$lib.so"; done
head -c 3000000 /dev/urandom > "$src/usr/bin/tool"
chmod 755 "$src/usr/bin/tool"
ln -s tool "$src/usr/bin/tool-link"
for i in $(seq 1 200); do echo "document $i" > "$src/usr/share/doc/doc$i.txt"; done
echo "files: $(find "$src" -type f | wc -l), $(du -sh "$src" | cut -f1)"

echo "== naiad build (the blobs go to a local blob directory)"
"$naiad" build "$src" -o "$work/image"
"$naiad" check "$work/image/bootstrap" --blob-dir "$work/image"
image_bytes=$(find "$work/image" -type f ! -name bootstrap -printf '%s\n' | awk '{s += $1} END {print s}')

echo "== naiad daemon, and a lazy mount in the best mode this kernel has"
"$naiad" daemon --api "$api" --cache-dir "$work/cache" --runtime-dir "$work/run" 2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 1 100); do [[ -S $api ]] && break; sleep 0.1; done
mounted=$("$naiad" ctl --api "$api" mount "$work/image/bootstrap" "$mnt" --blob-dir "$work/image" --no-prefetch)
echo "mounted at $mnt in $(grep -o '"mode":"[a-z]*"' <<<"$mounted" | cut -d'"' -f4) mode"

echo "== one file read: only its chunks are fetched"
echo "etc/hostname in the image: $(cat "$mnt/etc/hostname")"
cmp "$mnt/usr/bin/tool" "$src/usr/bin/tool" && echo "usr/bin/tool: identical to the source"
fetched=$("$naiad" ctl --api "$api" list | grep -o '"bytes_fetched":[0-9]*' | cut -d: -f2)
echo "fetched $fetched of the image's $image_bytes bytes ($((100 * fetched / image_bytes))%)"

echo "== naiad ctl umount"
"$naiad" ctl --api "$api" umount "$mnt"
echo "example done"
