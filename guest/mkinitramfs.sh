#!/usr/bin/env bash
# Build the Swiftlet guest initramfs: a newc cpio archive with
#   /bin/busybox (busybox-static) and its applet links (busybox --list-full),
#   /init          compiled from guest/init/init.c,
#   /sbin/swiftlet-agent   the guest agent, compiled from guest/agent/agent.c
#                  with musl (about 50 KB; glibc would add 700 KB),
#   /scenarios/    guest/scenarios/*.sh,
#   /dev/console   character device 5:1 (an extra archive entry, so no root
#                  rights are needed to build it),
#   EXTRA items.
#
# usage: guest/mkinitramfs.sh OUT.cpio [--gzip] [EXTRA...]
#
#   --gzip        compress the archive with gzip (default: uncompressed)
#   EXTRA         SRC[:DEST]. A file goes to DEST (default /usr/bin/NAME);
#                 a dynamically linked ELF brings along the libraries ldd
#                 lists and the dynamic loader, at their host paths; a
#                 DEST ending in / gets NAME appended. A directory's contents
#                 are copied recursively into DEST (default /NAME; / merges
#                 it into the root).
#
# Environment:
#   GUEST_BUILD        where init is compiled (default: the directory of OUT)
#   BUSYBOX            the busybox binary (default: /bin/busybox; must be static)
#   CC                 C compiler for init (default: gcc)
#   AGENT_CC           C compiler for the agent (default: musl-gcc)
#   SOURCE_DATE_EPOCH  mtime of every archive member (default: 0)
set -eu
set -o pipefail

prog=guest/mkinitramfs.sh
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

here=$(cd "$(dirname "$0")" && pwd)

[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; -*) die "first argument must be OUT.cpio (got $1)" ;; esac
out=$1; shift
gzip_it=0
extras=()
while [ $# -gt 0 ]; do
    case "$1" in
        --gzip) gzip_it=1 ;;
        --) shift; extras+=("$@"); break ;;
        -*) die "unknown option $1" ;;
        *) extras+=("$1") ;;
    esac
    shift
done

# --- tools -------------------------------------------------------------------
command -v cpio >/dev/null 2>&1 || die "cpio not found (apt-get install cpio)"
case "$(cpio --help 2>&1)" in *--reproducible*) ;; *) false ;; esac ||
    die "cpio does not support --reproducible (GNU cpio 2.13 or later needed)"
cc=${CC:-gcc}
command -v "$cc" >/dev/null 2>&1 || die "$cc not found (apt-get install gcc libc6-dev)"
agent_cc=${AGENT_CC:-musl-gcc}
command -v "$agent_cc" >/dev/null 2>&1 || die "$agent_cc not found (apt-get install musl-tools)"
[ "$gzip_it" = 0 ] || command -v gzip >/dev/null 2>&1 || die "gzip not found (apt-get install gzip)"
command -v readelf >/dev/null 2>&1 || die "readelf not found (apt-get install binutils)"

is_elf() { [ "$(od -An -tx1 -N4 "$1" 2>/dev/null | tr -d ' \n')" = 7f454c46 ]; }
is_dynamic_elf() { # has a PT_INTERP program header
    is_elf "$1" || return 1
    case "$(readelf -lW "$1" 2>/dev/null)" in *" INTERP "*) return 0 ;; *) return 1 ;; esac
}

busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || die "busybox not found at $busybox (apt-get install busybox-static)"
is_elf "$busybox" || die "$busybox is not an ELF binary"
! is_dynamic_elf "$busybox" ||
    die "$busybox is dynamically linked; the guest needs a static one (apt-get install busybox-static)"

epoch=${SOURCE_DATE_EPOCH:-0}
case "$epoch" in ''|*[!0-9]*) die "SOURCE_DATE_EPOCH must be a number of seconds (got $epoch)" ;; esac

out_dir=$(dirname -- "$out")
[ -d "$out_dir" ] || mkdir -p "$out_dir" || die "cannot create $out_dir"
build=${GUEST_BUILD:-$out_dir}
mkdir -p "$build" || die "cannot create build dir $build"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-initramfs.XXXXXX") || die "cannot create a temp dir"
part=
trap 'rm -rf "$tmp"; [ -z "$part" ] || rm -f "$part"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
stage=$tmp/root

# --- init ----------------------------------------------------------------------
"$cc" -static -Os -Wall -Wextra -s -o "$tmp/init" "$here/init/init.c" ||
    die "compiling $here/init/init.c failed (a static glibc is in libc6-dev)"
mv -f "$tmp/init" "$build/init"
"$agent_cc" -static -Os -Wall -Wextra -s -o "$tmp/swiftlet-agent" "$here/agent/agent.c" ||
    die "compiling $here/agent/agent.c failed"
mv -f "$tmp/swiftlet-agent" "$build/swiftlet-agent"

# --- layout ----------------------------------------------------------------------
for d in bin sbin usr/bin usr/sbin dev proc sys tmp run root etc scenarios; do
    mkdir -p "$stage/$d"
done
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"
cp "$build/init" "$stage/init"
chmod 0755 "$stage/init"
cp "$build/swiftlet-agent" "$stage/sbin/swiftlet-agent"
chmod 0755 "$stage/sbin/swiftlet-agent"

cp "$busybox" "$stage/bin/busybox"
chmod 0755 "$stage/bin/busybox"

printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\ntty:x:5:\n' >"$stage/etc/group"
printf '127.0.0.1\tlocalhost\n' >"$stage/etc/hosts"

