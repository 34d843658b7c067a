#!/usr/bin/env python3
"""Swiftlet nested lab runner: boot L1 (Debian's cloud kernel under QEMU TCG with emulated
SVM, so it has a real /dev/kvm) and run a job in it.

This machine's own /dev/kvm is PVM-style and cannot boot a Linux guest; L1's can. See
README.md in this directory.

  lab.py run [OPTIONS] [--] COMMAND...   run COMMAND (sh) in L1 under /job; exit with its status
  lab.py shell [OPTIONS]                 interactive busybox shell in L1 (Ctrl-A X quits QEMU)
  lab.py build                           build the L1 image if needed; print its directory
  lab.py stage-binary SRC DESTDIR        copy an ELF and the libraries ldd lists into a payload

Exit status of `run`: the job's own (0-255) when L1 reported `LAB-EXIT status=N`; otherwise
  124  L1 hung (silent watchdog) on every attempt, or the --timeout ran out
  125  the lab failed: L1 image build, QEMU start, L1 died without reporting the job's status
  2    usage error;  130/143  interrupted by SIGINT/SIGTERM
Standard library only.
"""

import argparse
import collections
import ctypes
import fcntl
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

LAB_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(LAB_DIR, "..", "..", ".."))
BUILD_SCRIPT = os.path.join(LAB_DIR, "build-l1.sh")

EXIT_HANG = 124
EXIT_LAB_ERROR = 125

DEFAULT_MEM_MIB = 2048
DEFAULT_TIMEOUT_S = 1200
DEFAULT_BOOT_TIMEOUT_S = 180
DEFAULT_QUIET_TIMEOUT_S = 10
DEFAULT_RETRIES = 2
TAIL_LINES = 40
EXIT_GRACE_S = 30  # after LAB-EXIT, L1 powers off; kill QEMU if it has not exited by then

READY_RE = re.compile(r"^LAB-READY\s*$")
EXIT_RE = re.compile(r"^LAB-EXIT status=(\d+)\s*$")
STEP_RE = re.compile(r"^LAB-STEP\s+(.*?)\s*$")
# Terminal control sequences (SeaBIOS clears the screen) and other control characters.
ANSI_RE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_]|c)")
CTRL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# QEMU's TCG warns about every EPYC feature it cannot emulate; noise, kept in the log only.
QEMU_NOISE_RE = re.compile(r"TCG doesn't support requested feature")


class LabError(Exception):
    """A failure of the lab itself (exit 125), with a message saying what to do."""


class Interrupted(Exception):
    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def say(msg):
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def _on_signal(signum, _frame):
    raise Interrupted(signum)


# --------------------------------------------------------------------------------------------
# L1 image


def find_image(args):
    """Return the L1 image directory: --l1 DIR, $SWIFTLET_LAB_L1, or build-l1.sh's output."""
    d = args.l1 or os.environ.get("SWIFTLET_LAB_L1")
    if not d:
        if not os.access(BUILD_SCRIPT, os.X_OK):
            raise LabError(f"{BUILD_SCRIPT} is missing or not executable")
        cmd = [BUILD_SCRIPT] + (["--force"] if getattr(args, "rebuild", False) else [])
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = r.stdout.strip().splitlines()
        if r.returncode != 0 or not lines:
            raise LabError(f"building the L1 image failed (exit {r.returncode}); see build-l1's "
                           f"messages above, fix, and rerun ({BUILD_SCRIPT})")
        d = lines[-1]
    env = read_env(os.path.join(d, "lab.env"))
    for key in ("KERNEL", "INITRD"):
        path = os.path.join(d, env.get(key, ""))
        if not env.get(key) or not os.path.isfile(path):
            raise LabError(f"L1 image {d} is incomplete (no {key}): rebuild it with "
                           f"{BUILD_SCRIPT} --force")
    return d, env


def lab_versions(env):
    """What the lab runs with, from the image's lab.env: recorded in every log and --result, so that a change of
    Debian's packages under the lab shows in the records (the image cache is keyed by the same versions)."""
    return {"l1_kernel": env.get("KERNEL_VERSION", "?"), "l1_kernel_package": env.get("KERNEL_PACKAGE", "?"),
            "l1_kernel_package_version": env.get("KERNEL_PACKAGE_VERSION", "?"),
            "qemu": env.get("QEMU_VERSION", "?"), "busybox": env.get("BUSYBOX_VERSION", "?"),
            "image_key": env.get("KEY", "?"), "l0_qemu": l0_qemu_version(), "l1_tick": L1_TICK}


