#!/usr/bin/env python3
"""Host tests for the Swiftlet guest agent (guest/agent/agent.c), speaking PROTOCOL.md over a Unix socket.

  test_agent.py AGENT_BINARY        starts `AGENT_BINARY --listen unix:TMPDIR/agent.sock` and runs every test
  test_agent.py --connect vsock:CID:PORT   runs the tests against an agent already listening there (in a guest);
                                           the checks that need to see the agent's processes are skipped

Prints one "TEST-RESULT agent.NAME ok|fail [DETAIL]" line per check (TEST-SKIP for skipped ones) and a summary
"agent tests: N passed, N failed"; exits 1 if any failed. Standard library only.
"""

import hashlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

EXEC, STDIN, SIGNAL = 1, 2, 3
STARTED, STDOUT, STDERR, EXIT, ERROR = 0x81, 0x82, 0x83, 0x84, 0x85
MAX_OUTPUT_CHUNK = 64 << 10
TIMEOUT = 60  # seconds any single read may wait: a hang is a failure, not a stuck test run


class ProtocolError(Exception):
    pass


def frame(kind, payload=b""):
    return struct.pack("<II", kind, len(payload)) + payload


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<I", len(b)) + b


def exec_payload(argv, env=(), cwd="", stdin=False, flags=None):
    p = struct.pack("<I", len(argv)) + b"".join(string(a) for a in argv)
    p += struct.pack("<I", len(env)) + b"".join(string(e) for e in env)
    p += string(cwd)
    p += struct.pack("<I", (1 if stdin else 0) if flags is None else flags)
    return p


class Conn:
    def __init__(self, target):
        kind, _, rest = target.partition(":")
        if kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(rest)
        else:
            cid, port = rest.split(":")
            self.sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect((int(cid), int(port)))

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def read_frame(self):
        kind, length = struct.unpack("<II", self.recv_exact(8))
        return kind, self.recv_exact(length)

    def at_eof(self):
        """True if the agent closed the connection (EOF, or a reset after unread input)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


class Result:
    def __init__(self):
        self.pid = None
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exit = None      # (kind, value)
        self.error = None     # (errno, message)
        self.max_chunk = 0
        self.order_ok = True  # STARTED first, nothing after EXIT/ERROR, EOF after them


def collect(conn, on_frame=None):
    """Read frames until EXIT or ERROR, then expect the connection to close."""
    r = Result()
    first = True
    while True:
        kind, payload = conn.read_frame()
        if first and kind not in (STARTED, ERROR):
            r.order_ok = False
        first = False
        if kind == STARTED:
            (r.pid,) = struct.unpack("<I", payload)
        elif kind in (STDOUT, STDERR):
            r.max_chunk = max(r.max_chunk, len(payload))
            (r.stdout if kind == STDOUT else r.stderr).extend(payload)
        elif kind == EXIT:
            r.exit = struct.unpack("<II", payload)
        elif kind == ERROR:
            r.error = (struct.unpack("<I", payload[:4])[0], payload[4:].decode(errors="replace"))
        else:
            raise ProtocolError(f"unknown frame type 0x{kind:x}")
        if on_frame:
            on_frame(kind, payload)
        if kind in (EXIT, ERROR):
            if not conn.at_eof():
                r.order_ok = False
            return r


class Suite:
    def __init__(self, target, local):
        self.target = target
        self.local = local  # the agent runs on this host: its processes can be inspected
        self.passed = self.failed = self.skipped = 0

    def report(self, name, ok, detail=""):
        print(f"TEST-RESULT agent.{name} {'ok' if ok else 'fail'}{' ' + detail if detail and not ok else ''}",
              flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    def skip(self, name, why):
        print(f"TEST-SKIP agent.{name} {why}", flush=True)
        self.skipped += 1

    def connect(self):
        return Conn(self.target)

    def run(self, argv, env=(), cwd="", stdin_data=None, flags=None):
        c = self.connect()
        try:
            c.send(frame(EXEC, exec_payload(argv, env, cwd, stdin_data is not None, flags)))
            if stdin_data is not None:
                writer = threading.Thread(target=send_stdin, args=(c, stdin_data), daemon=True)
                writer.start()
            r = collect(c)
            return r
        finally:
            c.close()

    def check_exit(self, name, r, kind, value, stdout=None, stderr=None):
        problems = []
        if r.error:
            problems.append(f"ERROR {r.error}")
        if r.exit != (kind, value):
            problems.append(f"exit {r.exit}, want {(kind, value)}")
        if stdout is not None and bytes(r.stdout) != stdout:
            problems.append(f"stdout {bytes(r.stdout)[:200]!r}, want {stdout[:200]!r}")
        if stderr is not None and bytes(r.stderr) != stderr:
            problems.append(f"stderr {bytes(r.stderr)[:200]!r}, want {stderr[:200]!r}")
        if r.pid is None:
            problems.append("no STARTED frame")
        if not r.order_ok:
            problems.append("frames out of order or the connection stayed open after EXIT")
        self.report(name, not problems, "; ".join(problems))

    def check_error(self, name, r, errno_value, message_part=""):
        ok = r.error is not None and r.error[0] == errno_value and message_part in r.error[1] and r.order_ok
        self.report(name, ok, f"got error {r.error} exit {r.exit}, want errno {errno_value} "
                              f"with {message_part!r}")

    def still_serves(self, name):
        try:
            r = self.run(["echo", "next"])
            self.report(f"{name}.then-serves", r.exit == (0, 0) and bytes(r.stdout) == b"next\n",
                        f"exit {r.exit} stdout {bytes(r.stdout)!r} error {r.error}")
        except (OSError, EOFError, ProtocolError) as e:
            self.report(f"{name}.then-serves", False, f"{type(e).__name__}: {e}")

    def gone(self, pid, seconds=10):
        """True when no process `pid` exists (reaped, not a zombie) within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not os.path.exists(f"/proc/{pid}"):
                return True
            time.sleep(0.05)
        return False


