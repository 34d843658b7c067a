# Network benchmark, run where guests boot (the lab's L1 or a KVM host). The guest (guest/scenarios/iperf.sh, the full
# initramfs, 256 MiB, 1 vCPU) runs iperf3 against an `iperf3 -s` on the host's end of a TAP (10.0.2.1 on tap0; in the
# lab that is L1, whose image has iperf3: lab/build-l1.sh), NET_TIME seconds (default 10) guest->host, then as long
# host->guest (-R), then NET_RR (default 2000) TCP request/response round trips of 1 byte against a `tcppeer echo` on
# the host (guest: tcppeer rr), then 50 pings (busybox ping -A). Per round, alternating the order:
#   swiftlet       --net tap=tap0 (offloads on)
#   qemu           virtio-net-device, -netdev tap,vhost=off (a userspace backend, like Swiftlet's)
#   qemu vhost=on  the kernel's vhost-net backend, reported as vmm=qemu under the *_vhost metric names
#   swiftlet, offloads refused by the guest (virtio_net.csum=0 virtio_net.gso=0), guest->host only
#   swiftlet --device-scheduling normal (SCHED_OTHER device thread), reported under the *_sched_normal names, where
#                  QEMU vhost=off's figures of the same round are repeated so that the ratio compares the two
#   (swiftlet-batch, --device-scheduling batch, under *_sched_batch names, only when NET_ORDER names it)
#   swiftlet-split --net ...,packed=off (the split ring only; the default offers packed, which the guest takes),
#                  reported under the *_split names, with QEMU vhost=off's figures of the same round repeated there
#   qemu-packed    qemu vhost=off with packed=on, reported as vmm=qemu-packed under the main names (beside qemu)
#   loopback       no VM: iperf3 from L1 to its own server (10.0.2.1 is L1's), both directions, as vmm=loopback under
#                  the main throughput names: the ceiling of that machine, which no VMM can pass
# Metrics (BENCH-SAMPLE lines):
#   net_tcp_g2h_gbps, net_tcp_h2g_gbps               iperf3's receiver figure, Gbit/s (swiftlet; qemu vhost=off)
#   net_tcp_g2h_gbps_vhost, net_tcp_h2g_gbps_vhost   the same for qemu vhost=on (vmm=qemu; no swiftlet figure)
#   net_offload_gain      swiftlet's guest->host throughput with offloads on / with them off, same round
#   net_exits_per_mib     guest notifications plus interrupts per MiB through eth0 during the two transfers, counted
#                         the same way for both VMMs: notifications are the host kernel's kvm_mmio events (tracefs,
#                         a histogram trigger) for writes to the NIC's QueueNotify register (its virtio-mmio base +
#                         0x50: each is a guest exit, whether an ioeventfd or the VMM takes it); interrupts are the
#                         ones the guest handled on the NIC's line (/proc/interrupts). kvm_set_irq raising that GSI
#                         (Swiftlet's irqfd, QEMU's KVM_IRQ_LINE, which QEMU also repeats while the line is up) is
#                         printed next to it. The guest marks the transfers' start and end on its console, with 3 s
#                         of quiet around them, and the counts are read there. Swiftlet's whole-run counts are
#                         checked against its own --stats counters (step: lines).
#   net_exits_per_mib_vhost  the same for qemu vhost=on
#   net_rr_latency_us     median TCP request/response round trip, 1-byte messages, guest->host, microseconds
#   net_rr_latency_us_vhost  the same for qemu vhost=on
#   net_ping_us           median ICMP echo round trip (busybox ping -A), for reference
#   net_tcp_g2h_gbps_sched_normal, net_tcp_h2g_gbps_sched_normal, net_exits_per_mib_sched_normal,
#   net_rr_latency_us_sched_normal   swiftlet with its device thread always under SCHED_OTHER (what the default,
#                         adaptive scheduling, buys: see ThreadScheduling), against QEMU vhost=off
#   net_*_sched_batch     the same with the device thread always under SCHED_BATCH (NET_ORDER=...,swiftlet-batch)
#   baseline       (only with SWIFTLET_BASELINE, see below) the same as swiftlet, with the older build
# NET_ORDER=CONFIG,CONFIG,... runs just those configurations in each round (no offloads-off run), in that order in odd
# rounds and reversed in even ones: for focused comparisons, e.g. NET_ORDER=swiftlet,qemu.
# SWIFTLET_BASELINE (make bench BASELINE=REV): an older swiftlet executable that runs in every round as config
# `baseline`, reported as vmm=baseline under the swiftlet metric names, for an A/B of two builds in the same lab run.
# BASELINE_OPTIONS: swiftlet options for the baseline's runs only; with BASELINE=HEAD, an A/B of one option, e.g.
# BASELINE_OPTIONS='--seccomp off' for what seccomp costs.
. "$INTEGRATION/lib.sh"
runs=${RUNS:-3}
secs=${NET_TIME:-10}
cmdline="console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=iperf swiftlet.net.ip=10.0.2.2/24"
rr=${NET_RR:-2000}
cmdline="$cmdline swiftlet.iperf.server=10.0.2.1 swiftlet.iperf.time=$secs swiftlet.iperf.rr=$rr swiftlet.iperf.rrport=5003"
limit=$((2 * secs + 150))   # seconds for one boot
mac=52:54:00:12:34:56

