#!/bin/bash
# Build (or find in the cache) the Swiftlet lab's L1 image: Debian's cloud kernel plus a
# busybox initramfs holding the KVM/vhost/net modules, qemu-system-x86_64 with its libraries
# and firmware, iperf3 with its libraries (the host end of the network benchmark), and the L1
# init. See README.md in this directory.
#
# Usage: build-l1.sh [--force] [--quiet]
#   --force   rebuild even if the cache holds this image
#   --quiet   no progress messages (errors are still printed)
#
# Environment:
#   SWIFTLET_CACHE            cache root (default: $HOME/.cache/swiftlet)
#   SWIFTLET_LAB_KERNEL_PKG   kernel package to use, as NAME or NAME=VERSION (default: the pin in l1-kernel.pin;
#                             "latest": whatever linux-image-cloud-amd64 depends on today)
#   SWIFTLET_LAB_COMPRESS     base initramfs compression: none (default, boots fastest), lz4, gzip
#
# Output (stdout, last line): the image directory, holding
#   vmlinuz       the L1 kernel (bzImage)
#   base.cpio     the base initramfs (newc; lab.py appends the job's payload as a second archive)
#   lab.env       facts about the image (kernel version, package versions, key)
#   monotime      static CLOCK_MONOTONIC helper (also in L1 as /bin/monotime)
# Progress and errors go to stderr. Exit status is non-zero on any failure.
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${SWIFTLET_CACHE:-$HOME/.cache/swiftlet}
LAB_CACHE=$CACHE_ROOT/lab
COMPRESS=${SWIFTLET_LAB_COMPRESS:-none}
FORCE=0
QUIET=0

# Modules L1 loads at boot, in this order; their dependencies (from modules.dep) load first.
MODULES=(irqbypass kvm kvm-amd tun vhost_iotlb vhost vhost_net vsock
         vmw_vsock_virtio_transport_common vhost_vsock veth bridge loop)
# Modules staged but loaded only by a job that lab.py gave disks (--drive: its command line says lab.disks=1): the
# disks' driver, for the stock distro guest's root disk: only the distro job, which needs them, has them loaded.
DISK_MODULES=(virtio_pci virtio_blk)

# QEMU firmware staged under /usr/share/qemu in L1 (bios-microvm.bin for -M microvm,
# the option ROMs for -kernel boots, SeaBIOS for -M pc/q35).
QEMU_FIRMWARE=(bios-microvm.bin qboot.rom linuxboot.bin linuxboot_dma.bin pvh.bin
               multiboot.bin multiboot_dma.bin kvmvapic.bin bios-256k.bin bios.bin)
# QEMU loadable modules staged too (TCG, so L1 can also run QEMU without KVM).
QEMU_MODULES=(accel-tcg-x86_64.so)

log() { [ "$QUIET" = 1 ] || echo "build-l1: $*" >&2; }
die() { echo "build-l1: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --quiet) QUIET=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done

need() { # need COMMAND HINT
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}
need apt-cache "this script needs Debian/Ubuntu apt"
need apt-get "this script needs Debian/Ubuntu apt"
need dpkg-deb "apt-get install dpkg"
need dpkg-query "apt-get install dpkg"
need depmod "apt-get install kmod"
need qemu-system-x86_64 "apt-get install qemu-system-x86"
need cpio "apt-get install cpio"
need gcc "apt-get install gcc libc6-dev"
need python3 "apt-get install python3"
need sha256sum "apt-get install coreutils"
need flock "apt-get install util-linux"
need ldd "apt-get install libc-bin"
case "$COMPRESS" in
    none) ;;
    lz4) need lz4 "apt-get install lz4" ;;
    gzip) need gzip "apt-get install gzip" ;;
    *) die "SWIFTLET_LAB_COMPRESS must be none, lz4 or gzip (got '$COMPRESS')" ;;
esac

BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: apt-get install busybox-static"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked: apt-get install busybox-static"
fi
QEMU_BIN=$(command -v qemu-system-x86_64)
QEMU_SHARE=/usr/share/qemu
# Debian's QEMU searches these for firmware; L1 gets the files in /usr/share/qemu.
QEMU_FIRMWARE_PATH="/usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu"
[ -e "$QEMU_SHARE/bios-microvm.bin" ] || die "$QEMU_SHARE/bios-microvm.bin not found: apt-get install qemu-system-data"

# --- Which kernel package, which versions -------------------------------------------------
# The L1 kernel is pinned (l1-kernel.pin: package and exact version), so that a Debian update cannot change the lab
# under a passing suite unnoticed; moving the pin is a change of its own, with the lab's stall rates measured again.
PIN_FILE=$LAB_DIR/l1-kernel.pin
# What linux-image-cloud-amd64 depends on today: "PACKAGE VERSION" (one apt-cache call: about 0.5 s here). The
# metapackage's Depends names the kernel package and, normally, its exact version: "linux-image-6.1.0-NN-cloud-amd64 (= V)".
metapackage_kernel() {
    apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null |
        sed -n -E 's/^Depends:.*\<(linux-image-[0-9][^ ,]*-cloud-amd64)( \(= ([^)]*)\))?.*/\1 \3/p' | sed -n 1p
}
KPKG=${SWIFTLET_LAB_KERNEL_PKG:-}
PINNED=0
if [ -z "$KPKG" ]; then
    PINNED=1
    KPKG=$(sed -n -E 's/^(linux-image-[^ #=]+)[ =]+([^ #]+).*/\1=\2/p' "$PIN_FILE" 2>/dev/null | sed -n 1p)
    [ -n "$KPKG" ] || die "$PIN_FILE names no kernel package and version (a line 'linux-image-... VERSION')"
fi
[ "$KPKG" != latest ] || KPKG=""
KPKG_VERSION=""
case "$KPKG" in *=*) KPKG_VERSION=${KPKG#*=}; KPKG=${KPKG%%=*} ;; esac
if [ -z "$KPKG" ]; then
    read -r KPKG KPKG_VERSION < <(metapackage_kernel) || true
    if [ -z "$KPKG" ]; then
        # No apt lists (offline, fresh container): fall back to the newest cached image.
        # shellcheck disable=SC2012  # names are KVER-KEY, no odd characters
        newest=$(ls -1dt "$LAB_CACHE"/*-cloud-amd64-*/.complete 2>/dev/null | sed -n 1p || true)
        if [ -n "$newest" ] && [ "$FORCE" = 0 ]; then
            echo "build-l1: warning: apt-cache cannot resolve linux-image-cloud-amd64 (run apt-get update);" \
                 "using the newest cached image, which may predate changes to the lab files" >&2
            dirname "$newest"
            exit 0
        fi
        die "cannot resolve linux-image-cloud-amd64's kernel package (apt-cache show found none): run apt-get update"
    fi
fi
if [ -z "$KPKG_VERSION" ]; then
    KPKG_VERSION=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | awk '!found && /^Version:/ { print $2; found = 1 }')
    [ -n "$KPKG_VERSION" ] || die "apt-cache knows no package $KPKG: run apt-get update"
fi
KVER=${KPKG#linux-image-}

pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown; }
QEMU_VERSION="$(pkgver qemu-system-x86) $("$QEMU_BIN" --version | sed -n 1p)"
BUSYBOX_VERSION="$(pkgver busybox-static) $("$BUSYBOX" | sed -n 1p)"
IPERF3_VERSION=$(pkgver iperf3)   # "unknown" when it is not installed (then L1 has none)

LATEST=""
[ "$PINNED" = 0 ] || LATEST=$(metapackage_kernel || true)
if [ -n "$LATEST" ] && [ "$LATEST" != "$KPKG $KPKG_VERSION" ]; then
    log "note: the lab's L1 kernel is pinned to $KPKG $KPKG_VERSION ($PIN_FILE); Debian's linux-image-cloud-amd64 now depends on $LATEST"
fi