def send_stdin(conn, data, chunks=None):
    try:
        off = 0
        rng = random.Random(len(data))
        while off < len(data):
            n = min(len(data) - off, rng.choice((1, 100, 4096, 65536, 1 << 20)))
            conn.send(frame(STDIN, data[off:off + n]))
            off += n
        conn.send(frame(STDIN))
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------------------
# The tests


def test_basics(t):
    t.check_exit("echo", t.run(["echo", "hello", "world"]), 0, 0, b"hello world\n", b"")
    t.check_exit("exit-code.0", t.run(["true"]), 0, 0)
    t.check_exit("exit-code.1", t.run(["false"]), 0, 1)
    t.check_exit("exit-code.3", t.run(["sh", "-c", "exit 3"]), 0, 3)
    t.check_exit("exit-code.255", t.run(["sh", "-c", "exit 255"]), 0, 255)
    t.check_exit("stderr", t.run(["sh", "-c", "echo out; echo err >&2; echo out2"]), 0, 0, b"out\nout2\n", b"err\n")
    t.check_exit("argv-verbatim", t.run(["printf", "%s|", "a b", "", "c\nd", "ü"]), 0, 0,
                 "a b||c\nd|ü|".encode())
    t.check_exit("env", t.run(["sh", "-c", 'echo "$FOO|$HOME|$TERM|$PATH"'], env=["FOO=bar baz", "HOME=/tmp"]),
                 0, 0, b"bar baz|/tmp|dumb|/usr/sbin:/usr/bin:/sbin:/bin\n")
    t.check_exit("env.no-inherit", t.run(["sh", "-c", 'echo "${SWIFTLET_AGENT_TEST_MARK:-unset}"']), 0, 0,
                 b"unset\n")
    t.check_exit("env.last-wins", t.run(["sh", "-c", 'echo "$A"'], env=["A=1", "A=2"]), 0, 0, b"2\n")
    t.check_exit("cwd", t.run(["pwd"], cwd="/tmp"), 0, 0, b"/tmp\n")
    t.check_exit("cwd.default-root", t.run(["pwd"]), 0, 0, b"/\n")
    t.check_exit("stdin.dev-null", t.run(["sh", "-c", "cat; echo done"]), 0, 0, b"done\n")
    t.check_exit("own-session", t.run(["sh", "-c", 'test "$(ps -o sid= -p $$ 2>/dev/null || cut -d" " -f6 /proc/$$/stat)" -eq $$ && echo leader']),
                 0, 0, b"leader\n")