if ! command -v iperf3 >/dev/null 2>&1; then
    echo "net bench: no iperf3 here (the lab's L1 image stages it when the host has it: apt-get install iperf3)"
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-bench-net.XXXXXX") || exit 1
tunctl -t tap0 >/dev/null && ip addr add 10.0.2.1/24 dev tap0 && ip link set tap0 up || { echo "net bench: no tap0"; exit 1; }
iperf3 -s -B 10.0.2.1 >"$work/iperf3-server.log" 2>&1 &
server=$!
"$TCPPEER" echo 5003 >"$work/echo.log" 2>&1 &
echo_server=$!
trap 'kill $server $echo_server 2>/dev/null; ip link set tap0 down; tunctl -d tap0 >/dev/null; rm -rf "$work"' EXIT

# KVM's tracepoints, for counting exits the same way for every VMM: histogram triggers (CONFIG_HIST_TRIGGERS) count
# the events in the kernel, by address and by GSI, without recording each one (a text trace of a run is about 10^5
# lines, too slow to write and read under the lab's TCG).
tracing=/sys/kernel/tracing
[ -e $tracing/events ] || mount -t tracefs nodev $tracing 2>/dev/null
mmio_events=$tracing/events/kvm/kvm_mmio irq_events=$tracing/events/kvm/kvm_set_irq
# MMIO writes (type 2, KVM_TRACE_MMIO_WRITE) by guest-physical address; interrupt line changes by GSI and level.
mmio_hist='hist:keys=gpa:vals=hitcount if type == 2' irq_hist='hist:keys=gsi,level:vals=hitcount'
if [ -w $mmio_events/trigger ] && [ -w $irq_events/trigger ] && echo "$mmio_hist" >$mmio_events/trigger 2>/dev/null; then
    echo "!$mmio_hist" >$mmio_events/trigger
    cmdline="$cmdline swiftlet.iperf.settle=3"
else
    tracing=
    echo "net bench: no KVM histogram triggers under /sys/kernel/tracing (tracefs, CONFIG_HIST_TRIGGERS): no net_exits_per_mib"
fi

