# test-timeout: 600
# Firecracker's API, end to end, as its getting-started guide drives it: `swiftlet firecracker --api-sock S` and
# `curl --unix-socket S` (logger, metrics, boot-source, drives, network-interfaces, machine-config, vsock, balloon,
# InstanceStart) boot the tiny guest with its agent. After boot: a balloon PATCH takes effect (the guest inflates to
# it: GET /balloon/statistics), a drive PATCH swaps the disk's image (the guest sees its new size and data), the
# balloon's statistics interval changes, Paused stops the guest's clock and Resumed continues it, FlushMetrics writes our
# counters to the metrics file, pre-boot calls are refused, and the guest's reboot ends the VMM with 0 and removes
# the socket. Then `--config-file` boots the same guest without the API.
. "$INTEGRATION/lib.sh"
t=swiftlet-firecracker
S=$WORK/api.sock
V=$WORK/v.sock
CURL=${CURL:-curl}
if ! command -v "$CURL" >/dev/null 2>&1; then
    test_fail "$t.curl" "curl is not here (the harness stages it into the lab from the host: apt-get install curl)"
    exit 0
fi

check() { if [ "$2" = "$3" ]; then test_pass "$t.$1"; else test_fail "$t.$1" "got '$2', want '$3'; $4"; fi; }
# api METHOD PATH [BODY]: the HTTP status in $code, the body in $WORK/body
api() {
    code=$("$CURL" -sS --unix-socket "$S" -X "$1" "http://localhost$2" ${3:+-H 'Content-Type: application/json' -d "$3"} \
        -o "$WORK/body" -w '%{http_code}' 2>"$WORK/curl.err") || code="curl-failed:$(cat "$WORK/curl.err")"
}
x() { "$SWIFTLET" exec --attach "$V" "$@" 2>"$WORK/exec.err"; }
# wait_vm: up to 30 s (times SPEED_FACTOR) for $vm to end by itself, a line every 2 s (the lab's watchdog); its
# status in $status, "timeout" if it had to be killed.
wait_vm() {
    _i=0
    while kill -0 "$vm" 2>/dev/null && [ $_i -lt $((30 * ${SPEED_FACTOR:-1})) ]; do
        _i=$((_i + 1)); [ $((_i % 2)) -ne 0 ] || echo "step: ... ${_i}s: waiting for the VMM to end"; sleep 1
    done
    if kill -0 "$vm" 2>/dev/null; then kill -9 "$vm"; wait "$vm"; status=timeout; else wait "$vm"; status=$?; fi
}

truncate -s 64M "$WORK/scratch.img"
: >"$WORK/fc.log"
: >"$WORK/metrics.json"
echo "step: swiftlet firecracker --api-sock, then the getting-started calls"
"$SWIFTLET" firecracker --api-sock "$S" --id fc-test >"$WORK/console" 2>"$WORK/vm.err" &
vm=$!
i=0
while [ ! -S "$S" ] && kill -0 "$vm" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
api GET /
check instance-info "$code $(cat "$WORK/body")" '200 {"app_name":"Swiftlet","id":"fc-test","state":"Not started","vmm_version":"1.16.1"}'
for call in \
    "PUT /logger {\"log_path\": \"$WORK/fc.log\", \"level\": \"Info\"}" \
    "PUT /metrics {\"metrics_path\": \"$WORK/metrics.json\"}" \
    "PUT /boot-source {\"kernel_image_path\": \"$GUEST/bzImage\", \"initrd_path\": \"$GUEST/initramfs-full.cpio\", \"boot_args\": \"$SWIFTLET_CMDLINE_BASE swiftlet.agent=1024\"}" \
    "PUT /drives/scratch {\"drive_id\": \"scratch\", \"path_on_host\": \"$WORK/scratch.img\", \"is_root_device\": false, \"is_read_only\": false}" \
    "PUT /network-interfaces/eth0 {\"iface_id\": \"eth0\", \"host_dev_name\": \"fctap0\", \"guest_mac\": \"06:00:AC:10:00:02\"}" \
    "PUT /machine-config {\"vcpu_count\": 2, \"mem_size_mib\": 256}" \
    "PUT /vsock {\"guest_cid\": 3, \"uds_path\": \"$V\"}" \
    "PUT /balloon {\"amount_mib\": 0, \"deflate_on_oom\": false, \"stats_polling_interval_s\": 1}" \
    "PUT /entropy {}" \
    "PUT /actions {\"action_type\": \"InstanceStart\"}"; do
    set -- $call
    method=$1 path=$2
    shift 2
    api "$method" "$path" "$*"
    check "put$(echo "$path" | tr / .)" "$code" 204 "$(cat "$WORK/body") $(tail -c 300 "$WORK/vm.err")"
