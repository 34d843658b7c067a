# Block device benchmark, run where guests boot (the lab's L1 or a KVM host). Swiftlet and QEMU's microvm boot the
# same kernel, initramfs and command line (256 MiB, 1 vCPU) with the same raw image as their one virtio disk, and
# the guest runs fio against /dev/vda (guest/scenarios/fio.sh: direct=1, libaio, iodepth 32, BLK_RAMP s of warm-up
# and BLK_RUNTIME s measured per job): 4 KiB random reads and writes, 1 MiB sequential reads and writes. RUNS rounds,
# the configurations' order rotating from round to round. The configurations (BLK_CONFIGS, default all of them):
#   swiftlet              the defaults: the packed virtqueue offered (and taken by the guest), the sync engine
#   swiftlet-split        --disk ...,packed=off: the split ring only
#   swiftlet-io_uring     --disk ...,engine=io_uring: up to 128 requests in flight through io_uring
#   swiftlet-io_uring-split   both
#   (any swiftlet-WORD-WORD...: split is packed=off, sync and io_uring are engine=)
#   qemu-threads          virtio-blk-device, aio=threads (QEMU's default), split ring
#   qemu-threads-packed   the same with packed=on
#   qemu-io_uring         aio=io_uring, split ring
#   qemu-io_uring-packed  aio=io_uring, packed=on
# Each reports under its own name (vmm=CONFIG); the harness compares Swiftlet's default with QEMU's best configuration
# of each metric, and prints the others beside it.
#
# Caching is the same for all: Swiftlet does pread/pwrite on the image (the host page cache), and QEMU gets
# cache=writeback (its default, said explicitly). The image is a pre-filled (allocated) 256 MiB file in
# $TMPDIR: in the lab that is L1's RAM, so the figures measure the virtio path and the VMMs' I/O handling, not a disk.
# Each VMM boots once, unmeasured and with 1 s jobs, before the first round (the warm-up below).
#
# SWIFTLET_BASELINE (make bench BASELINE=REV): an older swiftlet executable that runs in every round as well, reported
# as vmm=baseline, for an A/B of two builds in the same lab run. The order rotates from round to round.
# BASELINE_OPTIONS: swiftlet options for the baseline's runs only (with BASELINE=HEAD, an A/B of one option).
#
# Swiftlet only: `--stats` says how many queue notifications (guest -> device) and interrupts a disk had for how many
# requests, for both layouts (vmm=swiftlet, packed; vmm=swiftlet-split); with VIRTIO_RING_F_EVENT_IDX (default) and,
# in one extra run, without it (--disk PATH,event-idx=off).
. "$INTEGRATION/lib.sh"
runs=${RUNS:-3}
runtime=${BLK_RUNTIME:-5}
ramp=${BLK_RAMP:-1}
jobs=${BLK_JOBS:-randread,randwrite,seqread,seqwrite}   # BLK_JOBS: a subset, for a focused comparison
configs=${BLK_CONFIGS:-swiftlet swiftlet-split swiftlet-io_uring swiftlet-io_uring-split qemu-threads qemu-threads-packed qemu-io_uring qemu-io_uring-packed}
configs=$(echo "$configs" | tr ',' ' ')
# reboot=t: both VMMs end on the guest's triple fault, so the command line is identical.
cmdline="console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=fio swiftlet.fio=$jobs swiftlet.fio.runtime=$runtime"
cmdline="$cmdline swiftlet.fio.ramp=$ramp swiftlet.fio.iodepth=32"
limit=$((4 * (runtime + ramp + 5) + 60))   # seconds for one boot with all jobs

work=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-bench-blk.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
img=$work/disk.img
echo "step: blk bench: filling a 256 MiB image"
dd if=/dev/zero of="$img" bs=1M count=256 conv=fsync 2>/dev/null || { echo "blk bench: cannot write $img"; exit 1; }

swiftlet_run() { # LOG DISK-OPTIONS (BINARY: the executable, default $SWIFTLET)
    timeout "$limit" "${BINARY:-$SWIFTLET}" run --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs-full.cpio" --memory 256M \
        --cpus 1 --console "$1" --stats --cmdline "$cmdline" --disk "$img$2" ${OPTIONS:-} 2>"$1.err"
}
qemu_run() { # LOG AIO PACKED
    timeout "$limit" "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config \
        -display none -serial "file:$1" -no-reboot -L "$QEMU_FIRMWARE" \
        -drive id=d0,file="$img",format=raw,if=none,cache=writeback,aio="$2" -device virtio-blk-device,drive=d0,packed="$3" \
        -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs-full.cpio" -append "$cmdline" 2>"$1.err"
}