# trace_start / trace_stop LOG: fresh counts for one guest run (LOG.hist-start, LOG.hist-end: the counts when the
# guest's transfer marks appeared on its console LOG, polled once a second, with 3 s of quiet around each in the
# guest; LOG.hist-exit: after the run).
trace_start() {
    [ -n "$tracing" ] || return 0
    echo "$mmio_hist" >$mmio_events/trigger
    echo "$irq_hist" >$irq_events/trigger
    (
        for mark in start end; do
            until grep -q "SWIFTLET-MARK transfer-$mark" "$1" 2>/dev/null; do sleep 1; done
            cat $mmio_events/hist $irq_events/hist >"$1.hist-$mark"
        done
    ) &
    marker=$!
}
trace_stop() {
    [ -n "$tracing" ] || return 0
    kill $marker 2>/dev/null
    wait $marker 2>/dev/null
    cat $mmio_events/hist $irq_events/hist >"$1.hist-exit"
    echo "!$mmio_hist" >$mmio_events/trigger
    echo "!$irq_hist" >$irq_events/trigger
}

# hist_counts FILE NOTIFY GSI: "NOTIFICATIONS RAISES LOWERS" in a histogram snapshot: writes to the QueueNotify
# address NOTIFY (decimal), kvm_set_irq of GSI to level 1 and to level 0.
hist_counts() {
    awk -v notify="$2" -v gsi="$3" '
        { k = ""; g = ""; l = ""; h = 0
          for (i = 1; i < NF; i++) {
              if ($i == "gpa:") k = $(i + 1); else if ($i == "gsi:") { g = $(i + 1); sub(",", "", g) }
              else if ($i == "level:") l = $(i + 1); else if ($i == "hitcount:") h = $(i + 1) }
          if (k != "" && k == notify) n += h
          if (g != "" && g == gsi) { if (l == 1) r += h; else f += h } }
        END { print n + 0, r + 0, f + 0 }' "$1"
}

# trace_counts LOG: "WINDOW_NOTIFY WINDOW_RAISES ALL_NOTIFY ALL_RAISES ALL_LOWERS" for the NIC the guest reported
# (net_mmio, net_irq): between the transfer marks, and in the whole run.
trace_counts() {
    _base=$(guest_value "$1" net_mmio) _irq=$(guest_value "$1" net_irq)
    case $_base in 0x[0-9a-f]*[0-9a-f]) ;; *) return 1 ;; esac
    [ -n "$_irq" ] && [ -s "$1.hist-start" ] && [ -s "$1.hist-end" ] && [ -s "$1.hist-exit" ] || return 1
    _notify=$((_base + 0x50))
    set -- $(hist_counts "$1.hist-start" $_notify $_irq) $(hist_counts "$1.hist-end" $_notify $_irq) \
        $(hist_counts "$1.hist-exit" $_notify $_irq)
    echo $(($4 - $1)) $(($5 - $2)) $7 $8 $9
}

swiftlet_run() { # LOG EXTRA-CMDLINE [SWIFTLET-OPTION...] (BINARY: the executable, default $SWIFTLET)
    _log=$1 _extra=$2
    shift 2
    timeout "$limit" "${BINARY:-$SWIFTLET}" run --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs-full.cpio" --memory 256M \
        --cpus 1 --console "$_log" --stats --cmdline "$cmdline $_extra" --net "tap=tap0,mac=$mac${NET_SUFFIX:-}" "$@" 2>"$_log.err"
}
qemu_run() { # LOG VHOST [PACKED]
    timeout "$limit" "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config \
        -display none -serial "file:$1" -no-reboot -L "$QEMU_FIRMWARE" \
        -netdev "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=$2" -device "virtio-net-device,netdev=n0,mac=$mac,packed=${3:-off}" \
        -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs-full.cpio" -append "$cmdline" 2>"$1.err"
}

# sample METRIC VMM LOG NAME UNIT: a BENCH-SAMPLE from the guest's value NAME; 1 if it is missing.
sample() {
    _v=$(guest_value "$3" "$4")
    if [ -n "$_v" ]; then echo "BENCH-SAMPLE metric=$1 vmm=$2 value=$_v unit=$5"; else
        echo "net bench: $2: no $4 from the guest: $(grep -E 'fail|SWIFTLET-DONE' "$3" | tr '\n' ' ' | cut -c1-300)" \
            "$(tail -c 300 "$3.err" 2>/dev/null)"
        return 1
    fi
}

