#!/usr/bin/env bash
# Build the runv guest kernel from Debian's linux-source package.
#
#   build.sh [--arch x86_64] [--cache DIR] [--print-path]
#
# The result is cached in $CACHE/<hash>/ (vmlinux, config, kernel-release),
# where CACHE is --cache, else $RUNV_KERNEL_CACHE, else /var/cache/runv/kernel,
# and <hash> covers the config fragment, this script and the version of the
# installed linux-source package. On success the directory is printed on
# stdout (the only thing printed there); progress goes to stderr.
#
# Environment:
#   RUNV_KERNEL_CACHE   cache root (default /var/cache/runv/kernel)
#   RUNV_KERNEL_JOBS    parallel make jobs (default: nproc)
#   RUNV_KERNEL_SOURCE  source tarball (default /usr/src/linux-source-<ver>.tar.xz)
#   RUNV_KERNEL_KEEP_BUILD=1  keep the build tree when a build fails
#
# No network access: the source comes from the installed Debian package.
set -euo pipefail

readonly SRC_PKG_SERIES=6.1
readonly SRC_PKG="linux-source-${SRC_PKG_SERIES}"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
script_path="${script_dir}/$(basename "${BASH_SOURCE[0]}")"
prog="$(basename "$0")"

log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

usage() {
    cat <<EOF
usage: $prog [--arch x86_64] [--cache DIR] [--print-path]

Builds the runv guest kernel from ${SRC_PKG} and caches it in
\${RUNV_KERNEL_CACHE:-/var/cache/runv/kernel}/<hash>/ (vmlinux, config,
kernel-release). Prints that directory on stdout.

  --arch ARCH     target architecture (default: x86_64)
  --cache DIR     cache root (overrides RUNV_KERNEL_CACHE)
  --print-path    print the cache directory that would be used; do not build
  -h, --help      this help
EOF
}

arch=x86_64
cache_root="${RUNV_KERNEL_CACHE:-/var/cache/runv/kernel}"
print_path=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) [[ $# -ge 2 ]] || die "--arch needs a value"; arch="$2"; shift 2 ;;
        --arch=*) arch="${1#*=}"; shift ;;
        --cache) [[ $# -ge 2 ]] || die "--cache needs a value"; cache_root="$2"; shift 2 ;;
        --cache=*) cache_root="${1#*=}"; shift ;;
        --print-path) print_path=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# Per-architecture kbuild settings.
case "$arch" in
    x86_64)
        kbuild_arch=x86_64
        cross_compile=""
        image_target=vmlinux
        image_path=vmlinux
        ;;
    *) die "unsupported architecture '$arch' (supported: x86_64)" ;;
esac

fragment="${script_dir}/${arch}.config"
[[ -f "$fragment" ]] || die "config fragment not found: $fragment"
[[ -n "$cache_root" ]] || die "empty cache directory"

# Version of the kernel source: the Debian package version, or (if the
# tarball was supplied without the package) the tarball's own digest.
tarball="${RUNV_KERNEL_SOURCE:-/usr/src/${SRC_PKG}.tar.xz}"
source_version=""
if [[ -z "${RUNV_KERNEL_SOURCE:-}" ]]; then
    source_version="$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null || true)"
fi
if [[ -z "$source_version" ]]; then
    [[ -f "$tarball" ]] || die "kernel source not found: $tarball (install it with: apt-get install ${SRC_PKG})"
    source_version="tarball-sha256:$(sha256sum "$tarball" | cut -d' ' -f1)"
fi

hash="$(
    {
        printf 'arch=%s\n' "$arch"
        printf 'source=%s %s\n' "$SRC_PKG" "$source_version"
        printf 'fragment\n'; cat "$fragment"
        printf 'script\n'; cat "$script_path"
    } | sha256sum | cut -c1-16
)"
cache_root="$(realpath -m -- "$cache_root")"
out_dir="${cache_root}/${hash}"

if [[ "$print_path" == 1 ]]; then
    printf '%s\n' "$out_dir"
    exit 0
fi

is_complete() {
    [[ -s "$1/vmlinux" && -s "$1/config" && -s "$1/kernel-release" ]]
}

if is_complete "$out_dir"; then
    printf '%s\n' "$out_dir"
    exit 0
fi

# --- Build ------------------------------------------------------------------
for tool in make gcc flex bison bc tar xz perl sha256sum flock setsid ps; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "'$tool' is required (Debian: apt-get install build-essential flex bison bc libelf-dev libssl-dev xz-utils)"
done
[[ -f "$tarball" ]] || die "kernel source not found: $tarball (install it with: apt-get install ${SRC_PKG})"

mkdir -p -- "$cache_root" || die "cannot create cache directory: ${cache_root}"
[[ -w "$cache_root" ]] || die "cache directory is not writable: ${cache_root} (use --cache DIR or RUNV_KERNEL_CACHE)"

# One build per hash at a time; a second caller waits and then finds the
# result in the cache.
exec 9>"${cache_root}/.lock-${hash}"
if ! flock -n 9; then
    log "another build of ${hash} is running; waiting for it"
    flock 9
fi
if is_complete "$out_dir"; then
    printf '%s\n' "$out_dir"
    exit 0
fi

# Everything is built inside work_dir and only the finished artifacts are
# renamed into place, so the cache never holds a half-built entry. Build
# trees left by runs that were killed outright (their lock is free) are
# removed first.
for stale in "${cache_root}"/.build-*; do
    [[ -d "$stale" ]] || continue
    stale_hash="${stale##*/.build-}"
    [[ "$stale_hash" == "$hash" ]] && continue
    # Holding that build's lock while removing, so it cannot start meanwhile.
    if (flock -n 8 && rm -rf -- "$stale") 8>"${cache_root}/.lock-${stale_hash}"; then
        log "removed the stale build tree ${stale}"
    fi
