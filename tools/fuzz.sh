#!/usr/bin/env bash
# The libFuzzer targets (Fuzz/README.md): build them, fuzz them, replay their corpora.
#
#   tools/fuzz.sh build                          build every target (-sanitize=fuzzer,address) into .build/fuzz
#   tools/fuzz.sh run [TARGET...] [SECONDS]       fuzz each target SECONDS (default 60), growing its corpus
#                                                (FUZZ_RUNS=N: N executions each instead)
#   tools/fuzz.sh replay [TARGET...]              run every input of the committed corpora once
#   tools/fuzz.sh check [SECONDS]                 replay, then fuzz each target SECONDS (default 10): make test
#   tools/fuzz.sh totals                          a table of executions per target over all runs (.build/fuzz/runs.tsv)
#
# Targets: queue packed mmio blk net vsock balloon loaders agent. Each run prints one line per target:
#   FUZZ-RESULT <target> ok|fail execs=N execs_per_s=N cov=N features=N corpus=N seconds=N [artifact=PATH]
# A crash or an invariant failure leaves the input in .build/fuzz/artifacts/; reproduce it with
#   .build/fuzz/release/Fuzz<Name> -detect_leaks=0 <artifact>
# The committed seed corpora are Fuzz/corpus/<target>/; what the fuzzer finds goes to .build/fuzz/corpus/<target>/
# (not in git; `tools/fuzz.sh minimize TARGET` merges it into the seeds, smallest inputs that keep the coverage).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/.build/fuzz
SWIFT=${SWIFT:-swift}
ALL_TARGETS=(queue packed mmio blk net vsock balloon loaders agent)

# The Swift executable of each target (Package.swift adds them when SWIFTLET_FUZZ is set).
binary() {
    case $1 in
        queue) echo "$OUT/release/FuzzQueue" ;;
        packed) echo "$OUT/release/FuzzPacked" ;;
        mmio) echo "$OUT/release/FuzzMmio" ;;
        blk) echo "$OUT/release/FuzzBlock" ;;
        net) echo "$OUT/release/FuzzNet" ;;
        vsock) echo "$OUT/release/FuzzVsock" ;;
        balloon) echo "$OUT/release/FuzzBalloon" ;;
        loaders) echo "$OUT/release/FuzzLoaders" ;;
        agent) echo "$OUT/agent/FuzzAgent" ;;
        *) echo "fuzz: no target '$1' (targets: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
    esac
}

# Largest input per target: a kernel image needs room for its headers; the rest need a few KiB of rings and data.
max_len() {
    case $1 in
        loaders) echo 16384 ;;
        agent) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

build() {
    mkdir -p "$OUT/agent"
    echo "fuzz: building the targets (swift build -c release -sanitize=fuzzer,address, in $OUT)" >&2
    # -enable-testing: the device targets reach the event handlers the device loop calls (internal API).
    local status=0
    SWIFTLET_FUZZ=1 "$SWIFT" build -c release --scratch-path "$OUT" \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing -Xswiftc -use-ld=lld \
        -Xcc -fsanitize=fuzzer-no-link,address >"$OUT/build.log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        grep -v -e '^\[' "$OUT/build.log" | tail -40 >&2
        echo "fuzz: the build failed (exit $status); the whole log: $OUT/build.log" >&2
        exit 1
    fi
    for target in queue packed mmio blk net vsock balloon loaders; do
        [ -x "$(binary "$target")" ] || { echo "fuzz: the build did not produce $(binary "$target")" >&2; exit 1; }
    done
    # The agent is C: the same libFuzzer and ASan, from the Swift toolchain's clang.
    local clang
    clang="$(dirname "$(readlink -f "$(command -v "$SWIFT")")")/clang"
    "$clang" -g -O1 -fuse-ld=lld -fsanitize=fuzzer,address -Wall -Wno-unused-function \
        -o "$OUT/agent/FuzzAgent" Fuzz/Agent/agent_fuzz.c
}