# The key covers everything that goes into the image: this script, the L1 files, the tools,
# the kernel package version, the host's QEMU and busybox, and the compression.
KEY=$( {
    cat "$LAB_DIR/build-l1.sh"
    for f in "$LAB_DIR"/l1/* "$LAB_DIR"/tools/*.c; do echo "== ${f#"$LAB_DIR"/}"; cat "$f"; done
    echo "$KPKG $KPKG_VERSION"
    echo "$QEMU_VERSION"
    echo "$BUSYBOX_VERSION"
    echo "iperf3 $IPERF3_VERSION"
    echo "compress=$COMPRESS"
} | sha256sum | cut -c1-12)
OUT=$LAB_CACHE/$KVER-$KEY

if [ "$FORCE" = 0 ] && [ -f "$OUT/.complete" ]; then
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi

mkdir -p "$LAB_CACHE/debs"
exec 9>"$LAB_CACHE/.build.lock"
if ! flock -n 9; then
    log "waiting for another build-l1.sh to finish"
    flock 9
fi
if [ "$FORCE" = 0 ] && [ -f "$OUT/.complete" ]; then  # built while we waited
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi

# Under the lock, any other work directory is a leftover of a killed build.
rm -rf "$LAB_CACHE"/.work.*
T_START=$(date +%s.%N)
WORK=$(mktemp -d "$LAB_CACHE/.work.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Kernel package -----------------------------------------------------------------------
# shellcheck disable=SC2012  # names are Debian package file names
DEB=$(ls "$LAB_CACHE/debs/${KPKG}_${KPKG_VERSION//:/%3a}_"*.deb 2>/dev/null | sed -n 1p || true)
if [ -z "$DEB" ]; then
    log "downloading $KPKG $KPKG_VERSION"
    mkdir "$WORK/dl"
    if ! (cd "$WORK/dl" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KPKG_VERSION" >&2); then
        current=${LATEST:-$(metapackage_kernel || true)}
        die "apt-get download $KPKG=$KPKG_VERSION failed. If Debian no longer serves that version, move the pin in" \
            "$PIN_FILE to one it serves (linux-image-cloud-amd64 depends on ${current:-?} today), rerun the lab" \
            "tests and measure the stall rate again (lab README); otherwise: network? apt-get update?"
    fi
    DEB=$(ls "$WORK/dl"/*.deb)
    mv "$DEB" "$LAB_CACHE/debs/"
    DEB=$LAB_CACHE/debs/$(basename "$DEB")
    # Keep the four newest kernel packages (a pin can move back; each is about 27 MB).
    # shellcheck disable=SC2012  # Debian package file names
    ls -1t "$LAB_CACHE/debs"/*.deb 2>/dev/null | tail -n +5 | xargs -r rm -f
fi
log "extracting $(basename "$DEB")"
dpkg-deb -x "$DEB" "$WORK/pkg"
KMOD_SRC=$WORK/pkg/lib/modules/$KVER
[ -d "$KMOD_SRC" ] || die "$DEB has no lib/modules/$KVER"
[ -f "$WORK/pkg/boot/vmlinuz-$KVER" ] || die "$DEB has no boot/vmlinuz-$KVER"
# The package ships no modules.dep (depmod runs at install time): make one.
depmod -b "$WORK/pkg" "$KVER"

# --- Root filesystem ----------------------------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc/lab,proc,sys,dev,tmp,run,root,job,lib/modules/"$KVER",usr/share/qemu}

# busybox and its applet links
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list-full); do
    [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done

# L1 init and helpers
install -m 0755 "$LAB_DIR/l1/init" "$ROOT/init"
install -m 0755 "$LAB_DIR/l1/lab-step" "$LAB_DIR/l1/lab-heartbeat" "$ROOT/bin/"
gcc -static -O2 -s -Wall -Wextra -Werror -o "$WORK/monotime" "$LAB_DIR/tools/monotime.c" ||
    die "compiling tools/monotime.c failed (static glibc: apt-get install libc6-dev)"
install -m 0755 "$WORK/monotime" "$ROOT/bin/monotime"

cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
kvm:x:104:
nogroup:x:65534:
EOF
printf '127.0.0.1 localhost lab-l1\n::1 localhost\n' >"$ROOT/etc/hosts"

# Kernel modules: the requested ones and their dependencies, in load order.
log "staging modules"
python3 - "$KMOD_SRC" "$ROOT/etc/lab/modules.order" "$ROOT/etc/lab/modules.disks" "${MODULES[@]}" -- "${DISK_MODULES[@]}" <<'PY'
import os, sys
src, out, out_disks = sys.argv[1], sys.argv[2], sys.argv[3]
sep = sys.argv.index("--")
wanted, wanted_disks = sys.argv[4:sep], sys.argv[sep + 1:]
deps, byname = {}, {}
with open(os.path.join(src, "modules.dep")) as f:
    for line in f:
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = os.path.basename(path).split(".ko")[0]
        byname[name] = path
        byname.setdefault(name.replace("-", "_"), path)
        byname.setdefault(name.replace("_", "-"), path)
order, seen = [], set()
def visit(p, chain):
    if p in seen:
        return
    if p in chain:
        sys.exit("build-l1: error: module dependency cycle at " + p)
    for d in deps.get(p, []):
        visit(d, chain | {p})
    seen.add(p)
    order.append(p)
missing = [m for m in wanted + wanted_disks if m not in byname]
if missing:
    sys.exit("build-l1: error: modules not in the kernel package: " + " ".join(missing))
for m in wanted:
    visit(byname[m], frozenset())
at_boot = len(order)
for m in wanted_disks:  # after the boot set: only what it does not already load
    visit(byname[m], frozenset())
for name, paths in ((out, order[:at_boot]), (out_disks, order[at_boot:])):
    with open(name, "w") as f:
        for p in paths:
            f.write(p + "\n")
PY
while read -r ko; do
    mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$ko")"
    cp "$KMOD_SRC/$ko" "$ROOT/lib/modules/$KVER/$ko"
done < <(cat "$ROOT/etc/lab/modules.order" "$ROOT/etc/lab/modules.disks")
# busybox insmod wants plain .ko: decompress any compressed module.
while read -r ko; do
    case "$ko" in
        *.ko.xz)  need xz "apt-get install xz-utils";  xz -d "$ROOT/lib/modules/$KVER/$ko" ;;
        *.ko.zst) need zstd "apt-get install zstd";    zstd -q -d --rm "$ROOT/lib/modules/$KVER/$ko" ;;
        *.ko.gz)  gzip -d "$ROOT/lib/modules/$KVER/$ko" ;;
        *.ko) ;;
        *) die "unexpected module file name $ko" ;;
    esac
done < <(cat "$ROOT/etc/lab/modules.order" "$ROOT/etc/lab/modules.disks")
sed -i -E 's/\.ko\.(xz|zst|gz)$/.ko/' "$ROOT/etc/lab/modules.order" "$ROOT/etc/lab/modules.disks"
cp "$KMOD_SRC"/modules.builtin "$KMOD_SRC"/modules.builtin.modinfo "$KMOD_SRC"/modules.order "$ROOT/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$ROOT" "$KVER"   # so that `modprobe` works in L1 for the staged modules
log "modules: $(tr '\n' ' ' <"$ROOT/etc/lab/modules.order" | sed -E 's#[^ ]*/##g; s/\.ko//g')"
log "modules for jobs with disks: $(tr '\n' ' ' <"$ROOT/etc/lab/modules.disks" | sed -E 's#[^ ]*/##g; s/\.ko//g')"

# QEMU: binary, the libraries ldd lists (and the loader), firmware, loadable modules.
log "staging $QEMU_BIN"
copy_with_libs() { # copy_with_libs FILE DEST_IN_ROOT
    local file=$1 dest=$2 lib
    mkdir -p "$ROOT/$(dirname "$dest")"
    cp -L "$file" "$ROOT/$dest"
    ldd "$file" >/dev/null 2>&1 || return 0   # static
    ldd "$file" | grep 'not found' >/dev/null && die "ldd $file: $(ldd "$file" | grep 'not found' | sed -n 1,3p | tr '\n' ' ')"
    for lib in $(ldd "$file" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        [ -e "$ROOT$lib" ] && continue
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
}
copy_with_libs "$QEMU_BIN" /usr/bin/qemu-system-x86_64
QEMU_MODDIR=/usr/lib/x86_64-linux-gnu/qemu
for m in "${QEMU_MODULES[@]}"; do
    if [ -e "$QEMU_MODDIR/$m" ]; then
        copy_with_libs "$QEMU_MODDIR/$m" "$QEMU_MODDIR/$m"
    else
        log "note: $QEMU_MODDIR/$m not found (QEMU built without modules?): skipped"
    fi
done
# iperf3: the L1 end of the network benchmark (Tests/Integration/bench/net.sh). Optional: without it that
# benchmark says so and the rest of the lab works.
if command -v iperf3 >/dev/null 2>&1; then
    log "staging $(command -v iperf3)"
    copy_with_libs "$(command -v iperf3)" /usr/bin/iperf3
else
    log "note: iperf3 not found (apt-get install iperf3): the network benchmark cannot run in this image"
fi
for fw in "${QEMU_FIRMWARE[@]}"; do
    found=""
    for d in $QEMU_FIRMWARE_PATH; do
        if [ -e "$d/$fw" ]; then found=$d/$fw; break; fi
    done
    if [ -n "$found" ]; then
        cp -L "$found" "$ROOT/usr/share/qemu/$fw"
    else
        log "note: $fw not found in $QEMU_FIRMWARE_PATH: skipped"
    fi
done

# --- Image --------------------------------------------------------------------------------
IMG=$WORK/img
mkdir -p "$IMG"
cp "$WORK/pkg/boot/vmlinuz-$KVER" "$IMG/vmlinuz"
cp "$WORK/monotime" "$IMG/monotime"
log "packing the initramfs ($(du -sh "$ROOT" | cut -f1) unpacked, compression: $COMPRESS)"
(cd "$ROOT" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) >"$WORK/base.cpio"
case "$COMPRESS" in
    none) mv "$WORK/base.cpio" "$IMG/base.cpio" ;;
    lz4)  lz4 -l -9 -q "$WORK/base.cpio" "$IMG/base.cpio" ;;
    gzip) gzip -6 -c "$WORK/base.cpio" >"$IMG/base.cpio" ;;
