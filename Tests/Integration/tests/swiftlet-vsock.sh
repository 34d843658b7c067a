# virtio-vsock, the guest agent and `swiftlet exec`, end to end: one VM runs with a hybrid vsock socket and its agent
# (`swiftlet run --vsock socket=S --agent`), and `swiftlet exec --attach S` runs commands in it: output, exit codes,
# signals, environment, 16 MiB of output, stdin, 100 in a row, 8 at once, a timeout; raw streams both ways
# (vsockpeer in the guest and here), a refused port; then the guest reboots under a running stream, which must end
# the host side instead of hanging it, and the VMM leaves no socket behind. Last, one-shot `swiftlet exec` VMs.
. "$INTEGRATION/lib.sh"
t=swiftlet-vsock
S=$WORK/v.sock

# check NAME GOT WANT (check_eq of blk's tests)
check() { if [ "$2" = "$3" ]; then test_pass "$t.$1"; else test_fail "$t.$1" "got '$2', want '$3'; $(tail -c 300 "$WORK/err" 2>/dev/null)"; fi; }
# x ARGS...: swiftlet exec --attach S ARGS, stderr to $WORK/err
x() { "$SWIFTLET" exec --attach "$S" "$@" 2>"$WORK/err"; }
# x_to FILE ARGS...: x with stdout to FILE (for heartbeat: long steps must print something every few seconds, or
# the lab's watchdog takes the quiet for a hang)
x_to() { _xo=$1; shift; x "$@" >"$_xo"; }
now_ms() { echo $(($(cut -d' ' -f1 /proc/uptime | tr -d .) * 10)); }

echo "step: streams without the agent (guest/scenarios/vsock-streams.sh)"
R=$WORK/raw.sock
"$VSOCKPEER" listen "unix:${R}_5000" recv >"$WORK/raw-g2h" 2>&1 &
peer=$!
"$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs-full.cpio" --memory 256M \
    --cmdline "$SWIFTLET_CMDLINE_BASE swiftlet.test=vsock-streams" --console "$WORK/raw.console" --vsock "socket=$R" \
    2>"$WORK/raw.console.err" &
rawvm=$!
i=0
while ! grep -q "vsock: listening" "$WORK/raw.console" 2>/dev/null && kill -0 "$rawvm" 2>/dev/null && [ $i -lt 300 ]; do
    sleep 0.2; i=$((i + 1))
done
i=0
while :; do
    "$VSOCKPEER" connect "hybrid:$R:6000" send 3M >"$WORK/raw-h2g" 2>"$WORK/raw-h2g.err" && break
    i=$((i + 1))
    [ $i -lt 50 ] && grep -q refused "$WORK/raw-h2g.err" || break
    sleep 0.2
done
wait "$rawvm"; check raw-vmm-exit $? 0
kill "$peer" 2>/dev/null; wait "$peer"
guest_results "$t.raw" "$WORK/raw.console"
check raw-g2h "$(guest_value "$WORK/raw.console" g2h)" "$(sed 's/ ns=.*//; s/^vsockpeer: //; s/ /,/g' "$WORK/raw-g2h")"
check raw-h2g "$(guest_value "$WORK/raw.console" h2g)" "$(sed 's/ ns=.*//; s/^vsockpeer: //; s/ /,/g' "$WORK/raw-h2g")"
[ -e "$R" ] && test_fail "$t.raw-no-socket-left" "$R is still there" || test_pass "$t.raw-no-socket-left"

echo "step: boot a VM with vsock and its agent"
"$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs-full.cpio" --memory 256M \
    --cmdline "$SWIFTLET_CMDLINE_BASE" --console "$WORK/console" --vsock "socket=$S" --agent 2>"$WORK/vm.err" &
vm=$!

# The socket appears once the VMM has built the machine; then the first exec waits for the agent (exec retries
# while the guest refuses, up to 30 s).
i=0
while [ ! -S "$S" ] && kill -0 "$vm" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
out=$(x -- echo hello); rc=$?
if [ "$rc" != 0 ]; then
    test_fail "$t.echo" "exit $rc: $(cat "$WORK/err") console: $(tail -c 400 "$WORK/console") vmm: $(cat "$WORK/vm.err")"
    kill "$vm" 2>/dev/null; wait "$vm"
    exit 0
