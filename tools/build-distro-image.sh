#!/bin/bash
# Builds the stock-distribution guest of the ACPI issue (16): a Debian 12 root filesystem made with debootstrap,
# with systemd, udev, iproute2 and Debian's own linux-image-cloud-amd64, booted unchanged:
#   - the kernel's initrd comes from initramfs-tools in the image, with virtio_mmio, virtio_blk, virtio_net and ext4;
#   - the guest agent (guest/agent, built by `make guest`) runs as a systemd service on vsock port 1024, so that
#     `swiftlet exec` works against a real distribution;
#   - a unit prints SWIFTLET-MULTIUSER on the console once multi-user.target is reached (the boot benchmark's
#     marker), and the image keeps the interface name eth0 (net.ifnames=0 on the command line does the rest).
#
# usage: tools/build-distro-image.sh AGENT
#   AGENT: the static guest agent (.build/guest/swiftlet-agent).
# Prints the directory that holds vmlinuz, initrd.img, debian.raw (a 1 GiB sparse ext4 image) and versions (what
# was installed: the kernel package and its version, systemd, the date). The result is cached under
# ${SWIFTLET_CACHE:-~/.cache/swiftlet}/distro/KEY, KEY from this script, the agent and the version of
# linux-image-cloud-amd64 the mirror offers now (Debian updates its kernels: a new one makes a new image).
#
# Boot it: swiftlet run --kernel DIR/vmlinuz --initrd DIR/initrd.img --disk DIR/debian.raw --cpus 2 \
#     --cmdline "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1" --vsock socket=/tmp/v.sock --agent
# Needs root (debootstrap, and mkfs.ext4 -d keeping file owners), debootstrap, e2fsprogs and the network (the
# Debian mirror apt uses).
set -euo pipefail

