#!/bin/sh
# Builds the hostile guest: build.sh OUTDIR  ->  OUTDIR/hostile.elf
# A freestanding x86_64 ELF (no libc, no Linux) that Swiftlet boots with `swiftlet run --kernel hostile.elf`
# (64-bit boot protocol) and QEMU with `-kernel hostile.elf` (its PVH note). Rebuilt only when a source is newer.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
target=$out/hostile.elf
sources="$here/entry.S $here/boot.c $here/lib.c $here/virtio.c $here/main.c $here/suite.c $here/cases.c \
    $here/blk.c $here/net.c $here/vsock.c $here/balloon.c $here/rng.c $here/count.c"
if [ -f "$target" ]; then
    stale=0
    for f in $sources "$here"/*.h "$here/hostile.ld" "$0"; do [ "$f" -nt "$target" ] && stale=1; done
    [ $stale = 1 ] || exit 0
fi
# -mgeneral-regs-only: no SSE anywhere (nothing sets up the FPU state); -mno-red-zone: the exception stubs push on
# the interrupted stack; -fno-pic/-static: linked at its physical address; -fno-builtin keeps our own mem* calls.
# shellcheck disable=SC2086  # $sources is a list of paths without spaces
gcc -std=gnu11 -O2 -g -Wall -Wextra -Werror -ffreestanding -nostdlib -static -fno-pic -no-pie -fno-stack-protector \
    -fno-asynchronous-unwind-tables -mno-red-zone -mgeneral-regs-only -fcf-protection=none \
    -Wl,-T,"$here/hostile.ld" -Wl,--build-id=none -Wl,-z,max-page-size=4096 -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments \
    -o "$target.tmp" $sources -lgcc
mv "$target.tmp" "$target"
echo "built $target"
