#!/usr/bin/env python3
"""Snapshots on this host's KVM, with the hostile guest in its count mode (Tests/Integration/hostile/count.c: it
counts, checksums its memory and writes its counter to its disk, printing a line every few thousand steps). Needs a
/dev/kvm that accepts the state ioctls and runs that guest (this project's PVM-style host does; it cannot boot Linux,
so the Linux guest's snapshot tests are the lab's: swiftlet-snapshot).

- A snapshot taken through the control socket (`swiftlet snapshot`) restores (`swiftlet restore`) into a guest that
  goes on counting where it stopped, its memory and disk intact; two restores of one snapshot, each on its own copy of
  the disk, print the same lines (the guest is deterministic); a snapshot of a restored VM restores again.
- The memory file is sparse, and a restore maps it: a clone's private memory is what it wrote.
- Diff snapshots (run --track-dirty-pages): a full snapshot, then, after the guest ran on, a diff and a full one of
  the same paused moment; the diff merged onto the first full one (`swiftlet snapshot-merge`) is the second full
  one's memory byte for byte, and their state files agree record for record; the merged file restores into a guest
  that goes on counting; a diff of that restored VM (whose base is the file it maps) merges and restores again.
- Bad input is refused with a message that says what is wrong, and nothing is left (no control socket): a truncated
  state file, a flipped byte, a wrong version, a memory file smaller than guest RAM, a CPUID feature this host lacks,
  a snapshot of a VM that is not paused, a restore that changes the machine.

Usage: test_snapshot.py SWIFTLET HOSTILE_ELF. Prints TEST-RESULT lines; `restore_to_first_run_ms` and the snapshot's
sizes as BENCH-INFO lines."""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

SWIFTLET, HOSTILE = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
MEMORY_MIB = 256
STEP = 20000
CMDLINE = f"hostile.only=none hostile.end=count hostile.count_step={STEP} hostile.count_kib=64"
COUNT_RE = re.compile(r"HOSTILE count n=(\d+) sum=(0x[0-9a-f]+) verify=(\w+) disk=(\w+) written=(\d+)")
results = {"ok": 0, "fail": 0}


def report(name, ok, detail=""):
    results["ok" if ok else "fail"] += 1
    print(f"TEST-RESULT snapshot.{name} {'ok' if ok else 'fail'}{' ' + detail if detail and not ok else ''}", flush=True)


def counts(path):
    """The count lines of a console file: [(n, sum, verify, disk, written)]."""
    try:
        with open(path, errors="replace") as f:
            return [(int(m.group(1)), m.group(2), m.group(3), m.group(4), int(m.group(5))) for m in COUNT_RE.finditer(f.read())]
    except FileNotFoundError:
        return []


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def control(sock, line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sock)
    s.sendall(line.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode().strip()


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def private_kib(pid):
    """Private_Clean + Private_Dirty of a process, from smaps_rollup."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def crc32c(data):
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def records(body):
    """Top-level records of a state file's body: [(tag, start, end)] of each payload."""
    out, offset = [], 0
    while offset + 8 <= len(body):
        tag = body[offset:offset + 4].decode("ascii", "replace")
        (length,) = struct.unpack_from("<I", body, offset + 4)
        out.append((tag, offset + 8, offset + 8 + length))
        offset += 8 + length
    return out


def with_body(state, change):
    """A state file whose body `change` rewrote (a bytearray, in place), with a valid length and checksum."""
    body = bytearray(state[24:-4])
    change(body)
    header = state[:16] + struct.pack("<Q", len(body))
    file = bytes(header) + bytes(body)
    return file + struct.pack("<I", crc32c(file))


def api(sock, method, path, body=None):
    """One request to a Firecracker API socket: (status, fault_message or body text)."""
    import json
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sock)
    payload = b"" if body is None else json.dumps(body).encode()
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(payload)}\r\n"
              f"Content-Type: application/json\r\n\r\n".encode() + payload)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1)) if re.search(rb"(?i)content-length", head) else 0
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    s.close()
    text = rest.decode(errors="replace")
    try:
        return status, json.loads(text).get("fault_message", text) if text else ""
    except ValueError:
        return status, text


def wait_socket(path, timeout=10):
    return wait_for(lambda: os.path.exists(path), timeout)


