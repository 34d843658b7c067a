#!/usr/bin/env python3
"""The control socket on this host, Swiftlet's Firecracker API against QEMU's QMP (the same machine: microvm, 1 vCPU,
128 MiB, not started: QEMU with -S, Swiftlet before InstanceStart), alternating, RUNS rounds:
  - api_socket_ready_ms: from just before the fork to the first successful connect() to the control socket (polled
    every 0.2 ms); api_socket_ready_cpu_ms: the CPU time of all the process's threads at that moment (schedstat);
  - api_first_response_ms: from just before the fork to the first answer read whole (Swiftlet: its answer to the
    first GET /machine-config, sent at once after the connect; QEMU: its QMP greeting, which it sends unasked), so that
    a socket that accepts before its server runs cannot look faster than it serves;
  - api_request_us: the median of REQUESTS round trips on one connection (Swiftlet: GET /machine-config; QEMU:
    query-status), and api_request_p99_us their 99th percentile.
With HOSTILE set (the hostile guest's ELF, which boots on this host's KVM), what the API adds to a running VMM (Swiftlet
only, each round): the same halted guest (1 vCPU, 128 MiB, a console on stdio) under `swiftlet run` and under
`swiftlet firecracker --config-file` with the API up, read from /proc/PID 6 s after the guest halted (libdispatch ends an idle worker thread after 5 s: before that, the
start-up's transient workers would be counted):
  - api_cost_threads: threads more (the issue's budget: one);
  - api_cost_anon_kib, api_cost_private_dirty_kib, api_cost_private_kib: more anonymous, private dirty and private
    (clean and dirty) memory outside the guest's RAM mapping, from /proc/PID/smaps (the budget: 1 MiB private).
Usage: bench_api.py SWIFTLET QEMU RUNS [REQUESTS]. Prints BENCH-SAMPLE lines (harness.py's format)."""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SWIFTLET, QEMU, RUNS = sys.argv[1], sys.argv[2], int(sys.argv[3])
REQUESTS = int(sys.argv[4]) if len(sys.argv) > 4 else 1000


def cpu_ms(pid):
    """CPU time of every thread of `pid` so far, from schedstat (nanoseconds; utime/stime count 10 ms ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e6


def wait_for_socket(path, proc, started, deadline_s=10):
    """Polls connect() until it succeeds; returns (connected socket, ms since `started`, CPU ms)."""
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            elapsed = (time.monotonic_ns() - started) / 1e6
            return s, elapsed, cpu_ms(proc.pid)
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode} before its socket accepted")
        if (time.monotonic_ns() - started) / 1e9 > deadline_s:
            raise RuntimeError(f"{path} did not accept within {deadline_s} s")
        time.sleep(0.0002)


def recv_until(s, predicate, buffer=b""):
    while not predicate(buffer):
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("the control socket closed")
        buffer += chunk
    return buffer


def http_round_trips(s, count, started):
    """The round trips' times (us), and when the first answer was whole (ms since `started`)."""
    request = b"GET /machine-config HTTP/1.1\r\nHost: localhost\r\n\r\n"
    times = []
    first_ms = None
    for _ in range(count):
        t0 = time.monotonic_ns()
        s.sendall(request)
        data = recv_until(s, lambda b: b"\r\n\r\n" in b)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
        recv_until(s, lambda b: len(b) >= length, body)
        times.append((time.monotonic_ns() - t0) / 1e3)
        if first_ms is None:
            first_ms = (time.monotonic_ns() - started) / 1e6
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"GET /machine-config answered {head[:40]!r}")
    return times, first_ms


def qmp_round_trips(s, count, started):
    """As http_round_trips; QEMU's first answer is its greeting."""
    recv_until(s, lambda b: b"\n" in b)  # the greeting
    first_ms = (time.monotonic_ns() - started) / 1e6
    s.sendall(b'{"execute": "qmp_capabilities"}\n')
    recv_until(s, lambda b: b"return" in b)
    times = []
    for _ in range(count):
        t0 = time.monotonic_ns()
        s.sendall(b'{"execute": "query-status"}\n')
        data = recv_until(s, lambda b: b"\n" in b)
        times.append((time.monotonic_ns() - t0) / 1e3)
        if b'"return"' not in data:
            raise RuntimeError(f"query-status answered {data[:80]!r}")
    return times, first_ms