fi
check echo "$out" hello
grep -q '^SWIFTLET-AGENT port=1024' "$WORK/console" && test_pass "$t.agent-listening" || test_fail "$t.agent-listening" "no SWIFTLET-AGENT line on the console"

x -- sh -c 'exit 7'; check exit-code $? 7
x -- sh -c 'kill -TERM $$'; check signal-term $? 143
x -- sh -c 'kill -KILL $$'; check signal-kill $? 137
out=$(x -- sh -c 'echo out; echo err >&2'); check stdout-only "$out" out
check stderr "$(cat "$WORK/err")" err
out=$(x --env FOO=bar --env A=b=c --workdir /tmp -- sh -c 'echo "$FOO $A $(pwd)"'); check env-workdir "$out" "bar b=c /tmp"
x -- /no/such/command; check not-found $? 127
grep -q "No such file" "$WORK/err" && test_pass "$t.not-found-message" || test_fail "$t.not-found-message" "$(cat "$WORK/err")"
x --workdir /no/such/dir -- true; check bad-workdir $? 127

echo "step: 16 MiB of output"
heartbeat x_to "$WORK/big.sum" -- sh -c 'head -c 16777216 /dev/urandom >/tmp/big && sha256sum /tmp/big'
want=$(cut -d' ' -f1 "$WORK/big.sum")
heartbeat x_to "$WORK/big" -- cat /tmp/big; rc=$?
check output-16m "$rc $(wc -c <"$WORK/big" | tr -d ' ') $(sha256sum "$WORK/big" | cut -d' ' -f1)" "0 16777216 $want"
kill -0 "$vm" 2>/dev/null || echo "step: the VMM is gone: $(tail -c 600 "$WORK/vm.err" | tr "\n" " ")"
rm -f "$WORK/big"

echo "step: stdin"
head -c 1048576 /dev/urandom >"$WORK/in"
stdin_sum() { x -- sha256sum <"$WORK/in" >"$WORK/in.sum"; }
heartbeat stdin_sum
got=$(cut -d' ' -f1 "$WORK/in.sum")
check stdin-1m "$got" "$(sha256sum "$WORK/in" | cut -d' ' -f1)"
out=$(echo "piped line" | x -- cat); check stdin-pipe "$out" "piped line"
out=$(x --no-stdin -- cat <"$WORK/in" | wc -c | tr -d ' '); check no-stdin "$out" 0

echo "step: 100 execs in a row"
start=$(now_ms); failed=0
i=0
while [ $i -lt 100 ]; do
    out=$(x -- echo "$i") && [ "$out" = "$i" ] || { failed=$((failed + 1)); echo "step: exec $i: '$out' $(cat "$WORK/err")"; }
    i=$((i + 1))
    [ $((i % 10)) != 0 ] || echo "step: $i execs"
done
echo "step: 100 execs took $(($(now_ms) - start)) ms"
check sequential-100 "$failed" 0

echo "step: 8 execs at once"
start=$(now_ms)
i=0
while [ $i -lt 8 ]; do
    "$SWIFTLET" exec --attach "$S" -- sh -c "sleep 2; echo $i" >"$WORK/c$i" 2>&1 &
    i=$((i + 1))
done
# Wait for the eight (not the VM), saying so every few seconds.
i=0
while [ "$(ls "$WORK"/c[0-7] | while read -r f; do [ -s "$f" ] && echo x; done | wc -l)" -lt 8 ] && [ $i -lt 300 ]; do
    sleep 0.2; i=$((i + 1))
    [ $((i % 15)) != 0 ] || echo "step: waiting for the 8 execs ($((i / 5)) s)"
done
for job in $(jobs -p); do [ "$job" = "$vm" ] || wait "$job"; done
bad=0
i=0
while [ $i -lt 8 ]; do
    [ "$(cat "$WORK/c$i")" = "$i" ] || { bad=$((bad + 1)); echo "step: exec $i: $(head -c 200 "$WORK/c$i")"; }
    i=$((i + 1))
