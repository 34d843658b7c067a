# Every bad input gives one clear message on stderr and a non-zero exit status.
. "$INTEGRATION/lib.sh"
err=$WORK/stderr
initrd=$GUEST/initramfs.cpio

"$SWIFTLET" run --kernel "$WORK/missing" --console none 2>"$err"
expect_error swiftlet-errors.missing-kernel $? "$err" "cannot open kernel .*missing.*No such file"

head -c 65536 /dev/urandom >"$WORK/garbage"
"$SWIFTLET" run --kernel "$WORK/garbage" --console none 2>"$err"
expect_error swiftlet-errors.corrupt-kernel $? "$err" "neither an ELF vmlinux nor a bzImage"

head -c 4096 "$GUEST/bzImage" >"$WORK/truncated"
"$SWIFTLET" run --kernel "$WORK/truncated" --console none 2>"$err"
expect_error swiftlet-errors.truncated-kernel $? "$err" "truncated"

"$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$WORK/missing" --console none 2>"$err"
expect_error swiftlet-errors.missing-initrd $? "$err" "cannot open initrd"

# A kernel given as the initrd: refused before the guest boots, saying what an initrd must be.
"$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$GUEST/bzImage" --console none 2>"$err"
expect_error swiftlet-errors.initrd-not-initramfs $? "$err" "initrd $GUEST/bzImage is not an initramfs: it starts with "

"$SWIFTLET" run --kernel "$GUEST/bzImage" --memory 64T --console none 2>"$err"
expect_error swiftlet-errors.too-much-memory $? "$err" "more than this host has"

"$SWIFTLET" run --kernel "$GUEST/bzImage" --memory 16M --console none 2>"$err"
expect_error swiftlet-errors.too-little-memory $? "$err" "too small"

"$SWIFTLET" run --kernel "$GUEST/bzImage" --cpus 0 --console none 2>"$err"
expect_error swiftlet-errors.zero-cpus $? "$err" "out of range"

"$SWIFTLET" run --kernel "$GUEST/bzImage" --kvm "$WORK/no-kvm" --console none 2>"$err"
expect_error swiftlet-errors.no-kvm $? "$err" "does not exist.*kvm"

if [ "$(id -u)" = 0 ] && [ -x "${RUNAS:-}" ] && [ "$(stat -c %a /dev/kvm)" != 666 ]; then
    "$RUNAS" 65534 65534 "$SWIFTLET" run --kernel "$GUEST/bzImage" --console none 2>"$err"
    expect_error swiftlet-errors.kvm-permission $? "$err" "permission denied.*group kvm"
else
    test_skip swiftlet-errors.kvm-permission "needs root (to drop to an unprivileged user), runas, and a /dev/kvm that is not world-writable"
fi

"$SWIFTLET" run --kernel "$GUEST/bzImage" --balloon size=512 --memory 256M --console none 2>"$err"
expect_error swiftlet-errors.balloon-too-big $? "$err" "balloon size 512 MiB is more than the guest's 256 MiB"

"$SWIFTLET" run --kernel "$GUEST/bzImage" --balloon-socket "$WORK/ctl" --console none 2>"$err"
expect_error swiftlet-errors.balloon-socket-alone $? "$err" "balloon-socket needs --balloon"

: >"$WORK/taken"
"$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$initrd" --balloon on --balloon-socket "$WORK/taken" --console none 2>"$err"
expect_error swiftlet-errors.balloon-socket-exists $? "$err" "the path exists"
if [ -f "$WORK/taken" ]; then test_pass swiftlet-errors.balloon-socket-kept; else test_fail swiftlet-errors.balloon-socket-kept "the existing file was removed"; fi

"$SWIFTLET" balloon "$WORK/no-such-socket" get 2>"$err"
expect_error swiftlet-errors.balloon-no-vm $? "$err" "cannot connect to .*no-such-socket"
