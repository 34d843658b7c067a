# Helpers for integration tests. They run on a KVM host that boots guests: the nested lab's L1 (busybox ash) or a
# real host (bash/dash), so they are POSIX sh. Source it: . "$INTEGRATION/lib.sh"
#
# Environment (set by run.sh):
#   SWIFTLET   the swiftlet binary          GUEST   directory with bzImage, vmlinux, initramfs.cpio (busybox and
#              our init) and initramfs-full.cpio (that plus mkfs.ext4, e2fsck and fio, for device tests)
#   QEMU       qemu-system-x86_64           QEMU_FIRMWARE  directory for qemu -L (bios-microvm.bin)
#   WORK       a scratch directory for this test, removed afterwards
#   VMMBENCH   Tests/Integration/tools/vmmbench     RUNAS   Tests/Integration/tools/runas
#   TCPPEER    Tests/Integration/tools/tcppeer (the host's end of the network tests' bulk transfers, and the net
#              benchmark's echo peer for request/response latency)
#   VSOCKPEER  Tests/Integration/tools/vsockpeer (the host's end of vsock streams; also in initramfs-full.cpio)
#   AGENTEXEC  Tests/Integration/tools/agentexec (runs a command through the guest agent: vsock:CID:PORT)
#
# Output protocol, one line each, read by the harness on the machine that started the run:
#   TEST-RESULT NAME ok
#   TEST-RESULT NAME fail DETAIL...
#   TEST-SKIP NAME REASON...
#   BENCH-SAMPLE metric=NAME vmm=swiftlet|qemu value=NUMBER unit=UNIT

# RESULT_PREFIX goes before every name (tests/swiftlet-split.sh runs the device suites again under split.).
test_pass() { echo "TEST-RESULT ${RESULT_PREFIX:-}$1 ok"; }
# (Their variables have names of their own: guest_results calls them in a loop over its own $_name.)
test_fail() {
    _tf_name=$1; shift
    echo "TEST-RESULT ${RESULT_PREFIX:-}$_tf_name fail $(printf '%s' "$*" | tr -s '\n\t\r ' '    ' | cut -c1-300)"
}
test_skip() {
    _ts_name=$1; shift
    echo "TEST-SKIP ${RESULT_PREFIX:-}$_ts_name $*"
}

# Guest command lines. `quiet` because every console byte is a VM exit (slow under the lab's TCG).
# Swiftlet resets through the i8042 (reboot=k); QEMU's microvm has none, so it triple-faults (reboot=t) and
# -no-reboot turns that into an exit.
# swiftlet.expect.ring: the guest checks that every virtio device negotiated the packed ring (Swiftlet offers it by
# default, and Linux takes it); tests/swiftlet-split.sh turns it into split along with packed=off on every device.
SWIFTLET_CMDLINE_BASE="console=ttyS0 reboot=k panic=-1 quiet swiftlet.expect.ring=packed"
QEMU_CMDLINE_BASE="console=ttyS0 reboot=t panic=-1 quiet"

# swiftlet_boot LOG [swiftlet run options...]: boots with the console in LOG; stderr goes to LOG.err.
# Returns swiftlet's exit status.
swiftlet_boot() {
    _log=$1; shift
    echo "step: swiftlet run $*" | cut -c1-200
    "$SWIFTLET" run --console "$_log" "$@" 2>"$_log.err"
    _rc=$?
    echo "step: swiftlet exited $_rc"
    return $_rc
}

# qemu_boot LOG MEMORY_MIB CPUS KERNEL CMDLINE [QEMU options...]: boots QEMU's microvm with the bundled initramfs
# ($INITRD when set: the device tests use $GUEST/initramfs-full.cpio, which carries mkfs.ext4 and fio).
qemu_boot() {
    _log=$1 _mem=$2 _cpus=$3 _kernel=$4 _cmdline=$5
    shift 5
    echo "step: qemu microvm boot"
    "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m "$_mem" -smp "$_cpus" -nodefaults -no-user-config \
        -display none -serial "file:$_log" -no-reboot -L "$QEMU_FIRMWARE" \
        -kernel "$_kernel" -initrd "${INITRD:-$GUEST/initramfs.cpio}" -append "$_cmdline" "$@" 2>"$_log.err"
    _rc=$?
    echo "step: qemu exited $_rc"
    return $_rc
}

# heartbeat CMD...: runs CMD (a command or a shell function) in the background and prints a "step:" line every 3 s
# until it ends (with the last line of $HEARTBEAT_LOG, if set: a guest console file), so that a guest run that is
# quiet on this console for long (the console goes to a file) does not look hung to the lab's watchdog.
# Returns CMD's exit status.
heartbeat() {
    "$@" &
    _hb_pid=$!
    _hb_t=0
    while kill -0 "$_hb_pid" 2>/dev/null; do
        sleep 0.2
        _hb_t=$((_hb_t + 1))
        [ $((_hb_t % 15)) -ne 0 ] ||
            echo "step: ... $((_hb_t / 5))s${HEARTBEAT_LOG:+: $(tail -n 1 "$HEARTBEAT_LOG" 2>/dev/null | tr -d '\r' | cut -c1-100)}"
    done
    wait "$_hb_pid"
}