done
api GET /
check running "$(sed 's/.*"state":"\([^"]*\)".*/\1/' "$WORK/body")" Running
# PUT /logger's file has the events, in Firecracker's line format.
check log-instance-start "$(grep -c '^[0-9-]*T[0-9:.]* \[fc-test:api\] InstanceStart: the microVM runs (2 vCPUs, 256 MiB, 1 drives, 1 network interfaces)$' "$WORK/fc.log")" 1 \
    "$(tail -c 400 "$WORK/fc.log")"
out=$(x -- cat /sys/class/net/eth0/address)
check guest-mac "$out" "06:00:ac:10:00:02" "$(cat "$WORK/exec.err") console: $(tail -c 300 "$WORK/console")"
check guest-cpus "$(x -- grep -c ^processor /proc/cpuinfo)" 2
check guest-serial "$(x -- cat /sys/block/vda/serial)" scratch
# The entropy device: the guest's hwrng is virtio's, and reads random bytes.
check hwrng-current "$(x -- cat /sys/class/misc/hw_random/rng_current)" virtio_rng.0
check hwrng-read "$(x -- sh -c 'dd if=/dev/hwrng bs=1024 count=64 2>/dev/null | wc -c')" 65536 "$(cat "$WORK/exec.err")"
# Its throughput, as dd sees it in the guest: 64 KiB from /dev/hwrng, timed by the guest's own clock (TEST-INFO, not a
# target: Linux's hwrng core reads 64 bytes a request, so this is about one request's round trip in the lab, whose
# figures are not a host's), and the bytes are not one repeated value.
rate=$(x -- sh -c 'a=$(cut -d" " -f1 /proc/uptime); n=$(dd if=/dev/hwrng bs=65536 count=1 2>/dev/null | wc -c)
    b=$(cut -d" " -f1 /proc/uptime); echo "$n $a $b"' 2>"$WORK/exec.err")
set -- $rate
if [ "${1:-0}" = 65536 ]; then
    test_pass "$t.hwrng-timed"
    echo "TEST-INFO virtio-rng in the lab's guest: 64 KiB from /dev/hwrng in $(awk "BEGIN { printf \"%.2f\", $3 - $2 }") s ($(awk "BEGIN { d = $3 - $2; if (d < 0.01) d = 0.01; printf \"%.1f\", 64 / d }") KiB/s)"
else
    test_fail "$t.hwrng-timed" "got '$rate'; $(cat "$WORK/exec.err")"
fi
# 4 KiB of random bytes hold nearly every byte value (all 256 but for a chance of 3e-5); a device that repeated one
# value, or zeroes, would give 1.
distinct=$(x -- sh -c 'dd if=/dev/hwrng bs=4096 count=1 2>/dev/null | od -An -v -tx1 | tr -s " " "\n" | grep . | sort -u | wc -l')
if [ "${distinct:-0}" -ge 200 ]; then test_pass "$t.hwrng-varied"; else
    test_fail "$t.hwrng-varied" "only '$distinct' distinct byte values in 4 KiB from /dev/hwrng"
fi
api PUT /boot-source "{\"kernel_image_path\": \"$GUEST/bzImage\"}"
check pre-boot-only "$code $(cat "$WORK/body")" '400 {"fault_message":"/boot-source can only be set before InstanceStart: the microVM is running"}'

echo "step: a balloon PATCH takes effect"
api PATCH /balloon '{"amount_mib": 64}'
check balloon-patch "$code" 204 "$(cat "$WORK/body")"
i=0 actual=
while [ $i -lt 60 ]; do
    api GET /balloon/statistics
    actual=$(sed -n 's/.*"actual_mib":\([0-9]*\).*/\1/p' "$WORK/body")
    [ "$actual" = 64 ] && break
    sleep 0.5; i=$((i + 1))
done
check balloon-actual "$actual" 64 "$(cat "$WORK/body")"

echo "step: a drive PATCH swaps the backing file"
# The new image is larger (96 MiB against 64) and holds a marker at 80 MiB, past the old image's end: the guest sees
# the new size (a configuration change) and reads the marker from a sector it never read before (no page cache).
truncate -s 96M "$WORK/scratch2.img"
printf 'swiftlet-patched' | dd of="$WORK/scratch2.img" bs=1M seek=80 conv=notrunc 2>/dev/null
api PATCH /drives/scratch "{\"drive_id\": \"scratch\", \"path_on_host\": \"$WORK/scratch2.img\"}"
check drive-patch "$code" 204 "$(cat "$WORK/body")"
i=0 size=
while [ $i -lt 20 ]; do
    size=$(x -- cat /sys/block/vda/size)
    [ "$size" = 196608 ] && break
    sleep 0.5; i=$((i + 1))
done
check drive-patch-size "$size" 196608 "$(cat "$WORK/exec.err")"
check drive-patch-data "$(x -- sh -c 'dd if=/dev/vda bs=512 skip=163840 count=1 2>/dev/null | head -c 16')" swiftlet-patched \
    "$(cat "$WORK/exec.err")"
api GET /vm/config
check drive-patch-config "$(grep -c "\"path_on_host\":\"$WORK/scratch2.img\"" "$WORK/body")" 1 "$(cat "$WORK/body")"
api PATCH /drives/scratch "{\"drive_id\": \"scratch\", \"path_on_host\": \"$WORK/missing.img\"}"
check drive-patch-missing "$code $(grep -c 'cannot open disk image' "$WORK/body")" "400 1" "$(cat "$WORK/body")"

echo "step: the balloon's statistics interval changes"
api PATCH /balloon/statistics '{"stats_polling_interval_s": 2}'
check balloon-stats-patch "$code" 204 "$(cat "$WORK/body")"
api GET /balloon
check balloon-stats-interval "$(sed -n 's/.*"stats_polling_interval_s":\([0-9]*\).*/\1/p' "$WORK/body")" 2 "$(cat "$WORK/body")"

echo "step: Paused stops the guest's clock, Resumed continues it"
g1=$(x -- cut -d' ' -f1 /proc/uptime | tr -d .)
h1=$(cut -d' ' -f1 /proc/uptime | tr -d .)
api PATCH /vm '{"state": "Paused"}'
check pause "$code" 204 "$(cat "$WORK/body")"
api GET /
check paused-state "$(sed 's/.*"state":"\([^"]*\)".*/\1/' "$WORK/body")" Paused
sleep 5
api PATCH /vm '{"state": "Resumed"}'
check resume "$code" 204 "$(cat "$WORK/body")"
g2=$(x -- cut -d' ' -f1 /proc/uptime | tr -d .)
h2=$(cut -d' ' -f1 /proc/uptime | tr -d .)
# In hundredths of a second: the host saw the 5 s pause and more; the guest's clock lost the pause.
host=$((h2 - h1)) guestd=$((g2 - g1))
if [ "$host" -ge 500 ] && [ "$guestd" -ge 0 ] && [ "$guestd" -le $((host - 400)) ]; then test_pass "$t.pause-stops-guest-time"
else test_fail "$t.pause-stops-guest-time" "host ${host}0 ms, guest ${guestd}0 ms across a 5 s pause"; fi

echo "step: FlushMetrics"
api PUT /actions '{"action_type": "FlushMetrics"}'
check flush-metrics "$code" 204 "$(cat "$WORK/body")"
check metrics-block "$(tail -n 1 "$WORK/metrics.json" | grep -c '"swiftlet":{"devices":{.*"blk0":{')" 1 "$(tail -c 400 "$WORK/metrics.json")"
check metrics-requests "$(tail -n 1 "$WORK/metrics.json" | grep -c '"block":{[^}]*"requests":[1-9]')" 1 "$(tail -c 400 "$WORK/metrics.json")"

echo "step: the guest reboots (reboot=k: the i8042 reset ends the VMM)"
x -- reboot -f >/dev/null 2>&1
wait_vm
check exit "$status" 0 "$(tail -c 300 "$WORK/vm.err")"
[ -e "$S" ] && test_fail "$t.socket-removed" "$S is still there" || test_pass "$t.socket-removed"

echo "step: --config-file boots the same guest without the API"
cat >"$WORK/config.json" <<JSON
{"boot-source": {"kernel_image_path": "$GUEST/bzImage", "initrd_path": "$GUEST/initramfs-full.cpio", "boot_args": "$SWIFTLET_CMDLINE_BASE swiftlet.agent=1024"},
 "drives": [{"drive_id": "scratch", "path_on_host": "$WORK/scratch.img", "is_root_device": false, "is_read_only": true}],
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
 "vsock": {"guest_cid": 3, "uds_path": "$V"}}
JSON
"$SWIFTLET" firecracker --no-api --config-file "$WORK/config.json" >"$WORK/console2" 2>"$WORK/vm2.err" &
vm=$!
# The vsock socket appears once the VMM has built the machine.
i=0
while [ ! -S "$V" ] && kill -0 "$vm" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
check config-file-guest "$(x -- cat /sys/block/vda/ro)" 1 "$(cat "$WORK/exec.err") $(tail -c 300 "$WORK/vm2.err")"
x -- reboot -f >/dev/null 2>&1
wait_vm
check config-file-exit "$status" 0 "$(tail -c 300 "$WORK/vm2.err")"
exit 0
