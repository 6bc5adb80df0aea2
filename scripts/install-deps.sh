#!/usr/bin/env bash
# Installs the host packages and helper daemons runv needs (Debian 12, x86_64, as root).
# Idempotent: what is already there is left alone.
set -euo pipefail

APT_PACKAGES=(
    # hypervisor and guest build
    qemu-system-x86 linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev
    cpio xz-utils kmod
    # default container rootfs
    busybox-static
    # read-only container root images for `[runtime] rootfs = "block"` (mkfs.erofs)
    erofs-utils
    # virtiofsd's build needs these
    libseccomp-dev libcap-ng-dev
    # static runv-agent
    musl-tools
    # containerd and OCI images for the shim's end-to-end tests
    containerd umoci
    # the peers `make bench` measures runv against (runc comes with containerd)
    crun
    # CNI plugins (bridge, host-local) for the pod network tests
    containernetworking-plugins
    # protoc, for the CRI client (k8s-cri) of the CRI end-to-end tests
    protobuf-compiler
)
VHOST_DEVICE_VSOCK_VERSION=0.3.0
VIRTIOFSD_VERSION=1.14.0

log() { printf '==> %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    log "rustup target add x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl
fi

# cargo_install NAME VERSION BINARY: installs into /usr/local/bin unless that version is there.
cargo_install() {
    local name=$1 version=$2 bin=$3
    if [ -x "/usr/local/bin/$bin" ] && grep -q "\"$name $version " /usr/local/.crates.toml 2>/dev/null; then
        return 0
    fi
    log "cargo install $name $version"
    cargo install --quiet --locked --root /usr/local "$name@$version"
}
cargo_install vhost-device-vsock "$VHOST_DEVICE_VSOCK_VERSION" vhost-device-vsock
cargo_install virtiofsd "$VIRTIOFSD_VERSION" virtiofsd
log "host dependencies are installed"
