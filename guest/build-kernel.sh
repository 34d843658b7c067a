#!/usr/bin/env bash
# Build the Swiftlet guest kernel (bzImage + vmlinux) from Debian's
# linux-source-6.1 tarball: `make tinyconfig`, merge guest/kernel/x86_64.config,
# `make olddefconfig`, check that every option of the fragment survived, build.
#
# usage: guest/build-kernel.sh [OUTDIR]
#
# The result is cached outside the clone, in
#   ${SWIFTLET_CACHE:-$HOME/.cache/swiftlet}/kernel/<key>/{bzImage,vmlinux,config}
# where <key> is the first 16 hex digits of a sha256 over the fragment, the
# linux-source-6.1 package version and this script's recipe settings below.
# A second run with the same key does not rebuild. If OUTDIR is given,
# bzImage, vmlinux and config are hard-linked (or copied) into it.
#
# Environment: SWIFTLET_CACHE (cache root), JOBS (make -j, default nproc),
# KERNEL_VARIANT: empty for the guest kernel; `acpi` for the same kernel with
# guest/kernel/x86_64-acpi.config over its fragment (ACPI and the VM
# generation ID driver), exported as bzImage-acpi, vmlinux-acpi, config-acpi.
set -eu
set -o pipefail

prog=guest/build-kernel.sh
what=kernel
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=build-common.sh
. "$here/build-common.sh"

fragment=$here/kernel/x86_64.config
src_pkg=linux-source-6.1
src_tarball=/usr/src/linux-source-6.1.tar.xz
src_topdir=linux-source-6.1
arch=x86_64
build_user=swiftlet
build_host=swiftlet
build_timestamp='Sat Jan  1 00:00:00 UTC 2000'
# Everything above that shapes the output goes into the cache key. Bump the
# recipe version whenever the build steps below change.
recipe="recipe=2 base=tinyconfig merge=merge_config.sh-m final=olddefconfig arch=$arch"
recipe="$recipe targets=bzImage,vmlinux vmlinux=strip-debug"
recipe="$recipe user=$build_user host=$build_host timestamp=$build_timestamp"

[ -r "$fragment" ] || die "kernel config fragment not found: $fragment"
variant=${KERNEL_VARIANT:-}
suffix=
if [ -n "$variant" ]; then
    over=$here/kernel/$arch-$variant.config
    [ -r "$over" ] || die "no fragment for KERNEL_VARIANT=$variant: $over"
    suffix=-$variant
    # The variant's options replace the base fragment's settings of the same options; the merged fragment is
    # what the build uses, checks and keys by.
    opts=$(sed -n 's/^\(CONFIG_[A-Za-z0-9_]*\)=.*/\1/p; s/^# \(CONFIG_[A-Za-z0-9_]*\) is not set.*/\1/p' "$over" | paste -sd'|')
    mkdir -p "$cache_root/kernel" || die "cannot create $cache_root/kernel"
    merged=$cache_root/kernel/fragment-$variant.config
    { grep -vE "^(# )?($opts)[= ]" "$fragment" || true; cat "$over"; } >"$merged.new" && mv "$merged.new" "$merged"
    fragment=$merged
fi
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found (this script expects Debian)"
src_version=$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null) || src_version=
[ -n "$src_version" ] || die "package $src_pkg is not installed (apt-get install $src_pkg)"
[ -r "$src_tarball" ] || die "$src_tarball missing although $src_pkg is installed (apt-get install --reinstall $src_pkg)"

key=$({
    printf 'fragment\n'; cat "$fragment"
    printf 'source %s %s\n' "$src_pkg" "$src_version"
    printf '%s\n' "$recipe"
} | sha256sum | cut -c1-16)

kroot=$cache_root/kernel
dest=$kroot/$key
artifacts="bzImage vmlinux config"

is_cached() {
    for f in $artifacts; do [ -s "$dest/$f" ] || return 1; done
}

export_to_outdir() {
    [ -n "$outdir" ] || return 0
    mkdir -p "$outdir" || die "cannot create $outdir"
    for f in $artifacts; do
        rm -f "$outdir/$f$suffix"
        ln "$dest/$f" "$outdir/$f$suffix" 2>/dev/null || cp "$dest/$f" "$outdir/$f$suffix" ||
            die "cannot copy $dest/$f to $outdir"
    done
    info "bzImage$suffix, vmlinux$suffix, config$suffix -> $outdir"
}

if is_cached; then
    info "cached (key $key) in $dest"
    export_to_outdir
    exit 0
fi