# guest_results NAME LOG: turns the guest's SWIFTLET-RESULT lines in LOG into TEST-RESULT lines NAME.CHECK, and
# checks that the guest reached its ready marker and finished its scenario with status 0.
# The serial console ends lines with CR LF: the CRs go first.
guest_results() {
    _name=$1 _log=$2
    tr -d '\r' <"$_log" >"$_log.lines" && mv "$_log.lines" "$_log"
    if grep -q '^SWIFTLET-READY' "$_log"; then test_pass "$_name.ready"; else
        test_fail "$_name.ready" "no SWIFTLET-READY; console tail: $(tail -c 400 "$_log" 2>/dev/null) $(tail -c 300 "$_log.err" 2>/dev/null)"
        return 1
    fi
    grep '^SWIFTLET-RESULT ' "$_log" | while read -r _tag _test _check _verdict _detail; do
        _check=${_check#check=}
        if [ "$_verdict" = ok ]; then test_pass "$_name.$_check"; else test_fail "$_name.$_check" "$_detail"; fi
    done
    _done=$(grep '^SWIFTLET-DONE ' "$_log" | tail -n 1)
    case $_done in
        *status=0) test_pass "$_name.done" ;;
        "") test_fail "$_name.done" "the guest never finished its scenario; console tail: $(tail -c 300 "$_log")" ;;
        *) test_fail "$_name.done" "$_done" ;;
    esac
}

# guest_value LOG NAME: a SWIFTLET-VALUE the guest reported.
guest_value() {
    sed -n "s/^SWIFTLET-VALUE .* name=$2 value=//p" "$1" | tail -n 1
}

# expect_status NAME GOT WANT DETAIL
expect_status() {
    if [ "$2" = "$3" ]; then test_pass "$1"; else test_fail "$1" "exit status $2, want $3; $4"; fi
}

# expect_error NAME STATUS ERRFILE PATTERN: a failed run (non-zero status) whose stderr has PATTERN (grep -E).
expect_error() {
    if [ "$2" = 0 ]; then test_fail "$1" "exit status 0, want an error"; return; fi
    if grep -Eq "$4" "$3"; then test_pass "$1"; else test_fail "$1" "stderr lacks /$4/: $(head -c 300 "$3")"; fi
}

# --- Memory balloon (tests/swiftlet-balloon*.sh) ----------------------------------------------------------------------
# They set $t (the test name prefix) and INITRD; balloon_boot starts the VM with its control socket at $WORK/NAME.ctl.

# check_ge NAME GOT MIN DETAIL
check_ge() { if [ "${2:-0}" -ge "$3" ] 2>/dev/null; then test_pass "$1"; else test_fail "$1" "got ${2:-nothing}, want at least $3; $4"; fi; }

# field LINE NAME: the value of NAME=VALUE in LINE.
field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

# boot NAME MEMORY_MIB BALLOON_OPTIONS GUEST_PARAMETERS: starts the VM in the background with its control socket
# at $WORK/NAME.ctl; sets $vm_pid (the heartbeat around it) and $ctl.
balloon_boot() {
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
# balloon_ctl COMMAND...: one command to the control socket; prints the answer.
balloon_ctl() { "$SWIFTLET" balloon "$ctl" "$@" 2>&1; }
# wait_console NAME PATTERN [SECONDS]: up to SECONDS (default 120) for a console line with PATTERN while the VMM runs.
balloon_console() {
    _wc=0
    while [ $_wc -lt $((${3:-120} * 5)) ] && kill -0 "$vm_pid" 2>/dev/null; do
        grep -q "$2" "$WORK/$1.console" 2>/dev/null && return 0
        sleep 0.2
        _wc=$((_wc + 1))
    done
    grep -q "$2" "$WORK/$1.console" 2>/dev/null
}
# balloon_line NAME WORD: the guest's last "balloon: WORD ..." line.
balloon_line() { grep "balloon: $2 " "$WORK/$1.console" | tail -n 1 | tr -d '\r'; }
balloon_end() {
    wait "$vm_pid"
    expect_status "$t.$1.exit" $? 0 "stderr: $(tail -c 400 "$WORK/$1.console.err")"
    guest_results "$t.$1" "$WORK/$1.console"
    grep '^swiftlet: stats ' "$WORK/$1.console.err" 2>/dev/null | sed 's/^/step: /'
    if [ -e "$ctl" ]; then test_fail "$t.$1.socket-removed" "$ctl is still there"; else test_pass "$t.$1.socket-removed"; fi
}
# abs_diff A B
abs_diff() { if [ "$1" -ge "$2" ]; then echo $(($1 - $2)); else echo $(($2 - $1)); fi; }

