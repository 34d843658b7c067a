# Snapshot benchmark, run where guests boot (the lab's L1 or a KVM host). The same guest (the tiny initramfs with
# its agent on vsock port 1024, 256 MiB, 1 vCPU) booted, its agent answering, then saved and restored:
#   swiftlet   run --vsock --agent --control-socket; `swiftlet snapshot` (state + sparse memory file), then
#              `swiftlet restore` (memory mapped MAP_PRIVATE from the file)
#   qemu       microvm with vhost-vsock-device; HMP `migrate "exec:cat > FILE"` of the running VM, then the same
#              command line with `-incoming "exec:cat FILE"` (the migration stream read back whole; the VM starts when
#              it is in)
# Per round, alternating the order:
#   snapshot_restore_to_exec_ms   process start of the restore to the first `exec true` through the agent returning
#   sandbox_cold_ms               a cold sandbox in the same round: `swiftlet exec -- true` (boot, exec, tear down),
#                                 against QEMU booting the same kernel and initramfs to init and powering off
#   snapshot_restore_over_cold    the two above divided, each VMM against its own cold start (the issue's 0.1x target)
#   snapshot_create_ms            swiftlet: pause to both files written (the control socket's ms=); qemu: migrate
#                                 to `info migrate` completed
#   snapshot_file_mib             what the snapshot takes on disk (allocated blocks, state file included)
#   snapshot_create_diff_ms       swiftlet only (QEMU has no diff snapshot of its own): after the full snapshot, the
#                                 guest resumed and one `exec true` later, a diff snapshot (run --track-dirty-pages)
#   snapshot_file_diff_kib        what that diff takes on disk (its state file included)
#   restore_to_first_run_ms       restore process start to vCPU 0's first KVM_RUN (swiftlet only: --trace-startup)
#   clone_private_mib             private memory (smaps_rollup Private_*) of one restored VM after its exec
. "$INTEGRATION/lib.sh"
runs=${RUNS:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-bench-snapshot.XXXXXX") || exit 1
trap 'kill $vmpid 2>/dev/null; rm -rf "$work"' EXIT
status=0
vmpid=
# Milliseconds: the lab's monotime, or date's nanoseconds on a host.
now_ms() { if command -v monotime >/dev/null 2>&1; then monotime; else echo $(($(date +%s%N) / 1000000)); fi; }
private_kib() { awk '/^Private_(Clean|Dirty):/ { s += $2 } END { print s + 0 }' "/proc/$1/smaps_rollup"; }
allocated_kib() { _k=0; for _f in "$@"; do _k=$((_k + $(stat -c %b "$_f") / 2)); done; echo $_k; }
sample() { echo "BENCH-SAMPLE metric=$1 vmm=$2 value=$3 unit=$4"; }
QEMU_MACHINE="-M microvm,acpi=off -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -display none -no-reboot"

# agent_ready ADDRESS PID: waits (at most 60 s) until `exec true` through the agent at ADDRESS returns.
agent_ready() {
    _i=0
    until "$VSOCKPEER" connect "$1" exec -- true >/dev/null 2>&1; do
        _i=$((_i + 1))
        if [ $_i -ge 600 ] || ! kill -0 "$2" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
}

take() { # VMM: boots the guest, waits for its agent, saves it; the files are $work/$1.*
    rm -f "$work/$1".*
    case $1 in
        swiftlet)
            "$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs.cpio" --memory 256M --cpus 1 \
                --console "$work/swiftlet.console" --cmdline "$SWIFTLET_CMDLINE_BASE" --vsock "socket=$work/boot.sock" \
                --agent --control-socket "$work/ctl" --track-dirty-pages 2>"$work/swiftlet.err" &
            vmpid=$!
            agent_ready "hybrid:$work/boot.sock:1024" "$vmpid" || { echo "snapshot bench: swiftlet: no agent: $(tail -c 300 "$work/swiftlet.err")"; return 1; }
            _answer=$("$SWIFTLET" snapshot "$work/ctl" --state "$work/swiftlet.snap" --memory "$work/swiftlet.mem" 2>&1) || {
                echo "snapshot bench: swiftlet snapshot: $_answer"; return 1; }
            sample snapshot_create_ms swiftlet "$(echo "$_answer" | sed -n 's/.* ms=\([0-9.]*\).*/\1/p')" ms
            sample snapshot_file_mib swiftlet "$(($(allocated_kib "$work/swiftlet.snap" "$work/swiftlet.mem") / 1024))" MiB
            # A diff on top of it: what one exec in the guest wrote since.
            "$SWIFTLET" control "$work/ctl" resume >/dev/null &&
                "$VSOCKPEER" connect "hybrid:$work/boot.sock:1024" exec -- true >/dev/null 2>&1 &&
                _answer=$("$SWIFTLET" snapshot "$work/ctl" --diff --state "$work/swiftlet-diff.snap" --memory "$work/swiftlet-diff.mem" 2>&1) || {
                    echo "snapshot bench: swiftlet diff snapshot: $_answer"; return 1; }
            sample snapshot_create_diff_ms swiftlet "$(echo "$_answer" | sed -n 's/.* ms=\([0-9.]*\).*/\1/p')" ms
            sample snapshot_file_diff_kib swiftlet "$(allocated_kib "$work/swiftlet-diff.snap" "$work/swiftlet-diff.mem")" KiB
            rm -f "$work/swiftlet-diff.snap" "$work/swiftlet-diff.mem"
            ;;
        qemu)
            rm -f "$work/mon.in" "$work/mon.out"
            mkfifo "$work/mon.in" "$work/mon.out"
            cat "$work/mon.out" >"$work/mon.log" &
            # shellcheck disable=SC2086  # $QEMU_MACHINE is a list of options
            "$QEMU" $QEMU_MACHINE -serial "file:$work/qemu.console" -L "$QEMU_FIRMWARE" -device vhost-vsock-device,guest-cid=3 \
                -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs.cpio" -append "$QEMU_CMDLINE_BASE swiftlet.agent=1024" \
                -chardev "pipe,id=mon,path=$work/mon" -mon chardev=mon,mode=readline 2>"$work/qemu.err" &
            vmpid=$!
            exec 3>"$work/mon.in"
            agent_ready vsock:3:1024 "$vmpid" || { echo "snapshot bench: qemu: no agent: $(tail -c 300 "$work/qemu.err")"; exec 3>&-; return 1; }
            # Migrated running, as a clone source is: the stream records the VM as running, so the restored QEMU
            # starts by itself once the stream is in (a stream of a stopped VM would restore it stopped, waiting for
            # `cont`). QEMU stops the VM for the last pass; the guest is idle, so one pass or two.
            _t0=$(now_ms)
            echo "migrate \"exec:cat > $work/qemu.mig\"" >&3
            _i=0
            while :; do
                echo "info migrate" >&3
                sleep 0.05
                grep -q "Migration status: completed" "$work/mon.log" && break
                _i=$((_i + 1))
                if [ $_i -ge 1200 ] || grep -q "Migration status: failed" "$work/mon.log"; then
                    echo "snapshot bench: qemu migrate: $(tail -c 300 "$work/mon.log")"; exec 3>&-; return 1
                fi
            done
            sample snapshot_create_ms qemu "$(($(now_ms) - _t0))" ms
            sample snapshot_file_mib qemu "$(($(allocated_kib "$work/qemu.mig") / 1024))" MiB
            echo "quit" >&3
            exec 3>&-
            ;;
    esac
    kill "$vmpid" 2>/dev/null
    wait "$vmpid" 2>/dev/null
    vmpid=
}

