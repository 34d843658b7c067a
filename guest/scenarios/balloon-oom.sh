#!/bin/sh
# Deflate on OOM: the VMM starts with a balloon of most of the guest's memory (--balloon size=N,deflate-on-oom=on;
# with DEFLATE_ON_OOM the driver leaves MemTotal alone, so MemFree shows it). Waits until MemFree is below
# swiftlet.balloon.free_below MiB (default 100), then writes swiftlet.balloon.alloc MiB (default 150) into a tmpfs:
# more than is free, and tmpfs pages cannot be swapped or dropped, so the guest runs out of memory and survives only
# if the driver deflates the balloon (its OOM notifier) instead of the OOM killer ending this script. Prints
# "balloon: survived" and stays up 5 s so the host can read the balloon's actual size.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

below=$(param swiftlet.balloon.free_below)
below=${below:-100}
alloc=$(param swiftlet.balloon.alloc)
alloc=${alloc:-150}
balloon_tmpfs $((alloc + 16))
low() { [ "$(meminfo_kib MemFree)" -le $((below * 1024)) ]; }
balloon_wait inflated 120 low || finish
balloon_marker pressing
if balloon_fill "$alloc"; then pass allocate; else fail allocate "$(cat /tmp/balloon-dd.err)"; fi
check_eq allocate-size "$(wc -c </mnt/balloon/fill)" $((alloc << 20))
# The OOM killer would have logged "Killed process" (the tiny kernel has no oom_kill line in /proc/vmstat).
check_eq no-oom-kill "$(dmesg | grep -c 'Killed process')" 0
balloon_marker survived
i=0
while [ $i -lt 5 ]; do sleep 1; echo "balloon: holding ${i}s"; i=$((i + 1)); done
finish