def one(vmm, work):
    path = os.path.join(work, f"{vmm}.sock")
    if vmm == "swiftlet":
        argv = [SWIFTLET, "firecracker", "--api-sock", path]
    else:
        argv = [QEMU, "-M", "microvm", "-accel", "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg",
                "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-S",
                "-qmp", f"unix:{path},server=on,wait=off"]
    started = time.monotonic_ns()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        s, ready_ms, ready_cpu = wait_for_socket(path, proc, started)
        with s:
            s.settimeout(10)
            round_trips = http_round_trips if vmm == "swiftlet" else qmp_round_trips
            times, first_ms = round_trips(s, REQUESTS, started)
        return ready_ms, ready_cpu, first_ms, times
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if os.path.exists(path):
            os.unlink(path)


HOSTILE = os.environ.get("HOSTILE")
GUEST_MIB = 128


def footprint(pid):
    """Threads, and the anonymous, private dirty and private KiB of `pid` outside the guest's RAM mapping."""
    with open(f"/proc/{pid}/status") as f:
        threads = int([line.split()[1] for line in f if line.startswith("Threads:")][0])
    totals = {"Anonymous:": 0, "Private_Dirty:": 0, "Private_Clean:": 0}
    guest = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if fields[0] == "Size:":
                guest = int(fields[1]) == GUEST_MIB * 1024
            elif fields[0] in totals and not guest:
                totals[fields[0]] += int(fields[1])
    return threads, totals["Anonymous:"], totals["Private_Dirty:"], totals["Private_Dirty:"] + totals["Private_Clean:"]


def halted_guest(how, work):
    """Starts the hostile guest halted under `swiftlet run` or `swiftlet firecracker`; returns its footprint."""
    cmdline = "console=ttyS0 hostile.only=none hostile.end=halt"
    if how == "run":
        argv = [SWIFTLET, "run", "--kernel", HOSTILE, "--cmdline", cmdline, "--cpus", "1", "--memory", str(GUEST_MIB)]
    else:
        config = os.path.join(work, "cost.json")
        with open(config, "w") as f:
            json.dump({"boot-source": {"kernel_image_path": HOSTILE, "boot_args": cmdline},
                       "machine-config": {"vcpu_count": 1, "mem_size_mib": GUEST_MIB}}, f)
        argv = [SWIFTLET, "firecracker", "--config-file", config, "--api-sock", os.path.join(work, "cost.sock")]
    read_end, write_end = os.pipe()  # the same stdin for both: open, never written
    proc = subprocess.Popen(argv, stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.close(read_end)
    try:
        seen = b""
        deadline = time.monotonic() + 10
        while b"HOSTILE halted" not in seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{how}: the guest did not halt within 10 s: {seen[-300:]!r}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"{how} exited before the guest halted: {seen[-300:]!r}")
            seen += chunk
        time.sleep(6)
        return footprint(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.close(write_end)


def main():
    work = tempfile.mkdtemp(prefix="swiftlet-bench-api.")
    status = 0
    try:
        for round_ in range(RUNS):
            for vmm in ("swiftlet", "qemu"):
                try:
                    ready_ms, ready_cpu, first_ms, times = one(vmm, work)
                except (RuntimeError, OSError) as e:
                    print(f"api bench: {vmm} round {round_ + 1} failed: {e}", flush=True)
                    status = 1
                    continue
                times.sort()
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                for metric, value, unit in (("api_socket_ready_ms", ready_ms, "ms"),
                                            ("api_socket_ready_cpu_ms", ready_cpu, "ms"),
                                            ("api_first_response_ms", first_ms, "ms"),
                                            ("api_request_us", statistics.median(times), "us"),
                                            ("api_request_p99_us", p99, "us")):
                    print(f"BENCH-SAMPLE metric={metric} vmm={vmm} value={value:.2f} unit={unit}", flush=True)
            if HOSTILE:
                try:
                    run, api = halted_guest("run", work), halted_guest("firecracker", work)
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                    print(f"api bench: cost round {round_ + 1} failed: {e}", flush=True)
                    status = 1
                    continue
                print(f"api bench: cost round {round_ + 1}: run {run}, firecracker {api} (threads, anon, private dirty, private KiB)", flush=True)
                for metric, index, unit in (("api_cost_threads", 0, "threads"), ("api_cost_anon_kib", 1, "KiB"),
                                            ("api_cost_private_dirty_kib", 2, "KiB"), ("api_cost_private_kib", 3, "KiB")):
                    print(f"BENCH-SAMPLE metric={metric} vmm=swiftlet value={api[index] - run[index]:.2f} unit={unit}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