def test_signals(t):
    t.check_exit("signal.self-kill-9", t.run(["sh", "-c", "kill -9 $$"]), 1, 9)
    t.check_exit("signal.self-term", t.run(["sh", "-c", "kill -TERM $$"]), 1, 15)
    # SIGPIPE is ignored in the agent; the command must get the default back (yes dies of SIGPIPE).
    t.check_exit("signal.sigpipe-default", t.run(["sh", "-c", "yes | head -c 10 >/dev/null; echo ok"]), 0, 0,
                 b"ok\n")
    # STARTED comes after a successful exec, so cat already has the default dispositions (no race with a
    # shell that catches SIGINT between fork and exec).
    for name, sig in (("term", 15), ("kill", 9), ("int", 2), ("hup", 1)):
        c = t.connect()
        try:
            c.send(frame(EXEC, exec_payload(["cat"], stdin=True)))

            def on_frame(kind, payload, c=c, sig=sig):
                if kind == STARTED:
                    c.send(frame(SIGNAL, struct.pack("<I", sig)))
            r = collect(c, on_frame)
        finally:
            c.close()
        t.check_exit(f"signal.frame-{name}", r, 1, sig)
    # The signal goes to the process group: a background child of the shell dies with it.
    c = t.connect()
    try:
        c.send(frame(EXEC, exec_payload(["sh", "-c", "sleep 1000 & echo $!; wait; echo never"])))

        def on_frame(kind, payload, c=c):
            if kind == STDOUT:
                c.send(frame(SIGNAL, struct.pack("<I", 15)))
        r = collect(c, on_frame)
    finally:
        c.close()
    child = int(bytes(r.stdout).split()[0]) if r.stdout[:1].isdigit() else None
    ok = r.exit == (1, 15) and b"never" not in r.stdout and child is not None
    if ok and t.local:
        ok = t.gone(child)
    t.report("signal.frame-group", ok, f"exit {r.exit} stdout {bytes(r.stdout)!r} background child {child}")


def test_big_output(t):
    size = 16 << 20
    r = t.run(["sh", "-c", f"exec 3>&1; head -c {size} /dev/urandom | tee /proc/self/fd/3 | sha256sum >&2"])
    want = bytes(r.stderr).split()[0].decode() if r.stderr else "?"
    got = hashlib.sha256(bytes(r.stdout)).hexdigest()
    t.report("stdout-16MiB", r.exit == (0, 0) and len(r.stdout) == size and got == want,
             f"exit {r.exit} got {len(r.stdout)} bytes sha256 {got[:16]} want {want[:16]}")
    t.report("stdout-16MiB.chunks", 0 < r.max_chunk <= MAX_OUTPUT_CHUNK, f"largest chunk {r.max_chunk}")


def test_stdin(t):
    data = random.Random(6).randbytes(3 << 20)
    r = t.run(["sha256sum"], stdin_data=data)
    want = hashlib.sha256(data).hexdigest()
    t.report("stdin.sha256", r.exit == (0, 0) and bytes(r.stdout).split()[:1] == [want.encode()],
             f"exit {r.exit} got {bytes(r.stdout)[:70]!r} want {want}")
    # Both directions at once: cat echoes 8 MiB while stdin is still arriving (pipes full in both directions
    # deadlock an agent that blocks on either).
    data = random.Random(7).randbytes(8 << 20)
    r = t.run(["cat"], stdin_data=data)
    t.report("stdin.cat-8MiB", r.exit == (0, 0) and bytes(r.stdout) == data,
             f"exit {r.exit} got {len(r.stdout)} bytes, equal {bytes(r.stdout) == data}")
    r = t.run(["sh", "-c", "wc -c"], stdin_data=b"")
    t.check_exit("stdin.empty", r, 0, 0, b"0\n")
    # A command that never reads stdin and exits: stdin already sent is dropped, EXIT still comes.
    r = t.run(["true"], stdin_data=random.Random(8).randbytes(4 << 20))
    t.check_exit("stdin.unread", r, 0, 0)


