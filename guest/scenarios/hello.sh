# What `make run` shows when the guest cannot have an interactive console (in the nested lab): who the guest is.
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"
echo "Hello from the Swiftlet guest: $(uname -sr), $(grep -c '^processor' /proc/cpuinfo) vCPU(s)," \
    "$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo | awk '{ printf "%d MiB", $1 / 1024 }') of memory"
echo "kernel command line: $(cat /proc/cmdline)"
check uptime test -r /proc/uptime
finish