done
took=$(($(now_ms) - start))
echo "step: 8 concurrent execs of 'sleep 2' took $took ms"
check concurrent-8 "$bad" 0
# Eight two-second sleeps one after another would take 16 s.
[ "$took" -lt 14000 ] && test_pass "$t.concurrent-overlap" || test_fail "$t.concurrent-overlap" "8 execs of sleep 2 took $took ms: they did not run at once"

echo "step: timeout"
start=$(now_ms)
x --timeout 1 -- sleep 60; rc=$?
took=$(($(now_ms) - start))
check timeout "$rc" 124
[ "$took" -lt 15000 ] && test_pass "$t.timeout-prompt" || test_fail "$t.timeout-prompt" "took $took ms"

echo "step: guest to host stream"
"$VSOCKPEER" listen "unix:${S}_5000" recv >"$WORK/g2h.host" 2>&1 &
peer=$!
sleep 0.5
heartbeat x_to "$WORK/g2h.guest" -- vsockpeer connect vsock:2:5000 send 8M
guest=$(cat "$WORK/g2h.guest")
wait "$peer"
check guest-to-host "$(echo "$guest" | sed 's/ ns=.*//')" "$(sed 's/ ns=.*//' "$WORK/g2h.host")"
case "$guest" in *bytes=8388608*) test_pass "$t.guest-to-host-size" ;; *) test_fail "$t.guest-to-host-size" "$guest" ;; esac

echo "step: host to guest stream"
h2g_send() { "$VSOCKPEER" connect "hybrid:$S:6000" send 8M >"$WORK/h2g.host" 2>"$WORK/h2g.err"; }
x -- vsockpeer listen vsock:6000 recv >"$WORK/h2g.guest" &
listener=$!
tries=0
while :; do
    heartbeat h2g_send && break
    tries=$((tries + 1))
    [ $tries -lt 50 ] && grep -q refused "$WORK/h2g.err" || break
    sleep 0.2
done
wait "$listener"
check host-to-guest "$(sed 's/ ns=.*//' "$WORK/h2g.guest")" "$(sed 's/ ns=.*//' "$WORK/h2g.host")"

echo "step: a port nobody listens on"
start=$(now_ms)
"$VSOCKPEER" connect "hybrid:$S:4444" recv 2>"$WORK/refused"; rc=$?
check refused "$rc $(cat "$WORK/refused")" "3 vsockpeer: refused"

echo "step: the guest reboots under a running stream"
"$SWIFTLET" exec --attach "$S" -- cat /dev/zero >/dev/null 2>"$WORK/stream.err" &
stream=$!
sleep 2
kill -0 "$stream" 2>/dev/null && test_pass "$t.stream-running" || test_fail "$t.stream-running" "$(cat "$WORK/stream.err"); vmm: $(tail -c 300 "$WORK/vm.err")"
x -- reboot -f
start=$(now_ms)
while kill -0 "$stream" 2>/dev/null && [ $(($(now_ms) - start)) -lt 20000 ]; do sleep 0.2; done
if kill -0 "$stream" 2>/dev/null; then
    test_fail "$t.stream-ends" "the exec client still runs 20 s after the guest rebooted"
    kill -9 "$stream"
else
    wait "$stream"; rc=$?
    check stream-ends "$rc" 125
fi
wait "$vm"; rc=$?
[ "$rc" = 0 ] && test_pass "$t.vmm-exit" || test_fail "$t.vmm-exit" "exit $rc; vmm: $(tail -c 400 "$WORK/vm.err")"
[ -e "$S" ] && test_fail "$t.no-socket-left" "$S is still there" || test_pass "$t.no-socket-left"

echo "step: one-shot VMs"
before=$(ls /tmp | grep -c '^swiftlet-.*\.vsock$')
out=$("$SWIFTLET" exec --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs.cpio" -- uname -s 2>"$WORK/err"); rc=$?
check oneshot "$rc $out" "0 Linux"
"$SWIFTLET" exec --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs.cpio" -- sh -c 'echo bye >&2; exit 5' 2>"$WORK/err"; rc=$?
check oneshot-status "$rc $(cat "$WORK/err")" "5 bye"
check oneshot-no-socket-left "$(ls /tmp | grep -c '^swiftlet-.*\.vsock$')" "$before"
