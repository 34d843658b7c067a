#!/bin/sh
# Inflate and deflate, driven by the host (Tests/Integration/tests/swiftlet-balloon.sh), which talks to the VMM's
# balloon control socket and watches this console:
#   1. write swiftlet.balloon.touch MiB (default 180) into a tmpfs and remove it, so that the free memory the
#      balloon will take is resident in the host; print "balloon: touched" with MemTotal/MemFree/MemAvailable
#      (the host compares them with the statistics the device received);
#   2. wait for MemTotal to drop by at least swiftlet.balloon.drop MiB (default 120: the host inflates by 128;
#      without DEFLATE_ON_OOM the driver takes ballooned pages out of MemTotal); print "balloon: inflated";
#   3. wait for MemTotal to come back (the host deflates to 0); then write the touch size into the tmpfs again:
#      more than fitted while the balloon was inflated.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

touch_mib=$(param swiftlet.balloon.touch)
touch_mib=${touch_mib:-180}
drop_mib=$(param swiftlet.balloon.drop)
drop_mib=${drop_mib:-120}
balloon_tmpfs $((touch_mib + 16))
total0=$(meminfo_kib MemTotal)
report memtotal_before_kib "$total0"

if balloon_fill "$touch_mib"; then pass touch; else fail touch "$(cat /tmp/balloon-dd.err)"; fi
rm -f /mnt/balloon/fill
balloon_marker touched

inflated() { [ "$(meminfo_kib MemTotal)" -le $((total0 - drop_mib * 1024)) ]; }
balloon_wait inflated 120 inflated || finish
sleep 1
report memtotal_inflated_kib "$(meminfo_kib MemTotal)"
balloon_marker inflated

deflated() { [ "$(meminfo_kib MemTotal)" -ge $((total0 - 1024)) ]; }
balloon_wait deflated 120 deflated || finish
balloon_marker deflated
if balloon_fill "$touch_mib"; then pass reuse; else fail reuse "$(cat /tmp/balloon-dd.err)"; fi
check_eq reuse-size "$(wc -c </mnt/balloon/fill)" $((touch_mib << 20))
rm -f /mnt/balloon/fill
finish