def test_exec_errors(t):
    t.check_error("error.missing-command", t.run(["swiftlet-no-such-command"]), 2, "swiftlet-no-such-command")
    t.check_error("error.missing-path", t.run(["/nonexistent/bin/x"]), 2)
    t.check_error("error.bad-cwd", t.run(["pwd"], cwd="/nonexistent-dir"), 2, "chdir /nonexistent-dir")
    t.check_error("error.cwd-not-dir", t.run(["pwd"], cwd="/proc/self/status"), 20)  # ENOTDIR
    if t.local:
        d = tempfile.mkdtemp(prefix="swiftlet-agent-test.")
        try:
            path = os.path.join(d, "not-executable")
            with open(path, "w") as f:
                f.write("#!/bin/sh\necho hi\n")
            os.chmod(path, 0o644)
            t.check_error("error.not-executable", t.run([path]), 13)  # EACCES
        finally:
            shutil.rmtree(d)
    else:
        t.check_error("error.not-executable", t.run(["/proc/self/status"]), 13)
    t.still_serves("error")


def hostile(t, name, data, errno_value=71):  # EPROTO
    c = t.connect()
    try:
        c.send(data)
        r = collect(c)
        ok = r.error is not None and r.error[0] == errno_value and r.pid is None and r.order_ok
        t.report(f"hostile.{name}", ok, f"error {r.error} pid {r.pid} exit {r.exit}")
    except (OSError, EOFError, ProtocolError) as e:
        t.report(f"hostile.{name}", False, f"{type(e).__name__}: {e}")
    finally:
        c.close()
    t.still_serves(f"hostile.{name}")


def test_hostile(t):
    good = exec_payload(["echo", "x"])
    u32 = lambda v: struct.pack("<I", v)
    hostile(t, "argc-zero", frame(EXEC, u32(0) + u32(0) + string("") + u32(0)))
    hostile(t, "argc-huge", frame(EXEC, u32(0xFFFFFFFF) + string("echo") + u32(0) + string("") + u32(0)))
    hostile(t, "argc-4097", frame(EXEC, u32(4097) + string("x") * 4097 + u32(0) + string("") + u32(0)))
    hostile(t, "argc-beyond-payload", frame(EXEC, u32(3) + string("echo") + u32(0) + string("") + u32(0)))
    hostile(t, "string-beyond-payload", frame(EXEC, u32(1) + u32(1000) + b"echo"))
    hostile(t, "string-len-huge", frame(EXEC, u32(1) + u32(0xFFFFFFF0) + b"echo" + u32(0) + string("") + u32(0)))
    hostile(t, "string-nul", frame(EXEC, u32(1) + string(b"ec\0ho") + u32(0) + string("") + u32(0)))
    hostile(t, "envc-huge", frame(EXEC, u32(1) + string("echo") + u32(0x7FFFFFFF) + string("") + u32(0)))
    hostile(t, "env-no-equals", frame(EXEC, u32(1) + string("echo") + u32(1) + string("FOO") + string("") + u32(0)))
    hostile(t, "env-empty-key", frame(EXEC, u32(1) + string("echo") + u32(1) + string("=x") + string("") + u32(0)))
    hostile(t, "missing-flags", frame(EXEC, u32(1) + string("echo") + u32(0) + string("")))
    hostile(t, "unknown-flags", frame(EXEC, u32(1) + string("echo") + u32(0) + string("") + u32(0x80)))
    hostile(t, "trailing-bytes", frame(EXEC, good + b"\0"))
    hostile(t, "empty-exec", frame(EXEC))
    hostile(t, "oversize-frame", struct.pack("<II", EXEC, (1 << 20) + 1))
    hostile(t, "oversize-frame-max", struct.pack("<II", EXEC, 0xFFFFFFFF))
    hostile(t, "first-frame-stdin", frame(STDIN, b"hi"))
    hostile(t, "first-frame-unknown", frame(0x1234, b""))
    # Mid-run: a frame the command did not announce, a second EXEC, a bad SIGNAL. The command is killed.
    for name, bad in (("stdin-not-announced", frame(STDIN, b"x")), ("second-exec", frame(EXEC, good)),
                      ("signal-zero", frame(SIGNAL, u32(0))), ("signal-huge", frame(SIGNAL, u32(1000))),
                      ("signal-short", frame(SIGNAL, b"\x09")), ("stdin-after-end", None)):
        c = t.connect()
        try:
            stdin = name == "stdin-after-end"
            c.send(frame(EXEC, exec_payload(["sleep", "1000"], stdin=stdin)))
            kind, payload = c.read_frame()
            pid = struct.unpack("<I", payload)[0] if kind == STARTED else None
            c.send(frame(STDIN) + frame(STDIN, b"late") if stdin else bad)
            r = collect(c)
            ok = kind == STARTED and r.error is not None and r.error[0] == 71 and r.exit is None
            if ok and t.local:
                ok = t.gone(pid)
            t.report(f"hostile.{name}", ok, f"first frame 0x{kind:x} error {r.error} exit {r.exit} pid {pid}")
        except (OSError, EOFError, ProtocolError) as e:
            t.report(f"hostile.{name}", False, f"{type(e).__name__}: {e}")
        finally:
            c.close()
    t.still_serves("hostile.mid-run")
    # A connection that closes half-way through EXEC costs nothing.
    c = t.connect()
    c.send(frame(EXEC, good)[:10])
    c.close()
    t.still_serves("hostile.truncated-exec")


