#!/bin/sh
# Names the L1 kernel functions and variables at addresses from another L1 boot, such as the rip and registers of a
# "==== hang diagnosis" in a lab log. Debian ships no System.map, and KASLR moves the kernel by 2 MiB steps from boot
# to boot, so this boots L1 once (about 45 s), reads its /proc/kallsyms, and prints, for every shift that puts the
# first address inside the kernel's text, the symbol at each address: the line whose symbols make sense (a lock
# function with the lock in a register, say) is the answer.
# Usage: Tests/Integration/lab/symbolize.sh RIP [ADDRESS...]   (hex, with or without 0x; kernel addresses only)
set -eu
[ $# -ge 1 ] || { sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 2; }
LAB_DIR=$(cd "$(dirname "$0")" && pwd)
job=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-symbolize.XXXXXX")
trap 'rm -rf "$job"' EXIT
addrs=$(echo "$*" | sed 's/0x//g')
# awk's numbers are doubles: only the low 32 bits of each address are used (kernel text and data sit in the top
# 2 GiB, ffffffff8xxxxxxx, so they are unique there).
cat >"$job/symbolize.sh" <<'JOB'
sort /proc/kallsyms >/tmp/ks
awk -v addrs="$ADDRS" '
function lo(s) { s = tolower(s); return substr(s, length(s) - 7) }
function hex(s,  i, v) { v = 0; for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return v }
{ a[NR] = hex(lo($1)); n[NR] = $3; if ($3 == "_text") T = a[NR]; if ($3 == "_etext") E = a[NR] }
END {
    na = split(addrs, want, " ")
    for (k = 0; k < 512; k++) {
        shift = hex("81000000") + k * 2097152
        if (T + hex(lo(want[1])) - shift < T || T + hex(lo(want[1])) - shift >= E) continue
        line = "shift " k ":"
        for (j = 1; j <= na; j++) {
            x = T + hex(lo(want[j])) - shift; best = "?"; off = 0
            for (i = 1; i <= NR && a[i] <= x; i++) { best = n[i]; off = x - a[i] }
            line = line sprintf(" %s=%s+0x%x", want[j], best, off)
        }
        print line
    }
}' /tmp/ks
JOB
# The job prints nothing while awk reads (tens of seconds under TCG): a heartbeat keeps lab.py's watchdog quiet.
exec python3 "$LAB_DIR/lab.py" run --payload "$job" --retries 0 --label symbolize -- \
    "(while sleep 3; do echo 'symbolize: reading /proc/kallsyms'; done) & ADDRS='$addrs' sh /job/symbolize.sh; kill \$!"
