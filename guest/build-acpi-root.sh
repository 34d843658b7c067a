#!/bin/bash
# Builds the small root disk the ACPI tests boot Debian's stock kernel with: an ext4 image holding a static busybox
# and guest/acpi-root/init as /sbin/init. usage: guest/build-acpi-root.sh OUT.img
set -euo pipefail
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=/bin/busybox
! ldd "$BUSYBOX" >/dev/null 2>&1 || { echo "build-acpi-root: $BUSYBOX is not static (apt-get install busybox-static)" >&2; exit 1; }
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,sbin,proc,sys,dev,tmp}
cp "$BUSYBOX" "$ROOT/bin/busybox"
install -m 0755 "$HERE/acpi-root/init" "$ROOT/sbin/init"
rm -f "$OUT"
truncate -s 16M "$OUT"
mkfs.ext4 -q -F -L acpi-root -d "$ROOT" "$OUT"