def test_many(t):
    bad = []
    for i in range(100):
        r = t.run(["sh", "-c", f"echo {i}"])
        if r.exit != (0, 0) or bytes(r.stdout) != f"{i}\n".encode():
            bad.append((i, r.exit, bytes(r.stdout), r.error))
    t.report("sequential-100", not bad, f"{len(bad)} wrong, first {bad[:1]}")

    # 8 at once, without timing: every command prints "started" and then waits for a line on stdin; the host
    # answers only after all 8 have started, so an agent that ran them one after another never finishes.
    n = 8
    conns, results, errors = [], [None] * n, []
    started = threading.Barrier(n + 1, timeout=TIMEOUT)

    def one(i):
        c = conns[i]
        try:
            c.send(frame(EXEC, exec_payload(["sh", "-c", f"echo started; read x; echo {i}:$x"], stdin=True)))
            seen = []

            def on_frame(kind, payload):
                if kind == STDOUT and not seen:
                    seen.append(True)
                    started.wait()
            results[i] = collect(c, on_frame)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(f"{i}: {type(e).__name__}: {e}")
            started.abort()

    for i in range(n):
        conns.append(t.connect())
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    try:
        started.wait()
        for c in conns:
            c.send(frame(STDIN, b"go\n") + frame(STDIN))
    except threading.BrokenBarrierError:
        errors.append("not all 8 commands started together")
    for th in threads:
        th.join(TIMEOUT)
    for c in conns:
        c.close()
    wrong = [i for i in range(n) if results[i] is None or results[i].exit != (0, 0)
             or bytes(results[i].stdout) != f"started\n{i}:go\n".encode()]
    t.report("concurrent-8", not errors and not wrong, f"errors {errors[:2]} wrong {wrong}")