def firecracker_api(work, procs):
    """Firecracker's PATCH /vm, PUT /snapshot/create and PUT /snapshot/load, as its users call them."""
    disk = os.path.join(work, "fc-disk.raw")
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    sock = os.path.join(work, "fc.sock")
    console = open(os.path.join(work, "fc.txt"), "w")
    first = subprocess.Popen([SWIFTLET, "firecracker", "--api-sock", sock], stdout=console, stderr=subprocess.STDOUT, cwd=work)
    procs.append(first)
    if not wait_socket(sock):
        report("api-boots", False, "no API socket")
        return
    calls = [("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": MEMORY_MIB}),
             ("PUT", "/boot-source", {"kernel_image_path": HOSTILE, "boot_args": "console=ttyS0 " + CMDLINE}),
             ("PUT", "/drives/scratch", {"drive_id": "scratch", "is_root_device": False, "path_on_host": disk, "is_read_only": False}),
             ("PUT", "/actions", {"action_type": "InstanceStart"})]
    answers = [api(sock, *call) for call in calls]
    booted = all(status == 204 for status, _ in answers) and wait_for(lambda: len(counts(os.path.join(work, "fc.txt"))) >= 2)
    report("api-boots", booted, f"{answers}")
    if not booted:
        return
    state, memory = os.path.join(work, "fc.snap"), os.path.join(work, "fc.mem")
    status, fault = api(sock, "PUT", "/snapshot/create", {"snapshot_path": state, "mem_file_path": memory})
    report("api-create-needs-pause", status == 400 and "pause it first" in fault, f"{status} {fault}")
    paused = api(sock, "PATCH", "/vm", {"state": "Paused"})
    status, fault = api(sock, "PUT", "/snapshot/create", {"snapshot_path": state, "mem_file_path": memory, "snapshot_type": "Diff"})
    report("api-create-diff-needs-tracking", status == 400 and "needs dirty-page tracking" in fault, f"{status} {fault}")
    created = api(sock, "PUT", "/snapshot/create", {"snapshot_path": state, "mem_file_path": memory, "snapshot_type": "Full"})
    report("api-create", paused[0] == 204 and created[0] == 204 and os.path.getsize(state) > 0, f"{paused} {created}")
    last = counts(os.path.join(work, "fc.txt"))[-1]
    stop(first)
    copy = os.path.join(work, "fc-disk-copy.raw")
    shutil.copyfile(disk, copy)

    # The clone's drive is the snapshot's path: the original has exited, and its disk still holds what it wrote.
    sock2 = os.path.join(work, "fc2.sock")
    console2 = open(os.path.join(work, "fc2.txt"), "w")
    second = subprocess.Popen([SWIFTLET, "firecracker", "--api-sock", sock2], stdout=console2, stderr=subprocess.STDOUT, cwd=work)
    procs.append(second)
    wait_socket(sock2)
    status, fault = api(sock2, "PUT", "/snapshot/load", {"snapshot_path": state, "mem_backend": {"backend_type": "Uffd", "backend_path": "/x"}})
    report("api-load-uffd-refused", status == 400 and "no userfaultfd backend" in fault, f"{status} {fault}")
    status, fault = api(sock2, "PUT", "/snapshot/load", {"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": memory},
                                                         "network_overrides": [{"iface_id": "eth9", "host_dev_name": "tap9"}]})
    report("api-load-unknown-interface", status == 400 and "no network interface `eth9`" in fault, f"{status} {fault}")
    status, fault = api(sock2, "PUT", "/snapshot/load", {"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": memory},
                                                         "resume_vm": False})
    paused_state = api(sock2, "GET", "/")
    report("api-load-paused", status == 204 and '"Paused"' in paused_state[1] if isinstance(paused_state[1], str) else False,
           f"{status} {fault} {paused_state}")
    time.sleep(0.3)
    report("api-load-stays-paused", counts(os.path.join(work, "fc2.txt")) == [], "the restored guest ran while paused")
    resumed = api(sock2, "PATCH", "/vm", {"state": "Resumed"})
    ok = resumed[0] == 204 and wait_for(lambda: len(counts(os.path.join(work, "fc2.txt"))) >= 2)
    seen = counts(os.path.join(work, "fc2.txt"))
    report("api-load-continues", ok and seen[0][0] == last[0] + STEP and all(c[2] == "ok" and c[3] == "ok" for c in seen),
           f"{resumed} last {last[:2]}, then {seen[:2]}")
    config = api(sock2, "GET", "/vm/config")
    report("api-load-config", config[0] == 200 and "scratch" in config[1] and str(MEMORY_MIB) in config[1], f"{config}")
    again = api(sock2, "PUT", "/snapshot/load", {"snapshot_path": state, "mem_file_path": memory})
    report("api-load-twice-refused", again[0] == 400 and "already" in again[1], f"{again}")
    stop(second)
    sock3 = os.path.join(work, "fc3.sock")
    third = subprocess.Popen([SWIFTLET, "firecracker", "--api-sock", sock3], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    procs.append(third)
    wait_socket(sock3)
    api(sock3, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    api(sock3, "PUT", "/boot-source", {"kernel_image_path": HOSTILE})
    status, fault = api(sock3, "PUT", "/snapshot/load", {"snapshot_path": state, "mem_file_path": memory})
    report("api-load-after-config-refused", status == 400 and "after configuring boot-specific resources" in fault, f"{status} {fault}")
    stop(third)


def files_equal(a, b):
    """Whether two files read the same (holes read as zeroes); the offset of the first difference otherwise."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                for i, (p, q) in enumerate(zip(x, y)):
                    if p != q:
                        return offset + i
                return offset + min(len(x), len(y))
            if not x:
                return None
            offset += len(x)


def state_records(path, drop=("dirt", "vm  ")):
    # "vm  " holds KVM_GET_CLOCK's whole answer, whose host-time fields (realtime, host_tsc) each snapshot reads
    # anew: two snapshots of one paused moment differ there. The guest's clock in it is the pause's, as "time" is.
    with open(path, "rb") as f:
        body = f.read()[24:-4]
    return [(tag, body[start:end]) for tag, start, end in records(body) if tag not in drop]


def diff_snapshots(work, procs, start):
    """Diff snapshots of the count guest: base + diff equals a full snapshot of the same moment, and restores."""
    disk = os.path.join(work, "diff-disk.raw")
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    ctl = os.path.join(work, "ctl-diff")
    console = os.path.join(work, "diff.txt")
    vm = start(["run", "--kernel", HOSTILE, "--memory", f"{MEMORY_MIB}M", "--disk", disk, "--control-socket", ctl,
                "--track-dirty-pages", "--cmdline", CMDLINE], console, "diff")
    if not wait_for(lambda: len(counts(console)) >= 3):
        report("diff-guest-counts", False, f"{len(counts(console))} lines with --track-dirty-pages")
        return
    path = lambda name: os.path.join(work, name)
    snap = lambda *args: subprocess.run([SWIFTLET, "snapshot", ctl, *args], capture_output=True, text=True, timeout=60)
    r = snap("--state", path("d0.snap"), "--memory", path("d0.mem"), "--diff")
    report("diff-needs-a-base", r.returncode == 1 and "take a full snapshot first" in r.stderr, (r.stdout + r.stderr).strip())
    r = snap("--state", path("base.snap"), "--memory", path("base.mem"), "--resume")
    report("diff-base-create", r.returncode == 0, (r.stdout + r.stderr).strip())
    at_base = len(counts(console))
    # The guest writes its memory (the checksummed area) and its disk (virtio-blk reads back into guest buffers).
    wait_for(lambda: len(counts(console)) >= at_base + 3)
    r = snap("--state", path("diff.snap"), "--memory", path("diff.mem"), "--diff")
    full = control(ctl, f"snapshot {path('full.snap')} {path('full.mem')}")
    report("diff-create", r.returncode == 0 and full.startswith("ok"), (r.stdout + r.stderr).strip() + " / " + full)
    if r.returncode != 0 or not full.startswith("ok"):
        stop(vm)
        return
    diff_written = int(re.search(r"written_bytes=(\d+)", r.stdout).group(1))
    full_written = int(re.search(r"written_bytes=(\d+)", full).group(1))
    print(f"BENCH-INFO diff_written_bytes={diff_written} full_written_bytes={full_written} "
          f"diff_create_ms={re.search(r'ms=([0-9.]+)', r.stdout).group(1)} full_create_ms={re.search(r'ms=([0-9.]+)', full).group(1)}", flush=True)
    report("diff-is-smaller", 0 < diff_written < full_written, f"diff {diff_written} bytes, full {full_written}")
    paused_at = counts(console)[-1]
    disk_copy = path("diff-disk-copy.raw")
    shutil.copyfile(disk, disk_copy)
    stop(vm)
    m = subprocess.run([SWIFTLET, "snapshot-merge", "--state", path("diff.snap"), "--diff", path("diff.mem"),
                        "--base", path("base.mem"), "--output", path("merged.mem")], capture_output=True, text=True, timeout=60)
    report("diff-merge", m.returncode == 0 and m.stdout.startswith("ok copied_bytes="), (m.stdout + m.stderr).strip())
    first_difference = files_equal(path("merged.mem"), path("full.mem"))
    report("diff-merged-equals-full", m.returncode == 0 and first_difference is None,
           f"they differ at offset {first_difference} (page {(first_difference or 0) // 4096})")
    differ = [a[0] for a, b in zip(state_records(path("diff.snap")), state_records(path("full.snap"))) if a != b]
    report("diff-state-equals-full", not differ and len(state_records(path("diff.snap"))) == len(state_records(path("full.snap"))),
           f"records that differ: {differ}")
    r = subprocess.run([SWIFTLET, "restore", "--state", path("diff.snap"), "--memory", path("diff.mem"), "--console", "none"],
                       capture_output=True, text=True, timeout=30)
    report("diff-restore-unmerged-refused", r.returncode == 1 and "is a diff snapshot" in r.stderr and "snapshot-merge" in r.stderr,
           r.stderr.strip()[:300])
    ctl2 = path("ctl-diff2")
    restored = start(["restore", "--state", path("diff.snap"), "--memory", path("merged.mem"), "--disk", f"0={disk_copy}",
                      "--track-dirty-pages", "--control-socket", ctl2], path("diff-restored.txt"), "diff-restored")
    ok = wait_for(lambda: len(counts(path("diff-restored.txt"))) >= 3)
    seen = counts(path("diff-restored.txt"))
    with open(path("diff-restored.err")) as f:
        errors = f.read().strip()[-300:]
    report("diff-restore-continues", ok and seen[0][0] == paused_at[0] + STEP and all(c[2] == "ok" and c[3] == "ok" for c in seen),
           f"paused at {paused_at[:2]}, then {seen[:2]}: {errors}")
    if not ok:
        stop(restored)
        return
    # A diff of the restored VM: its base is the memory file it maps.
    r = subprocess.run([SWIFTLET, "snapshot", ctl2, "--state", path("diff2.snap"), "--memory", path("diff2.mem"), "--diff"],
                       capture_output=True, text=True, timeout=60)
    paused_at = counts(path("diff-restored.txt"))[-1]
    disk_copy2 = path("diff-disk-copy2.raw")
    shutil.copyfile(disk_copy, disk_copy2)
    stop(restored)
    m = subprocess.run([SWIFTLET, "snapshot-merge", "--state", path("diff2.snap"), "--diff", path("diff2.mem"),
                        "--base", path("merged.mem"), "--output", path("merged.mem")], capture_output=True, text=True, timeout=60)
    report("diff-of-restored-merges-in-place", r.returncode == 0 and m.returncode == 0 and "copied_bytes=0" in m.stdout,
           (r.stdout + r.stderr + m.stdout + m.stderr).strip())
    again = start(["restore", "--state", path("diff2.snap"), "--memory", path("merged.mem"), "--disk", f"0={disk_copy2}"],
                  path("diff-again.txt"), "diff-again")
    ok = wait_for(lambda: len(counts(path("diff-again.txt"))) >= 2)
    seen = counts(path("diff-again.txt"))
    report("diff-of-restored-continues", ok and seen[0][0] == paused_at[0] + STEP and all(c[2] == "ok" and c[3] == "ok" for c in seen),
           f"paused at {paused_at[:2]}, then {seen[:2]}")
    stop(again)


def main():
    work = tempfile.mkdtemp(prefix="swiftlet-snapshot-")
    procs = []

    def start(args, console, name):
        err = open(os.path.join(work, name + ".err"), "w")
        proc = subprocess.Popen([SWIFTLET] + args + ["--console", console], stdout=subprocess.DEVNULL, stderr=err,
                                cwd=work)
        procs.append(proc)
        return proc

    try:
        disk = os.path.join(work, "disk.raw")
        with open(disk, "wb") as f:
            f.truncate(16 << 20)
        ctl = os.path.join(work, "ctl")
        original = start(["run", "--kernel", HOSTILE, "--memory", f"{MEMORY_MIB}M", "--disk", disk, "--control-socket", ctl,
                          "--cmdline", CMDLINE], os.path.join(work, "original.txt"), "original")
        ran = wait_for(lambda: len(counts(os.path.join(work, "original.txt"))) >= 3)
        report("guest-counts", ran, f"the count guest printed {len(counts(os.path.join(work, 'original.txt')))} lines")
        if not ran:
            return

        # Not paused: refused, and the VM goes on.
        answer = control(ctl, f"snapshot {work}/early.snap {work}/early.mem")
        report("refused-while-running", answer.startswith("error") and "not paused" in answer, answer)

        state, memory = os.path.join(work, "vm.snap"), os.path.join(work, "vm.mem")
        r = subprocess.run([SWIFTLET, "snapshot", ctl, "--state", state, "--memory", memory], capture_output=True, text=True)
        report("create", r.returncode == 0 and r.stdout.startswith("ok state_bytes="), (r.stdout + r.stderr).strip())
        if r.returncode != 0:
            return
        written = int(re.search(r"written_bytes=(\d+)", r.stdout).group(1))
        print(f"BENCH-INFO snapshot_state_bytes={os.path.getsize(state)} memory_file_bytes={os.path.getsize(memory)} "
              f"memory_written_bytes={written} create_ms={re.search(r'ms=([0-9.]+)', r.stdout).group(1)}", flush=True)
        allocated = os.stat(memory).st_blocks * 512
        report("memory-file-sparse", os.path.getsize(memory) == MEMORY_MIB << 20 and allocated < (MEMORY_MIB << 20) // 8,
               f"size {os.path.getsize(memory)}, allocated {allocated}")
        before = counts(os.path.join(work, "original.txt"))
        time.sleep(0.5)
        report("paused-stays-paused", counts(os.path.join(work, "original.txt")) == before, "the guest counted on after the snapshot")
        last = before[-1]
        # The disk as the snapshot left it: each clone gets its own copy (a writable image is locked by its user).
        copies = []
        for name in ("a", "b"):
            copy = os.path.join(work, f"disk-{name}.raw")
            shutil.copyfile(disk, copy)
            copies.append(copy)
        stop(original)
        # The snapshot ran on the control thread under its seccomp filter: a call it lacks would have ended the VMM
        # with SIGSYS (status 159), not the clean stop's 0.
        with open(os.path.join(work, "original.err")) as f:
            report("seccomp-control-thread", original.returncode == 0, f"status {original.returncode}: {f.read().strip()[:300]}")

        def restore(name, disk_copy, extra=()):
            return start(["restore", "--state", state, "--memory", memory, "--disk", f"0={disk_copy}", "--trace-startup",
                          *extra], os.path.join(work, f"{name}.txt"), name)

        a = restore("a", copies[0], ["--control-socket", os.path.join(work, "ctl-a")])
        b = restore("b", copies[1])
        ok = wait_for(lambda: len(counts(os.path.join(work, "a.txt"))) >= 3 and len(counts(os.path.join(work, "b.txt"))) >= 3)
        seen_a, seen_b = counts(os.path.join(work, "a.txt")), counts(os.path.join(work, "b.txt"))
        report("restore-continues", ok and seen_a[0][0] == last[0] + STEP and seen_a[0][4] == last[0],
               f"last before {last[:2]}, first after {seen_a[:1]}")
        report("restore-memory-and-disk-intact", ok and all(c[2] == "ok" and c[3] == "ok" for c in seen_a + seen_b),
               f"{[c for c in seen_a + seen_b if c[2] != 'ok' or c[3] != 'ok'][:2]}")
        common = min(len(seen_a), len(seen_b))
        report("two-restores-agree", ok and common >= 3 and seen_a[:common] == seen_b[:common],
               f"{seen_a[:2]} vs {seen_b[:2]}")
        with open(os.path.join(work, "a.err")) as f:
            trace = re.search(r"first-kvm-run monotonic_ns=\d+ after_main_ns=(\d+)", f.read())
        if trace:
            print(f"BENCH-INFO restore_to_first_run_ms={int(trace.group(1)) / 1e6:.3f}", flush=True)
        # Private memory of a clone: the pages it wrote, far below guest RAM.
        uss = private_kib(a.pid)
        report("clone-private-memory", uss < (MEMORY_MIB << 10) // 4, f"{uss} KiB private")
        print(f"BENCH-INFO clone_private_kib={uss}", flush=True)

        # A snapshot of the restored VM, restored again: it goes on from there.
        state2, memory2 = os.path.join(work, "vm2.snap"), os.path.join(work, "vm2.mem")
        # Its memory file cannot be the one it maps.
        r = subprocess.run([SWIFTLET, "snapshot", os.path.join(work, "ctl-a"), "--state", state2, "--memory", memory],
                           capture_output=True, text=True)
        report("refuses-overwriting-its-memory-file", r.returncode == 1 and "restored from and still maps" in r.stderr,
               (r.stdout + r.stderr).strip())
        r = subprocess.run([SWIFTLET, "snapshot", os.path.join(work, "ctl-a"), "--state", state2, "--memory", memory2],
                           capture_output=True, text=True)
        report("second-generation-create", r.returncode == 0, (r.stdout + r.stderr).strip())
        paused_at = counts(os.path.join(work, "a.txt"))[-1]
        stop(a)
        stop(b)
        c = start(["restore", "--state", state2, "--memory", memory2, "--disk", f"0={copies[0]}"],
                  os.path.join(work, "c.txt"), "c")
        ok = wait_for(lambda: len(counts(os.path.join(work, "c.txt"))) >= 2)
        seen_c = counts(os.path.join(work, "c.txt"))
        report("second-generation-continues", ok and seen_c[0][0] == paused_at[0] + STEP
               and all(x[2] == "ok" and x[3] == "ok" for x in seen_c), f"paused at {paused_at[:2]}, then {seen_c[:2]}")
        stop(c)

        # Bad input: each refused with its reason, exit status 1, no control socket left behind.
        with open(state, "rb") as f:
            good = f.read()

        def refused(name, state_bytes, expect, memory_path=memory, extra=()):
            path = os.path.join(work, f"bad-{name}.snap")
            with open(path, "wb") as f:
                f.write(state_bytes)
            sock = os.path.join(work, f"ctl-{name}")
            r = subprocess.run([SWIFTLET, "restore", "--state", path, "--memory", memory_path, "--console", "none",
                                "--disk", f"0={copies[1]}", "--control-socket", sock, *extra],
                               capture_output=True, text=True, timeout=30)
            report(f"refuses-{name}", r.returncode == 1 and expect in r.stderr and not os.path.exists(sock),
                   f"status {r.returncode}: {r.stderr.strip()[:300]}")

        refused("truncated", good[:len(good) // 2], "truncated")
        flipped = bytearray(good)
        flipped[len(good) // 3] ^= 0x40
        refused("flipped-byte", bytes(flipped), "checksum")
        newer = bytearray(good)
        newer[8:12] = struct.pack("<I", 99)
        refused("newer-version", bytes(newer), "newer Swiftlet")
        small = os.path.join(work, "small.mem")
        with open(small, "wb") as f:
            f.truncate(64 << 20)
        refused("short-memory-file", good, "smaller than the", memory_path=small)
        refused("memory-file-missing", good, "cannot open the snapshot's memory file", memory_path=os.path.join(work, "none.mem"))

        def set_cpuid(body):
            # vCPU 0's CPUID: leaf 7, subleaf 0, every bit of edx (bits no CPU has among them).
            for tag, start, end in records(body):
                if tag != "vcpu":
                    continue
                for inner_tag, s, e in records(body[start:end]):
                    if inner_tag != "cpid":
                        continue
                    for entry in range(start + s, start + e, 40):
                        function, index = struct.unpack_from("<II", body, entry)
                        if function == 7 and index == 0:
                            struct.pack_into("<I", body, entry + 24, 0xFFFFFFFF)
                break
        refused("cpuid-feature-missing", with_body(good, set_cpuid), "CPU features this host's KVM does not offer")
        r = subprocess.run([SWIFTLET, "restore", "--state", memory, "--memory", memory, "--console", "none"],
                           capture_output=True, text=True, timeout=30)
        report("refuses-memory-file-as-state", r.returncode == 1 and "not a Swiftlet snapshot" in r.stderr, r.stderr.strip()[:300])
        r = subprocess.run([SWIFTLET, "restore", "--state", state, "--memory", memory, "--console", "none", "--disk", "3=/x"],
                           capture_output=True, text=True, timeout=30)
        report("refuses-unknown-disk", r.returncode == 1 and "has 1 disks" in r.stderr, r.stderr.strip()[:300])
        diff_snapshots(work, procs, start)
        firecracker_api(work, procs)
    finally:
        for proc in procs:
            stop(proc)
        leftovers = [name for name in os.listdir(work) if name.startswith("ctl")]
        report("no-sockets-left", not leftovers, f"left: {leftovers}")
        shutil.rmtree(work, ignore_errors=True)


main()
sys.exit(1 if results["fail"] else 0)
