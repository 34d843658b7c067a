# virtio-balloon end to end: the guest's balloon-* scenarios (guest/scenarios) against Swiftlet's --balloon, driven
# through its control socket (swiftlet balloon SOCKET set|get|stats), with the VMM's resident memory read from
# /proc/PID/smaps: the Rss of the guest-RAM mapping (the mapping whose Size is the guest's memory).
#   inflate:  256 MiB guest, stats every second. The guest touches 180 MiB and frees it; the statistics the device
#             received must match the guest's /proc/meminfo; inflating by 128 MiB must drop the mapping's Rss by
#             at least 120 MiB and the guest's MemTotal by 120 MiB; deflating to 0 gives the guest its memory
#             back (it writes 180 MiB again, which did not fit while inflated).
# (tests/swiftlet-balloon-free.sh and swiftlet-balloon-oom.sh, separate so each has its own time limit:)
#   free:     512 MiB guest, free page reporting on, no inflation: the guest allocates 200 MiB, the Rss grows, it
#             frees them, and within BALLOON_FPR_SECONDS (default 15) at least 150 MiB of Rss must be gone.
#   oom:      256 MiB guest, a 160 MiB balloon at boot with deflate-on-oom: the guest writes 150 MiB to a tmpfs
#             and must survive with no OOM kill, the balloon's actual size below its target.
# The control socket must be gone after each exit.
. "$INTEGRATION/lib.sh"
t=swiftlet-balloon
INITRD=$GUEST/initramfs.cpio

# --- inflate, deflate, statistics ---------------------------------------------------------------------------------------
balloon_boot inflate 256 stats=1 "swiftlet.test=balloon-inflate swiftlet.balloon.touch=180"
if balloon_console inflate "balloon: touched "; then
    guest=$(balloon_line inflate touched)
    sleep 3 # one statistics interval and then some
    stats=$(balloon_ctl stats)
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
    answer=$(balloon_ctl set 128)
    case $answer in ok*) test_pass "$t.inflate.set" ;; *) test_fail "$t.inflate.set" "$answer" ;; esac
    i=0
    while [ $i -lt 600 ]; do
        got=$(balloon_ctl get)
        [ "$(field "$got" actual_mib)" = 128 ] && break
        [ $((i % 15)) -ne 0 ] || echo "step: inflating: $got"
        sleep 0.2
        i=$((i + 1))
    done
    echo "step: $got"
    if [ "$(field "$got" actual_mib)" = 128 ]; then test_pass "$t.inflate.actual"; else test_fail "$t.inflate.actual" "$got"; fi
    balloon_console inflate "balloon: inflated " 60
    rss1=$(ram_rss_kib 256)
    echo "step: guest RAM Rss after inflating: ${rss1:-?} KiB (AnonHugePages $(ram_thp_kib 256) KiB); guest: $(balloon_line inflate inflated)"
    check_ge "$t.inflate.rss-drop" $((${rss0:-0} - ${rss1:-0})) $((120 * 1024)) "Rss ${rss0:-?} -> ${rss1:-?} KiB"
    sleep 2
    echo "step: Rss 2 s later: $(ram_rss_kib 256) KiB"
    answer=$(balloon_ctl set 0)
    case $answer in ok*) test_pass "$t.inflate.deflate-set" ;; *) test_fail "$t.inflate.deflate-set" "$answer" ;; esac
    balloon_console inflate "balloon: deflated " 120
    echo "step: after deflating: $(balloon_ctl get)"
else
    test_fail "$t.inflate.touched" "the guest never printed 'balloon: touched'"
fi
balloon_end inflate
if grep -q 'device=balloon0 .*ignored_pages=0' "$WORK/inflate.console.err"; then test_pass "$t.inflate.no-ignored-pages"; else
    test_fail "$t.inflate.no-ignored-pages" "$(grep balloon0 "$WORK/inflate.console.err")"; fi

