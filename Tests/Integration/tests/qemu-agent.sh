# The guest agent over a real virtio-vsock device: QEMU's microvm with vhost-vsock-device (guest CID 3) boots the
# bundled guest with swiftlet.agent=1; from this side, agentexec (Tests/Integration/tools) runs commands through it.
# This checks the guest half (init starts the agent, AF_VSOCK bind/listen/accept in the guest kernel, the protocol
# over vsock) against a known-good device, so that Swiftlet's vsock device has a peer to be compared with.
. "$INTEGRATION/lib.sh"
if ! [ -x "$(command -v "$QEMU")" ]; then test_skip qemu-agent "no $QEMU here"; exit 0; fi
if ! [ -c /dev/vhost-vsock ]; then test_skip qemu-agent "no /dev/vhost-vsock here (modprobe vhost_vsock)"; exit 0; fi
: "${AGENTEXEC:?set AGENTEXEC to Tests/Integration/tools/agentexec}"
CID=${AGENT_TEST_CID:-3}
T=vsock:$CID:1024
log=$WORK/console

echo "step: qemu microvm boot with vhost-vsock-device guest-cid=$CID"
"$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config \
    -display none -serial "file:$log" -no-reboot -L "$QEMU_FIRMWARE" \
    -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs.cpio" \
    -append "$QEMU_CMDLINE_BASE swiftlet.agent=1" \
    -device "vhost-vsock-device,guest-cid=$CID" 2>"$log.err" &
qemu=$!
trap 'kill $qemu 2>/dev/null; wait $qemu 2>/dev/null' EXIT

# The agent's own line says it listens; up to 60 s (the lab's TCG L1 is slow to start QEMU).
i=0
while ! grep -q "^SWIFTLET-AGENT port=1024" "$log" 2>/dev/null; do
    if ! kill -0 $qemu 2>/dev/null || [ $i -ge 300 ]; then
        test_fail qemu-agent.listening "no 'SWIFTLET-AGENT port=1024' line: $(tail -c 300 "$log" "$log.err" 2>/dev/null)"
        exit 0
    fi
    i=$((i + 1))
    [ $((i % 15)) -ne 0 ] || echo "step: ... waiting for the agent ($((i / 5)) s)"
    sleep 0.2
done
test_pass qemu-agent.listening

echo "step: agentexec"
out=$("$AGENTEXEC" --wait 10 "$T" -- echo hello vsock 2>"$WORK/err")
rc=$?
[ "$rc" = 0 ] && [ "$out" = "hello vsock" ] && test_pass qemu-agent.echo ||
    test_fail qemu-agent.echo "exit $rc out '$out' err $(cat "$WORK/err")"

"$AGENTEXEC" "$T" -- sh -c 'exit 7' 2>"$WORK/err"
expect_status qemu-agent.exit-code $? 7 "$(cat "$WORK/err")"
"$AGENTEXEC" "$T" -- sh -c 'kill -9 $$' 2>"$WORK/err"
expect_status qemu-agent.signal $? 137 "$(cat "$WORK/err")"

out=$("$AGENTEXEC" "$T" -- swiftlet-no-such-command 2>&1)
rc=$?
case "$rc $out" in
    "125 agentexec: error errno=2: exec swiftlet-no-such-command"*) test_pass qemu-agent.enoent ;;
    *) test_fail qemu-agent.enoent "exit $rc: $out" ;;
esac

# 16 MiB of output, intact: the guest prints the sha256 of what it sent on stderr. It prints nothing here until it
# ends (a minute or more in a slow lab), so it runs under heartbeat, like every long step.
echo "step: 16 MiB of output"
big_output() {
    "$AGENTEXEC" "$T" -- sh -c 'exec 3>&1; head -c 16777216 /dev/urandom | tee /proc/self/fd/3 | sha256sum >&2' \
        >"$WORK/big" 2>"$WORK/big.sum"
}
heartbeat big_output
rc=$?
want=$(cut -d' ' -f1 "$WORK/big.sum")
got=$(sha256sum "$WORK/big" | cut -d' ' -f1)
size=$(wc -c <"$WORK/big")
[ "$rc" = 0 ] && [ "$size" -eq 16777216 ] && [ "$got" = "$want" ] && test_pass qemu-agent.stdout-16MiB ||
    test_fail qemu-agent.stdout-16MiB "exit $rc size $size sha256 $got want $want"

echo "step: 1 MiB of stdin"
head -c 1048576 /dev/urandom >"$WORK/in"
stdin_sum() { "$AGENTEXEC" --stdin "$T" -- sha256sum <"$WORK/in" >"$WORK/in.sum"; }
heartbeat stdin_sum
got=$(cut -d' ' -f1 "$WORK/in.sum")
want=$(sha256sum "$WORK/in" | cut -d' ' -f1)
[ -n "$want" ] && [ "$got" = "$want" ] && test_pass qemu-agent.stdin || test_fail qemu-agent.stdin "got $got want $want"

echo "step: 8 at once"
# 8 at once: each waits until all 8 have started (a file per command in the guest's /tmp), so they must overlap.
n=0 pids=
while [ $n -lt 8 ]; do
    "$AGENTEXEC" "$T" -- sh -c "touch /tmp/started.$n; i=0; while [ \$(ls /tmp/started.* | wc -l) -lt 8 ] && [ \$i -lt 600 ]; do sleep 0.1; i=\$((i+1)); done; [ \$i -lt 600 ] && echo $n" \
        >"$WORK/c.$n" 2>&1 &
    pids="$pids $!"
    n=$((n + 1))
done
# (They are this shell's children, so the waiting is done here, with a heartbeat of its own.)
n=0
while :; do
    alive=0
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 0.2
    n=$((n + 1))
    [ $((n % 15)) -ne 0 ] || echo "step: ... 8 at once: $((n / 5)) s"
done
wait_failed=0
for pid in $pids; do wait "$pid" || wait_failed=1; done
bad=
n=0
while [ $n -lt 8 ]; do [ "$(cat "$WORK/c.$n")" = "$n" ] || bad="$bad $n:$(cat "$WORK/c.$n" | head -c 80)"; n=$((n + 1)); done
[ -z "$bad" ] && [ "$wait_failed" = 0 ] && test_pass qemu-agent.concurrent-8 || test_fail qemu-agent.concurrent-8 "wrong:$bad"

echo "step: 20 in a row"
i=0 bad=0
while [ $i -lt 20 ]; do
    [ "$("$AGENTEXEC" "$T" -- echo $i 2>&1)" = "$i" ] || bad=$((bad + 1))
    i=$((i + 1))
done
[ "$bad" = 0 ] && test_pass qemu-agent.sequential-20 || test_fail qemu-agent.sequential-20 "$bad of 20 wrong"

# Nothing went wrong on the agent's side (it reports failures on the console).
if grep -q "swiftlet-agent: \|SWIFTLET-AGENT-E" "$log"; then
    test_fail qemu-agent.console-clean "$(grep "swiftlet-agent: \|SWIFTLET-AGENT-E" "$log")"
else
    test_pass qemu-agent.console-clean
fi