def l0_qemu_version():
    """The first line of L0's `qemu-system-x86_64 --version`: the image's QEMU_VERSION is the host package's (the peer
    in L1), and SWIFTLET_LAB_QEMU can put another QEMU under L1."""
    try:
        out = subprocess.run([l0_qemu()[0], "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, timeout=30).stdout
        return out.splitlines()[0].strip() if out else "?"
    except (LabError, OSError, subprocess.SubprocessError):
        return "?"


def read_env(path):
    env = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                k, v = line.split("=", 1)
                env[k] = shlex.split(v)[0] if v else ""
    except FileNotFoundError:
        raise LabError(f"{path} not found: is this an L1 image directory made by build-l1.sh?")
    return env


# --------------------------------------------------------------------------------------------
# Payload: a newc cpio archive with everything under job/


class CpioWriter:
    """Minimal writer of the "newc" cpio format that the kernel's initramfs unpacker reads."""

    def __init__(self, f):
        self.f = f
        self.ino = 1
        self.names = set()

    def _header(self, name, mode, size, mtime):
        namez = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08X}" for v in (
            self.ino, mode, 0, 0, 1, int(mtime) & 0xFFFFFFFF, size, 0, 0, 0, 0, len(namez), 0))
        self.ino += 1
        self.f.write(hdr.encode() + namez)
        self._pad(110 + len(namez))

    def _pad(self, n):
        if n % 4:
            self.f.write(b"\0" * (4 - n % 4))

    def add_dir(self, name, mode=0o755, mtime=0):
        if name in self.names:
            return
        self.add_parents(name)
        self.names.add(name)
        self._header(name, stat.S_IFDIR | (mode & 0o7777), 0, mtime)

    def add_parents(self, name):
        parent = os.path.dirname(name)
        if parent and parent not in self.names:
            self.add_dir(parent)

    def add_bytes(self, name, data, mode=0o644, mtime=None):
        self.add_parents(name)
        self.names.add(name)
        self._header(name, stat.S_IFREG | (mode & 0o7777), len(data),
                     time.time() if mtime is None else mtime)
        self.f.write(data)
        self._pad(len(data))

    def add_file(self, name, src):
        st = os.stat(src)
        if st.st_size > 0xFFFFFFFF:
            raise LabError(f"{src} is too large for a cpio archive (4 GiB)")
        self.add_parents(name)
        self.names.add(name)
        self._header(name, stat.S_IFREG | stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime)
        with open(src, "rb") as s:
            copied = 0
            while True:
                buf = s.read(1 << 20)
                if not buf:
                    break
                self.f.write(buf)
                copied += len(buf)
        if copied != st.st_size:
            raise LabError(f"{src} changed size while being staged")
        self._pad(st.st_size)

    def add_symlink(self, name, target):
        data = target.encode()
        self.add_parents(name)
        self.names.add(name)
        self._header(name, stat.S_IFLNK | 0o777, len(data), 0)
        self.f.write(data)
        self._pad(len(data))

    def add_tree(self, prefix, root):
        root = os.path.abspath(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            base = prefix if rel == "." else f"{prefix}/{rel}"
            self.add_dir(base, stat.S_IMODE(os.stat(dirpath).st_mode))
            for name in sorted(filenames) + [d for d in dirnames
                                             if os.path.islink(os.path.join(dirpath, d))]:
                src = os.path.join(dirpath, name)
                st = os.lstat(src)
                if stat.S_ISLNK(st.st_mode):
                    self.add_symlink(f"{base}/{name}", os.readlink(src))
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(f"{base}/{name}", src)
                else:
                    say(f"warning: skipping {src}: not a regular file, directory or symlink")

    def finish(self):
        self._header("TRAILER!!!", 0, 0, 0)
        self.f.write(b"\0" * ((-self.f.tell()) % 512))


def job_script(args):
    """The text of /job/run.sh."""
    lines = ["#!/bin/sh", "# Generated by Tests/Integration/lab/lab.py", "cd /job || exit 125",
             'if [ -d /job/lib ]; then export LD_LIBRARY_PATH="/job/lib${LD_LIBRARY_PATH:+:'
             '$LD_LIBRARY_PATH}"; fi',
             "export SWIFTLET_LAB=1"]
    for kv in args.env or []:
        k, _, v = kv.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise LabError(f"--env {kv!r}: expected NAME=VALUE")
        lines.append(f"export {k}={shlex.quote(v)}")
    if args.script:
        with open(args.script) as f:
            body = f.read()
    elif len(args.command) == 1:
        body = args.command[0]          # a shell command line, like ssh HOST 'CMD'
    else:
        body = shlex.join(args.command)  # an argv: quoted exactly
    lines.append(body.rstrip("\n"))
    return ("\n".join(lines) + "\n").encode()


def stage(args, image_dir, env, tmpdir, interactive=False):
    """Write base.cpio + the payload archive to tmpdir/initrd.cpio; return its path."""
    out = os.path.join(tmpdir, "initrd.cpio")
    with open(out, "wb") as f:
        with open(os.path.join(image_dir, env["INITRD"]), "rb") as base:
            shutil.copyfileobj(base, f, 1 << 20)
        f.write(b"\0" * ((-f.tell()) % 4))
        w = CpioWriter(f)
        w.add_dir("job")
        for d in args.payload or []:
            if not os.path.isdir(d):
                raise LabError(f"--payload {d}: not a directory")
            w.add_tree("job", d)
        for spec in args.file or []:
            src, _, dest = spec.partition("=")
            dest = (dest or os.path.basename(src)).strip("/")
            if not os.path.isfile(src):
                raise LabError(f"--file {spec}: {src} is not a file")
            if not dest or ".." in dest.split("/"):
                raise LabError(f"--file {spec}: bad destination (a path relative to /job)")
            w.add_file(f"job/{dest}", src)
        if interactive:
            w.add_bytes("job/.lab-interactive", b"")
            w.add_bytes("job/run.sh", b"#!/bin/sh\ncd /job\n"
                        b"echo 'lab: interactive L1 shell; exit ends it (Ctrl-A X kills QEMU)'\n"
                        b"exec setsid cttyhack sh -l\n", 0o755)
        elif args.command or args.script:
            if "job/run.sh" in w.names:
                say("note: the payload's run.sh is replaced by the job script (COMMAND or "
                    "--script); run your script under another name")
            w.add_bytes("job/run.sh", job_script(args), 0o755)
        elif "job/run.sh" not in w.names:
            raise LabError("nothing to run: give a COMMAND after --, --script FILE, "
                           "or a payload with a run.sh")
        w.finish()
    return out


# --------------------------------------------------------------------------------------------
# Running L1


# L1's tick is periodic (its LAPIC timer in periodic mode), not the one-shot tick of highres/nohz. QEMU's TCG
# sometimes leaves L1's timer interrupt pending in the emulated LAPIC (IRR set, PPR below it, never taken) while L1
# runs a guest that exits often (QEMU 7.2.22 and 10.0.2 alike). A one-shot timer is re-armed only by that interrupt's
# handler, so L1 never got a tick again: no preemption, the VMM's device thread starved behind its vCPU thread, and
# the silence watchdog called it a stall (the hostile test: 4 of 5 runs). A periodic timer fires again regardless,
# and each firing raises the LAPIC's interrupt line anew, which delivers what was pending. See README's "Stalls".
L1_TICK = "highres=off nohz=off"


def l0_qemu():
    """The QEMU that runs L1: SWIFTLET_LAB_QEMU (a binary, for trying another QEMU as L0; SWIFTLET_LAB_QEMU_DATA
    then names its firmware directories, colon-separated) or Debian's qemu-system-x86_64. The QEMU peer inside L1 is
    always the host's Debian package (build-l1.sh stages it)."""
    qemu = os.environ.get("SWIFTLET_LAB_QEMU") or shutil.which("qemu-system-x86_64")
    if not qemu or not os.access(qemu, os.X_OK):
        raise LabError(f"{qemu or 'qemu-system-x86_64'} not found: apt-get install qemu-system-x86"
                       f"{' (or unset SWIFTLET_LAB_QEMU)' if os.environ.get('SWIFTLET_LAB_QEMU') else ''}")
    data = [a for d in (os.environ.get("SWIFTLET_LAB_QEMU_DATA") or "").split(":") if d for a in ("-L", d)]
    return qemu, data


def qemu_argv(args, image_dir, env, initrd, interactive=False, monitor=None):
    qemu, data = l0_qemu()
    append = "console=ttyS0 quiet panic=-1 transparent_hugepage=madvise " + L1_TICK
    if getattr(args, "drive", None):
        append += " lab.disks=1"  # L1's init then loads the disks' driver (build-l1.sh: DISK_MODULES)
    if os.environ.get("SWIFTLET_LAB_APPEND"):
        append += " " + os.environ["SWIFTLET_LAB_APPEND"]
    if args.append:
        append += " " + args.append
    return [qemu] + data + ["-accel", "tcg", "-cpu", "EPYC,+svm,+npt", "-smp", str(args.smp),
            "-m", str(args.mem), "-M", args.machine,
            "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "mon:stdio" if interactive else "stdio", "-no-reboot",
            "-kernel", os.path.join(image_dir, env["KERNEL"]), "-initrd", initrd,
            "-append", append] + (["-monitor", f"unix:{monitor},server=on,wait=off"] if monitor else []) + \
        drive_argv(args)


def drive_argv(args):
    """-drive options for --drive FILE: each a virtio disk of L1 (/dev/vda, /dev/vdb, ... in order), with
    snapshot=on, so that L1 writes to a temporary overlay and FILE is never changed."""
    argv = []
    for path in getattr(args, "drive", None) or []:
        if not os.path.isfile(path):
            raise LabError(f"--drive {path}: not a file")
        if "," in path:
            raise LabError(f"--drive {path}: QEMU's -drive cannot take a comma in a path; use a symlink")
        argv += ["-drive", f"file={path},format=raw,if=virtio,snapshot=on,cache=unsafe"]
    return argv


def _child_setup():
    # Die with lab.py even if it is SIGKILLed: PR_SET_PDEATHSIG = 1.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


class Attempt:
    """One boot of L1: stream its console, watch for hangs. Result in .outcome:
    ("exit", N) | ("hang", why) | ("timeout", why) | ("died", why)."""

    def __init__(self, args, argv, log, deadline, number, monitor=None):
        self.args, self.argv, self.log, self.deadline, self.number = \
            args, argv, log, deadline, number
        self.monitor = monitor
        self.diagnosis = None
        self.kicks = self.revived = 0
        self.kicked_at = None
        self.tail = collections.deque(maxlen=TAIL_LINES)
        self.step = None
        self.status = None
        self.t_ready = None
        self.t_exit = None
        self.proc = None
        self.outcome = None

    def console_line(self, line, now):
        reset = line.startswith("\x1bc")
        line = CTRL_RE.sub("", ANSI_RE.sub("", line.replace("\r", "")))
        if reset and not line:
            return
        self.tail.append(line)
        self.log.write(f"[+{now - self.t0:8.3f}] {line}\n")
        if not self.args.quiet:
            stamp = f"[+{now - self.t0:7.3f}] " if self.args.timestamps else ""
            sys.stdout.write(f"{self.args.prefix}{stamp}{line}\n")
        if self.t_ready is None and READY_RE.match(line):
            self.t_ready = now
            say(f"L1 ready after {now - self.t0:.2f} s (attempt {self.number})")
        m = EXIT_RE.match(line)
        if m:
            self.status = int(m.group(1))
            self.t_exit = now
        m = STEP_RE.match(line)
        if m:
            self.step = m.group(1)

    def qemu_stderr_line(self, line):
        line = line.rstrip("\r")
        self.log.write(f"[qemu] {line}\n")
        if line and not QEMU_NOISE_RE.search(line):
            say(f"qemu: {line}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def run(self):
        a = self.args
        self.t0 = time.monotonic()
        self.log.write(f"==== attempt {self.number}: {shlex.join(self.argv)}\n")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         start_new_session=True, preexec_fn=_child_setup)
        except OSError as e:
            raise LabError(f"cannot start {self.argv[0]}: {e}")
        sel = selectors.DefaultSelector()
        bufs = {}
        for f, kind in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            os.set_blocking(f.fileno(), False)
            sel.register(f, selectors.EVENT_READ, kind)
            bufs[kind] = b""
        last_output = self.t0
        try:
            while sel.get_map():
                now = time.monotonic()
                if now >= self.deadline:
                    self.outcome = ("timeout", f"--timeout {a.timeout} s ran out")
                    break
                if self.t_ready is None and now - self.t0 > a.boot_timeout:
                    self.outcome = ("hang", f"L1 did not print LAB-READY within "
                                            f"{a.boot_timeout} s of starting")
                    break
                if self.status is not None and now - self.t_exit > EXIT_GRACE_S:
                    say(f"QEMU did not exit {EXIT_GRACE_S} s after LAB-EXIT; killed it")
                    self.outcome = ("exit", self.status)
                    break
                if self.t_ready is not None and self.status is None and \
                        now - last_output > a.quiet_timeout:
                    where = f"in step '{self.step}'" if self.step else "in the job"
                    self.diagnosis = diagnose_hang(self.proc.pid, self.monitor)
                    self.log.write(f"==== hang diagnosis: {json.dumps(self.diagnosis)}\n")
                    if self.kicks < a.kick and self.monitor:
                        # An experiment (--kick N): an NMI wakes a vCPU that waits in HLT for an interrupt that
                        # never comes; if L1 speaks again, the stall was a lost wake-up, not a dead machine.
                        self.kicks += 1
                        try:
                            hmp(self.monitor, ["nmi"])
                        except OSError as e:
                            self.log.write(f"==== nmi failed: {e}\n")
                        say(f"L1 silent for {now - last_output:.0f} s {where} ({self.diagnosis['summary']}); "
                            f"sent an NMI (kick {self.kicks}/{a.kick})")
                        self.log.write(f"==== kick {self.kicks}: NMI sent\n")
                        self.kicked_at = last_output = time.monotonic()
                        continue
                    self.outcome = ("hang", f"L1 hung after {now - last_output:.0f} s of "
                                            f"silence {where} ({self.diagnosis['summary']})")
                    break
                for key, _ in sel.select(timeout=0.25):
                    kind = key.data
                    try:
                        data = os.read(key.fileobj.fileno(), 65536)
                    except BlockingIOError:
                        continue
                    now = time.monotonic()
                    if not data:
                        sel.unregister(key.fileobj)
                        rest = bufs[kind]
                        if rest:
                            self._emit(kind, rest.decode(errors="replace"), now)
                        continue
                    if kind == "out":
                        last_output = now
                        if self.kicked_at is not None:
                            say(f"L1 spoke again {now - self.kicked_at:.1f} s after the NMI")
                            self.log.write(f"==== revived {now - self.kicked_at:.1f} s after kick {self.kicks}\n")
                            self.revived += 1
                            self.kicked_at = None
                    bufs[kind] += data
                    lines, bufs[kind] = split_lines(bufs[kind], kind == "out")
                    for line in lines:
                        self._emit(kind, line.decode(errors="replace"), now)
                if not self.args.quiet:
                    sys.stdout.flush()
            if self.outcome is not None and bufs["out"]:
                # An unterminated last line: show it in the tail and the log.
                self._emit("out", bufs["out"].decode(errors="replace"), time.monotonic())
            if self.outcome is None:
                rc = self.proc.wait()
                if self.status is not None:
                    self.outcome = ("exit", self.status)
                else:
                    where = "before LAB-READY" if self.t_ready is None else (
                        f"in step '{self.step}'" if self.step else "during the job")
                    self.outcome = ("died", f"QEMU exited (status {rc}) without "
                                            f"LAB-EXIT, {where}")
        finally:
            self.kill()
            sel.close()
            for f in (self.proc.stdout, self.proc.stderr):
                f.close()
            self.log.flush()
        return self.outcome

    def _emit(self, kind, line, now):
        if kind == "out":
            self.console_line(line, now)
        else:
            self.qemu_stderr_line(line)


def process_cpu_s(pid):
    """CPU time (user + system) of a process so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hmp(monitor, commands, timeout=3.0):
    """Run HMP commands on QEMU's monitor socket; return their output (best effort)."""
    import socket
    out = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(monitor)
        def read_prompt():
            nonlocal out
            buf = b""
            while not buf.rstrip().endswith(b"(qemu)"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            out += buf
        read_prompt()
        for c in commands:
            s.sendall(c.encode() + b"\n")
            read_prompt()
    return ANSI_RE.sub("", out.decode(errors="replace")).replace("\r", "")


def diagnose_hang(pid, monitor):
    """What a silent L1 is doing, before it is killed: QEMU's CPU use over a second (an idle QEMU is a vCPU halted
    with no interrupt coming; a busy one is a vCPU that runs without printing), and the vCPU's registers."""
    d = {}
    try:
        c0 = process_cpu_s(pid)
        time.sleep(1.0)
        d["qemu_cpu_percent"] = round((process_cpu_s(pid) - c0) * 100)
    except (OSError, IndexError, ValueError):
        d["qemu_cpu_percent"] = None
    if monitor:
        try:
            # `info lapic`: the local APIC's timer and its pending (IRR) and in-service (ISR) vectors, which tell a
            # timer that stopped firing from an interrupt that is pending but never taken.
            text = hmp(monitor, ["info cpus", "info registers", "info lapic"])
            m = re.search(r"HLT=(\d)", text)  # x86 `info registers`: the vCPU waits in HLT for an interrupt
            d["halted"] = (m.group(1) == "1") if m else None
            m = re.search(r"RIP=([0-9a-f]+)", text)
            d["rip"] = m.group(1) if m else None
            m = re.search(r"EFL=([0-9a-f]+)", text)
            d["rflags"] = m.group(1) if m else None
            d["monitor"] = text[-6000:]
        except OSError as e:
            d["monitor_error"] = str(e)
    cpu = d.get("qemu_cpu_percent")
    state = {True: "halted (HLT)", False: "not halted"}.get(d.get("halted"), "state unknown")
    d["summary"] = f"QEMU {'?' if cpu is None else cpu}% CPU, L1 vCPU {state}" + \
        (f" at rip {d['rip']}" if d.get("rip") else "")
    return d


def split_lines(buf, console):
    """Split complete lines off buf; return (lines, rest). On the console a terminal reset
    (ESC c, printed by the firmware and by L1 early on) also starts a new line, so that text
    after it is not glued to an unterminated line before it. QEMU writes the serial port a
    byte at a time, so a sequence can arrive split over reads: rest keeps the tail."""
    lines = []
    while True:
        nl = buf.find(b"\n")
        rs = buf.find(b"\x1bc", 1) if console else -1
        if rs != -1 and (nl == -1 or rs < nl):
            lines.append(buf[:rs])
            buf = buf[rs:]
        elif nl != -1:
            lines.append(buf[:nl])
            buf = buf[nl + 1:]
        else:
            return lines, buf


class RunLock:
    """One L1 at a time on this machine (it has few cores): a flock in the cache directory."""

    def __init__(self, label):
        root = os.environ.get("SWIFTLET_CACHE") or os.path.expanduser("~/.cache/swiftlet")
        os.makedirs(os.path.join(root, "lab"), exist_ok=True)
        self.path = os.path.join(root, "lab", "run.lock")
        self.label = label
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip()
            except OSError:
                holder = "?"
            say(f"waiting for another L1 run to finish ({holder or 'unknown'}; "
                f"lock {self.path})")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} label {self.label}\n".encode(), 0)
        return self

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)
        os.close(self.fd)