# Options for every run: leaks are not what the targets check (their memory bound is, per input); a single
# allocation over 64 MiB, RSS over 2 GiB or an input running over 10 s is a failure.
OPTIONS=(-detect_leaks=0 -malloc_limit_mb=64 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
export SWIFT_BACKTRACE=enable=no # libFuzzer reports crashes itself; Swift's backtracer would stall them

# fuzz TARGET SECONDS MODE: MODE is run (grow .build/fuzz/corpus/TARGET from the seeds) or replay (seeds once).
fuzz() {
    local target=$1 seconds=$2 mode=$3
    local bin seeds work log
    bin=$(binary "$target")
    [ -x "$bin" ] || { echo "fuzz: $bin is not built (tools/fuzz.sh build)" >&2; exit 1; }
    seeds=$ROOT/Fuzz/corpus/$target
    work=$OUT/corpus/$target
    log=$OUT/logs/$target-$mode.log
    mkdir -p "$seeds" "$work" "$OUT/artifacts" "$OUT/logs"
    local args=("${OPTIONS[@]}" -max_len="$(max_len "$target")" -artifact_prefix="$OUT/artifacts/$target-")
    local started status=0
    started=$(date +%s)
    if [ "$mode" = replay ]; then
        "$bin" "${args[@]}" -runs=0 "$seeds" >"$log" 2>&1 || status=$?
    else
        # FUZZ_RUNS=N: N executions instead of SECONDS (how the long runs reach their totals).
        local limit=(-max_total_time="$seconds")
        [ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
        "$bin" "${args[@]}" "${limit[@]}" "$work" "$seeds" >"$log" 2>&1 || status=$?
    fi
    local elapsed=$(( $(date +%s) - started ))
    local execs rate cov ft corpus artifact
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(find "$([ "$mode" = replay ] && echo "$seeds" || echo "$work")" -type f | wc -l)
    artifact=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log" | tail -1)
    local verdict=ok
    if [ "$status" -ne 0 ] || [ -n "$artifact" ]; then verdict=fail; fi
    # Stopped with SIGINT (a long run cut short): what it ran counts, and nothing failed.
    if [ -z "$artifact" ] && grep -q 'libFuzzer: run interrupted' "$log"; then verdict=stopped; fi
    echo "FUZZ-RESULT $target $verdict execs=${execs:-0} execs_per_s=${rate:-0} cov=${cov:-0} features=${ft:-0} corpus=$corpus seconds=$elapsed${artifact:+ artifact=$artifact}"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$target" "$mode" "${execs:-0}" "${rate:-0}" \
        "${cov:-0}" "$verdict" "${ft:-0}" "$elapsed" >>"$OUT/runs.tsv"
    if [ "$verdict" = fail ]; then
        echo "fuzz: $target failed (exit $status); its log: $log" >&2
        grep -m3 -e 'INVARIANT FAILED' -e 'ERROR: AddressSanitizer' -e 'ERROR: libFuzzer' -e 'Fatal error' "$log" >&2 || true
        [ -n "$artifact" ] && echo "fuzz: reproduce with: $bin -detect_leaks=0 $artifact" >&2
        return 1
    fi
}

# A target's files (/dev/shm/swiftlet-fuzz-NAME-PID, /tmp/swiftlet-fuzz-vsock-PID.sock*) are removed at its exit,
# but not when it aborts on a finding or is interrupted: remove those whose process is gone.
clean_leftovers() {
    local file pid
    for file in /dev/shm/swiftlet-fuzz-* /tmp/swiftlet-fuzz-*; do
        [ -e "$file" ] || continue
        pid=$(basename "$file" | sed -n 's/^swiftlet-fuzz-[a-z]*-\([0-9]*\).*/\1/p')
        [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && rm -f "$file"
    done
    return 0
}
trap clean_leftovers EXIT

targets_or_all() { if [ $# -gt 0 ]; then echo "$@"; else echo "${ALL_TARGETS[@]}"; fi; }

command=${1:-check}
shift || true
case $command in
    build) build ;;
    run|replay)
        seconds=60
        names=()
        for arg in "$@"; do
            if [[ $arg =~ ^[0-9]+$ ]]; then seconds=$arg; else binary "$arg" >/dev/null; names+=("$arg"); fi
        done
        failed=0
        for target in $(targets_or_all "${names[@]}"); do fuzz "$target" "$seconds" "$command" || failed=1; done
        exit $failed ;;
    check)
        seconds=${1:-10}
        build
        failed=0
        for target in "${ALL_TARGETS[@]}"; do
            fuzz "$target" 0 replay || { failed=1; continue; }
            fuzz "$target" "$seconds" run || failed=1
        done
        exit $failed ;;
    minimize)
        target=${1:?usage: tools/fuzz.sh minimize TARGET}
        bin=$(binary "$target")
        mkdir -p "$OUT/minimized/$target"
        "$bin" "${OPTIONS[@]}" -max_len="$(max_len "$target")" -merge=1 "$OUT/minimized/$target" \
            "$ROOT/Fuzz/corpus/$target" "$OUT/corpus/$target" >"$OUT/logs/$target-merge.log" 2>&1
        rm -rf "$ROOT/Fuzz/corpus/$target"
        mv "$OUT/minimized/$target" "$ROOT/Fuzz/corpus/$target"
        echo "fuzz: Fuzz/corpus/$target now holds $(find "$ROOT/Fuzz/corpus/$target" -type f | wc -l) inputs" ;;
    totals)
        [ -f "$OUT/runs.tsv" ] || { echo "fuzz: no runs recorded yet" >&2; exit 1; }
        # A markdown table: executions over every recorded run, the rate and coverage of the longest run, failures.
        echo "| target | executions | runs | execs/s (longest run) | coverage: edges / features (longest run) | failures |"
        echo "|---|---|---|---|---|---|"
        awk -F'\t' '$3 == "run" {
                execs[$2] += $4; runs[$2]++; if ($7 == "fail") fails[$2]++
                if ($4 >= longest[$2]) { longest[$2] = $4; rate[$2] = $5; cov[$2] = $6; ft[$2] = ($8 == "" ? "?" : $8) }
            }
            END { for (t in execs) printf "| `%s` | %d | %d | %d | %s / %s | %d |\n", t, execs[t], runs[t], rate[t], cov[t], ft[t], fails[t] }' \
            "$OUT/runs.tsv" | sort ;;
    -h|--help|help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "fuzz: unknown command '$command' (build, run, replay, check, minimize, totals)" >&2; exit 2 ;;
esac
