# Free page reporting (see swiftlet-balloon.sh).
. "$INTEGRATION/lib.sh"
t=swiftlet-balloon
INITRD=$GUEST/initramfs.cpio

# --- free page reporting --------------------------------------------------------------------------------------------------
fpr_wait=${BALLOON_FPR_SECONDS:-15}
balloon_boot free 512 free-page-reporting=on "swiftlet.test=balloon-free swiftlet.balloon.alloc=200 swiftlet.balloon.after=$((fpr_wait + 3))"
if balloon_console free "balloon: allocated "; then
    sleep 1
    rss_alloc=$(ram_rss_kib 512)
    echo "step: Rss with 200 MiB allocated: ${rss_alloc:-?} KiB; $(balloon_ctl get)"
    balloon_console free "balloon: freed " 30
    i=0 rss=$rss_alloc
    while [ $i -lt $((fpr_wait * 5)) ]; do
        rss=$(ram_rss_kib 512)
        [ $((${rss_alloc:-0} - ${rss:-0})) -ge $((150 * 1024)) ] && break
        [ $((i % 10)) -ne 0 ] || echo "step: after free: Rss ${rss:-?} KiB"
        sleep 0.2
        i=$((i + 1))
    done
    echo "step: Rss ${rss:-?} KiB $((i / 5)).$((i % 5 * 2)) s after the guest freed 200 MiB; $(balloon_ctl get)"
    check_ge "$t.free.rss-returned" $((${rss_alloc:-0} - ${rss:-0})) $((150 * 1024)) "Rss ${rss_alloc:-?} -> ${rss:-?} KiB within ${fpr_wait}s"
else
    test_fail "$t.free.allocated" "the guest never printed 'balloon: allocated'"
fi
balloon_end free