# --- Not cached: check the tools before doing anything expensive. ----------------
need make make
need gcc gcc
need ld binutils
need strip binutils
need readelf binutils
need flex flex
need bison bison
need bc bc
need perl perl
need xz xz-utils
need lz4 lz4   # the bzImage's payload is LZ4-compressed (KERNEL_LZ4 in the fragment)
need tar tar
need flock util-linux
need_file /usr/include/libelf.h libelf.h libelf-dev
need_file /usr/include/openssl/opensslv.h "openssl headers" libssl-dev
require_all
lock_cache "$kroot"
# Someone may have built it while we waited.
if is_cached; then
    info "cached (key $key) in $dest"
    export_to_outdir
    exit 0
fi
# With the lock held, any leftover temp dir is from an interrupted build.
for stale in "$kroot"/.tmp-*; do
    [ -e "$stale" ] || continue
    info "removing leftover $stale"
    rm -rf "$stale"
done

tmp=$(mktemp -d "$kroot/.tmp-$key.XXXXXX") || die "cannot create a temp dir under $kroot"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log=$kroot/build-$key.log
: >"$log"

jobs=${JOBS:-$(nproc 2>/dev/null || echo 1)}
src=$tmp/$src_topdir
kmake() {
    make -C "$src" ARCH="$arch" \
        KBUILD_BUILD_USER="$build_user" KBUILD_BUILD_HOST="$build_host" \
        KBUILD_BUILD_TIMESTAMP="$build_timestamp" "$@"
}
log_kept=1

t0=$(date +%s)
info "building (key $key, $src_pkg $src_version, make -j$jobs); log: $log"

run_logged "extracting $src_tarball" tar -xJf "$src_tarball" -C "$tmp"
[ -f "$src/Makefile" ] || die "$src_tarball did not unpack to $src_topdir/"

run_logged "make tinyconfig" kmake tinyconfig
# shellcheck disable=SC2016 # $1 and $2 are the inner sh's arguments
run_logged "merge_config.sh" sh -c 'cd "$1" && ./scripts/kconfig/merge_config.sh -m .config "$2"' sh "$src" "$fragment"
run_logged "make olddefconfig" kmake olddefconfig

# Every option the fragment sets must survive olddefconfig (dependencies!).
lost=
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            opt=${line%%=*}
            grep -qxF -- "$line" "$src/.config" || {
                got=$(grep -E "^(# )?${opt}[= ]" "$src/.config" || true)
                lost="$lost  $line  (final: ${got:-absent})
"
            }
            ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }; opt=${opt%% *}
            if got=$(grep -E "^$opt=" "$src/.config"); then
                lost="$lost  $line  (final: $got)
"
            fi
            ;;
    esac
done <"$fragment"
if grep -Eq '^CONFIG_CMDLINE_BOOL=y|^CONFIG_CMDLINE="[^"]' "$src/.config"; then
    lost="$lost  built-in command line must be empty (final: $(grep -E '^CONFIG_CMDLINE' "$src/.config" | tr '\n' ' '))
"
fi
if [ -n "$lost" ]; then
    printf '%s: error: options of %s did not survive make olddefconfig\n(missing dependency or invalid value):\n%s' \
        "$prog" "$fragment" "$lost" >&2
    exit 1
fi
info "config ok: every option of $(basename "$fragment") is in the final .config"

run_logged "make bzImage" kmake -j"$jobs" bzImage

out=$tmp/out
mkdir "$out"
cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
strip --strip-debug -o "$out/vmlinux" "$src/vmlinux"
cp "$src/.config" "$out/config"
case "$(readelf -lW "$out/vmlinux" 2>/dev/null)" in
    *" LOAD "*) ;;
    *) die "vmlinux has no PT_LOAD program headers" ;;
esac
{
    printf 'key %s\nsource %s %s\n%s\nfragment-sha256 %s\n' "$key" "$src_pkg" "$src_version" \
        "$recipe" "$(sha256sum <"$fragment" | cut -d' ' -f1)"
} >"$out/key.txt"
mv "$log" "$out/build.log"
log=$out/build.log
rm -rf "$src"   # the source tree is about 1.5 GB; nothing needs it any more

# Publish atomically: a directory rename on the same filesystem.
rm -rf "$dest"
mv -T "$out" "$dest" || die "cannot move the build into $dest"

t1=$(date +%s)
info "built in $((t1 - t0)) s (key $key): $dest"
info "bzImage $(stat -c %s "$dest/bzImage") bytes, vmlinux $(stat -c %s "$dest/vmlinux") bytes"
export_to_outdir