restore() { # VMM: the restore, timed from its process start to the agent's first answer (vmmbench's marker)
    case $1 in
        swiftlet) _vmm="\"$SWIFTLET\" restore --state $work/swiftlet.snap --memory $work/swiftlet.mem --console none --vsock-socket $work/r.sock --trace-startup"
                  _agent=hybrid:$work/r.sock:1024 ;;
        qemu) _vmm="\"$QEMU\" $QEMU_MACHINE -serial null -L \"$QEMU_FIRMWARE\" -device vhost-vsock-device,guest-cid=3 -kernel \"$GUEST/bzImage\" -initrd \"$GUEST/initramfs.cpio\" -append \"$QEMU_CMDLINE_BASE swiftlet.agent=1024\" -incoming \"exec:cat $work/qemu.mig\""
              _agent=vsock:3:1024 ;;
    esac
    # The shell starts the VMM, waits for the agent, reports, records the VMM's private memory, and stops it.
    cat >"$work/restore.sh" <<EOF
$_vmm 2>"$work/restore.err" &
vm=\$!
until "$VSOCKPEER" connect "$_agent" exec -- true >/dev/null 2>&1; do kill -0 \$vm 2>/dev/null || exit 1; sleep 0.01; done
echo SNAP-EXEC-OK
awk '/^Private_(Clean|Dirty):/ { s += \$2 } END { print s + 0 }' /proc/\$vm/smaps_rollup >"$work/private"
kill \$vm; wait \$vm
EOF
    _line=$("$VMMBENCH" --marker SNAP-EXEC-OK --timeout 60 -- sh "$work/restore.sh" 2>&1 | grep '^vmmbench:')
    _ms=$(echo "$_line" | sed -n 's/.*marker_ms=\([0-9]*\).*/\1/p')
    if [ -n "$_ms" ] && [ "$_ms" != -1 ]; then
        sample snapshot_restore_to_exec_ms "$1" "$_ms" ms
        eval "restore_$1=$_ms"
        sample clone_private_mib "$1" "$(($(cat "$work/private") / 1024))" MiB
    else
        echo "snapshot bench: $1 restore: $_line $(tail -c 300 "$work/restore.err")"; status=1
    fi
    if [ "$1" = swiftlet ]; then
        _first=$(sed -n 's/.*after_main_ns=\([0-9]*\).*/\1/p' "$work/restore.err")
        [ -n "$_first" ] && sample restore_to_first_run_ms swiftlet "$((_first / 1000000))" ms
    fi
}

