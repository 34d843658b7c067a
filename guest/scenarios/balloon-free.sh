#!/bin/sh
# Free page reporting: write swiftlet.balloon.alloc MiB (default 200) into a tmpfs, print "balloon: allocated",
# hold it swiftlet.balloon.hold seconds (default 4: the host reads the VMM's resident memory meanwhile), remove it,
# print "balloon: freed", then stay up swiftlet.balloon.after seconds (default 20) while the driver reports the
# freed blocks and the host watches its resident memory fall.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

alloc=$(param swiftlet.balloon.alloc)
alloc=${alloc:-200}
hold=$(param swiftlet.balloon.hold)
hold=${hold:-4}
after=$(param swiftlet.balloon.after)
after=${after:-20}
balloon_tmpfs $((alloc + 16))
if balloon_fill "$alloc"; then pass allocate; else fail allocate "$(cat /tmp/balloon-dd.err)"; fi
balloon_marker allocated
i=0
while [ $i -lt "$hold" ]; do sleep 1; echo "balloon: holding ${i}s"; i=$((i + 1)); done
rm -f /mnt/balloon/fill
balloon_marker freed
i=0
while [ $i -lt "$after" ]; do sleep 1; balloon_marker "after-${i}s"; i=$((i + 1)); done
finish
