#!/usr/bin/env python3
"""Firecracker's API on this host, before boot (no KVM needed): `swiftlet firecracker --api-sock` answers the calls of
Firecracker's getting-started guide, refuses bad input with a 400 whose fault_message says what was wrong, and keeps
serving while clients misbehave (a flood of connections, a client sending a byte a second, an oversized body).
Usage: test_firecracker_api.py SWIFTLET [GUEST_DIR] (the tiny guest's bzImage and initramfs.cpio, for the describe
comparison; default .build/guest). Prints TEST-RESULT lines (Tests/Integration/lib.sh's format)."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

SWIFTLET = sys.argv[1]
GUEST = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                                            ".build", "guest")
results = {"ok": 0, "fail": 0}


def report(name, ok, detail=""):
    results["ok" if ok else "fail"] += 1
    print(f"TEST-RESULT api.{name} {'ok' if ok else 'fail'}{' ' + detail if detail and not ok else ''}", flush=True)


def connect(path, timeout=5):
    """A connection; a full accept queue (EAGAIN) is retried for up to `timeout` seconds, as a client would."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def read_response(s):
    """One HTTP/1.1 response: (status, headers, body); status None if the server closed the connection first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return None, {}, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def request(path, method, url, body=None, s=None):
    own = s is None
    s = s or connect(path)
    payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    s.sendall(f"{method} {url} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    status, headers, data = read_response(s)
    if own:
        s.close()
    return status, (json.loads(data) if data else None)


def fault(answer):
    return (answer[1] or {}).get("fault_message", "")


def main():
    work = tempfile.mkdtemp(prefix="swiftlet-api-test.")
    sock = os.path.join(work, "api.sock")
    proc = subprocess.Popen([SWIFTLET, "firecracker", "--api-sock", sock, "--id", "api-test"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        report("socket", os.path.exists(sock), "the API socket never appeared")

        status, body = request(sock, "GET", "/")
        report("instance-info", status == 200 and body == {"app_name": "Swiftlet", "id": "api-test", "state": "Not started",
                                                           "vmm_version": "1.16.1"}, f"{status} {body}")
        # Firecracker's getting-started sequence, up to InstanceStart (which needs KVM: the lab test does that).
        kernel = os.path.join(work, "vmlinux")
        open(kernel, "wb").close()
        rootfs = os.path.join(work, "rootfs.ext4")
        open(rootfs, "wb").close()
        log = os.path.join(work, "fc.log")
        open(log, "w").close()  # as the guide does (touch): Firecracker's log path must exist
        steps = [
            ("PUT", "/logger", {"log_path": os.path.join(work, "fc.log"), "level": "Debug", "show_level": True}),
            ("PUT", "/boot-source", {"kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}),
            ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": True, "is_read_only": False}),
            ("PUT", "/network-interfaces/net1", {"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}),
            ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256}),
        ]
        for method, url, body in steps:
            status, answer = request(sock, method, url, body)
            report(f"getting-started{url.replace('/', '.')}", status == 204, f"{status} {answer}")
        with open(log) as f:
            lines = f.read().splitlines()
        report("log-lines", len(lines) >= 2 and "[api-test:api:INFO] Swiftlet 1.16.1-compatible API" in lines[0]
               and all("[api-test:api:" in line for line in lines), f"{lines[:4]}")
        status, config = request(sock, "GET", "/vm/config")
        report("vm-config", status == 200 and config["machine-config"]["vcpu_count"] == 2
               and config["drives"][0]["path_on_host"] == rootfs
               and config["network-interfaces"][0]["host_dev_name"] == "tap0", f"{status} {config}")

        # Bad input, each with its own message.
        bad = [
            ("malformed-json", "PUT", "/machine-config", b'{"vcpu_count": 1,', "not valid JSON"),
            ("unknown-field", "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpus": 1}, "unknown field `cpus`"),
            ("wrong-type", "PUT", "/boot-source", {"kernel_image_path": 7}, "kernel_image_path: invalid type"),
            ("missing-field", "PUT", "/vsock", {"uds_path": "/x"}, "missing field `guest_cid`"),
            ("unimplemented", "PUT", "/cpu-config", {}, "/cpu-config is not supported"),
            ("snapshot-before-boot", "PUT", "/snapshot/create", {"mem_file_path": "/m", "snapshot_path": "/s"}, "not started: there is nothing to snapshot"),
            ("snapshot-load-after-config", "PUT", "/snapshot/load", {"snapshot_path": "/nonexistent.snap", "mem_file_path": "/m"}, "not allowed after configuring boot-specific resources"),
            ("unknown-path", "GET", "/nope", None, "unknown resource /nope"),
            ("wrong-method", "DELETE", "/machine-config", None, "invalid request method and/or path"),
        ]
        for name, method, url, body, expected in bad:
            answer = request(sock, method, url, body)
            report(f"bad.{name}", answer[0] == 400 and expected in fault(answer), f"{answer}")

        # An oversized body: a 400 that says so, and the connection closes.
        s = connect(sock)
        big = b'{"kernel_image_path": "' + b"a" * 60000 + b'"}'
        status, answer = request(sock, "PUT", "/boot-source", big, s=s)
        closed = s.recv(1) == b""
        s.close()
        report("bad.oversized", status == 400 and "51200" in (answer or {}).get("fault_message", "") and closed, f"{status} {answer} closed={closed}")

        # A path that exists: a second instance refuses it and leaves it alone.
        second = subprocess.run([SWIFTLET, "firecracker", "--api-sock", sock], capture_output=True, text=True, timeout=10)
        report("bad.socket-exists", second.returncode == 1 and "already exists" in second.stderr and os.path.exists(sock),
               f"{second.returncode} {second.stderr.strip()}")

        # A client that sends a byte a second: closed within the request deadline (10 s), while others are served.
        slow = connect(sock, timeout=20)
        started = time.monotonic()
        served_meanwhile = True
        closed_after = None
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n\r\n":
            try:
                slow.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            if request(sock, "GET", "/version")[0] != 200:
                served_meanwhile = False
            time.sleep(1)
        slow.close()
        report("slow-client", closed_after is not None and closed_after < 14 and served_meanwhile,
               f"closed after {closed_after} s, others served: {served_meanwhile}")

        # 1000 connections at once: the server stays up and answers a new client (idle connections give way).
        flood = []
        for _ in range(1000):
            try:
                flood.append(connect(sock))
            except OSError:
                break
        answer = request(sock, "GET", "/machine-config")
        report("connection-flood", len(flood) == 1000 and answer[0] == 200, f"{len(flood)} connected, then {answer}")
        # The server closed all but its limit (128) of them.
        open_left = 0
        for s in flood:
            s.settimeout(0.01)
            try:
                if s.recv(1) != b"":
                    open_left += 1
            except socket.timeout:
                open_left += 1
            except OSError:
                pass
            s.close()
        report("connection-limit", open_left <= 128, f"{open_left} of the flood's connections still open")
        report("still-serving", request(sock, "GET", "/")[0] == 200)
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        report("exit-on-sigterm", proc.returncode == 0, f"status {proc.returncode}: {out.strip()[-300:]}")
        report("socket-removed", not os.path.exists(sock), f"{sock} is still there")
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)
    return 0 if results["fail"] == 0 else 1


def same_machine_both_ways():
    """The CLI and the API describe the same machine: `swiftlet describe` with run's options and `swiftlet firecracker
    --describe` with the Firecracker configuration file of the same guest print the same thing (memory, vCPUs,
    devices and their windows and interrupts, the command line, the ACPI tables). Nothing is opened or booted."""
    work = tempfile.mkdtemp(prefix="swiftlet-api-describe.")
    try:
        kernel, initrd = os.path.join(GUEST, "bzImage"), os.path.join(GUEST, "initramfs.cpio")
        disk, data = os.path.join(work, "root.img"), os.path.join(work, "data.img")
        for path in (disk, data):
            open(path, "wb").close()
        vsock = os.path.join(work, "v.sock")
        cmdline = "console=ttyS0 reboot=k panic=1"
        cli = [SWIFTLET, "describe", "--arch", "x86_64", "--kernel", kernel, "--initrd", initrd, "--cpus", "2",
               "--memory", "256M", "--cmdline", cmdline + " root=/dev/vda rw", "--disk", f"{disk},id=rootfs",
               "--disk", f"{data},readonly=on,id=data", "--net", "tap=tap7,mac=06:00:ac:10:00:02",
               "--vsock", f"socket={vsock},cid=3", "--balloon", "on", "--rng", "on"]
        config = {"boot-source": {"kernel_image_path": kernel, "initrd_path": initrd, "boot_args": cmdline},
                  "drives": [{"drive_id": "data", "path_on_host": data, "is_root_device": False, "is_read_only": True},
                             {"drive_id": "rootfs", "path_on_host": disk, "is_root_device": True, "is_read_only": False}],
                  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
                  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap7", "guest_mac": "06:00:AC:10:00:02"}],
                  "vsock": {"guest_cid": 3, "uds_path": vsock},
                  "balloon": {"amount_mib": 0, "deflate_on_oom": False},
                  "entropy": {}}
        path = os.path.join(work, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        a = subprocess.run(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        b = subprocess.run([SWIFTLET, "firecracker", "--no-api", "--config-file", path, "--describe"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        report("describe.cli", a.returncode == 0 and "virtio" in a.stdout, a.stdout[-300:])
        report("describe.api", b.returncode == 0 and "virtio" in b.stdout, b.stdout[-300:])
        differ = [f"cli: {x!r} api: {y!r}" for x, y in zip(a.stdout.splitlines(), b.stdout.splitlines()) if x != y]
        if len(a.stdout.splitlines()) != len(b.stdout.splitlines()):
            differ.append(f"{len(a.stdout.splitlines())} lines against {len(b.stdout.splitlines())}")
        report("describe.same-machine", a.stdout == b.stdout and a.returncode == 0, "; ".join(differ)[:600])
    finally:
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)


if __name__ == "__main__":
    status = main()
    same_machine_both_ways()
    sys.exit(1 if results["fail"] else status)