cold() { # VMM, as bench/vsock.sh's sandbox_cold_ms
    case $1 in
        swiftlet) _line=$("$VMMBENCH" --marker NEVER-PRINTED --guest-mib 256 --timeout 60 -- "$SWIFTLET" exec \
                      --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs.cpio" --memory 256M -- true 2>&1 | grep '^vmmbench:') ;;
        # shellcheck disable=SC2086
        qemu) _line=$("$VMMBENCH" --guest-mib 256 --timeout 60 -- "$QEMU" $QEMU_MACHINE -serial stdio -L "$QEMU_FIRMWARE" \
                  -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs.cpio" \
                  -append "console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=ready" 2>&1 | grep '^vmmbench:') ;;
    esac
    _ms=$(echo "$_line" | sed -n 's/.*exit_ms=\([0-9]*\).*status=0.*/\1/p')
    if [ -n "$_ms" ]; then
        sample sandbox_cold_ms "$1" "$_ms" ms
        eval "cold_$1=$_ms"
    else
        echo "snapshot bench: $1 cold: $_line"; status=1
    fi
}

round=1
while [ $round -le "$runs" ]; do
    if [ $((round % 2)) = 1 ]; then order="swiftlet qemu"; else order="qemu swiftlet"; fi
    for vmm in $order; do
        echo "step: snapshot bench round $round/$runs: $vmm"
        eval "restore_$vmm= cold_$vmm="
        if take "$vmm"; then restore "$vmm"; else status=1; fi
        cold "$vmm"
        eval "r=\$restore_$vmm c=\$cold_$vmm"
        # A ratio per round, in thousandths (the harness's samples are numbers; 100 is the 0.1x target).
        [ -n "$r" ] && [ -n "$c" ] && [ "$c" -gt 0 ] && sample snapshot_restore_over_cold "$vmm" "$((r * 1000 / c))" permille
    done
    round=$((round + 1))
done
exit $status
