#!/usr/bin/env bash
# Runs a command in a clean Debian 12 root, as on a new machine that has nothing but Swift: what the project needs
# must come from tools/install-deps.sh (`make` calls it), because nothing installed on this machine by hand is there.
#
# Usage: tools/clean-root.sh [--shell] [--keep] [COMMAND...]      (default COMMAND: make test)
#   --shell   an interactive bash in the clean root instead of COMMAND (for diagnosing)
#   --keep    keep the root directory afterwards (its path is printed)
#
# What the clean root is:
#   - `debootstrap --variant=minbase bookworm`, made once and cached as a tarball under
#     $SWIFTLET_CACHE/cleanroot (keyed by suite, variant, mirror and the debootstrap version), unpacked anew each run;
#   - Debian's own apt sources (bookworm, bookworm-updates, bookworm-security), as a new Debian 12 machine has them;
#   - the Swift toolchain of this machine (the one `swift` on PATH comes from), bind-mounted read-only at the same
#     path, plus the Debian packages swift.org lists for Swift on Debian 12 (that is what "Swift installed" means);
#   - this checkout, bind-mounted at the same path, so the build's .build directory is the checkout's own;
#   - /dev (for /dev/kvm and /dev/net/tun), /proc and /sys of this machine; the network (apt) of this machine.
# Caches the project keeps outside the clone ($SWIFTLET_CACHE: guest kernel, fio, lab image) are not this machine's:
# the clean root has its own, under $SWIFTLET_CACHE/cleanroot/cache-KEY, where KEY is a hash of tools/install-deps.sh
# and the root tarball. So every cached artifact in it was built in a clean root from the same package list, and a
# change to that list rebuilds all of them there. Downloaded .deb files are kept between runs (apt archives); they
# save download time and hide nothing, since apt still installs only what is asked for.
#
# A command that is not installed in the clean root fails the run (bash's command_not_found_handle records it;
# dash's "not found" and Python's FileNotFoundError are read from the output), and the report names the Debian
# package that provides it, looked up on this machine with dpkg -S. A missing header (gcc's "fatal error: X.h: No such file") is reported the same way.
#
# Needs root (chroot, mounts) and util-linux's unshare; installs debootstrap on this machine if it is missing.
# Everything it mounts lives in a private mount namespace and goes away with it; the root directory is removed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SWIFTLET_CACHE:-$HOME/.cache/swiftlet}
BASE=$CACHE/cleanroot
SUITE=bookworm
VARIANT=minbase
MIRROR=http://deb.debian.org/debian
# What a user has before `make test`: swift.org's system packages for the Swift toolchain on Debian 12 (the tarball
# installation guide; swiftly's list), and make itself, which a new Debian 12 lacks and which cannot install itself
# (the README says so). Everything else must come from tools/install-deps.sh.
SWIFT_PACKAGES=(binutils gcc git libc6-dev libcurl4-openssl-dev libedit-dev libicu-dev libncurses-dev libpython3-dev
                libsqlite3-dev libstdc++-12-dev libxml2-dev pkg-config tzdata uuid-dev make)

say() { echo "clean-root: $*" >&2; }
die() { say "error: $*"; exit 1; }

shell=0 keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --shell) shell=1 ;;
        --keep) keep=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (try --help)" ;;
        *) break ;;
    esac
    shift