one() { # CONFIG ROUND: swiftlet | qemu | qemu-vhost | swiftlet-offloads-off | swiftlet-normal | swiftlet-batch | baseline
    _log=$work/$1-$2.console
    echo "step: net bench round $2/$runs: $1"
    [ $1 = swiftlet-offloads-off ] || trace_start "$_log"
    case $1 in
        swiftlet) HEARTBEAT_LOG=$_log heartbeat swiftlet_run "$_log" "" ;;
        baseline) BINARY=$SWIFTLET_BASELINE HEARTBEAT_LOG=$_log heartbeat swiftlet_run "$_log" "" ${BASELINE_OPTIONS:-} ;;
        swiftlet-offloads-off) HEARTBEAT_LOG=$_log heartbeat swiftlet_run "$_log" \
            "virtio_net.csum=0 virtio_net.gso=0 swiftlet.net.offloads=off swiftlet.iperf.dirs=g2h swiftlet.iperf.rr=0" ;;
        swiftlet-normal|swiftlet-batch) HEARTBEAT_LOG=$_log heartbeat swiftlet_run "$_log" "" --device-scheduling ${1#swiftlet-} ;;
        swiftlet-split) (NET_SUFFIX=,packed=off; HEARTBEAT_LOG=$_log heartbeat swiftlet_run "$_log" "") ;;
        qemu-packed) HEARTBEAT_LOG=$_log heartbeat qemu_run "$_log" off on ;;
        loopback) loopback "$_log" ;;
        qemu) HEARTBEAT_LOG=$_log heartbeat qemu_run "$_log" off ;;
        qemu-vhost) HEARTBEAT_LOG=$_log heartbeat qemu_run "$_log" on ;;
    esac
    _rc=$?
    [ $1 = swiftlet-offloads-off ] || trace_stop "$_log"
    case $1 in swiftlet*|baseline) grep 'stats device-thread' "$_log.err" | sed 's/^/step: /' ;; esac
    echo "step: $1 exited $_rc"
    tr -d '\r' <"$_log" >"$_log.lines" && mv "$_log.lines" "$_log"
    grep '^SWIFTLET-RESULT .* fail' "$_log" | sed 's/^/step: /'
    case $1 in
        swiftlet|qemu|baseline)
            sample net_tcp_g2h_gbps "$1" "$_log" g2h_gbps Gbit/s || status=1
            sample net_tcp_h2g_gbps "$1" "$_log" h2g_gbps Gbit/s || status=1
            sample net_rr_latency_us "$1" "$_log" rr_us us || status=1
            sample net_ping_us "$1" "$_log" ping_us us || status=1
            exits net_exits_per_mib "$1" "$_log" || status=1
            if [ $1 = qemu ]; then # the same figures again, as the reference for swiftlet's *_sched_normal and *_split
                for _s in _sched_normal _split; do
                    sample net_tcp_g2h_gbps$_s qemu "$_log" g2h_gbps Gbit/s
                    sample net_tcp_h2g_gbps$_s qemu "$_log" h2g_gbps Gbit/s
                    sample net_rr_latency_us$_s qemu "$_log" rr_us us
                    exits net_exits_per_mib$_s qemu "$_log" | grep '^BENCH-SAMPLE'
                done
            fi ;;
        swiftlet-split)
            sample net_tcp_g2h_gbps_split swiftlet "$_log" g2h_gbps Gbit/s || status=1
            sample net_tcp_h2g_gbps_split swiftlet "$_log" h2g_gbps Gbit/s || status=1
            sample net_rr_latency_us_split swiftlet "$_log" rr_us us || status=1
            exits net_exits_per_mib_split swiftlet "$_log" || status=1 ;;
        qemu-packed)
            sample net_tcp_g2h_gbps qemu-packed "$_log" g2h_gbps Gbit/s || status=1
            sample net_tcp_h2g_gbps qemu-packed "$_log" h2g_gbps Gbit/s || status=1
            sample net_rr_latency_us qemu-packed "$_log" rr_us us || status=1
            exits net_exits_per_mib qemu-packed "$_log" || status=1 ;;
        loopback)
            for _d in g2h h2g; do
                _v=$(sed -n "s/^LOOPBACK $_d=//p" "$_log")
                if [ -n "$_v" ]; then echo "BENCH-SAMPLE metric=net_tcp_${_d}_gbps vmm=loopback value=$_v unit=Gbit/s"; else status=1; fi
            done ;;
        swiftlet-normal|swiftlet-batch)
            _s=_sched_${1#swiftlet-}
            sample net_tcp_g2h_gbps$_s swiftlet "$_log" g2h_gbps Gbit/s || status=1
            sample net_tcp_h2g_gbps$_s swiftlet "$_log" h2g_gbps Gbit/s || status=1
            sample net_rr_latency_us$_s swiftlet "$_log" rr_us us || status=1
            exits net_exits_per_mib$_s swiftlet "$_log" || status=1 ;;
        qemu-vhost)
            sample net_tcp_g2h_gbps_vhost qemu "$_log" g2h_gbps Gbit/s || status=1
            sample net_tcp_h2g_gbps_vhost qemu "$_log" h2g_gbps Gbit/s || status=1
            sample net_rr_latency_us_vhost qemu "$_log" rr_us us || status=1
            exits net_exits_per_mib_vhost qemu "$_log" || status=1 ;;
        swiftlet-offloads-off)
            _on=$(guest_value "$work/swiftlet-$2.console" g2h_gbps) _off=$(guest_value "$_log" g2h_gbps)
            echo "step: swiftlet guest->host: offloads on ${_on:-?} Gbit/s, off ${_off:-?} Gbit/s"
            if [ -n "$_on" ] && [ -n "$_off" ]; then
                echo "BENCH-SAMPLE metric=net_offload_gain vmm=swiftlet value=$(awk "BEGIN { printf \"%.3f\", $_on / $_off }") unit=ratio"
            else
                status=1
            fi ;;
    esac
    if [ "$1" = swiftlet ]; then
        # Cross-check: the whole run's traced counts against Swiftlet's own counters.
        _line=$(grep '^swiftlet: stats device=net0 ' "$_log.err" | tail -n 1)
        _n=$(echo "$_line" | sed -n 's/.* notifications=\([0-9]*\).*/\1/p')
        _i=$(echo "$_line" | sed -n 's/.* interrupts=\([0-9]*\).*/\1/p')
        _b=$(guest_value "$_log" eth0_bytes)
        if [ -n "$_n" ] && [ -n "$_i" ] && [ -n "${_b#0}" ]; then
            set -- $(trace_counts "$_log") "" "" "" "" ""
            echo "step: swiftlet whole run: --stats notifications=$_n interrupts=$_i; traced notifications=${3:-?}" \
                "line raised=${4:-?} lowered=${5:-?}; --stats per MiB of eth0: $(awk "BEGIN { printf \"%.2f\", ($_n + $_i) / ($_b / 1048576) }")"
        else
            echo "net bench: no usable 'swiftlet: stats device=net0' line (${_line:-none}) or eth0 byte count (${_b:-none})"
            status=1
        fi
    fi
}