def test_disconnect(t):
    if not t.local:
        t.skip("disconnect.kills-group", "needs to see the agent's processes")
        return
    # Host closes while the command streams output (blocked on a full connection) and has a child in the
    # background: the whole group must go, and the agent must reap its part.
    c = t.connect()
    try:
        c.send(frame(EXEC, exec_payload(["sh", "-c", "sleep 1000 & echo $!; yes"])))
        kind, payload = c.read_frame()
        pid = struct.unpack("<I", payload)[0] if kind == STARTED else None
        out = bytearray()
        while b"\n" not in out:
            kind, payload = c.read_frame()
            if kind == STDOUT:
                out += payload
        child = int(out.split(b"\n")[0])
    finally:
        c.close()
    ok = pid is not None and t.gone(pid) and t.gone(child)
    t.report("disconnect.kills-group", ok, f"pid {pid} gone {t.gone(pid, 0)}, background child {child} "
                                           f"gone {t.gone(child, 0)}")
    # The host stops reading (shutdown SHUT_RD): the agent's next write fails with EPIPE, which must end the
    # command like a closed connection (an agent that died of SIGPIPE would leave the background child).
    c = t.connect()
    try:
        c.send(frame(EXEC, exec_payload(["sh", "-c", "sleep 1000 & echo $!; exec yes"])))
        kind, payload = c.read_frame()
        pid = struct.unpack("<I", payload)[0] if kind == STARTED else None
        out = bytearray()
        while b"\n" not in out:
            kind, payload = c.read_frame()
            if kind == STDOUT:
                out += payload
        child = int(out.split(b"\n")[0])
        c.sock.shutdown(socket.SHUT_RD)
        ok = pid is not None and t.gone(pid) and t.gone(child)
        t.report("disconnect.write-fails", ok, f"pid {pid} gone {t.gone(pid, 0)}, background child {child} "
                                               f"gone {t.gone(child, 0)}")
    finally:
        c.close()
    # Closing right after EXEC, before reading anything.
    c = t.connect()
    c.send(frame(EXEC, exec_payload(["sh", "-c", "echo $$ > /dev/null; sleep 1000"])))
    kind, payload = c.read_frame()
    pid = struct.unpack("<I", payload)[0] if kind == STARTED else None
    c.close()
    t.report("disconnect.idle-command", pid is not None and t.gone(pid), f"pid {pid}")
    t.still_serves("disconnect")


def run_suite(t):
    for test in (test_basics, test_signals, test_big_output, test_stdin, test_exec_errors, test_hostile,
                 test_many, test_disconnect):
        try:
            test(t)
        except (OSError, EOFError, ProtocolError, struct.error, ValueError) as e:
            t.report(test.__name__, False, f"stopped by {type(e).__name__}: {e}")


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    kids.append((int(entry), fields[0]))
            except (OSError, IndexError):
                pass
    return kids


def main(argv):
    if len(argv) == 3 and argv[1] == "--connect":
        t = Suite(argv[2], local=False)
        run_suite(t)
    elif len(argv) == 2 and not argv[1].startswith("-"):
        # Stopped from outside (a harness timeout): still stop the agent and remove its directory (finally below).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        agent = os.path.abspath(argv[1])
        d = tempfile.mkdtemp(prefix="swiftlet-agent.")
        path = os.path.join(d, "agent.sock")
        proc = subprocess.Popen([agent, "--listen", f"unix:{path}"], stdout=subprocess.PIPE, text=True)
        t = Suite(f"unix:{path}", local=True)
        try:
            line = proc.stdout.readline().strip()
            t.report("listen-line", line == f"SWIFTLET-AGENT unix={path}", f"first line {line!r}")
            if line:
                run_suite(t)
                # Everything reaped: no handler and no command is left under the agent.
                deadline = time.monotonic() + 10
                while children_of(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                left = children_of(proc.pid)
                zombies = [k for k in left if k[1] == "Z"]
                t.report("no-leftover-children", not left, f"left {left} (zombies {zombies})")
                t.report("agent-alive", proc.poll() is None, f"agent exited {proc.poll()}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            t.report("sigterm-removes-socket", not os.path.exists(path) and proc.returncode == 0,
                     f"socket exists {os.path.exists(path)}, exit {proc.returncode}")
            shutil.rmtree(d, ignore_errors=True)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"agent tests: {t.passed} passed, {t.failed} failed" + (f", {t.skipped} skipped" if t.skipped else ""),
          flush=True)
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
