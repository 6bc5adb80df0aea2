#!/bin/sh
# Configures containerd's CRI runtime handler `runv` (runtime type io.containerd.runv.v2).
#
#   scripts/containerd-config.sh [--restart] [ROOT]
#
# ROOT (default /) is the root of the target file system: tests and image builds pass a
# directory. Paths written into files are those of the target system, without ROOT.
#
# 1. Installs config/containerd/runv.toml as ROOT/etc/containerd/conf.d/runv.toml.
# 2. Makes containerd load it (containerd 1.6 reads other files only through `imports`):
#    - no config.toml: writes a version 2 config.toml that imports the drop-in;
#    - a version 2 config.toml that does not configure the CRI plugin: adds the import;
#    - a version 2 config.toml that configures the CRI plugin itself (Debian's stock one
#      does): containerd 1.6 and 1.7 would let the drop-in's CRI section replace the whole
#      CRI section of config.toml, so the drop-in's `runv` table goes into config.toml
#      instead, between `# runv: begin` and `# runv: end` lines;
#    - a config.toml that imports the drop-in, has the runv block or defines a `runv`
#      runtime already: nothing to do (running the script again changes nothing);
#    - any other config.toml (version 1 or 3): left alone, with a note on what to add.
#    An edited config.toml keeps its previous content in config.toml.runv-backup-DATE.
#    Where `containerd` is installed, the result must load (`containerd config dump`) and
#    differ from the previous configuration only by the runv runtime, or nothing changes.
# 3. Leaves a running containerd alone (it reads its configuration at start) and says that
#    it must be restarted; with --restart, restarts it (systemctl, ROOT / only).
set -eu

restart=0
root=/
for arg in "$@"; do
    case "$arg" in
        --restart) restart=1 ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "containerd-config.sh: unknown option $arg" >&2; exit 2 ;;
        *) root=$arg ;;
    esac
done
root=${root%/}

here=$(cd "$(dirname "$0")" && pwd)
src=${RUNV_CONTAINERD_DROPIN:-$here/../config/containerd/runv.toml}
containerd=${CONTAINERD:-containerd}
dropin=/etc/containerd/conf.d/runv.toml
config=$root/etc/containerd/config.toml
changed=0

say() { echo "runv: $*"; }
warn() { echo "runv: $*" >&2; }

[ -f "$src" ] || { warn "$src is missing"; exit 1; }

# 1. The drop-in.
if cmp -s "$src" "$root$dropin"; then
    say "$root$dropin is up to date"
else
    install -D -m 0644 "$src" "$root$dropin"
    say "installed $root$dropin"
    changed=1
fi

# The table of runtime $1 of the drop-in, from its header to the next table.
runtime_table() {
    awk -v name="$1" '/^\[/ { on = index($0, "runtimes." name "]") || index($0, "runtimes." name ".") }
        on && NF' "$src"
}

# Lines of $1 that are neither blank nor comments.
settings() {
    sed -e 's/^[[:space:]]*//' -e '/^#/d' -e '/^$/d' "$1"
}

# `containerd config dump` of config file $1, normalized for comparison: no `imports`
# line, no runv runtime tables, no settings at their zero value, no blank lines.
dump() {
    "$containerd" --config "$1" config dump >"$tmp/dump" 2>"$tmp/dump.err" || {
        warn "containerd cannot load $1: $(cat "$tmp/dump.err")"
        return 1
    }
    awk '
        /^[[:space:]]*\[/ { skip = ($0 ~ /runtimes\.runv[].]/) }
        skip || /^imports = / || /^[[:space:]]*$/ { next }
        /= (""|0|false|\[\])$/ { next }
        { print }
    ' "$tmp/dump"
}

