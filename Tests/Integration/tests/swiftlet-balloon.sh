# virtio-balloon end to end: the guest's balloon-* scenarios (guest/scenarios) against Swiftlet's --balloon, driven
# through its control socket (swiftlet balloon SOCKET set|get|stats), with the VMM's resident memory read from
# /proc/PID/smaps: the Rss of the guest-RAM mapping (the mapping whose Size is the guest's memory).
#   inflate:  256 MiB guest, stats every second. The guest touches 180 MiB and frees it; the statistics the device
#             received must match the guest's /proc/meminfo; inflating by 128 MiB must drop the mapping's Rss by
#             at least 120 MiB and the guest's MemTotal by 120 MiB; deflating to 0 gives the guest its memory
#             back (it writes 180 MiB again, which did not fit while inflated).
#   free:     512 MiB guest, free page reporting on, no inflation: the guest allocates 200 MiB, the Rss grows, it
#             frees them, and within BALLOON_FPR_SECONDS (default 15) at least 150 MiB of Rss must be gone.
#   oom:      256 MiB guest, a 160 MiB balloon at boot with deflate-on-oom: the guest writes 150 MiB to a tmpfs
#             and must survive with no OOM kill, the balloon's actual size below its target.
# The control socket must be gone after each exit.
. "$INTEGRATION/lib.sh"
t=swiftlet-balloon
INITRD=$GUEST/initramfs.cpio

# check_ge NAME GOT MIN DETAIL
check_ge() { if [ "${2:-0}" -ge "$3" ] 2>/dev/null; then test_pass "$1"; else test_fail "$1" "got ${2:-nothing}, want at least $3; $4"; fi; }

# field LINE NAME: the value of NAME=VALUE in LINE.
field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

# boot NAME MEMORY_MIB BALLOON_OPTIONS GUEST_PARAMETERS: starts the VM in the background with its control socket
# at $WORK/NAME.ctl; sets $vm_pid (the heartbeat around it) and $ctl.
boot() {
    _log=$WORK/$1.console
    ctl=$WORK/$1.ctl
    HEARTBEAT_LOG=$_log heartbeat swiftlet_boot "$_log" --kernel "$GUEST/bzImage" --initrd "$INITRD" \
        --memory "$2M" --stats --balloon "$3" --balloon-socket "$ctl" --cmdline "$SWIFTLET_CMDLINE_BASE $4" &
    vm_pid=$!
}
# vmm_pid: the swiftlet process (the only one: lab tests run one at a time).
vmm_pid() { pidof swiftlet | cut -d' ' -f1; }
# ram_rss_kib MEMORY_MIB: Rss of the VMM's guest-RAM mapping, KiB (with AnonHugePages after a slash for the log).
ram_rss_kib() {
    awk -v want=$(($1 * 1024)) '/^[0-9a-f]+-[0-9a-f]+ / { cur = 0; next }
        $1 == "Size:" { cur = ($2 == want) } cur && $1 == "Rss:" { print $2; exit }' "/proc/$(vmm_pid)/smaps" 2>/dev/null
}
ram_thp_kib() {
    awk -v want=$(($1 * 1024)) '/^[0-9a-f]+-[0-9a-f]+ / { cur = 0; next }
        $1 == "Size:" { cur = ($2 == want) } cur && $1 == "AnonHugePages:" { print $2; exit }' "/proc/$(vmm_pid)/smaps" 2>/dev/null
}
# ctl COMMAND...: one command to the control socket; prints the answer.
ctl() { "$SWIFTLET" balloon "$ctl" "$@" 2>&1; }
# wait_console NAME PATTERN [SECONDS]: up to SECONDS (default 120) for a console line with PATTERN while the VMM runs.
wait_console() {
    _wc=0
    while [ $_wc -lt $((${3:-120} * 5)) ] && kill -0 "$vm_pid" 2>/dev/null; do
        grep -q "$2" "$WORK/$1.console" 2>/dev/null && return 0
        sleep 0.2
        _wc=$((_wc + 1))
    done
    grep -q "$2" "$WORK/$1.console" 2>/dev/null
}
# marker NAME WORD: the guest's last "balloon: WORD ..." line.
marker() { grep "balloon: $2 " "$WORK/$1.console" | tail -n 1 | tr -d '\r'; }
vm_end() {
    wait "$vm_pid"
    expect_status "$t.$1.exit" $? 0 "stderr: $(tail -c 400 "$WORK/$1.console.err")"
    guest_results "$t.$1" "$WORK/$1.console"
    grep '^swiftlet: stats ' "$WORK/$1.console.err" 2>/dev/null | sed 's/^/step: /'
    if [ -e "$ctl" ]; then test_fail "$t.$1.socket-removed" "$ctl is still there"; else test_pass "$t.$1.socket-removed"; fi
}
# abs_diff A B
abs_diff() { if [ "$1" -ge "$2" ]; then echo $(($1 - $2)); else echo $(($2 - $1)); fi; }

