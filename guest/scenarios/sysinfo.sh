#!/bin/sh
# Reports CPUs, memory and kernel release; checks them against
#   swiftlet.expect.cpus=N      processor lines in /proc/cpuinfo must equal N
#   swiftlet.expect.mem_mib=M   MemTotal (MiB, rounded down) must lie in
#                               [M - M/8 - 64, M]: the kernel keeps its image,
#                               page tables and struct pages out of MemTotal
# when those parameters are on the kernel command line.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

cpus=$(grep -c '^processor' /proc/cpuinfo)
mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
mem_mib=$((mem_kb / 1024))
report cpus "$cpus"
report mem_total_kib "$mem_kb"
report kernel "$(uname -r)"

want_cpus=$(param swiftlet.expect.cpus)
if [ -n "$want_cpus" ]; then
    check_eq cpus "$cpus" "$want_cpus"
fi
want_mib=$(param swiftlet.expect.mem_mib)
if [ -n "$want_mib" ]; then
    case $want_mib in
        *[!0-9]*) fail mem "bad swiftlet.expect.mem_mib=$want_mib" ;;
        *) check_range mem "$mem_mib" $((want_mib - want_mib / 8 - 64)) "$want_mib" ;;
    esac
fi
finish