# Checks that config file $1 loads and configures runv, and, if $2 is given, that it differs
# from config file $2 only by the runv runtime. Skipped without containerd.
check() {
    command -v "$containerd" >/dev/null 2>&1 || {
        say "containerd is not installed here: the result is not checked"
        return 0
    }
    # The copies live beside config.toml (relative imports resolve alike); their import of
    # the drop-in names it under ROOT.
    sed "s|\"$dropin\"|\"$root$dropin\"|" "$1" >"$cdir/.runv-check-new.toml"
    dump "$cdir/.runv-check-new.toml" >"$tmp/new" || return 1
    grep -q 'runtime_type = "io.containerd.runv.v2"' "$tmp/dump" || {
        warn "the runv runtime is missing from containerd's view of $1"
        return 1
    }
    [ $# -lt 2 ] && return 0
    sed "s|\"$dropin\"|\"$root$dropin\"|" "$2" >"$cdir/.runv-check-old.toml"
    dump "$cdir/.runv-check-old.toml" >"$tmp/old" || return 1
    if ! cmp -s "$tmp/old" "$tmp/new"; then
        warn "the change would alter more than the runv runtime:"
        diff "$tmp/old" "$tmp/new" >&2 || true
        return 1
    fi
}

# Replaces config.toml with $1, keeping the old one as a backup.
replace_config() {
    backup=$config.runv-backup-$(date +%Y%m%d%H%M%S)
    cp -p "$config" "$backup"
    cp -p "$config" "$config.runv-new"
    cat "$1" >"$config.runv-new"
    mv -f "$config.runv-new" "$config"
    say "updated $config (the previous one is $backup)"
    changed=1
}

cdir=$(dirname "$config")
mkdir -p "$cdir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$cdir/.runv-check-new.toml" "$cdir/.runv-check-old.toml"' EXIT

# 2. config.toml.
if [ ! -e "$config" ]; then
    cat >"$tmp/config.toml" <<EOF
# containerd configuration. runv's install wrote it (scripts/containerd-config.sh) to load
# $dropin, which configures the CRI runtime handler runv.
version = 2
imports = ["$dropin"]
EOF
    check "$tmp/config.toml" || { warn "$config not written"; exit 1; }
    install -m 0644 "$tmp/config.toml" "$config"
    say "wrote $config"
    changed=1
elif settings "$config" | grep -Fq -e "\"$dropin\"" -e "\"${dropin%/*}/*.toml\""; then
    say "$config already imports $dropin"
elif grep -q '^# runv: begin' "$config"; then
    say "$config already has the runv runtime"
elif settings "$config" | grep -Eq 'runtimes\.("runv"|runv)\]'; then
    say "$config defines a runv runtime of its own: left as is"
elif ! settings "$config" | awk '/^\[/ { exit 1 } /^version *= *2( |#|$)/ { found = 1 } END { exit !found }'; then
    warn "$config is not a version 2 configuration: left as is (\`containerd config migrate\`"
    warn "converts one). The runv runtime in a version 2 configuration:"
    runtime_table runv >&2
    exit 0
elif settings "$config" | grep -q 'io\.containerd\.grpc\.v1\.cri'; then
    # containerd 1.6/1.7 would replace this CRI section by the drop-in's: add the table here.
    {
        cat "$config"
        [ -z "$(tail -c 1 "$config")" ] || echo
        echo
        echo "# runv: begin. The CRI runtime handler runv; runv's install added it"
        echo "# (scripts/containerd-config.sh) as this file configures the CRI plugin itself."
        if ! settings "$config" | grep -q 'containerd\.runtimes\.'; then
            echo "# A runtimes table replaces containerd's built-in one: runc, the default, again."
            runtime_table runc
        fi
        runtime_table runv
        echo "# runv: end"
    } >"$tmp/config.toml"
    check "$tmp/config.toml" "$config" || { warn "$config left as is"; exit 1; }
    replace_config "$tmp/config.toml"
else
    # Add the drop-in first to the top-level `imports` (before the first table), or add that
    # key after the top-level `version`. Files imported later override it.
    awk -v entry="\"$dropin\"" '
        !table && /^\[/ { table = 1 }
        !table && !done && /^[[:space:]]*imports[[:space:]]*=[[:space:]]*\[/ {
            if (!sub(/=[[:space:]]*\[[[:space:]]*\]/, "= [" entry "]")) { sub(/\[/, "[" entry ", "); sub(/, $/, ",") }
            done = 1
        }
        { print }
        END { if (!done) print "no imports" > "/dev/stderr" }
    ' "$config" >"$tmp/config.toml" 2>"$tmp/awk.err"
    if [ -s "$tmp/awk.err" ]; then
        awk -v entry="\"$dropin\"" '
            { print }
            !table && /^\[/ { table = 1 }
            !table && !done && /^[[:space:]]*version[[:space:]]*=/ {
                print "imports = [" entry "]"
                done = 1
            }
        ' "$config" >"$tmp/config.toml"
    fi
    check "$tmp/config.toml" "$config" || { warn "$config left as is"; exit 1; }
    replace_config "$tmp/config.toml"
fi

# 3. containerd reads its configuration when it starts.
if [ "$changed" = 1 ]; then
    if [ "$restart" = 1 ] && [ -z "$root" ]; then
        systemctl restart containerd
        say "restarted containerd"
    else
        say "restart containerd to load this (systemctl restart containerd)"
    fi
fi
