#!/usr/bin/env bash
# Builds the default container root: Debian's static busybox with a link per applet.
# Usage: build-rootfs.sh DEST
set -euo pipefail

dest=${1:?usage: build-rootfs.sh DEST}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "build-rootfs: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }
if readelf -l "$(readlink -f "$busybox")" 2>/dev/null | grep -q "program interpreter"; then
    echo "build-rootfs: $busybox is dynamically linked; install busybox-static" >&2
    exit 1
fi

stage="$dest.tmp.$$"
rm -rf "$stage"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,run,root,home,var/tmp}
chmod 1777 "$stage/tmp" "$stage/var/tmp"
chmod 700 "$stage/root"
install -m 0755 "$busybox" "$stage/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$stage/bin/$applet" ] || ln -s busybox "$stage/bin/$applet"
done
cat > "$stage/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$stage/etc/group" <<'GROUP'
root:x:0:
tty:x:5:
nogroup:x:65534:
GROUP
echo "runv" > "$stage/etc/hostname"
: > "$stage/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' > "$stage/etc/hosts"

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$stage" "$dest"
trap - EXIT
echo "$dest"
