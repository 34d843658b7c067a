# test-timeout: 400
# Seccomp filters (docs/SECURITY.md, "Seccomp"): every thread of a VMM that runs every device is filtered, and each
# thread class traps a forbidden call with a message that names the thread and the call. The forbidden calls come
# from the test build (swiftlet-trigger: `make trigger`, -D SWIFTLET_SECCOMP_TRIGGER), whose threads call execve
# when SWIFTLET_SECCOMP_TRIGGER names their class; a normal build has no such path.
. "$INTEGRATION/lib.sh"
t=swiftlet-seccomp
S=$WORK/v.sock
CTL=$WORK/balloon.ctl
TAP=seccomp0
check() { if [ "$2" = "$3" ]; then test_pass "$t.$1"; else test_fail "$t.$1" "got '$2', want '$3'; $4"; fi; }

tap_del() { ip link set "$TAP" down 2>/dev/null; tunctl -d "$TAP" >/dev/null 2>&1 || ip tuntap del dev "$TAP" mode tap 2>/dev/null; }
if command -v tunctl >/dev/null 2>&1; then tunctl -t "$TAP" >/dev/null; else ip tuntap add dev "$TAP" mode tap; fi &&
    ip addr add 10.0.2.1/24 dev "$TAP" && ip link set "$TAP" up || { test_fail "$t.tap" "cannot create the TAP $TAP"; exit 0; }
trap tap_del EXIT
dd if=/dev/zero of="$WORK/disk.img" bs=1M count=16 2>/dev/null

echo "step: a VM with every device (blk, net, vsock with the agent, balloon with its socket, stdio console)"
mkfifo "$WORK/stdin"
sleep 600 >"$WORK/stdin" &
holder=$!
"$SWIFTLET" run --seccomp on --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs-full.cpio" --memory 256M \
    --cmdline "$SWIFTLET_CMDLINE_BASE" --console stdio --disk "$WORK/disk.img" --net "tap=$TAP" --vsock "socket=$S" \
    --agent --balloon on --balloon-socket "$CTL" <"$WORK/stdin" >"$WORK/console" 2>"$WORK/vm.err" &