# samples VMM LOG STATUS: BENCH-SAMPLE lines for the fio figures the guest reported; 1 if any is missing.
samples() {
    tr -d '\r' <"$2" >"$2.lines"
    _ok=0
    for _m in randread:blk_randread_4k_iops:_iops:IOPS randwrite:blk_randwrite_4k_iops:_iops:IOPS \
              seqread:blk_seqread_1m_mbps:_mbps:MiB/s seqwrite:blk_seqwrite_1m_mbps:_mbps:MiB/s; do
        IFS=: read -r _job _metric _suffix _unit <<EOF
$_m
EOF
        case ",$jobs," in *",$_job,"*) ;; *) continue ;; esac
        _v=$(guest_value "$2.lines" "$_job$_suffix")
        if [ -n "$_v" ]; then
            echo "BENCH-SAMPLE metric=$_metric vmm=$1 value=$_v unit=$_unit"
        else
            _ok=1
        fi
    done
    if [ $_ok != 0 ] || [ "$3" != 0 ]; then
        echo "blk bench: $1 run incomplete (exit status $3): $(grep -E 'fail|SWIFTLET-DONE' "$2.lines" | tr '\n' ' ' | cut -c1-300)" \
            "$(tail -c 300 "$2.err" 2>/dev/null)"
        return 1
    fi
}
# stats METRIC_SUFFIX LOG [VMM]: the ratios from swiftlet's --stats line for blk0 (VMM: default swiftlet).
stats() {
    _line=$(grep '^swiftlet: stats device=blk0 ' "$2.err" | tail -n 1)
    _n=$(echo "$_line" | sed -n 's/.* notifications=\([0-9]*\).*/\1/p')
    _i=$(echo "$_line" | sed -n 's/.* interrupts=\([0-9]*\).*/\1/p')
    _r=$(echo "$_line" | sed -n 's/.* requests=\([0-9]*\).*/\1/p')
    if [ -z "$_n" ] || [ -z "$_i" ] || [ -z "${_r#0}" ]; then
        echo "blk bench: no usable 'swiftlet: stats device=blk0' line: ${_line:-none}"
        return 1
    fi
    echo "step: swiftlet$1 stats: notifications=$_n interrupts=$_i requests=$_r"
    echo "BENCH-SAMPLE metric=blk_notifications_per_request$1 vmm=${3:-swiftlet} value=$(awk "BEGIN { printf \"%.4f\", $_n / $_r }") unit=ratio"
    echo "BENCH-SAMPLE metric=blk_interrupts_per_request$1 vmm=${3:-swiftlet} value=$(awk "BEGIN { printf \"%.4f\", $_i / $_r }") unit=ratio"
}

# disk_options CONFIG: the --disk options of a swiftlet-WORD-WORD... configuration.
disk_options() {
    _o=
    for _w in $(echo "${1#swiftlet-}" | tr '-' ' '); do
        case $_w in
            split) _o="$_o,packed=off" ;;
            sync|io_uring) _o="$_o,engine=$_w" ;;
            *) echo "blk bench: no option $_w in configuration $1" >&2; return 1 ;;
        esac
    done
    echo "$_o"
}

boot() { # CONFIG LOG
    case $1 in
        swiftlet) HEARTBEAT_LOG=$2 heartbeat swiftlet_run "$2" "" ;;
        swiftlet-*) HEARTBEAT_LOG=$2 heartbeat swiftlet_run "$2" "$(disk_options "$1")" || return $? ;;
        baseline) OPTIONS=${BASELINE_OPTIONS:-} BINARY=$SWIFTLET_BASELINE HEARTBEAT_LOG=$2 heartbeat swiftlet_run "$2" "" ;;
        qemu-threads) HEARTBEAT_LOG=$2 heartbeat qemu_run "$2" threads off ;;
        qemu-threads-packed) HEARTBEAT_LOG=$2 heartbeat qemu_run "$2" threads on ;;
        qemu-io_uring) HEARTBEAT_LOG=$2 heartbeat qemu_run "$2" io_uring off ;;
        qemu-io_uring-packed) HEARTBEAT_LOG=$2 heartbeat qemu_run "$2" io_uring on ;;
        *) echo "blk bench: no configuration $1"; return 1 ;;
    esac
}

one() { # VMM ROUND
    _log=$work/$1-$2.console
    echo "step: blk bench round $2/$runs: $1"
    boot "$1" "$_log"
    _rc=$?
    echo "step: $1 exited $_rc"
    samples "$1" "$_log" $_rc || status=1
    case $1 in swiftlet|swiftlet-*) stats "" "$_log" "$1" || status=1 ;; esac
}

status=0
i=1
if [ -n "${SWIFTLET_BASELINE:-}" ]; then
    [ -x "$SWIFTLET_BASELINE" ] || { echo "blk bench: SWIFTLET_BASELINE=$SWIFTLET_BASELINE is not an executable"; exit 1; }
    echo "step: blk bench: the baseline $SWIFTLET_BASELINE ($(wc -c <"$SWIFTLET_BASELINE") bytes) runs in every round too"
fi
# Warm-up: one short, unmeasured boot of each VMM first. The first VM in a fresh lab L1 runs slower (TCG has yet to
# translate L1's KVM and block paths, and each VMM's own code), and would otherwise cost whichever VMM comes first.
full_cmdline=$cmdline
cmdline=$(echo "$cmdline" | sed 's/swiftlet\.fio\.runtime=[0-9]*/swiftlet.fio.runtime=1/')
for c in $configs ${SWIFTLET_BASELINE:+baseline}; do
    echo "step: blk bench warm-up: $c (1 s per job, not measured)"
    boot $c "$work/warm-up-$c.console"
    echo "step: $c exited $?"
done
cmdline=$full_cmdline
# rotate N WORDS...: the words from the Nth on, then the first N - 1 (each round starts with another config).
rotate() { _n=$1; shift; _head=; while [ "$_n" -gt 1 ] && [ $# -gt 1 ]; do _head="$_head $1"; shift; _n=$((_n - 1)); done; echo "$* $_head"; }
while [ $i -le "$runs" ]; do
    set -- $configs ${SWIFTLET_BASELINE:+baseline}
    order=$(rotate $(((i - 1) % $# + 1)) "$@")
    for c in $order; do one $c $i; done
    i=$((i + 1))
done

# Swiftlet without EVENT_IDX: the same jobs, once; only the notification and interrupt ratios count.
log=$work/swiftlet-no-event-idx.console
echo "step: blk bench: swiftlet with event-idx=off"
HEARTBEAT_LOG=$log heartbeat swiftlet_run "$log" ",event-idx=off"
echo "step: swiftlet exited $?"
stats _no_event_idx "$log" || status=1
exit $status
