#!/usr/bin/env bash
# Build a small static fio for the guest initramfs, from Debian's own fio
# source package (bookworm's, pinned below), with only the I/O engines a
# block-device benchmark needs (libaio, io_uring, psync, sync, ...).
#
# usage: guest/build-fio.sh [OUTDIR]
#
# Why not Debian's fio binary: it is linked against every optional engine's
# library (librbd, librados, libgfapi, libpmem, libibverbs, ... and through
# them libicudata, libceph-common, boost): 84 MB of libraries that a
# dynamically linked fio in the initramfs would have to carry. This one is
# one static file of about 2.8 MB, built without SysV shared memory (the guest
# kernel has no CONFIG_SYSVIPC).
#
# The source comes from Debian's archive with apt's own client and signature
# checks (apt-get source, with a private deb-src list in a temp directory: the
# host's apt configuration is not touched, and root is not needed). The result
# is cached in
#   ${SWIFTLET_CACHE:-$HOME/.cache/swiftlet}/fio/<key>/fio
# where <key> is the first 16 hex digits of a sha256 over this script (the
# version and the recipe are in it). If OUTDIR is given, fio is hard-linked (or
# copied) into it.
#
# Environment: SWIFTLET_CACHE (cache root), JOBS (make -j, default nproc),
#              FIO_MIRROR (default http://deb.debian.org/debian).
set -eu
set -o pipefail

prog=guest/build-fio.sh
what=fio
# shellcheck source=build-common.sh
. "$(cd "$(dirname "$0")" && pwd)/build-common.sh"

fio_version=3.33-3        # Debian bookworm's fio
suite=bookworm
mirror=${FIO_MIRROR:-http://deb.debian.org/debian}
configure_flags="--build-static --disable-native --disable-numa --disable-rdma --disable-rados --disable-rbd
    --disable-http --disable-gfapi --disable-pmem --disable-shm --disable-libzbc --disable-xnvme --disable-tcmalloc
    --disable-dfs --disable-libnfs --disable-lex"

key=$(sha256sum <"$0" | cut -c1-16)
froot=$cache_root/fio
dest=$froot/$key

export_to_outdir() {
    [ -n "$outdir" ] || return 0
    mkdir -p "$outdir" || die "cannot create $outdir"
    rm -f "$outdir/fio"
    ln "$dest/fio" "$outdir/fio" 2>/dev/null || cp "$dest/fio" "$outdir/fio" || die "cannot copy $dest/fio to $outdir"
}

if [ -s "$dest/fio" ]; then
    info "cached (key $key, fio $fio_version) in $dest"
    export_to_outdir
    exit 0
fi

need apt-get apt
need dpkg-source dpkg-dev
need make make
need gcc gcc
need strip binutils
need flock util-linux
need_file /usr/lib/x86_64-linux-gnu/libaio.a libaio.a libaio-dev
need_file /usr/lib/x86_64-linux-gnu/libz.a libz.a zlib1g-dev
need_file /usr/share/keyrings/debian-archive-keyring.gpg "Debian's archive keyring" debian-archive-keyring
require_all
lock_cache "$froot"
if [ -s "$dest/fio" ]; then
    info "cached (key $key, fio $fio_version) in $dest"
    export_to_outdir
    exit 0
fi
for stale in "$froot"/.tmp-*; do
    [ -e "$stale" ] || continue
    rm -rf "$stale"
done

tmp=$(mktemp -d "$froot/.tmp-$key.XXXXXX") || die "cannot create a temp dir under $froot"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log=$tmp/build.log
: >"$log"

t0=$(date +%s)
info "building fio $fio_version (key $key)"

# A private apt setup: one deb-src entry, its own lists and cache; nothing of the host's apt state changes.
mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/cache/archives/partial" "$tmp/apt/parts" "$tmp/src"
cat >"$tmp/apt/sources.list" <<EOF
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main
EOF
apt_opts=(-q -o "Dir::Etc::SourceList=$tmp/apt/sources.list" -o "Dir::Etc::SourceParts=$tmp/apt/parts"
    -o "Dir::State::Lists=$tmp/apt/lists" -o "Dir::Cache=$tmp/apt/cache" -o Debug::NoLocking=1
    -o APT::Sandbox::User="$(id -un)")
run_logged "apt-get update (deb-src $mirror $suite; offline?)" apt-get "${apt_opts[@]}" update
# shellcheck disable=SC2016 # $1.. are the inner sh's arguments
run_logged "apt-get source fio=$fio_version" sh -c 'cd "$1" && shift && apt-get "$@" source --download-only "fio=$0"' \
    "$fio_version" "$tmp/src" "${apt_opts[@]}"
run_logged "dpkg-source -x" dpkg-source -x "$tmp/src/fio_${fio_version}.dsc" "$tmp/src/fio"

# shellcheck disable=SC2086,SC2016 # the flags are words; $1 and $@ are the inner sh's
run_logged "fio configure" sh -c 'cd "$1" && shift && ./configure "$@"' sh "$tmp/src/fio" $configure_flags
run_logged "make fio" make -C "$tmp/src/fio" -j"${JOBS:-$(nproc 2>/dev/null || echo 1)}" fio
mkdir "$tmp/out"
strip -o "$tmp/out/fio" "$tmp/src/fio/fio"
"$tmp/out/fio" --version >/dev/null 2>&1 || die "the built fio does not run"
# shellcheck disable=SC2086 # one line of words
printf 'key %s\nfio %s (%s %s)\nconfigure%s\n' "$key" "$fio_version" "$mirror" "$suite" \
    "$(printf ' %s' $configure_flags)" >"$tmp/out/key.txt"
cp "$log" "$tmp/out/build.log"
rm -rf "$dest"
mv -T "$tmp/out" "$dest" || die "cannot move the build into $dest"
info "built in $(($(date +%s) - t0)) s (key $key): $dest/fio, $(stat -c %s "$dest/fio") bytes"
export_to_outdir
