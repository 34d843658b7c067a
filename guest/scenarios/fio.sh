#!/bin/sh
# Block device benchmark: runs fio jobs against a virtio disk, one after another, and reports their figures.
#   swiftlet.fio=JOB[,JOB...]    jobs, in order (default randread):
#                                randread, randwrite (4 KiB random), seqread, seqwrite (1 MiB sequential)
#   swiftlet.fio.dev=PATH        device (default /dev/vda)
#   swiftlet.fio.runtime=S       measured seconds per job (default 5), after
#   swiftlet.fio.ramp=S          seconds of warm-up per job (default 1)
#   swiftlet.fio.iodepth=N       default 32
#   swiftlet.fio.engine=E        default libaio (the guest kernel has AIO, not io_uring)
# Every job uses direct=1 on the whole device. For each job:
#   SWIFTLET-VALUE test=fio name=JOB_iops value=N      (I/O operations per second)
#   SWIFTLET-VALUE test=fio name=JOB_mbps value=M      (MiB/s)
# and a check fio-JOB (fio exited 0 with no job error). While a job runs, a line every 2 s keeps the console alive.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

jobs=$(param swiftlet.fio)
dev=$(param swiftlet.fio.dev)
runtime=$(param swiftlet.fio.runtime)
ramp=$(param swiftlet.fio.ramp)
iodepth=$(param swiftlet.fio.iodepth)
engine=$(param swiftlet.fio.engine)
jobs=${jobs:-randread} dev=${dev:-/dev/vda} runtime=${runtime:-5} ramp=${ramp:-1} iodepth=${iodepth:-32}
engine=${engine:-libaio}

if ! command -v fio >/dev/null 2>&1; then
    fail fio "no fio in this initramfs (make guest stages it)"
    finish
fi
require_block_device device "$dev"
report device_bytes "$(($(cat "/sys/block/${dev#/dev/}/size") * 512))"
report scheduler "$(cat "/sys/block/${dev#/dev/}/queue/scheduler" 2>/dev/null)"

for job in $(echo "$jobs" | tr ',' ' '); do
    case $job in
        randread) rw=randread bs=4k dir=read ;;
        randwrite) rw=randwrite bs=4k dir=write ;;
        seqread) rw=read bs=1M dir=read ;;
        seqwrite) rw=write bs=1M dir=write ;;
        *) fail "fio-$job" "unknown job (randread, randwrite, seqread, seqwrite)"; continue ;;
    esac
    echo "fio: $job ($rw bs=$bs iodepth=$iodepth $engine, ${ramp}+${runtime} s) on $dev"
    out=/tmp/fio-$job.terse
    fio --name="$job" --filename="$dev" --rw="$rw" --bs="$bs" --direct=1 --ioengine="$engine" --iodepth="$iodepth" \
        --numjobs=1 --time_based --runtime="$runtime" --ramp_time="$ramp" --group_reporting \
        --eta=never --output-format=terse --output="$out" >"/tmp/fio-$job.log" 2>&1 &
    pid=$!
    waited=0
    while kill -0 $pid 2>/dev/null; do
        sleep 1
        waited=$((waited + 1))
        [ $((waited % 2)) -ne 0 ] || echo "fio: $job running ${waited}s"
    done
    wait $pid
    rc=$?
    # terse v3: field 5 is the job's error; read bw (KiB/s) and iops are fields 7 and 8, write's 48 and 49.
    line=$(grep '^3;' "$out" 2>/dev/null | tail -n 1)
    err=$(echo "$line" | cut -d';' -f5)
    if [ $rc -ne 0 ] || [ -z "$line" ] || [ "$err" != 0 ]; then
        fail "fio-$job" "exit=$rc error=$err $(cat "/tmp/fio-$job.log" "$out" 2>/dev/null | tail -c 300)"
        continue
    fi
    if [ "$dir" = read ]; then f_bw=7 f_iops=8; else f_bw=48 f_iops=49; fi
    iops=$(echo "$line" | cut -d';' -f$f_iops)
    mbps=$(echo "$line" | cut -d';' -f$f_bw | awk '{ printf "%.1f", $1 / 1024 }')
    pass "fio-$job"
    report "${job}_iops" "$iops"
    report "${job}_mbps" "$mbps"
done
finish