done
command=("$@")
[[ ${#command[@]} -gt 0 ]] || command=(make test)

[[ $(id -u) == 0 ]] || die "needs root (chroot and bind mounts)"
command -v unshare >/dev/null || die "unshare not found: apt-get install util-linux"
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap (to make the clean root)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } ||
        die "apt-get install debootstrap failed"
fi
swift=$(command -v swift) || die "swift is not on PATH: the clean root borrows this machine's Swift toolchain"
# .../usr/bin/swift -> the toolchain's root (the directory that holds usr/)
toolchain=$(dirname "$(dirname "$(dirname "$(readlink -f "$swift")")")")
[[ -x $toolchain/usr/bin/swiftc ]] || die "cannot find the toolchain that $swift belongs to (looked in $toolchain)"
case $toolchain in /|/usr|/usr/local) die "the Swift toolchain is installed into $toolchain; the clean root needs it in a directory of its own (the swift.org tarball)" ;; esac

# --- The root tarball ------------------------------------------------------------------------------------------------
mkdir -p "$BASE/apt-archives/partial"
dbver=$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo unknown)
tar_key=$(printf '%s\n' "$SUITE" "$VARIANT" "$MIRROR" "$dbver" | sha256sum | cut -c1-12)
tarball=$BASE/$SUITE-$VARIANT-$tar_key.tar
exec 8>"$BASE/.tarball.lock"
flock 8
if [[ ! -s $tarball ]]; then
    say "making the root: debootstrap --variant=$VARIANT $SUITE (about 2 minutes, once; cached as $tarball)"
    t0=$SECONDS
    work=$(mktemp -d "$BASE/.debootstrap.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant="$VARIANT" --cache-dir="$BASE/apt-archives" "$SUITE" "$work/root" "$MIRROR" \
        >"$work/log" 2>&1 || { tail -20 "$work/log" >&2; die "debootstrap failed (log above)"; }
    tar -C "$work/root" -cf "$work/root.tar" .
    mv "$work/root.tar" "$tarball"
    rm -rf "$work"
    trap - EXIT
    # Older tarballs belong to other debootstrap versions.
    find "$BASE" -maxdepth 1 -name "$SUITE-$VARIANT-*.tar" ! -name "$(basename "$tarball")" -delete
    say "root made in $((SECONDS - t0)) s"
fi
flock -u 8

# --- This run's root -------------------------------------------------------------------------------------------------
deps_key=$( { cat "$REPO/tools/install-deps.sh"; echo "$tar_key"; printf '%s\n' "${SWIFT_PACKAGES[@]}"; } |
            sha256sum | cut -c1-12)
cache=$BASE/cache-$deps_key
mkdir -p "$cache"
# Caches of older package lists are dropped, the two newest kept.
# shellcheck disable=SC2012  # names are cache-HEX
ls -1dt "$BASE"/cache-*/ 2>/dev/null | tail -n +3 | while read -r old; do say "removing old cache ${old%/}"; rm -rf "${old%/}"; done

root=$(mktemp -d "${TMPDIR:-/var/tmp}/swiftlet-clean-root.XXXXXX")
cleanup() {
    local status=$?
    if [[ $keep == 1 ]]; then
        say "kept the root at $root"
    elif grep -qF " $root/" /proc/self/mountinfo; then
        # Never rm -rf through a bind mount of the checkout (same file system: --one-file-system would not stop it).
        say "warning: something is still mounted under $root; not removing it"
    else
        rm -rf --one-file-system "$root"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
t0=$SECONDS
tar -C "$root" -xf "$tarball"
cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
# The machine's network set-up, as a new machine here has it too: its resolver, and the certificate authorities and
# pip settings through which it reaches package registries (an egress proxy may sign with a CA of its own). These
# describe the network, not the project: nothing is installed by them.
cp /etc/resolv.conf "$root/etc/resolv.conf"
if [[ -d /usr/local/share/ca-certificates ]]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$root/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
[[ ! -f /etc/pip.conf ]] || cp /etc/pip.conf "$root/etc/pip.conf"
# Where git (so SwiftPM) finds packages: the system git configuration, and local mirrors it points GitHub URLs at
# (url.<dir>.insteadOf), bind-mounted read-only.
[[ ! -f /etc/gitconfig ]] || cp /etc/gitconfig "$root/etc/gitconfig"
mirrors=()
while read -r key _; do
    dir=${key#url.}
    dir=${dir%.insteadof}
    [[ $dir == /* && -d $dir && " ${mirrors[*]} " != *" ${dir%/} "* ]] || continue
    mirrors+=("${dir%/}")
    mkdir -p "$root${dir%/}"
done < <(git config --system --get-regexp '^url\..*\.insteadof$' 2>/dev/null | sort -u)
network_env=()
while IFS='=' read -r name value; do
    case $name in
        http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY|SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE|\
        CURL_CA_BUNDLE|PIP_CERT|PIP_INDEX_URL|PIP_EXTRA_INDEX_URL|PIP_TRUSTED_HOST|PIP_DEFAULT_TIMEOUT|GIT_SSL_CAINFO)
            network_env+=("$name=$value") ;;
    esac
done < <(env)
# Keep downloaded packages (the archives directory is shared between runs); debootstrap's minbase has no clean hook.
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >"$root/etc/apt/apt.conf.d/10keep-debs"
mkdir -p "$root/run/clean-root" "$root$REPO" "$root$toolchain" "$root/root/.cache/swiftlet" "$root/var/cache/apt/archives"
# Every command bash cannot find is written down (and fails as usual).
cat >"$root/etc/clean-root.bash" <<'EOF'
command_not_found_handle() {
    echo "$1" >>/run/clean-root/missing-commands
    echo "clean-root: $1: command not found (not installed in the clean root)" >&2
    return 127
}
EOF

# Inside: Swift's own packages and make first (what a user has before the README's commands), then the command.
inner=$(cat <<'EOF'
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
echo "clean-root: apt-get install ${SWIFT_PACKAGES} (Swift's own system packages, and make)" >&2
apt-get update -qq
apt-get install -y -qq --no-install-recommends ${SWIFT_PACKAGES} >/run/clean-root/swift-packages.log 2>&1 ||
    { tail -20 /run/clean-root/swift-packages.log >&2; exit 1; }
echo "clean-root: ready after ${SECONDS} s; running: ${CLEAN_ROOT_COMMAND}" >&2
cd "$REPO"
if [[ $CLEAN_ROOT_SHELL == 1 ]]; then exec bash -i; fi
eval "$CLEAN_ROOT_COMMAND"
EOF
)
say "root unpacked in $root; entering it"
set +e
unshare --mount --propagation private --pid --fork --kill-child -- bash -c '
    set -e
    root=$1 repo=$2 toolchain=$3 cache=$4 archives=$5
    mount --rbind /dev "$root/dev"
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    mkdir -p "$root$repo" "$root$toolchain"   # (again: a checkout under /tmp is under the tmpfs now)
    mount --bind "$repo" "$root$repo"
    mount --bind "$toolchain" "$root$toolchain"
    mount -o remount,bind,ro "$root$toolchain"
    mount --bind "$cache" "$root/root/.cache/swiftlet"
    mount --bind "$archives" "$root/var/cache/apt/archives"
    for dir in $6; do mount --bind "$dir" "$root$dir" && mount -o remount,bind,ro "$root$dir"; done
    shift 6
    exec chroot "$root" "$@"
' clean-root "$root" "$REPO" "$toolchain" "$cache" "$BASE/apt-archives" "${mirrors[*]}" \
    /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 CI="${CI:-}" "${network_env[@]}" \
    PATH="$toolchain/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    BASH_ENV=/etc/clean-root.bash REPO="$REPO" SWIFT_PACKAGES="${SWIFT_PACKAGES[*]}" \
    CLEAN_ROOT_COMMAND="$(printf '%q ' "${command[@]}")" CLEAN_ROOT_SHELL=$shell \
    bash -c "$inner" 2>&1 | tee "$root/run/clean-root/output"
status=${PIPESTATUS[0]}
set -e

# --- What was missing ------------------------------------------------------------------------------------------------
package_of() { # the Debian package that has FILE on this machine, if any
    dpkg -S "$1" 2>/dev/null | sed -n '1s/: .*//p'
}
missing=()
# dash ("sh: 1: X: not found") and Python ("No such file or directory: 'X'") report a missing command themselves.
sed -n -E -e 's/^(.*: )?[0-9]+: ([A-Za-z0-9._+-]+): not found$/\2/p' \
    -e "s/.*FileNotFoundError: \[Errno 2\] No such file or directory: '([A-Za-z0-9._+-]+)'.*/\1/p" \
    "$root/run/clean-root/output" >>"$root/run/clean-root/missing-commands" 2>/dev/null || true
if [[ -s $root/run/clean-root/missing-commands ]]; then
    while read -r cmd; do
        [[ -n $cmd ]] || continue
        path=$(command -v "$cmd" 2>/dev/null || true)
        pkg=$( [[ -n $path ]] && package_of "$(readlink -f "$path")" || true)
        [[ -n $pkg ]] || pkg=$( [[ -n $path ]] && package_of "$path" || true)
        if [[ -n $pkg ]]; then missing+=("command '$cmd' (Debian package $pkg)")
        else missing+=("command '$cmd' (package unknown here: apt-file search bin/$cmd)"); fi
    done < <(sort -u "$root/run/clean-root/missing-commands")
fi
while read -r header; do
    pkg=$(package_of "*include/$header")
    if [[ -n $pkg ]]; then missing+=("header '$header' (Debian package $pkg)")
    else missing+=("header '$header' (package unknown here: apt-file search $header)"); fi
done < <(sed -n -E 's/.*fatal error: ([^:]+): No such file or directory.*/\1/p' "$root/run/clean-root/output" | sort -u)
if [[ ${#missing[@]} -gt 0 ]]; then
    say "FAILED: not installed in the clean root, so tools/install-deps.sh lacks them:"
    for m in "${missing[@]}"; do say "  $m"; done
    [[ $status != 0 ]] || status=1
fi
say "finished with status $status after $((SECONDS - t0)) s (cache $cache)"
exit "$status"
