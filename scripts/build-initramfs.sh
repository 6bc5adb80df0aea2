#!/usr/bin/env bash
# Packs the guest initramfs: runv-agent (static, musl) as /init, plus the few nodes and
# directories PID 1 needs before it mounts anything.
# Usage: build-initramfs.sh AGENT_BINARY OUTPUT
set -euo pipefail

agent=${1:?usage: build-initramfs.sh AGENT_BINARY OUTPUT}
out=${2:?usage: build-initramfs.sh AGENT_BINARY OUTPUT}

[ -x "$agent" ] || { echo "build-initramfs: $agent is not an executable" >&2; exit 1; }
if readelf -l "$agent" 2>/dev/null | grep -q "program interpreter"; then
    echo "build-initramfs: $agent is dynamically linked; the guest has no libc: build it for x86_64-unknown-linux-musl" >&2
    exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,etc}
install -m 0755 "$agent" "$stage/init"
# Symbols are of no use in the guest and make the image the kernel unpacks at boot larger.
strip --strip-all "$stage/init"
# The kernel opens /dev/console for PID 1 before anything is mounted: without this node the
# agent's output is lost.
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
chmod 1777 "$stage/tmp"

mkdir -p "$(dirname "$out")"
tmp_out="$out.tmp.$$"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) > "$tmp_out"
mv -f "$tmp_out" "$out"
echo "$out"