def make_tmpdir():
    """A temporary directory for the staged initrd. Directories left by lab.py processes that
    died without cleaning up (SIGKILL) are removed first."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        m = re.fullmatch(r"swiftlet-lab-(\d+)-\w+", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except PermissionError:
            pass
    return tempfile.mkdtemp(prefix=f"swiftlet-lab-{os.getpid()}-")


def default_log(label):
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:80] or "lab"
    return os.path.join(REPO_ROOT, ".build", "lab", f"{safe}.log")


def describe(args):
    if args.label:
        return args.label
    if args.script:
        return f"script {args.script}"
    text = " ".join(args.command) if args.command else "payload run.sh"
    return text if len(text) <= 100 else text[:97] + "..."


def cmd_run(args):
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if args.command and args.script:
        raise LabError("give either --script FILE or a COMMAND, not both")
    what = describe(args)
    label = args.label or "lab"
    log_path = args.log or default_log(label)
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    image_dir, env = find_image(args)
    tmpdir = make_tmpdir()
    versions = lab_versions(env)
    say(f"L1: {versions['l1_kernel']} ({versions['l1_kernel_package']} {versions['l1_kernel_package_version']}), "
        f"QEMU {versions['qemu']}, -smp {args.smp}"
        f"{'' if versions['l0_qemu'] in versions['qemu'] else ', L0: ' + versions['l0_qemu']}")
    result = {"label": label, "command": what, "attempts": [], "status": None, "versions": versions,
              "smp": args.smp}
    try:
        initrd = stage(args, image_dir, env, tmpdir)
        monitor = os.path.join(tmpdir, "monitor.sock")
        argv = qemu_argv(args, image_dir, env, initrd, monitor=monitor)
        with RunLock(what) if not args.no_lock else _Null(), open(log_path, "w", buffering=1) as log:
            log.write(f"# lab.py run: {what}\n# image: {image_dir}\n# versions: {json.dumps(versions)}\n")
            t_start = time.monotonic()
            deadline = t_start + args.timeout
            attempt_no = 0
            while True:
                attempt_no += 1
                att = Attempt(args, argv, log, deadline, attempt_no, monitor)
                kind, detail = att.run()
                t_end = time.monotonic()
                rec = {"attempt": attempt_no, "outcome": kind,
                       "l1_boot_s": round(att.t_ready - att.t0, 3) if att.t_ready else None,
                       "job_s": round(att.t_exit - att.t_ready, 3)
                       if att.t_exit and att.t_ready else None,
                       "total_s": round(t_end - att.t0, 3), "step": att.step,
                       "kicks": att.kicks, "revived": att.revived, "diagnosis": att.diagnosis}
                result["attempts"].append(rec)
                if kind == "exit":
                    say(f"job exit status {detail}: L1 boot to LAB-READY "
                        f"{rec['l1_boot_s']:.2f} s, job {rec['job_s']:.2f} s, "
                        f"total {t_end - t_start:.1f} s ({what}; log {log_path})")
                    result["status"] = detail
                    return detail
                if kind == "hang" and attempt_no <= args.retries:
                    say(f"{detail} ({what}); retry {attempt_no}/{args.retries}")
                    print_tail(att)
                    log.write(f"==== {detail}; retrying\n")
                    continue
                print_tail(att)
                if kind == "hang":
                    tries = f"{attempt_no} attempt{'s' if attempt_no > 1 else ''}"
                    say(f"FAILED: {detail} ({what}); gave up after {tries} "
                        f"(exit {EXIT_HANG}; log {log_path})")
                    status = EXIT_HANG
                elif kind == "timeout":
                    say(f"FAILED: {detail} ({what}; exit {EXIT_HANG}; log {log_path})")
                    status = EXIT_HANG
                else:
                    say(f"FAILED: {detail} ({what}; exit {EXIT_LAB_ERROR}; log {log_path})")
                    status = EXIT_LAB_ERROR
                result["status"] = status
                result["error"] = detail
                return status
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if args.result:
            with open(args.result, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def print_tail(att):
    say(f"last {len(att.tail)} console lines:")
    for line in att.tail:
        print(f"  | {line}", file=sys.stderr)
    sys.stderr.flush()


def cmd_shell(args):
    args.command, args.script, args.env = [], None, args.env or []
    image_dir, env = find_image(args)
    tmpdir = make_tmpdir()
    proc = None
    try:
        initrd = stage(args, image_dir, env, tmpdir, interactive=True)
        argv = qemu_argv(args, image_dir, env, initrd, interactive=True)
        say("booting L1 (about 3 s); exit the shell to power off, or Ctrl-A X to kill QEMU")
        with RunLock("shell") if not args.no_lock else _Null():
            proc = subprocess.Popen(argv, preexec_fn=_child_setup, stderr=subprocess.DEVNULL)
            return proc.wait()
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmpdir, ignore_errors=True)


def cmd_build(args):
    image_dir, env = find_image(args)
    print(image_dir)
    return 0


def stage_binary(src, destdir, name=None):
    """Copy ELF src to destdir/NAME and the libraries `ldd` lists to destdir/lib/ (L1's
    /job/lib, which run.sh puts on LD_LIBRARY_PATH). Returns the list of libraries copied."""
    if not os.path.isfile(src):
        raise LabError(f"{src}: not a file")
    with open(src, "rb") as f:
        if f.read(4) != b"\x7fELF":
            raise LabError(f"{src}: not an ELF file")
    os.makedirs(destdir, exist_ok=True)
    dest = os.path.join(destdir, name or os.path.basename(src))
    shutil.copy2(src, dest)
    libs = []
    r = subprocess.run(["ldd", src], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0 or "not a dynamic executable" in r.stdout:
        return libs  # static
    missing = [l.strip() for l in r.stdout.splitlines() if "not found" in l]
    if missing:
        raise LabError(f"ldd {src}: missing libraries: {'; '.join(missing)}")
    libdir = os.path.join(destdir, "lib")
    for line in r.stdout.splitlines():
        parts = line.split()
        # "libfoo.so.1 => /path/libfoo.so.1 (0x...)"; the loader line is "/lib64/ld-... (0x...)"
        # and L1 has the loader already (QEMU needs it), so only "=>" lines are copied.
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            os.makedirs(libdir, exist_ok=True)
            shutil.copy2(parts[2], os.path.join(libdir, parts[0]), follow_symlinks=True)
            libs.append(parts[0])
    return libs


def cmd_stage_binary(args):
    libs = stage_binary(args.src, args.destdir, args.name)
    size = sum(os.path.getsize(os.path.join(args.destdir, "lib", l)) for l in libs)
    dest = os.path.join(args.destdir, args.name or os.path.basename(args.src))
    if libs:
        say(f"staged {dest} and {len(libs)} libraries ({size / 1048576:.1f} MiB) in "
            f"{os.path.join(args.destdir, 'lib')}")
    else:
        say(f"staged {dest} (static)")
    return 0


# --------------------------------------------------------------------------------------------


def add_boot_options(p):
    p.add_argument("--payload", action="append", metavar="DIR",
                   help="stage DIR's contents under /job in L1 (repeatable)")
    p.add_argument("--file", action="append", metavar="SRC[=DEST]",
                   help="stage file SRC as /job/DEST (default: its name) (repeatable)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE",
                   help="export NAME=VALUE in the job (repeatable)")
    p.add_argument("--mem", type=int, default=DEFAULT_MEM_MIB, metavar="MiB",
                   help=f"L1 memory (default {DEFAULT_MEM_MIB})")
    p.add_argument("--smp", type=int, default=1, metavar="N",
                   help="L1 vCPUs (default 1; more is slower under TCG)")
    p.add_argument("--machine", default="pc", metavar="TYPE",
                   help="QEMU machine type of L1 (default pc; microvm boots ~0.5 s faster "
                        "but hung in 2 of ~25 tries)")
    p.add_argument("--append", metavar="ARGS", help="extra L1 kernel command line")
    p.add_argument("--drive", action="append", metavar="FILE",
                   help="attach raw image FILE to L1 as a virtio disk (/dev/vda, /dev/vdb, ... in order; "
                        "snapshot=on: L1's writes never reach FILE) (repeatable)")
    p.add_argument("--l1", metavar="DIR",
                   help="L1 image directory (default: $SWIFTLET_LAB_L1, else build-l1.sh's)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the L1 image first")
    p.add_argument("--no-lock", action="store_true",
                   help="do not wait for other L1 runs on this machine")


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="lab.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="Run 'lab.py COMMAND --help' for a command's options. See README.md.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a job in L1",
                       description="Boot L1, run COMMAND with sh in /job, exit with its status. "
                       "Exit 124: L1 hung on every attempt or --timeout ran out; 125: lab "
                       "failure.")
    add_boot_options(p)
    p.add_argument("--script", metavar="FILE", help="use FILE as the job script (/job/run.sh)")
    p.add_argument("--label", help="name of the job in messages and of its log file")
    p.add_argument("--log", metavar="FILE",
                   help="console log (default: .build/lab/LABEL.log in the repository)")
    p.add_argument("--result", metavar="FILE", help="write the outcome and timings as JSON")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"wall-clock limit for the whole run, retries included "
                        f"(default {DEFAULT_TIMEOUT_S})")
    p.add_argument("--boot-timeout", type=float, default=DEFAULT_BOOT_TIMEOUT_S, metavar="S",
                   help=f"limit from QEMU start to LAB-READY (default {DEFAULT_BOOT_TIMEOUT_S})")
    p.add_argument("--quiet-timeout", type=float, default=DEFAULT_QUIET_TIMEOUT_S, metavar="S",
                   help=f"console silence after LAB-READY that means L1 hung "
                        f"(default {DEFAULT_QUIET_TIMEOUT_S})")
    p.add_argument("--kick", type=int, default=0, metavar="N",
                   help="experiment: on silence, send L1 an NMI up to N times before calling it a hang "
                        "(default 0)")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                   help=f"reruns after a hang (default {DEFAULT_RETRIES}; 0: none)")
    p.add_argument("--prefix", default="", metavar="STR", help="prefix for console lines")
    p.add_argument("--timestamps", action="store_true",
                   help="prefix console lines with the time since QEMU started")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="console to the log only (the last lines are shown on failure)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND",
                   help="shell command line (one argument) or argv (several)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("shell", help="interactive shell in L1")
    add_boot_options(p)
    p.set_defaults(func=cmd_shell)

    p = sub.add_parser("build", help="build the L1 image if needed and print its directory")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_build, l1=None)

    p = sub.add_parser("stage-binary", help="copy an ELF and its libraries into a payload dir")
    p.add_argument("src")
    p.add_argument("destdir")
    p.add_argument("--name", help="file name in DESTDIR (default: SRC's)")
    p.set_defaults(func=cmd_stage_binary)

    args = ap.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        return args.func(args)
    except LabError as e:
        say(f"error: {e}")
        return EXIT_LAB_ERROR
    except Interrupted as e:
        say(f"interrupted ({e}); QEMU killed, temporary files removed")
        return 128 + e.signum
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
