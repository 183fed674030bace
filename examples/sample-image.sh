#!/usr/bin/env bash
# The built-in example. Usage: examples/sample-image.sh [path/to/naiad]
set -euo pipefail
naiad=$(realpath "${1:-target/release/naiad}")
work=$(mktemp -d "${TMPDIR:-/tmp}/naiad-example.XXXXXX")
mnt="$work/mnt"
cleanup() {
    mountpoint -q "$mnt" 2>/dev/null && "$naiad" umount "$mnt"
    rm -rf "$work"
}
trap cleanup EXIT

echo "== a sample tree"
src="$work/rootfs"
mkdir -p "$src/etc" "$src/usr/bin" "$src/usr/share/doc" "$src/var/log"
echo "naiad-example" > "$src/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$src/etc/passwd"
head -c 3000000 /dev/urandom > "$src/usr/bin/tool"
chmod 755 "$src/usr/bin/tool"
cp "$src/usr/bin/tool" "$src/usr/bin/tool-copy"          # deduplicated
ln -s tool "$src/usr/bin/tool-link"
for i in $(seq 1 200); do echo "document $i" > "$src/usr/share/doc/doc$i.txt"; done
truncate -s 100M "$src/var/log/sparse.log"                 # a sparse file
find "$src" -type f | wc -l | xargs echo "files:"

echo "== naiad build"
"$naiad" build "$src" -o "$work/image"

echo "== naiad check"
"$naiad" check "$work/image/bootstrap" --blob-dir "$work/image"

echo "== naiad inspect"
"$naiad" inspect "$work/image/bootstrap"

echo "== naiad mount (kernel EROFS)"
"$naiad" mount "$work/image/bootstrap" "$mnt" --blob-dir "$work/image" --cache-dir "$work/cache"
echo "hostname in the image: $(cat "$mnt/etc/hostname")"
cmp "$mnt/usr/bin/tool" "$src/usr/bin/tool" && echo "usr/bin/tool: identical to the source"
diff -r "$src" "$mnt" && echo "whole tree: identical to the source"
findmnt -no FSTYPE,OPTIONS "$mnt"

echo "== naiad umount"
"$naiad" umount "$mnt"
echo "example done"