# --- inflate, deflate, statistics ---------------------------------------------------------------------------------------
boot inflate 256 stats=1 "swiftlet.test=balloon-inflate swiftlet.balloon.touch=180"
if wait_console inflate "balloon: touched "; then
    guest=$(marker inflate touched)
    sleep 3 # one statistics interval and then some
    stats=$(ctl stats)
    echo "step: guest: $guest"
    echo "step: device: $stats"
    case $stats in
        ok*)
            test_pass "$t.inflate.stats-answer"
            total=$(field "$stats" total_memory) free=$(field "$stats" free_memory) avail=$(field "$stats" available_memory)
            if [ "$total" = $(($(field "$guest" memtotal_kib) * 1024)) ]; then test_pass "$t.inflate.stats-total"; else
                test_fail "$t.inflate.stats-total" "device total_memory=$total, guest MemTotal $(field "$guest" memtotal_kib) KiB"; fi
            # Free memory moves a little while the guest idles: within 16 MiB.
            d=$(abs_diff "${free:-0}" $(($(field "$guest" memfree_kib) * 1024)))
            if [ "$d" -le $((16 << 20)) ]; then test_pass "$t.inflate.stats-free"; else
                test_fail "$t.inflate.stats-free" "device free_memory=$free, guest MemFree $(field "$guest" memfree_kib) KiB"; fi
            d=$(abs_diff "${avail:-0}" $(($(field "$guest" memavailable_kib) * 1024)))
            if [ "$d" -le $((16 << 20)) ]; then test_pass "$t.inflate.stats-available"; else
                test_fail "$t.inflate.stats-available" "device available_memory=$avail, guest MemAvailable $(field "$guest" memavailable_kib) KiB"; fi
            ;;
        *) test_fail "$t.inflate.stats-answer" "$stats" ;;
    esac
    rss0=$(ram_rss_kib 256)
    echo "step: guest RAM Rss before inflating: ${rss0:-?} KiB (AnonHugePages $(ram_thp_kib 256) KiB)"
    answer=$(ctl set 128)
    case $answer in ok*) test_pass "$t.inflate.set" ;; *) test_fail "$t.inflate.set" "$answer" ;; esac
    i=0
    while [ $i -lt 600 ]; do
        got=$(ctl get)
        [ "$(field "$got" actual_mib)" = 128 ] && break
        [ $((i % 15)) -ne 0 ] || echo "step: inflating: $got"
        sleep 0.2
        i=$((i + 1))
    done
    echo "step: $got"
    if [ "$(field "$got" actual_mib)" = 128 ]; then test_pass "$t.inflate.actual"; else test_fail "$t.inflate.actual" "$got"; fi
    wait_console inflate "balloon: inflated " 60
    rss1=$(ram_rss_kib 256)
    echo "step: guest RAM Rss after inflating: ${rss1:-?} KiB (AnonHugePages $(ram_thp_kib 256) KiB); guest: $(marker inflate inflated)"
    check_ge "$t.inflate.rss-drop" $((${rss0:-0} - ${rss1:-0})) $((120 * 1024)) "Rss ${rss0:-?} -> ${rss1:-?} KiB"
    sleep 2
    echo "step: Rss 2 s later: $(ram_rss_kib 256) KiB"
    answer=$(ctl set 0)
    case $answer in ok*) test_pass "$t.inflate.deflate-set" ;; *) test_fail "$t.inflate.deflate-set" "$answer" ;; esac
    wait_console inflate "balloon: deflated " 120
    echo "step: after deflating: $(ctl get)"
else
    test_fail "$t.inflate.touched" "the guest never printed 'balloon: touched'"
fi
vm_end inflate
if grep -q 'device=balloon0 .*ignored_pages=0' "$WORK/inflate.console.err"; then test_pass "$t.inflate.no-ignored-pages"; else
    test_fail "$t.inflate.no-ignored-pages" "$(grep balloon0 "$WORK/inflate.console.err")"; fi

# --- free page reporting --------------------------------------------------------------------------------------------------
fpr_wait=${BALLOON_FPR_SECONDS:-15}
boot free 512 free-page-reporting=on "swiftlet.test=balloon-free swiftlet.balloon.alloc=200 swiftlet.balloon.after=$((fpr_wait + 3))"
if wait_console free "balloon: allocated "; then
    sleep 1
    rss_alloc=$(ram_rss_kib 512)
    echo "step: Rss with 200 MiB allocated: ${rss_alloc:-?} KiB; $(ctl get)"
    wait_console free "balloon: freed " 30
    i=0 rss=$rss_alloc
    while [ $i -lt $((fpr_wait * 5)) ]; do
        rss=$(ram_rss_kib 512)
        [ $((${rss_alloc:-0} - ${rss:-0})) -ge $((150 * 1024)) ] && break
        [ $((i % 10)) -ne 0 ] || echo "step: after free: Rss ${rss:-?} KiB"
        sleep 0.2
        i=$((i + 1))
    done
    echo "step: Rss ${rss:-?} KiB $((i / 5)).$((i % 5 * 2)) s after the guest freed 200 MiB; $(ctl get)"
    check_ge "$t.free.rss-returned" $((${rss_alloc:-0} - ${rss:-0})) $((150 * 1024)) "Rss ${rss_alloc:-?} -> ${rss:-?} KiB within ${fpr_wait}s"
else
    test_fail "$t.free.allocated" "the guest never printed 'balloon: allocated'"
fi
vm_end free

# --- deflate on OOM -------------------------------------------------------------------------------------------------------
boot oom 256 size=160,deflate-on-oom=on "swiftlet.test=balloon-oom swiftlet.balloon.alloc=150 swiftlet.balloon.free_below=100"
if wait_console oom "balloon: survived " 180; then
    got=$(ctl get)
    echo "step: $got"
    actual=$(field "$got" actual_mib)
    if [ -n "$actual" ] && [ "$actual" -lt 160 ] && [ "$(field "$got" deflated_pages)" -gt 0 ]; then test_pass "$t.oom.deflated"; else
        test_fail "$t.oom.deflated" "$got"; fi
else
    test_fail "$t.oom.survived" "no 'balloon: survived'; console tail: $(tail -c 300 "$WORK/oom.console")"
fi
vm_end oom
