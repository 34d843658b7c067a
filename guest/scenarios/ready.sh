#!/bin/sh
# The boot itself is the test: init printed SWIFTLET-READY. Check the basics.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

check proc test -r /proc/self/stat
check console test -c /dev/console
finish
