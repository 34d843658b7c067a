#!/bin/sh
# Lab job for the appendix of docs/SECURITY.md: the test as make test runs it (run.sh swiftlet-hostile), then the Swiftlet suite
# once more with its console kept (printed as "swiftlet-ref: " lines), then the same guest under QEMU
# (qemu-reference.sh, staged next to this script). With the payload of `make lab` (which carries guest/hostile.elf):
#
#   Tests/Integration/lab/lab.py run --payload .build/lab-payload --file Tests/Integration/hostile/qemu-reference.sh \
#       --env SWIFTLET=/job/bin/swiftlet --env GUEST=/job/guest --env VSOCKPEER=/job/bin/vsockpeer \
#       --script Tests/Integration/hostile/reference-job.sh --log .build/lab/hostile-reference.log --timeout 3000
#   Tests/Integration/hostile/reference-table.py .build/lab/hostile-reference.log   # the per-case table
TESTS=swiftlet-hostile sh /job/integration/run.sh 2>&1 | grep -v 'TEST-RESULT .* ok$'
echo "formal: done"
export INTEGRATION=/job/integration WORK=/tmp/swiftlet-reference SPEED_FACTOR=${SPEED_FACTOR:-2}
mkdir -p "$WORK"
sh /job/integration/tests/swiftlet-hostile.sh >"$WORK.out" 2>&1 &
t=$!
while kill -0 $t 2>/dev/null; do sleep 3; echo "LAB-HEARTBEAT swiftlet $(tail -n 1 "$WORK.out" | cut -c1-100)"; done
wait $t
grep -v 'TEST-RESULT .* ok$' "$WORK.out"
echo "swiftlet-ref: TEST-RESULT ok count: $(grep -c 'TEST-RESULT .* ok$' "$WORK.out")"
tr -d '\r' <"$WORK/console" | sed 's/^/swiftlet-ref: /'
sh /job/qemu-reference.sh