vm=$!
i=0
while [ ! -S "$S" ] && kill -0 "$vm" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
out=$("$SWIFTLET" exec --attach "$S" -- echo up 2>"$WORK/exec.err")
check agent "$out" up "$(tail -c 300 "$WORK/exec.err") vmm: $(tail -c 300 "$WORK/vm.err")"
answer=$("$SWIFTLET" balloon "$CTL" get 2>&1 | cut -d' ' -f1)
check control-socket "$answer" ok
# The disk (written, flushed, read back past the page cache) and the NIC (pings to the TAP's address).
out=$("$SWIFTLET" exec --attach "$S" -- sh -c 'echo data | dd of=/dev/vda conv=fsync 2>/dev/null;
    echo 3 >/proc/sys/vm/drop_caches; head -c 4 /dev/vda; echo;
    ip addr add 10.0.2.2/24 dev eth0; ip link set eth0 up; ping -c 2 -W 2 10.0.2.1 | grep -c "bytes from"' 2>"$WORK/exec.err")
check devices "$(echo $out)" "data 2" "$(tail -c 300 "$WORK/exec.err")"
threads=0 unfiltered=
for task in /proc/$vm/task/*; do
    name=$(cat "$task/comm" 2>/dev/null) || continue
    threads=$((threads + 1))
    mode=$(sed -n 's/^Seccomp:[[:space:]]*//p' "$task/status" 2>/dev/null)
    echo "step: thread $name (${task##*/}): Seccomp $mode"
    [ "$mode" = 2 ] || unfiltered="$unfiltered $name:$mode"
done
[ $threads -ge 5 ] || unfiltered="only $threads threads, the VMM is not running"
check every-thread-filtered "${unfiltered:-none}" none "$threads threads"
names=$(cat /proc/$vm/task/*/comm 2>/dev/null | sort | tr '\n' ' ')
for want in vcpu0 devices console-in control signals; do
    case " $names" in *" $want "*) test_pass "$t.thread-$want" ;; *) test_fail "$t.thread-$want" "no thread $want among: $names" ;; esac
done
kill -TERM "$vm"
wait "$vm"; check vmm-exit $? 0 "$(tail -c 300 "$WORK/vm.err")"
kill "$holder" 2>/dev/null
for left in "$S" "$CTL"; do [ -e "$left" ] && test_fail "$t.removed-$(basename "$left")" "$left is still there" || test_pass "$t.removed-$(basename "$left")"; done

if [ ! -x "${SWIFTLET_TRIGGER:-}" ]; then
    test_skip "$t.trigger" "no test build at ${SWIFTLET_TRIGGER:-(SWIFTLET_TRIGGER unset)}: make trigger"
    exit 0
fi

# trap_case CLASS THREAD-PATTERN [SWIFTLET OPTIONS...]: the trigger in CLASS ends the VMM with status 159 and the
# report naming a thread that matches THREAD-PATTERN and the call: execve, or with CALL=mprotect-exec|mmap-exec an
# executable mapping (WANT: the call as the report names it; NAME: the test's name, default CLASS).
trap_case() {
    _class=$1 _thread=$2 _name=${NAME:-$1} _want=${WANT:-execve (59)}
    shift 2
    echo "step: a forbidden call in the $_class thread class (${CALL:-execve})"
    rm -f "$S" "$CTL"
    SWIFTLET_SECCOMP_TRIGGER=$_class SWIFTLET_SECCOMP_TRIGGER_CALL=${CALL:-execve} timeout 60 "$SWIFTLET_TRIGGER" run \
        --seccomp on --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs.cpio" --memory 128M \
        --cmdline "$SWIFTLET_CMDLINE_BASE swiftlet.test=hello" "$@" \
        </dev/null >"$WORK/trap-$_name.out" 2>"$WORK/trap-$_name.err"
    check "trap-$_name.exit" $? 159 "$(tail -c 300 "$WORK/trap-$_name.err")"
    _line=$(grep 'seccomp:' "$WORK/trap-$_name.err" | head -n 1)
    if printf '%s\n' "$_line" | grep -Eq "^swiftlet: seccomp: thread $_thread made a forbidden system call: $(printf '%s' "$_want" | sed 's/[()]/\\&/g')\$"; then
        test_pass "$t.trap-$_name.message"
    else
        test_fail "$t.trap-$_name.message" "got '$_line', want 'swiftlet: seccomp: thread $_thread made a forbidden system call: $_want'"
    fi
}
trap_case vcpu vcpu0 --console "$WORK/trap.console"
trap_case device devices --console "$WORK/trap.console" --vsock "socket=$S"
trap_case console console-in --console stdio
trap_case control control --console "$WORK/trap.console" --balloon on --balloon-socket "$CTL"
trap_case process '[^ ]+' --console "$WORK/trap.console"
# The filters look at mmap's and mprotect's protection: memory may not become executable.
CALL=mprotect-exec WANT='mprotect (10)' NAME=vcpu-mprotect-exec
trap_case vcpu vcpu0 --console "$WORK/trap.console"
CALL=mmap-exec WANT='mmap (9)' NAME=device-mmap-exec
trap_case device devices --console "$WORK/trap.console" --vsock "socket=$S"
unset CALL WANT NAME

echo "step: --seccomp log: the same call in a vCPU thread goes through, and the kernel logs it"
before=$(dmesg 2>/dev/null | wc -l); logged=$?
SWIFTLET_SECCOMP_TRIGGER=vcpu timeout 120 "$SWIFTLET_TRIGGER" run --seccomp log --kernel "$GUEST/bzImage" \
    --initrd "$GUEST/initramfs.cpio" --memory 128M --cmdline "$SWIFTLET_CMDLINE_BASE swiftlet.test=hello" \
    --console "$WORK/log.console" 2>"$WORK/log.err"
check log.exit $? 0 "$(tail -c 300 "$WORK/log.err")"
guest_results "$t.log" "$WORK/log.console"
if [ $logged = 0 ]; then
    # The records since this run started (the log is not cleared: other tests' records stay for whoever reads them).
    record=$(dmesg | tail -n +$((before + 1)) | grep 'type=1326' | grep 'comm="vcpu0"' | grep -c ' syscall=59 ')
    check log.kernel-record "$([ "$record" -ge 1 ] && echo yes || echo no)" yes "$(dmesg | grep type=1326 | tail -n 3)"
else
    test_skip "$t.log.kernel-record" "cannot read the kernel log here (dmesg)"
fi
exit 0