# loopback LOG: iperf3 in L1 against its own server, NET_TIME s each way, as the guest's client runs it; the
# receiver's figure in Gbit/s as LOOPBACK g2h=N and LOOPBACK h2g=N lines of LOG.
loopback() {
    : >"$1"
    for _d in g2h h2g; do
        _flag=; [ $_d = h2g ] && _flag=-R
        _out=$(iperf3 -c 10.0.2.1 -t "$secs" $_flag -f g 2>&1)
        _v=$(echo "$_out" | awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Gbits/sec") v = $i } END { print v }')
        echo "step: loopback $_d: ${_v:-?} Gbit/s"
        [ -n "$_v" ] && echo "LOOPBACK $_d=$_v" >>"$1"
    done
}

# exits METRIC VMM LOG: notifications + interrupts per MiB during the transfers, from the trace.
exits() {
    [ -n "$tracing" ] || return 0
    _b=$(guest_value "$3" transfer_bytes)
    if ! _c=$(trace_counts "$3") || [ -z "${_b#0}" ]; then
        echo "net bench: $2: no exits figure (trace counts: ${_c:-none}; transfer bytes: ${_b:-none})"
        return 1
    fi
    _g=$(guest_value "$3" transfer_interrupts)
    if [ -z "$_g" ]; then echo "net bench: $2: no transfer_interrupts from the guest"; return 1; fi
    set -- "$1" "$2" "$3" $_c
    echo "step: $2 transfers: $(awk "BEGIN { printf \"%.1f\", $_b / 1048576 }") MiB, notifications=$4" \
        "interrupts handled by the guest=$_g (line raised $5 times)"
    echo "BENCH-SAMPLE metric=$1 vmm=$2 value=$(awk "BEGIN { printf \"%.2f\", ($4 + $_g) / ($_b / 1048576) }") unit=per_MiB"
}

status=0
default_order="swiftlet qemu qemu-vhost swiftlet-normal swiftlet-split qemu-packed loopback"
if [ -n "${SWIFTLET_BASELINE:-}" ]; then
    [ -x "$SWIFTLET_BASELINE" ] || { echo "net bench: SWIFTLET_BASELINE=$SWIFTLET_BASELINE is not an executable"; exit 1; }
    echo "step: net bench: the baseline $SWIFTLET_BASELINE ($(wc -c <"$SWIFTLET_BASELINE") bytes) runs in every round too"
    default_order="swiftlet baseline qemu qemu-vhost swiftlet-normal swiftlet-split qemu-packed loopback"
fi
# Warm-up: one short, unmeasured boot of each VMM first (2 s per direction, 100 round trips). The first VM in a
# fresh lab L1 runs slower (TCG has yet to translate L1's KVM, TAP and TCP paths, and each VMM's own code), and would
# otherwise cost whichever configuration comes first.
full_cmdline=$cmdline
cmdline=$(echo "$cmdline" | sed 's/swiftlet\.iperf\.time=[0-9]*/swiftlet.iperf.time=2/; s/swiftlet\.iperf\.rr=[0-9]*/swiftlet.iperf.rr=100/')
for c in swiftlet qemu ${SWIFTLET_BASELINE:+baseline}; do
    echo "step: net bench warm-up: $c (not measured)"
    case $c in
        swiftlet) HEARTBEAT_LOG=$work/warm-up-$c.console heartbeat swiftlet_run "$work/warm-up-$c.console" "" ;;
        baseline) BINARY=$SWIFTLET_BASELINE HEARTBEAT_LOG=$work/warm-up-$c.console heartbeat swiftlet_run "$work/warm-up-$c.console" "" ;;
        qemu) HEARTBEAT_LOG=$work/warm-up-$c.console heartbeat qemu_run "$work/warm-up-$c.console" off ;;
    esac
    echo "step: $c exited $?"
done
cmdline=$full_cmdline
i=1
while [ $i -le "$runs" ]; do
    order=$(echo "${NET_ORDER:-$default_order}" | tr "," " ")
    if [ $((i % 2)) = 0 ]; then _r=; for c in $order; do _r="$c $_r"; done; order=$_r; fi
    for c in $order; do one $c $i; done
    [ -n "$NET_ORDER" ] || one swiftlet-offloads-off $i
    i=$((i + 1))
done
exit $status