set -- "$here"/scenarios/*.sh
[ -e "$1" ] || die "no scenarios in $here/scenarios"
cp "$@" "$stage/scenarios/"

# --- extras --------------------------------------------------------------------
# Nothing may be written through a symlink: staged symlinks point at host
# paths (/bin/busybox, or whatever an EXTRA directory holds). So every
# destination must resolve inside the stage, files replace what was there
# (never write through it), and directories are unpacked by tar, which does
# not follow symlinks it meets. The applet links are made after the extras.
stage_real=$(realpath -- "$stage")
inside_stage() { # inside_stage GUEST-PATH: its parent resolves inside the stage
    parent=$(realpath -m -- "$stage$(dirname -- "$1")")
    case "$parent/" in "$stage_real"/*) return 0 ;; esac
    die "refusing to write $1: it resolves outside the staging dir (to $parent)"
}
copy_file() { # copy_file SRC DEST(absolute, in the guest)
    inside_stage "$2"
    mkdir -p "$stage$(dirname -- "$2")" || die "cannot create $(dirname -- "$2") in the stage"
    [ ! -d "$stage$2" ] || [ -L "$stage$2" ] || die "cannot copy $1 to $2: a directory is there"
    rm -f "$stage$2"
    cp -L "$1" "$stage$2" || die "cannot copy $1"
}

for item in ${extras[@]+"${extras[@]}"}; do
    src=${item%%:*}
    if [ "$src" = "$item" ]; then dest=; else dest=${item#*:}; fi
    [ -n "$src" ] || die "extra '$item': empty source"
    [ -e "$src" ] || die "extra '$item': $src does not exist"
    name=$(basename -- "$src")
    if [ -d "$src" ]; then
        dest=${dest:-/$name}
    else
        dest=${dest:-/usr/bin/$name}
    fi
    case "$dest" in /*) ;; *) die "extra '$item': DEST must be an absolute path" ;; esac
    if [ -d "$src" ]; then
        inside_stage "$dest/."
        mkdir -p "$stage$dest" || die "cannot create $dest in the stage"
        (cd "$src" && tar -cf - .) | tar -xf - -C "$stage$dest" --no-same-owner ||
            die "cannot copy directory $src"
        continue
    fi
    case "$dest" in */) dest=$dest$name ;; esac
    copy_file "$src" "$dest"
    if is_dynamic_elf "$src"; then
        command -v ldd >/dev/null 2>&1 || die "ldd not found (apt-get install libc-bin)"
        libs=$(ldd "$src") || die "ldd $src failed"
        case "$libs" in
            *"not found"*) die "ldd $src: missing libraries:
$(printf '%s\n' "$libs" | grep 'not found')" ;;
        esac
        for lib in $(printf '%s\n' "$libs" | awk '
            $2 == "=>" && $3 ~ /^\// { print $3; next }
            $1 ~ /^\// { print $1 }' | LC_ALL=C sort -u); do
            [ -e "$stage$lib" ] || copy_file "$lib" "$lib"
        done
    fi
done

# --- busybox applets (where an EXTRA did not put something) -----------------------
applets=$("$stage/bin/busybox" --list-full) || die "$busybox --list-full failed"
[ -n "$applets" ] || die "$busybox --list-full listed no applets"
link_dirs=
for d in bin sbin usr/bin usr/sbin; do
    [ -d "$stage/$d" ] || continue
    case "$(realpath -- "$stage/$d")/" in "$stage_real"/*) link_dirs="$link_dirs $d " ;; esac
done
for a in $applets; do
    case "$a" in bin/busybox|init|linuxrc) continue ;; esac
    case "$link_dirs" in *" $(dirname "$a") "*) ;; *) continue ;; esac
    [ -e "$stage/$a" ] || [ -L "$stage/$a" ] || ln -s /bin/busybox "$stage/$a"
done
[ -L "$stage/bin/sh" ] || [ -f "$stage/bin/sh" ] || die "$busybox has no sh applet"

# --- archive ---------------------------------------------------------------------
find "$stage" -exec touch -h -d "@$epoch" {} + || die "cannot set mtimes"

# newc header for one entry without data: NAME MODE RDEVMAJOR RDEVMINOR
newc_entry() {
    namesize=$((${#1} + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
        "$5" "$2" 0 0 1 "$epoch" 0 0 0 "$3" "$4" "$namesize" 0 "$1"
    pad=$(((4 - (110 + namesize) % 4) % 4))
    [ "$pad" -eq 0 ] || head -c "$pad" /dev/zero
}

{
    (cd "$stage" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible) ||
        die "cpio failed"
    # A second archive, concatenated (the kernel unpacks both): /dev/console
    # for the kernel to open as init's stdin/stdout/stderr.
    newc_entry dev/console $((0020600)) 5 1 1
    newc_entry TRAILER!!! 0 0 0 0
} >"$tmp/initramfs.cpio"

if [ "$gzip_it" = 1 ]; then
    gzip -9 -n <"$tmp/initramfs.cpio" >"$tmp/out" || die "gzip failed"
else
    mv "$tmp/initramfs.cpio" "$tmp/out"
fi
# Same filesystem as OUT for an atomic rename: stage there, then move.
part=$(mktemp "$out_dir/.$(basename -- "$out").XXXXXX") || die "cannot write in $out_dir"
if ! { cp "$tmp/out" "$part" && chmod 0644 "$part" && mv -f "$part" "$out"; }; then
    rm -f "$part"
    die "cannot write $out"
fi
printf 'initramfs: %s (%s bytes%s, init and swiftlet-agent from %s)\n' "$out" "$(stat -c %s "$out")" \
    "$([ "$gzip_it" = 1 ] && echo ', gzip')" "$build"
