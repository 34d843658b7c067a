# Deflate on OOM (see swiftlet-balloon.sh).
. "$INTEGRATION/lib.sh"
t=swiftlet-balloon
INITRD=$GUEST/initramfs.cpio

# --- deflate on OOM -------------------------------------------------------------------------------------------------------
balloon_boot oom 256 size=160,deflate-on-oom=on "swiftlet.test=balloon-oom swiftlet.balloon.alloc=150 swiftlet.balloon.free_below=100"
if balloon_console oom "balloon: survived " 180; then
    got=$(balloon_ctl get)
    echo "step: $got"
    actual=$(field "$got" actual_mib)
    if [ -n "$actual" ] && [ "$actual" -lt 160 ] && [ "$(field "$got" deflated_pages)" -gt 0 ]; then test_pass "$t.oom.deflated"; else
        test_fail "$t.oom.deflated" "$got"; fi
else
    test_fail "$t.oom.survived" "no 'balloon: survived'; console tail: $(tail -c 300 "$WORK/oom.console")"
fi
balloon_end oom