esac

cat >"$IMG/lab.env" <<EOF
# Swiftlet lab L1 image, made by Tests/Integration/lab/build-l1.sh
KEY=$KEY
KERNEL=vmlinuz
INITRD=base.cpio
KERNEL_VERSION=$KVER
KERNEL_PACKAGE=$KPKG
KERNEL_PACKAGE_VERSION=$KPKG_VERSION
QEMU_VERSION="$QEMU_VERSION"
BUSYBOX_VERSION="$BUSYBOX_VERSION"
IPERF3_VERSION="$IPERF3_VERSION"
COMPRESS=$COMPRESS
MODULES="$(tr '\n' ' ' <"$ROOT/etc/lab/modules.order" | sed -E 's#[^ ]*/##g; s/\.ko//g; s/ $//')"
DISK_MODULES="$(tr '\n' ' ' <"$ROOT/etc/lab/modules.disks" | sed -E 's#[^ ]*/##g; s/\.ko//g; s/ $//')"
BUILT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
EOF
touch "$IMG/.complete"

rm -rf "$OUT"
mv "$IMG" "$OUT"

# Keep the three newest images; older ones belong to older versions of this script.
# shellcheck disable=SC2012  # names are KVER-KEY, no odd characters
ls -1dt "$LAB_CACHE"/*-cloud-amd64-*/ 2>/dev/null | tail -n +4 | while read -r old; do
    log "removing old image ${old%/}"
    rm -rf "${old%/}"
done

T_END=$(date +%s.%N)
log "built $OUT in $(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.1f", b - a }') s ($(du -sh "$OUT/base.cpio" | cut -f1) initramfs)"
echo "$OUT"