done
work_dir="${cache_root}/.build-${hash}"
src_dir="${work_dir}/src"
stage_dir="${work_dir}/out"
build_log="${work_dir}/build.log"
rm -rf -- "$work_dir"
mkdir -p -- "$src_dir" "$stage_dir"

# On failure the build tree is removed (it is >1 GB) unless
# RUNV_KERNEL_KEEP_BUILD=1 asks to keep it for inspection.
on_exit() {
    local rc=$?
    if [[ $rc -ne 0 && -d "$work_dir" ]]; then
        if [[ "${RUNV_KERNEL_KEEP_BUILD:-0}" == 1 ]]; then
            log "build tree kept in ${work_dir} (removed by the next build of this configuration)"
        else
            rm -rf -- "$work_dir"
        fi
    fi
}
on_signal() {
    trap - EXIT
    log "interrupted; stopping the build and removing ${work_dir}"
    stop_child
    rm -rf -- "$work_dir"
    exit 130
}
# Long steps (tar, make) run as a background child so that a signal is
# handled at once (bash runs traps only after a foreground command ends).
# The child gets its own session and process group (setsid), so that an
# interruption stops the whole tree of make jobs. Output goes to the log.
child=""
run() {
    setsid -w "$@" >>"$build_log" 2>&1 </dev/null &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}
stop_child() {
    [[ -n "$child" ]] || return 0
    local pgid
    pgid="$(ps -o pgid= -p "$child" 2>/dev/null | tr -d ' ' || true)"
    if [[ -n "$pgid" && "$pgid" == "$child" ]]; then
        kill -TERM -- "-$pgid" 2>/dev/null || true
    else
        kill -TERM "$child" 2>/dev/null || true
    fi
    wait "$child" 2>/dev/null || true
}
# die, after showing the end of the build log.
die_log() {
    if [[ -f "$build_log" ]]; then
        log "last lines of the build log:"
        tail -n 40 "$build_log" >&2 || true
    fi
    die "$*"
}
trap on_exit EXIT
trap on_signal INT TERM HUP

jobs="${RUNV_KERNEL_JOBS:-$(nproc)}"
kmake=(make -C "$src_dir" ARCH="$kbuild_arch" ${cross_compile:+CROSS_COMPILE="$cross_compile"}
       KBUILD_BUILD_USER=runv KBUILD_BUILD_HOST=runv)

start=$(date +%s)
log "building guest kernel ${arch} (${SRC_PKG} ${source_version}) -> ${out_dir}"
log "extracting ${tarball}"
run tar -xf "$tarball" -C "$src_dir" --strip-components=1 || die_log "cannot extract $tarball"

log "configuring: tinyconfig + $(basename "$fragment")"
{
    "${kmake[@]}" tinyconfig
    # -m: merge only; olddefconfig then resolves dependencies and defaults.
    (cd "$src_dir" && ARCH="$kbuild_arch" ./scripts/kconfig/merge_config.sh -m .config "$fragment")
    "${kmake[@]}" olddefconfig
} >>"$build_log" 2>&1 || die_log "kernel configuration failed"

# Every option of the fragment must hold in the final .config; anything
# else is a typo or a dependency that is not met.
check_config() {
    local frag="$1" final="$2" line sym want got bad=()
    while IFS= read -r line || [[ -n "$line" ]]; do
        if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            sym="${BASH_REMATCH[1]}"; want="${BASH_REMATCH[2]}"
        elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            sym="${BASH_REMATCH[1]}"; want=n
        else
            continue
        fi
        got="$(grep -E "^${sym}=" "$final" | head -n1 | cut -d= -f2- || true)"
        [[ -n "$got" ]] || got=n
        if [[ "$want" != "$got" ]]; then
            bad+=("${sym}: wanted ${want}, got ${got}")
        fi
    done <"$frag"
    if [[ ${#bad[@]} -gt 0 ]]; then
        log "these options of $(basename "$frag") did not hold in the final .config"
        log "(misspelt, or a dependency is missing from the fragment):"
        printf '    %s\n' "${bad[@]}" >&2
        return 1
    fi
}
check_config "$fragment" "${src_dir}/.config" || die "config check failed"
log "config check passed ($(grep -cE '^(CONFIG_|# CONFIG_.* is not set$)' "$fragment") options)"

log "compiling ${image_target} with ${jobs} jobs"
run "${kmake[@]}" -j"$jobs" "$image_target" || die_log "kernel build failed"

release="$("${kmake[@]}" -s kernelrelease 2>>"$build_log")"
[[ -n "$release" ]] || die "could not determine the kernel release"
cp -- "${src_dir}/${image_path}" "${stage_dir}/vmlinux"
cp -- "${src_dir}/.config" "${stage_dir}/config"
printf '%s\n' "$release" >"${stage_dir}/kernel-release"

# Publish atomically. If the target exists but is incomplete (left by
# hand, or by an older script), replace it.
if [[ -e "$out_dir" ]] && ! is_complete "$out_dir"; then
    rm -rf -- "$out_dir"
fi
mv -T -- "$stage_dir" "$out_dir"
rm -rf -- "$work_dir"

log "built ${release} in $(( $(date +%s) - start ))s: ${out_dir}/vmlinux ($(stat -c %s "${out_dir}/vmlinux") bytes)"
printf '%s\n' "$out_dir"