die() { echo "build-distro-image: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: tools/build-distro-image.sh AGENT"
AGENT=$1
[ -x "$AGENT" ] || die "no guest agent at $AGENT (make guest builds it)"
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, and an image that keeps its files' owners)"
command -v debootstrap >/dev/null || die "needs debootstrap (apt-get install debootstrap; tools/install-deps.sh does)"
command -v mkfs.ext4 >/dev/null || die "needs mkfs.ext4 (apt-get install e2fsprogs)"

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KERNEL_PACKAGE=linux-image-cloud-amd64
IMAGE_SIZE=1G
# The version the mirror offers now, from this host's apt lists (a Debian 12 host with the same mirror).
kernel_version=$(apt-cache show "$KERNEL_PACKAGE" 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n 1)
[ -n "$kernel_version" ] || die "apt knows no $KERNEL_PACKAGE (run apt-get update)"
key=$({ sha256sum "$0" "$AGENT" | cut -d' ' -f1; echo "$SUITE $MIRROR $KERNEL_PACKAGE=$kernel_version $IMAGE_SIZE"; } | sha256sum | cut -c1-16)
CACHE=${SWIFTLET_CACHE:-$HOME/.cache/swiftlet}/distro
OUT=$CACHE/$key
if [ -f "$OUT/versions" ] && [ -f "$OUT/debian.raw" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ]; then
    echo "$OUT"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-distro.XXXXXX")
ROOT=$WORK/root
cleanup() {
    for mount in dev/pts dev proc sys; do umount "$ROOT/$mount" 2>/dev/null || true; done
    # Never remove through a mount that is still there (the host's /dev is bound into the image while it builds).
    if grep -q " $ROOT/" /proc/self/mountinfo; then
        echo "build-distro-image: mounts are left under $ROOT; not removing $WORK (umount them, then rm -rf it)" >&2
    else
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT

echo "build-distro-image: debootstrap $SUITE, then $KERNEL_PACKAGE $kernel_version from $MIRROR and its updates" >&2
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,udev,dbus,iproute2,iputils-ping,kmod,procps,initramfs-tools,e2fsprogs \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    die "debootstrap failed: $(tail -n 5 "$WORK/debootstrap.log")"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
# The kernel from the suite, its updates and its security archive, as an installed system gets it (and as this
# host's apt lists, which gave the cache key, see it).
{
    echo "deb $MIRROR $SUITE main"
    echo "deb $MIRROR $SUITE-updates main"
    echo "deb ${MIRROR%/debian}/debian-security $SUITE-security main"
} >"$ROOT/etc/apt/sources.list"
chroot "$ROOT" apt-get update >"$WORK/apt.log" 2>&1 || die "apt-get update in the image failed: $(tail -n 5 "$WORK/apt.log")"
DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y --no-install-recommends "$KERNEL_PACKAGE=$kernel_version" \
    >>"$WORK/apt.log" 2>&1 || die "installing $KERNEL_PACKAGE $kernel_version failed: $(tail -n 5 "$WORK/apt.log")"

# The initrd: initramfs-tools with the virtio-mmio drivers and ext4 (MODULES=most already has them; listing them
# makes sure), and pvpanic-mmio (QEMU0001 in the DSDT), loaded this early so that a panic while the initramfs runs
# is reported to the VMM too; built again now that the list is in place.
cat >>"$ROOT/etc/initramfs-tools/modules" <<'EOF'
virtio_mmio
virtio_blk
virtio_net
ext4
pvpanic-mmio
EOF
chroot "$ROOT" update-initramfs -u -k all >"$WORK/initramfs.log" 2>&1 || die "update-initramfs failed: $(tail -n 5 "$WORK/initramfs.log")"
for mount in dev/pts dev proc sys; do umount "$ROOT/$mount"; done

# The system: root on /dev/vda, a hostname, vsock's transport at boot, the agent and the marker units.
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$ROOT/etc/fstab"
echo swiftlet-guest >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost swiftlet-guest\n::1 localhost\n' >"$ROOT/etc/hosts"
echo vmw_vsock_virtio_transport >"$ROOT/etc/modules-load.d/swiftlet.conf"
install -m 0755 "$AGENT" "$ROOT/usr/local/sbin/swiftlet-agent"
cat >"$ROOT/etc/systemd/system/swiftlet-agent.service" <<'EOF'
[Unit]
Description=Swiftlet guest agent (vsock port 1024: swiftlet exec)
After=systemd-modules-load.service

[Service]
ExecStart=/usr/local/sbin/swiftlet-agent --listen vsock:1024
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
EOF
cat >"$ROOT/etc/systemd/system/swiftlet-multiuser.service" <<'EOF'
[Unit]
Description=Say on the console that multi-user.target is reached (the boot benchmark's marker)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo SWIFTLET-MULTIUSER >/dev/ttyS0'

[Install]
WantedBy=multi-user.target
EOF
chroot "$ROOT" systemctl enable swiftlet-agent.service swiftlet-multiuser.service >/dev/null 2>&1 ||
    die "cannot enable the units"
# No password prompt stands between the tests and the system: root logs in on the console without one.
chroot "$ROOT" passwd -d root >/dev/null
rm -rf "$ROOT/var/cache/apt/archives"/*.deb "$ROOT/var/lib/apt/lists"/* "$ROOT/usr/share/doc"/* "$ROOT/usr/share/man"/*

mkdir -p "$WORK/out"
kernel=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n 1)
initrd=$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -n 1)
cp "$kernel" "$WORK/out/vmlinuz"
cp "$initrd" "$WORK/out/initrd.img"
truncate -s "$IMAGE_SIZE" "$WORK/out/debian.raw"
mkfs.ext4 -q -F -L swiftlet-root -d "$ROOT" "$WORK/out/debian.raw" || die "mkfs.ext4 -d failed"
{
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $MIRROR $SUITE"
    echo "kernel $(basename "$kernel") ($KERNEL_PACKAGE $kernel_version)"
    chroot "$ROOT" dpkg-query -W -f='${Package} ${Version}\n' systemd udev initramfs-tools "$KERNEL_PACKAGE" 2>/dev/null
} >"$WORK/out/versions"
mkdir -p "$CACHE"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
# An older image (another agent, script or kernel version) is 400 MB that nothing uses any more: keep only this one.
for old in "$CACHE"/*/; do
    if [ -d "$old" ] && [ "${old%/}" != "$OUT" ]; then rm -rf --one-file-system "${old%/}"; fi
done
echo "$OUT"
