#!/usr/bin/env python3
"""Swiftlet's test and benchmark harness: what `make test`, `make bench`, `make lab` and `make run` do.

  harness.py probe                 does this host's /dev/kvm boot guests? (prints the verdict)
  harness.py test [--only PATTERN] unit tests, then integration tests on the host or in the nested lab;
                                   ends with "N passed, N failed[, N skipped]"
  harness.py bench [--bench NAME] [--runs N] [--baseline REV] [--l1-shapes N,N]   side-by-side benchmarks
                                   (Swiftlet and QEMU, same guest, same run; REV: an older Swiftlet build in the same
                                   rounds; each L1 shape in turn: blk, net and vsock run on 1 and 2 L1 vCPUs)
  harness.py --l1-cpus N VERB ...  the lab's L1 with N vCPUs (default 1) for whatever VERB runs
  harness.py lab -- CMD            run CMD in the nested lab with the payload staged under /job
  harness.py run                   boot the bundled guest with its console here (host) or in the lab

Integration tests and benchmarks need a KVM that boots guests. tools/kvm-probe decides: when this host's KVM
does, they run here; otherwise in the nested lab (Tests/Integration/lab), with everything staged under /job:
  /job/bin/swiftlet (+ /job/lib)   /job/bin/vmmbench   /job/guest/{bzImage,vmlinux,initramfs.cpio}
  /job/integration/{lib.sh,run.sh,tests/,bench/}
Standard library only.
"""

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time

INTEGRATION = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(INTEGRATION, "..", ".."))
BUILD = os.path.join(REPO, ".build")
GUEST = os.path.join(BUILD, "guest")
SWIFTLET = os.path.join(BUILD, "release", "swiftlet")
# The same sources built with -D SWIFTLET_SECCOMP_TRIGGER (`make trigger`): a forbidden system call on demand, for
# the seccomp tests. Never the binary anything else runs.
SWIFTLET_TRIGGER = os.path.join(BUILD, "trigger", "release", "swiftlet")
TOOLS = os.path.join(BUILD, "tools")
PAYLOAD = os.path.join(BUILD, "lab-payload")
LAB = os.path.join(INTEGRATION, "lab", "lab.py")
GUEST_FILES = ("bzImage", "bzImage-acpi", "vmlinux", "initramfs.cpio", "initramfs-full.cpio", "hostile.elf")
# Staged when `make guest` made them: Debian's stock cloud kernel and its initrd (tools/build-distro-image.sh, which
# needs the Debian mirror). Without them the distro test skips, saying why, and the distro benchmark fails.
OPTIONAL_GUEST_FILES = ("distro-vmlinuz", "distro-initrd.img")
# The Debian 12 root disk (tools/build-distro-image.sh, 1 GiB sparse): too big for L1's initramfs, so lab.py attaches
# it to L1 as DISTRO_DISKS virtio disks with snapshot=on (/dev/vda, /dev/vdb, ...): one per guest boot of the distro
# test and benchmark, each a fresh copy, and the cached image is never written. Natively the tests copy it instead.
DISTRO_IMAGE = "distro-debian.raw"
# 6 in make test (its SendCtrlAltDel boot reuses the disk of a clean poweroff: with 7, QEMU's reboot hung, its header says).
DISTRO_DISKS = int(os.environ.get("SWIFTLET_LAB_DISTRO_DISKS", "6"))
# The integration tests that boot the distro image. In the lab they run in an L1 of their own, the one job given the
# disks: L1 then loads virtio_pci and virtio_blk (build-l1.sh, DISK_MODULES); the other jobs keep the L1 they had.
DISK_TESTS = ("swiftlet-distro",)
DISTRO_MAX_DISKS = 24  # PCI slots of L1's pc machine, with room to spare
# The lab's L1 gets enough memory for a 3.5 GiB guest (TCG allocates it lazily).
LAB_MEM_MIB = 4608
# vCPUs of the lab's L1 (lab.py --smp): 1 by default, the fastest under TCG for one L2 vCPU. `--l1-cpus N` (or
# SWIFTLET_LAB_CPUS) sets it for a whole harness run; `bench --l1-shapes 1,2` runs a benchmark on each shape in turn.
LAB_CPUS = int(os.environ.get("SWIFTLET_LAB_CPUS", "1"))

# lab.py's log prefixes console lines with the time since L1 started.
LOG_STAMP_RE = re.compile(r"^\[\+\s*[\d.]+\] ")
RESULT_RE = re.compile(r"^TEST-RESULT (\S+) (ok|fail)(?: (.*))?$")
SKIP_RE = re.compile(r"^TEST-SKIP (\S+)(?: (.*))?$")
SAMPLE_RE = re.compile(r"^BENCH-SAMPLE metric=(\S+) vmm=(\S+) value=(\S+) unit=(\S+)$")
VMMBENCH_RE = re.compile(r"vmmbench: marker_ms=(-?\d+) exit_ms=(-?\d+) rss_kib=(-?\d+) guest_rss_kib=(-?\d+) "
                         r"status=(-?\d+) start_ns=(\d+)")


def say(message):
    print(f"harness: {message}", flush=True)


def compile_c(source, output):
    """Compile a small static C tool if it is missing or older than its source."""
    if os.path.exists(output) and os.path.getmtime(output) >= os.path.getmtime(source):
        return output
    os.makedirs(os.path.dirname(output), exist_ok=True)
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", output, source], check=True)
    return output


# ----------------------------------------------------------------------------------------------------------------
# Where guests can run


def probe():
    """(native, verdict): whether this host's /dev/kvm boots unmodified guests, and kvm-probe's words."""
    tool = compile_c(os.path.join(REPO, "tools", "kvm-probe.c"), os.path.join(TOOLS, "kvm-probe"))
    r = subprocess.run([tool], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    verdict = r.stdout.strip() or f"kvm-probe exited {r.returncode}"
    return r.returncode == 0, verdict


def where(args):
    if getattr(args, "lab", False) or os.environ.get("SWIFTLET_FORCE_LAB"):
        say("running guests in the nested lab (asked for)")
        return False
    native, verdict = probe()
    say(verdict)
    say("running guests on this host" if native else
        "this host's KVM cannot boot guests: running them in the nested lab (QEMU TCG with emulated SVM)")
    return native


def require_artifacts():
    missing = [p for p in (SWIFTLET, *(os.path.join(GUEST, f) for f in GUEST_FILES))
               if not os.path.exists(p)]
    if missing:
        sys.exit(f"harness: missing {', '.join(missing)}: run `make build guest` first")


def stage_payload(baseline=None):
    """The /job tree for the lab, rebuilt each time (it is small next to the L1 image). baseline: the path of an
    older swiftlet executable (tools/build-baseline.sh) to stage as /job/bin/swiftlet-baseline."""
    require_artifacts()
    shutil.rmtree(PAYLOAD, ignore_errors=True)
    bindir = os.path.join(PAYLOAD, "bin")
    subprocess.run([sys.executable, LAB, "stage-binary", SWIFTLET, bindir], check=True)
    if baseline:
        shutil.copy2(baseline, os.path.join(bindir, "swiftlet-baseline"))
    if os.path.exists(SWIFTLET_TRIGGER):
        shutil.copy2(SWIFTLET_TRIGGER, os.path.join(bindir, "swiftlet-trigger"))
    # curl, for the Firecracker API test (curl --unix-socket, as Firecracker's guide has it), with its libraries.
    curl = shutil.which("curl")
    if curl:
        subprocess.run([sys.executable, LAB, "stage-binary", curl, bindir], check=True, stdout=subprocess.DEVNULL)
    # Libraries go to /job/lib (lab.py's run.sh puts it on LD_LIBRARY_PATH); stage-binary put them in bin/lib.
    if os.path.isdir(os.path.join(bindir, "lib")):
        shutil.move(os.path.join(bindir, "lib"), os.path.join(PAYLOAD, "lib"))
    for tool in integration_tools().values():
        shutil.copy2(tool, bindir)
    os.makedirs(os.path.join(PAYLOAD, "guest"))
    for name in GUEST_FILES:
        shutil.copy2(os.path.join(GUEST, name), os.path.join(PAYLOAD, "guest", name))
    for name in OPTIONAL_GUEST_FILES:
        if os.path.exists(os.path.join(GUEST, name)):
            shutil.copy2(os.path.join(GUEST, name), os.path.join(PAYLOAD, "guest", name))
    target = os.path.join(PAYLOAD, "integration")
    os.makedirs(target)
    for name in ("lib.sh", "run.sh"):
        shutil.copy2(os.path.join(INTEGRATION, name), target)
    for folder in ("tests", "bench", "selftest"):
        shutil.copytree(os.path.join(INTEGRATION, folder), os.path.join(target, folder))


def lab_drives(count):
    """lab.py options attaching the distro image (if made) as `count` disks, and the job's environment naming them
    (DISTRO_DISKS); ([], "") without one or with count 0. A job with disks gets an L1 that loads their driver
    (lab.py's lab.disks=1); the others run without it."""
    image = os.path.join(GUEST, DISTRO_IMAGE)
    if not os.path.exists(image) or count <= 0:
        return [], ""
    image = os.path.realpath(image)
    disks = " ".join(f"/dev/vd{chr(ord('a') + i)}" for i in range(count))
    return [arg for _ in range(count) for arg in ("--drive", image)], f"DISTRO_DISKS='{disks}' "


def integration_tools():
    """The static C helpers of Tests/Integration/tools, built into .build/tools: name -> path."""
    folder = os.path.join(INTEGRATION, "tools")
    return {name[:-2]: compile_c(os.path.join(folder, name), os.path.join(TOOLS, name[:-2]))
            for name in sorted(os.listdir(folder)) if name.endswith(".c")}


def native_env():
    env = dict(os.environ)
    tools = integration_tools()
    env.update(SWIFTLET=SWIFTLET, SWIFTLET_TRIGGER=SWIFTLET_TRIGGER, GUEST=GUEST, VMMBENCH=tools["vmmbench"], RUNAS=tools["runas"],
               TCPPEER=tools["tcppeer"], VSOCKPEER=tools["vsockpeer"], AGENTEXEC=tools["agentexec"],
               CTLSTART=tools["ctlstart"])
    env.setdefault("QEMU", "qemu-system-x86_64")
    env.setdefault("QEMU_FIRMWARE", "/usr/share/qemu")
    return env


LAB_ENV = "SWIFTLET=/job/bin/swiftlet SWIFTLET_TRIGGER=/job/bin/swiftlet-trigger GUEST=/job/guest VMMBENCH=/job/bin/vmmbench RUNAS=/job/bin/runas " \
          "TCPPEER=/job/bin/tcppeer VSOCKPEER=/job/bin/vsockpeer AGENTEXEC=/job/bin/agentexec CTLSTART=/job/bin/ctlstart " \
          "QEMU=qemu-system-x86_64 " \
          "QEMU_FIRMWARE=/usr/share/qemu"


def run_guest_side(native, script, label, timeout, retries=None, baseline=None, disks=0):
    """Run an integration-side shell command where guests boot; return (status, output lines of the final try).
    retries: how often lab.py reruns the whole job after L1 hangs (None: its default). baseline: an older swiftlet
    executable, given to the script as $SWIFTLET_BASELINE. disks: in the lab, copies of the distro image to attach
    (lab_drives)."""
    if native:
        env = native_env()
        if baseline:
            env["SWIFTLET_BASELINE"] = baseline
        proc = subprocess.Popen(["sh", "-c", script.replace("/job/integration", INTEGRATION)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        return proc.wait(), lines
    stage_payload(baseline)
    if baseline:
        script = f"SWIFTLET_BASELINE=/job/bin/swiftlet-baseline {script}"
    log = os.path.join(BUILD, "lab", f"{label}.log")
    command = [sys.executable, LAB, "run", "--payload", PAYLOAD, "--mem", str(LAB_MEM_MIB), "--smp", str(LAB_CPUS),
               "--label", label, "--log", log, "--timeout", str(timeout)]
    if retries is not None:
        command += ["--retries", str(retries)]
    drives, drive_env = lab_drives(disks)
    status = subprocess.run(command + drives + ["--", f"{LAB_ENV} {drive_env}{script}"]).returncode
    lines = []
    if os.path.exists(log):
        with open(log, errors="replace") as f:
            for line in f:
                if line.startswith("==== ") and "retrying" in line:
                    lines = []  # a hung attempt: only the last attempt's results count
                elif not line.startswith("#"):
                    lines.append(LOG_STAMP_RE.sub("", line.rstrip("\n")).rstrip("\r"))
    return status, lines


# ----------------------------------------------------------------------------------------------------------------
# Tests


def unit_tests():
    """Run `swift test`; return (passed, failed)."""
    say("unit tests: swift test")
    proc = subprocess.Popen(["swift", "test"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    total = failed = None
    failed_names = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        m = re.search(r"Test run with (\d+) tests? in \d+ suites? (passed|failed)", line)
        if m:
            total = int(m.group(1))
        m = re.match(r"^\S*\s*Test (?!run )(.+?) (?:with \d+ test cases? )?failed after", line)
        if m:
            failed_names.append(m.group(1))
    status = proc.wait()
    failed = len(failed_names)
    if total is None:
        say(f"swift test exited {status} without a test summary (build failure?)")
        return 0, 1
    if status != 0 and failed == 0:
        failed = 1
    return total - failed, failed


# After L1 stalls (lab.py's silence watchdog: exit 124), the run resumes at the test that stalled, on a fresh L1, at
# most this many times per job (the main one, the distro job) of `make test`. The tests that had finished keep their
# results.
INTEGRATION_RESUMES = 6
# Wall-clock limit of one L1 run of the integration tests (lab.py --timeout), retries excluded.
INTEGRATION_LAB_TIMEOUT_S = 3600


def integration_test_names(pattern, folder="tests"):
    return [name[:-3] for name in sorted(os.listdir(os.path.join(INTEGRATION, folder)))
            if name.endswith(".sh") and (not pattern or pattern in name[:-3])]


def integration_tests(native, pattern, folder="tests", label_base="integration"):
    """Run the integration tests (FOLDER/*.sh) where guests boot; return (passed, failed, skipped, resumes).
    In the lab, DISK_TESTS run in a job of their own, the only one given the distro image's disks."""
    names = integration_test_names(pattern, folder)
    if native or folder != "tests":
        return integration_run(native, pattern, names, folder, label_base, 0)
    total = [0, 0, 0, 0]
    for group, label, disks in (([n for n in names if n not in DISK_TESTS], label_base, 0),
                                ([n for n in names if n in DISK_TESTS], f"{label_base}-disks", DISTRO_DISKS)):
        if group:
            total = [a + b for a, b in zip(total, integration_run(native, pattern, group, folder, label, disks))]
    return tuple(total)


def integration_run(native, pattern, remaining, folder, label_base, disks):
    """Run the integration tests REMAINING (names in FOLDER) in one job; return (passed, failed, skipped, resumes).
    In the lab, a stall of L1 costs only the test it happened in: the run resumes there (INTEGRATION_RESUMES)."""
    say(f"integration tests{f' matching {pattern!r}' if pattern else ''}{f' in {folder}/' if folder != 'tests' else ''}"
        f"{f' with {disks} disks: ' + ' '.join(remaining) if disks else ''}")
    passed = failed = skipped = 0
    failures = []
    resumes = 0
    while remaining:
        label = label_base if resumes == 0 else f"{label_base}-resume{resumes}"
        script = (f"LAB_RESUME={resumes} TESTS_DIR={folder} TESTS='{' '.join(remaining)}' "
                  f"sh /job/integration/run.sh")
        status, lines = run_guest_side(native, script, label, timeout=INTEGRATION_LAB_TIMEOUT_S, retries=0,
                                       disks=disks)
        finished = set()
        current = None
        pending = []  # (kind, name, detail) of the test that is running: counted only if it finishes
        for line in lines:
            if line.startswith("TEST-BEGIN "):
                current, pending = line.split()[1], []
            elif line.startswith("TEST-END "):
                for kind, name, detail in pending:
                    if kind == "ok":
                        passed += 1
                    elif kind == "fail":
                        failed += 1
                        failures.append(f"{name}: {detail}")
                    else:
                        skipped += 1
                        say(f"skipped {name} {detail}")
                finished.add(line.split()[1])
                current, pending = None, []
            elif line.startswith("TEST-INFO "):
                say(line[len("TEST-INFO "):])
            m = RESULT_RE.match(line)
            if m:
                pending.append((m.group(2), m.group(1), m.group(3) or ""))
            m = SKIP_RE.match(line)
            if m:
                pending.append(("skip", m.group(1), m.group(2) or ""))
        remaining = [name for name in remaining if name not in finished]
        if status == 0 or (status != 124 and not current and not remaining):
            if status != 0 and failed == 0:
                failed += 1
                failures.append(f"integration run exited {status} without a failing result")
            break
        if status == 124 and current and resumes < INTEGRATION_RESUMES:
            resumes += 1
            say(f"L1 stalled during integration test {current!r} (see .build/lab/{label}.log): resuming at that test "
                f"on a fresh L1, retry {resumes}/{INTEGRATION_RESUMES}; {len(finished)} finished test(s) keep "
                f"their results")
            continue
        # A failure of the lab itself, a stall with no retries left, or a run that ended without finishing its tests:
        # the results of the test that was running do not count, and the rest did not run.
        for kind, name, detail in pending:
            if kind == "fail":
                failed += 1
                failures.append(f"{name}: {detail}")
        what = {124: "hung", 125: "failed"}.get(status, f"exited {status}")
        failed += 1
        failures.append(f"lab: {what}{f' during integration test {current!r}' if current else ''}"
                        f"{f' after {resumes} resume(s)' if resumes else ''}; not run: "
                        f"{', '.join(n for n in remaining if n != current) or 'none'}; see .build/lab/{label}.log")
        break
    if resumes:
        say(f"the integration run resumed {resumes} time(s) after L1 stalled")
    for failure in failures:
        say(f"FAILED {failure}")
    return passed, failed, skipped, resumes


def lab_resume_selftest():
    """The resume itself, checked in the lab on every run: selftest/ holds three tests, the second of which goes
    silent on its first try (as a stalled L1 does). The run must resume at that test, on a fresh L1, without running
    the first again, and discard what the stalled try had reported. About 30 s. Returns (passed, failed)."""
    say("lab self-test: a run resumes at the test L1 went silent in (Tests/Integration/selftest)")
    p, f, s, resumes = integration_tests(False, None, folder="selftest", label_base="lab-resume-selftest")
    ok = (p, f, s, resumes) == (3, 0, 0, 1)
    print(f"TEST-RESULT lab-resume {'ok' if ok else 'fail'}"
          f"{'' if ok else f' passed {p} failed {f} skipped {s} resumes {resumes}, want 3 0 0 1'}", flush=True)
    if not ok:
        say(f"FAILED lab-resume: passed {p} failed {f} skipped {s} resumes {resumes}, want 3 0 0 1")
    return (1, 0) if ok else (0, 1)


def host_kvm_diagnosis():
    """On a host whose KVM cannot boot guests: swiftlet must say so clearly, not hang. Returns (passed, failed)."""
    require_artifacts()
    say("host test: swiftlet names the PVM-style KVM when it stops the guest (takes about a minute here)")
    try:
        r = subprocess.run([SWIFTLET, "run", "--kernel", os.path.join(GUEST, "bzImage"), "--initrd",
                            os.path.join(GUEST, "initramfs.cpio"), "--console", "none",
                            "--cmdline", "console=ttyS0 reboot=k panic=-1 quiet"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        say("FAILED host-kvm-diagnosis: swiftlet did not stop within 600 s")
        return 0, 1
    ok = r.returncode != 0 and "cannot run Linux guests" in r.stderr and "rip 0x" in r.stderr
    print(f"TEST-RESULT host-kvm-diagnosis {'ok' if ok else 'fail'} {r.stderr.strip()[:300]}")
    if not ok:
        say(f"FAILED host-kvm-diagnosis: exit {r.returncode}: {r.stderr.strip()[:300]}")
    return (1, 0) if ok else (0, 1)


# Seconds each fuzz target runs in `make test`, after its committed corpus is replayed (`make fuzz` runs longer).
FUZZ_CHECK_SECONDS = 10
FUZZ_RESULT_RE = re.compile(r"^FUZZ-RESULT (\S+) (ok|fail) (.*)$")


def fuzz_tests():
    """The libFuzzer targets (Fuzz/, tools/fuzz.sh): build them, replay every committed corpus, fuzz each target
    briefly. One result per target and phase. Returns (passed, failed)."""
    say(f"fuzz targets: replay the corpora, then {FUZZ_CHECK_SECONDS} s each (tools/fuzz.sh check)")
    proc = subprocess.Popen([os.path.join(REPO, "tools", "fuzz.sh"), "check", str(FUZZ_CHECK_SECONDS)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    passed = failed = 0
    phase = {}
    for line in proc.stdout:
        print(line, end="", flush=True)
        m = FUZZ_RESULT_RE.match(line.strip())
        if not m:
            continue
        target = m.group(1)
        name = f"fuzz.{target}.{'replay' if target not in phase else 'run'}"
        phase[target] = True
        ok = m.group(2) == "ok"
        print(f"TEST-RESULT {name} {'ok' if ok else 'fail'}{'' if ok else ' ' + m.group(3)}", flush=True)
        if ok:
            passed += 1
        else:
            failed += 1
            say(f"FAILED {name}: {m.group(3)}")
    status = proc.wait()
    if status != 0 and failed == 0:
        failed += 1
        say(f"FAILED fuzz: tools/fuzz.sh check exited {status} without a failing target (build failure?)")
    return passed, failed


def host_agent_tests():
    """The guest agent (guest/agent) on this host, over a Unix socket: the protocol, exec errors, hostile frames,
    concurrency, a dropped connection. Needs no KVM. Runs the binary the initramfs holds (`make guest` builds it
    into .build/guest). Returns (passed, failed, skipped)."""
    agent = os.path.join(GUEST, "swiftlet-agent")
    if not os.path.exists(agent):
        say(f"FAILED host-agent: {agent} is missing: run `make guest` first")
        return 0, 1, 0
    say("host test: the guest agent over a Unix socket (guest/agent/test_agent.py)")
    return host_script("host-agent", [os.path.join(REPO, "guest", "agent", "test_agent.py"), agent])


def host_api_tests():
    """Firecracker's API before boot, on this host (Tests/Integration/host/test_firecracker_api.py): the
    getting-started calls, bad input and misbehaving clients. Needs no KVM. Returns (passed, failed, skipped)."""
    require_artifacts()
    say("host test: Firecracker's API on a Unix socket (Tests/Integration/host/test_firecracker_api.py)")
    p, f, s = host_script("host-api", [os.path.join(INTEGRATION, "host", "test_firecracker_api.py"), SWIFTLET, GUEST])
    # schemathesis against the specification, before and after InstanceStart (the hostile guest, halted, is the
    # guest after boot: this host's KVM runs it). About a minute.
    say("host test: Firecracker's API against its specification, with schemathesis "
        "(Tests/Integration/host/test_firecracker_schema.py)")
    spec = os.path.join(INTEGRATION, "host", "firecracker", "firecracker.yaml")  # a copy; its NOTICE says whence
    p2, f2, s2 = host_script("host-api-schema", [os.path.join(INTEGRATION, "host", "test_firecracker_schema.py"),
                                                 SWIFTLET, spec, os.path.join(GUEST, "hostile.elf")])
    return p + p2, f + f2, s + s2


def host_snapshot_tests():
    """Snapshots on this host's KVM (Tests/Integration/host/test_snapshot.py): the hostile guest's count mode saved,
    restored twice and again from a restored VM, going on where it stopped with its memory and disk intact; bad
    snapshots refused by reason. Needs a /dev/kvm that runs the hostile guest (this project's PVM-style host does).
    About ten seconds. Returns (passed, failed, skipped)."""
    require_artifacts()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        say("skipped host-snapshot: no usable /dev/kvm on this host (the lab's swiftlet-snapshot covers a Linux guest)")
        return 0, 0, 1
    say("host test: snapshots with the hostile guest (Tests/Integration/host/test_snapshot.py)")
    return host_script("host-snapshot", [os.path.join(INTEGRATION, "host", "test_snapshot.py"), SWIFTLET,
                                         os.path.join(GUEST, "hostile.elf")], timeout=300)


def host_script(label, argv, timeout=600):
    """Runs a host-side test script (Python, printing TEST-RESULT lines); returns (passed, failed, skipped)."""
    passed = failed = skipped = 0
    try:
        proc = subprocess.run([sys.executable] + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        output, status = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:  # its stdout comes back as bytes even with text=True
        output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = 124
    for line in output.splitlines():
        print(line, flush=True)
        m = RESULT_RE.match(line)
        if m:
            if m.group(2) == "ok":
                passed += 1
            else:
                failed += 1
                say(f"FAILED {m.group(1)}: {m.group(3) or ''}")
        elif SKIP_RE.match(line):
            skipped += 1
    if status != 0 and failed == 0:
        failed += 1
        say(f"FAILED {label}: {os.path.basename(argv[0])} exited {status} without a failing result")
    return passed, failed, skipped


def host_console_tests():
    """The interactive console on a real terminal (a pty): raw mode while the guest runs, Ctrl-A x stops the VM, and
    the terminal settings come back on that exit path and on SIGTERM. Needs a /dev/kvm that at least starts guests
    (the guest need not get far). Returns (passed, failed)."""
    import pty
    import signal
    import termios
    require_artifacts()
    passed = failed = 0

    def report(name, ok, detail=""):
        nonlocal passed, failed
        print(f"TEST-RESULT {name} {'ok' if ok else 'fail'}{' ' + detail if detail and not ok else ''}", flush=True)
        passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)

    for how in ("ctrl-a-x", "sigterm"):
        master, slave = pty.openpty()
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen([SWIFTLET, "run", "--kernel", os.path.join(GUEST, "bzImage"), "--initrd",
                                 os.path.join(GUEST, "initramfs.cpio"), "--cmdline", "console=ttyS0 reboot=k panic=-1"],
                                stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        raw = False
        for _ in range(100):  # up to 5 s for swiftlet to put the terminal in raw mode
            time.sleep(0.05)
            if not termios.tcgetattr(slave)[3] & termios.ICANON:
                raw = True
                break
        report(f"host-console.{how}.raw-mode", raw, "the terminal never left canonical mode")
        if how == "ctrl-a-x":
            os.write(master, b"\x01x")
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
            report(f"host-console.{how}.stops", False, "swiftlet did not stop within 20 s")
        else:
            report(f"host-console.{how}.stops", status == 0, f"exit status {status}")
        after = termios.tcgetattr(slave)
        report(f"host-console.{how}.terminal-restored", after == before, f"settings before {before[:4]} after {after[:4]}")
        os.close(master)
        os.close(slave)
    return passed, failed


def host_describe_tests():
    """`swiftlet describe`, end to end: the aarch64 device tree it writes for a real Debian arm64 Image passes dtc
    without warnings and dt-validate (pinned dtschema, Linux 6.1 bindings; tools/setup-devicetree-tools.sh) without
    errors; the x86_64 report carries the command line the guest gets. Returns (passed, failed, skipped)."""
    import tempfile
    passed = failed = skipped = 0

    def report(name, ok, detail=""):
        nonlocal passed, failed
        print(f"TEST-RESULT {name} {'ok' if ok else 'fail'}{' ' + detail if detail and not ok else ''}", flush=True)
        if not ok:
            say(f"FAILED {name}: {detail}")
        passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)

    cache = os.environ.get("SWIFTLET_CACHE", os.path.expanduser("~/.cache/swiftlet"))
    image = os.path.join(cache, "arm64", "Image")
    schemas = sorted(glob.glob(os.path.join(cache, "dtschema", "2023.1", "linux-*-schema.json")))
    validate = os.path.join(cache, "dtschema", "2023.1", "venv", "bin", "dt-validate")
    bzimage = os.path.join(GUEST, "bzImage")
    kernel = ["--kernel", bzimage] if os.path.exists(bzimage) else []
    r = subprocess.run([SWIFTLET, "describe", "--arch", "x86_64", "--cpus", "2", "--disk", "/nonexistent.img"] + kernel,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # With the guest's bzImage the zero page is read back from the memory it was written to.
    report("host-describe.x86_64", r.returncode == 0 and "virtio_mmio.device=4K@0xd0000000:5" in r.stdout
           and "mptable cpu apic-id 1 enabled" in r.stdout
           and (not kernel or ("zero-page cmd_line_ptr 0x20000" in r.stdout
                               and "command-line-in-memory console=ttyS0 reboot=k panic=1 virtio_mmio.device=4K@0xd0000000:5" in r.stdout)),
           (r.stderr.strip() or r.stdout.strip())[:300])
    # packed=off on every device option: each backend line says packed=off; without it, packed=on; a value that is
    # neither is refused, naming the option.
    devices = ["--disk", "/nonexistent.img{}", "--net", "tap=t0{}", "--vsock", "socket=/nonexistent.sock{}",
               "--balloon", "on{}", "--rng", "rate=1M{}"]
    lines = {}
    for suffix in ("", ",packed=off"):
        r = subprocess.run([SWIFTLET, "describe", "--arch", "x86_64"] + [a.format(suffix) for a in devices] + kernel,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines[suffix] = [l for l in r.stdout.splitlines() if l.startswith("backend ")]
    report("host-describe.packed-options",
           len(lines[""]) == 5 and all(l.endswith(" packed=on") for l in lines[""])
           and len(lines[",packed=off"]) == 5 and all(l.endswith(" packed=off") for l in lines[",packed=off"]),
           f"{lines}"[:300])
    r = subprocess.run([SWIFTLET, "describe", "--arch", "x86_64", "--disk", "/nonexistent.img,packed=maybe"] + kernel,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    report("host-describe.packed-refused", r.returncode != 0 and "--disk" in r.stderr and "packed=maybe" in r.stderr,
           r.stderr.strip()[:300])
    # engine=io_uring|sync on --disk: the backend line says which was asked for; anything else is refused.
    r = subprocess.run([SWIFTLET, "describe", "--arch", "x86_64", "--disk", "/a.img,engine=io_uring", "--disk", "/b.img"] + kernel,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engines = [l for l in r.stdout.splitlines() if l.startswith("backend blk")]
    report("host-describe.engine-options", len(engines) == 2 and " engine=io_uring " in engines[0]
           and " engine=sync " in engines[1], f"{engines} {r.stderr.strip()}"[:300])
    r = subprocess.run([SWIFTLET, "describe", "--arch", "x86_64", "--disk", "/a.img,engine=aio"] + kernel,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    report("host-describe.engine-refused", r.returncode != 0 and "--disk" in r.stderr and "engine=aio" in r.stderr,
           r.stderr.strip()[:300])
    if not (os.path.exists(image) and shutil.which("dtc") and schemas and os.access(validate, os.X_OK)):
        say("skipped host-describe.aarch64: needs the Debian arm64 Image, dtc and dtschema (tools/setup-devicetree-tools.sh)")
        return passed, failed, skipped + 1
    with tempfile.TemporaryDirectory() as work:
        initrd = os.path.join(work, "initrd")
        with open(initrd, "wb") as f:
            f.write(os.urandom(3 << 20))
        dtb = os.path.join(work, "guest.dtb")
        r = subprocess.run([SWIFTLET, "describe", "--arch", "aarch64", "--kernel", image, "--initrd", initrd, "--cpus", "4",
                            "--memory", "1G", "--disk", "/a.img", "--disk", "/b.img", "--net", "tap=t0", "--dtb", dtb],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        report("host-describe.aarch64.writes-dtb", r.returncode == 0 and os.path.getsize(dtb) > 0 and "entry pc=0x80000000" in r.stdout,
               r.stderr.strip()[:300])
        if r.returncode != 0:
            return passed, failed, skipped
        d = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", dtb], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        report("host-describe.aarch64.dtc", d.returncode == 0 and not d.stderr and d.stdout.count("virtio,mmio") == 3
               and "linux,initrd-start" in d.stdout, d.stderr.strip()[:300])
        v = subprocess.run([validate, "-s", schemas[-1], dtb], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        report("host-describe.aarch64.dt-validate", v.returncode == 0 and not v.stdout.strip() and not v.stderr.strip(),
               (v.stdout + v.stderr).strip()[:300])
    return passed, failed, skipped


def cmd_test(args):
    started = time.monotonic()
    passed, failed = unit_tests() if not args.only else (0, 0)
    skipped = 0
    native = where(args)
    p, f, s, _ = integration_tests(native, args.only)
    passed, failed, skipped = passed + p, failed + f, skipped + s
    if not native and not args.only:
        p, f = lab_resume_selftest()
        passed, failed = passed + p, failed + f
    if not args.only:
        p, f, s = host_describe_tests()
        passed, failed, skipped = passed + p, failed + f, skipped + s
    if not args.only or "fuzz" in args.only:
        p, f = fuzz_tests()
        passed, failed = passed + p, failed + f
    if not args.only or "agent" in args.only:
        p, f, s = host_agent_tests()
        passed, failed, skipped = passed + p, failed + f, skipped + s
    if not args.only or "api" in args.only:
        p, f, s = host_api_tests()
        passed, failed, skipped = passed + p, failed + f, skipped + s
    if not args.only or "snapshot" in args.only:
        p, f, s = host_snapshot_tests()
        passed, failed, skipped = passed + p, failed + f, skipped + s
    if not args.only and os.path.exists("/dev/kvm"):
        p, f = host_console_tests()
        passed, failed = passed + p, failed + f
    if not native and not args.only and not args.lab and os.path.exists("/dev/kvm"):
        p, f = host_kvm_diagnosis()
        passed, failed = passed + p, failed + f
    say(f"took {time.monotonic() - started:.0f} s")
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""), flush=True)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------------------
# Benchmarks


# name -> {metric: (unit, better)}; the lab-side script is bench/NAME.sh and prints BENCH-SAMPLE lines.
BENCHES = {
    "boot": {"boot_to_init": ("ms", "lower"), "boot_to_exit": ("ms", "lower"), "vmm_overhead_rss": ("MiB", "lower"),
             "start_to_first_run": ("ms", "lower"), "start_to_first_run_bare": ("ms", "lower"),
             "start_to_first_run_jailed": ("ms", "lower")},
    # fio in the guest on a virtio disk (bench/blk.sh), in several configurations each (vmm=swiftlet-split,
    # qemu-threads, qemu-io_uring-packed, ...: the script's header): Swiftlet's default against QEMU's best. The
    # ratios come from Swiftlet's --stats (no QEMU figure), for both ring layouts.
    "blk": {"blk_randread_4k_iops": ("IOPS", "higher"), "blk_randwrite_4k_iops": ("IOPS", "higher"),
            "blk_seqread_1m_mbps": ("MiB/s", "higher"), "blk_seqwrite_1m_mbps": ("MiB/s", "higher"),
            "blk_notifications_per_request": ("ratio", "lower"),
            "blk_notifications_per_request_no_event_idx": ("ratio", "lower"),
            "blk_interrupts_per_request": ("ratio", "lower"),
            "blk_interrupts_per_request_no_event_idx": ("ratio", "lower")},
    # iperf3 between the guest and a TAP in the same machine (bench/net.sh). qemu: virtio-net-device with vhost=off;
    # the *_vhost metrics are qemu with vhost=on (no swiftlet figure: the kernel's backend, for reference).
    # net_offload_gain is swiftlet's only; exits per MiB come from KVM's tracepoints in the same run for both VMMs;
    # the latency is a TCP request/response round trip (tcppeer rr), the ping figure an ICMP one for reference.
    "net": {"net_tcp_g2h_gbps": ("Gbit/s", "higher"), "net_tcp_h2g_gbps": ("Gbit/s", "higher"),
            "net_tcp_g2h_gbps_vhost": ("Gbit/s", "higher"), "net_tcp_h2g_gbps_vhost": ("Gbit/s", "higher"),
            "net_offload_gain": ("ratio", "higher"), "net_exits_per_mib": ("per_MiB", "lower"),
            "net_exits_per_mib_vhost": ("per_MiB", "lower"), "net_rr_latency_us": ("us", "lower"),
            "net_rr_latency_us_vhost": ("us", "lower"), "net_ping_us": ("us", "lower"),
            "net_tcp_g2h_gbps_sched_normal": ("Gbit/s", "higher"), "net_tcp_h2g_gbps_sched_normal": ("Gbit/s", "higher"),
            "net_exits_per_mib_sched_normal": ("per_MiB", "lower"), "net_rr_latency_us_sched_normal": ("us", "lower"),
            "net_tcp_g2h_gbps_sched_batch": ("Gbit/s", "higher"), "net_tcp_h2g_gbps_sched_batch": ("Gbit/s", "higher"),
            "net_exits_per_mib_sched_batch": ("per_MiB", "lower"), "net_rr_latency_us_sched_batch": ("us", "lower"),
            # Swiftlet with the split ring only (packed=off), against QEMU vhost=off of the same round.
            "net_tcp_g2h_gbps_split": ("Gbit/s", "higher"), "net_tcp_h2g_gbps_split": ("Gbit/s", "higher"),
            "net_exits_per_mib_split": ("per_MiB", "lower"), "net_rr_latency_us_split": ("us", "lower")},
    # vsockpeer streams and agent execs (bench/vsock.sh). qemu: vhost-vsock-device (the kernel's backend);
    # exec_cli_ms is swiftlet's only; sandbox_cold_ms is `swiftlet exec -- true` against QEMU booting to init and
    # powering off.
    "vsock": {"vsock_g2h_mbps": ("Mbit/s", "higher"), "vsock_h2g_mbps": ("Mbit/s", "higher"),
              "exec_roundtrip_ms": ("ms", "lower"), "exec_cli_ms": ("ms", "lower"),
              "sandbox_cold_ms": ("ms", "lower")},
    # inflate 128 MiB of a 256 MiB guest (bench/balloon.sh); qemu: virtio-balloon-device through QMP. The fpr_*
    # figures are swiftlet's only: guest RAM resident 10 s after the guest freed 200 MiB, reporting on and off.
    "balloon": {"balloon_reclaim_mib_s": ("MiB/s", "higher"), "fpr_rss_after_free_mib": ("MiB", "lower"),
                "fpr_rss_after_free_mib_off": ("MiB", "lower")},
    # The Debian 12 image (tools/build-distro-image.sh) from process start to its multi-user marker (bench/distro.sh),
    # 2 vCPUs, 512 MiB, a fresh disk each boot; qemu: microvm acpi=on. The distro_guest_* figures are the guest's own
    # systemd-analyze split of that boot: kernel (with the initramfs-tools initrd, which is not systemd) and userspace.
    "distro": {"distro_boot_to_multiuser": ("ms", "lower"), "distro_guest_kernel": ("ms", "lower"),
               "distro_guest_userspace": ("ms", "lower")},
    # The control socket: Swiftlet's Firecracker API against QEMU's QMP. On the host (Tests/Integration/host/
    # bench_api.py): process start to the socket accepting, in wall and CPU time, and to its first answer; the round trip of GET
    # /machine-config (QMP: query-status) on one connection, median and p99. In the lab (bench/api.sh): from the
    # start request (InstanceStart; QMP cont on a QEMU started with -S) to the guest's init.
    # A snapshot of the tiny guest with its agent, restored (bench/snapshot.sh); qemu: HMP migrate to a file and
    # -incoming from it. snapshot_restore_over_cold is each VMM's restore against its own cold sandbox, in permille.
    "snapshot": {"snapshot_restore_to_exec_ms": ("ms", "lower"), "sandbox_cold_ms": ("ms", "lower"),
                 "snapshot_restore_over_cold": ("permille", "lower"), "snapshot_create_ms": ("ms", "lower"),
                 "snapshot_file_mib": ("MiB", "lower"), "restore_to_first_run_ms": ("ms", "lower"),
                 "clone_private_mib": ("MiB", "lower"), "snapshot_create_diff_ms": ("ms", "lower"),
                 "snapshot_file_diff_kib": ("KiB", "lower")},
    "api": {"api_socket_ready_ms": ("ms", "lower"), "api_socket_ready_cpu_ms": ("ms", "lower"),
            "api_first_response_ms": ("ms", "lower"),
            "api_cost_threads": ("threads", "lower"), "api_cost_anon_kib": ("KiB", "lower"),
            "api_cost_private_dirty_kib": ("KiB", "lower"), "api_cost_private_kib": ("KiB", "lower"),
            "api_request_us": ("us", "lower"), "api_request_p99_us": ("us", "lower"),
            "api_instance_start_to_init_ms": ("ms", "lower")},
}
# Metrics measured on this host whatever runs the guest side.
HOST_METRICS = {"start_to_first_run", "start_to_first_run_bare", "start_to_first_run_jailed", "api_socket_ready_ms",
                "api_socket_ready_cpu_ms", "api_first_response_ms", "api_cost_threads", "api_cost_anon_kib",
                "api_cost_private_dirty_kib", "api_cost_private_kib", "api_request_us", "api_request_p99_us"}
# Rounds when --runs is not given: a blk round is two boots with about 25 s of fio each in the lab; a net round is
# five boots with up to 2 x 10 s of iperf3 each (about 4 minutes).
DEFAULT_RUNS = {"boot": 10, "blk": 3, "net": 3, "vsock": 3, "balloon": 3, "distro": 5, "api": 10, "snapshot": 5}
# The bench scripts' own settings (their headers explain them), passed on from this process's environment, so that
# `NET_ORDER=swiftlet,qemu make bench BENCH=net` reaches the lab too.
BENCH_KNOBS = ("NET_ORDER", "NET_TIME", "NET_RR", "BLK_RUNTIME", "BLK_RAMP", "BLK_JOBS", "VSOCK_MIB",
               "SWIFTLET_SECCOMP", "BASELINE_OPTIONS")
# Benchmarks whose script runs an older build beside this one ($SWIFTLET_BASELINE, vmm=baseline): bench --baseline.
BASELINE_BENCHES = {"blk", "net"}
# L1 shapes (vCPUs) each benchmark runs on by default, one after the other, each against QEMU in the same L1 run:
# with 2 the device thread can find a CPU of its own (issue 19). Others run on LAB_CPUS only.
DEFAULT_L1_SHAPES = {"blk": "1,2", "net": "1,2", "vsock": "1,2"}


def start_to_first_run(runs):
    """From fork to the first KVM_RUN of vCPU 0, measured on this host (it gets that far even when its KVM
    cannot run the guest). Swiftlet only: QEMU prints no such stamp. Three set-ups in turn, run after run:
    the default (seccomp on), bare (--seccomp off) and jailed (--jail, uid 65534, seccomp on; the supervisor's fork
    and the child's exec, namespaces, pivot and drop included)."""
    require_artifacts()
    tool = native_env()["VMMBENCH"]
    samples = {"start_to_first_run": [], "start_to_first_run_bare": [], "start_to_first_run_jailed": []}
    jail = tempfile.mkdtemp(prefix="swiftlet-bench-jail.")
    # A KVM node for the jail's group only, so that /dev/kvm's own mode stays as it is.
    kvm = os.path.join(jail, "kvm-node")
    try:
        os.mknod(kvm, 0o660 | stat.S_IFCHR, os.makedev(10, 232))
        os.chmod(kvm, 0o660)  # mknod's mode went through the umask
        os.chown(kvm, 0, 65534)
        root = os.path.join(jail, "root")
        os.mkdir(root)
        setups = {"start_to_first_run": [], "start_to_first_run_bare": ["--seccomp", "off"],
                  "start_to_first_run_jailed": ["--jail", root, "--uid", "65534", "--gid", "65534", "--kvm", kvm]}
        for _ in range(runs):
            for metric, options in setups.items():
                # SIGTERM, not SIGKILL: the jail's supervisor forwards it and removes what the VM made.
                r = subprocess.run([tool, "--kill-on", "first-kvm-run", "--kill-signal", str(signal.SIGTERM),
                                    "--timeout", "30", "--", SWIFTLET, "run", *options, "--kernel",
                                    os.path.join(GUEST, "bzImage"), "--initrd", os.path.join(GUEST, "initramfs.cpio"),
                                    "--console", "none", "--trace-startup"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                m = VMMBENCH_RE.search(r.stdout)
                stamp = re.search(r"first-kvm-run monotonic_ns=(\d+)", r.stdout)
                if m and stamp:
                    samples[metric].append((int(stamp.group(1)) - int(m.group(6))) / 1e6)
                else:
                    say(f"start_to_first_run: a {metric} run gave no stamp: {r.stdout[-300:]}")
        left = os.listdir(root)
        if left:
            say(f"start_to_first_run: the jail runs left {left} in {root}")
    finally:
        shutil.rmtree(jail, ignore_errors=True)
    return samples


def cmd_bench(args):
    names = [args.bench] if args.bench else list(BENCHES)
    for name in names:
        if name not in BENCHES:
            sys.exit(f"harness: no benchmark {name!r}; there are: {', '.join(BENCHES)}")
    baseline = baseline_commit = None
    if args.baseline:
        unable = [name for name in names if name not in BASELINE_BENCHES]
        if unable:
            sys.exit(f"harness: --baseline works for {', '.join(sorted(BASELINE_BENCHES))}, not {', '.join(unable)}"
                     " (pick one with BENCH=...)")
        baseline_commit = subprocess.run(["git", "rev-parse", "--short=12", f"{args.baseline}^{{commit}}"], cwd=REPO,
                                         capture_output=True, text=True).stdout.strip()
        proc = subprocess.run([os.path.join(REPO, "tools", "build-baseline.sh"), args.baseline], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            sys.exit(f"harness: could not build the baseline {args.baseline} (tools/build-baseline.sh said why above)")
        baseline = proc.stdout.strip().splitlines()[-1]
        say(f"baseline: {args.baseline} ({baseline_commit}) is {baseline}; it runs beside this build in every round")
    native = where(args)
    os.makedirs(os.path.join(BUILD, "bench"), exist_ok=True)
    status = 0
    global LAB_CPUS
    for name in names:
        shapes = [LAB_CPUS] if native else [int(n) for n in (args.l1_shapes or DEFAULT_L1_SHAPES.get(name, str(LAB_CPUS))).split(",")]
        reports = []
        for shape in shapes:
            LAB_CPUS = shape
            rc, report = bench_one(name, args, native, baseline, baseline_commit, shape if not native else None)
            status = status or rc
            reports.append(report)
        # One file per benchmark: a report per L1 shape (a single one keeps the old layout).
        with open(os.path.join(BUILD, "bench", f"{name}.json"), "w") as f:
            json.dump(reports[0] if len(reports) == 1 else {"bench": name, "shapes": reports}, f, indent=2)
            f.write("\n")
        say(f"wrote {os.path.join('.build', 'bench', name + '.json')}")
    return status


def bench_one(name, args, native, baseline, baseline_commit, l1_cpus):
    """One benchmark on one L1 shape (l1_cpus; None on a native host): the guest side, then the report. Returns
    (status, report)."""
    status = 0
    tag = f"[l1-cpus={l1_cpus}]" if l1_cpus else ""
    if l1_cpus:
        say(f"benchmark {name} with {l1_cpus} L1 vCPU{'s' if l1_cpus > 1 else ''}")
    samples = {}  # (metric, vmm) -> [values]
    units = {}
    runs = args.runs or DEFAULT_RUNS.get(name, 10)
    knobs = "".join(f"{knob}={shlex.quote(os.environ[knob])} " for knob in BENCH_KNOBS if knob in os.environ)
    script = f"{knobs}INTEGRATION=/job/integration RUNS={runs} sh /job/integration/bench/{name}.sh"
    # The distro benchmark boots each run from a fresh copy of the image: two disks a round (one per VMM).
    disks = min(2 * runs, DISTRO_MAX_DISKS) if name == "distro" else 0
    rc, lines = run_guest_side(native, script, f"bench-{name}{f'-l1x{l1_cpus}' if l1_cpus else ''}",
                               timeout=3000 + (1500 if baseline else 0),
                               baseline=baseline, disks=disks)
    for line in lines:
        m = SAMPLE_RE.match(line)
        if m:
            samples.setdefault((m.group(1), m.group(2)), []).append(float(m.group(3)))
            units[m.group(1)] = m.group(4)
    if rc != 0:
        say(f"benchmark {name}: the guest side exited {rc}; figures below come from what finished")
        status = 1
    if name == "boot":
        for metric, values in start_to_first_run(max(runs, 10)).items():
            samples[(metric, "swiftlet")] = values
    if name == "api":
        env = native_env()
        # The API's cost in threads and memory needs a guest that boots on this host's KVM: the hostile one does
        # (the schema test relies on the same), wherever the guest side of the benchmarks ran.
        hostile = os.path.join(GUEST, "hostile.elf")
        extra = {"HOSTILE": hostile} if os.path.exists(hostile) and os.access("/dev/kvm", os.R_OK | os.W_OK) else {}
        r = subprocess.run([sys.executable, os.path.join(INTEGRATION, "host", "bench_api.py"), SWIFTLET,
                            env["QEMU"], str(runs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, **extra})
        for line in r.stdout.splitlines():
            m = SAMPLE_RE.match(line)
            if m:
                samples.setdefault((m.group(1), m.group(2)), []).append(float(m.group(3)))
            else:
                print(line, flush=True)
        if r.returncode != 0:
            say(f"benchmark api: the host side exited {r.returncode}")
            status = 1
    where_ran = "host" if native else "nested lab (QEMU TCG + emulated SVM, L1 Debian cloud kernel)"
    report = {"bench": name, "where": where_ran, "host_kvm_native": native, "l1_cpus": l1_cpus,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "metrics": []}
    for metric, (unit, better) in BENCHES[name].items():
        ours = samples.get((metric, "swiftlet"), [])
        # The peer: vmm=qemu, or where the script ran QEMU in several configurations (vmm=qemu-CONFIG), the best
        # of their medians, named in the line.
        configs = {vmm: statistics.median(values) for (m, vmm), values in samples.items() if m == metric and values}
        peer_name = "qemu"
        if "qemu" not in configs:
            qemus = [v for v in configs if v.startswith("qemu-")]
            if qemus:
                pick = max if better == "higher" else min
                peer_name = pick(qemus, key=lambda v: configs[v])
        peer = samples.get((metric, peer_name), [])
        med_ours = statistics.median(ours) if ours else None
        med_peer = statistics.median(peer) if peer else None
        ratio = med_ours / med_peer if med_ours is not None and med_peer else None
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        where_note = " (host)" if metric in HOST_METRICS else ""
        others = "".join(f" {vmm}={fmt(value)}" for vmm, value in sorted(configs.items())
                         if vmm not in ("swiftlet", "qemu", "baseline"))
        best = f" qemu-best={peer_name}" if peer_name != "qemu" else ""
        print(f"bench{tag}: {metric} swiftlet={fmt(med_ours)} qemu={fmt(med_peer)} unit={unit} better={better} "
              f"ratio={fmt(ratio)} runs={max(len(ours), len(peer))}{best}{others}{where_note}", flush=True)
        entry = {"name": metric, "unit": unit, "better": better, "swiftlet": med_ours,
                 "qemu": med_peer, "ratio": ratio, "runs": max(len(ours), len(peer)),
                 "swiftlet_samples": ours, "qemu_samples": peer, "qemu_config": peer_name,
                 "configs": configs,
                 "where": "host" if metric in HOST_METRICS else where_ran}
        base = samples.get((metric, "baseline"), [])
        if base:
            # The same metric for the older build, from the same rounds. Round by round, both builds' ratios
            # to that round's QEMU figure, so that the lab's drift between rounds cancels out.
            med_base = statistics.median(base)
            per_round = lambda xs: [x / q for x, q in zip(xs, peer) if q] if len(xs) == len(peer) else []
            ours_rounds, base_rounds = per_round(ours), per_round(base)
            to_base = med_ours / med_base if med_ours is not None and med_base else None
            rounds = lambda xs: ",".join(f"{x:.2f}" for x in xs) or "-"
            print(f"bench: {metric} baseline={fmt(med_base)} swiftlet={fmt(med_ours)} unit={unit} "
                  f"better={better} swiftlet/baseline={fmt(to_base)} baseline/qemu={fmt(med_base / med_peer if med_peer else None)} "
                  f"per-round vs qemu: swiftlet={rounds(ours_rounds)} baseline={rounds(base_rounds)} "
                  f"(baseline {baseline_commit})", flush=True)
            entry.update(baseline=med_base, baseline_samples=base, baseline_commit=baseline_commit,
                         swiftlet_to_baseline=to_base, swiftlet_round_ratios=ours_rounds,
                         baseline_round_ratios=base_rounds)
        report["metrics"].append(entry)
    return status, report


# ----------------------------------------------------------------------------------------------------------------
# Ad hoc


def cmd_lab(args):
    command = " ".join(args.command[1:] if args.command[:1] == ["--"] else args.command)
    if not command:
        sys.exit("harness: usage: make lab CMD='swiftlet run --kernel /job/guest/bzImage …'")
    stage_payload()
    # The distro image's disks (and the L1 that loads their driver) only when asked for.
    drives, drive_env = lab_drives(DISTRO_DISKS if os.environ.get("SWIFTLET_LAB_DISTRO") == "1" else 0)
    return subprocess.run([sys.executable, LAB, "run", "--payload", PAYLOAD, "--mem", str(LAB_MEM_MIB),
                           "--smp", str(LAB_CPUS), "--label", "adhoc"] + drives + ["--", f"export {LAB_ENV} {drive_env}PATH=/job/bin:$PATH; {command}"]).returncode


def cmd_run(args):
    require_artifacts()
    native = where(args)
    if native:
        say("booting the bundled guest here; its shell is on this terminal (Ctrl-A x stops the VM)")
        os.execv(SWIFTLET, [SWIFTLET, "run", "--kernel", os.path.join(GUEST, "bzImage"), "--initrd",
                            os.path.join(GUEST, "initramfs.cpio"), "--cmdline", "console=ttyS0 reboot=k panic=-1"])
    say("booting the bundled guest with swiftlet inside the nested lab; its console follows")
    stage_payload()
    command = ("swiftlet run --kernel /job/guest/bzImage --initrd /job/guest/initramfs.cpio --memory 256M "
               "--cmdline 'console=ttyS0 reboot=k panic=-1 swiftlet.test=hello'")
    return subprocess.run([sys.executable, LAB, "run", "--payload", PAYLOAD, "--mem", str(LAB_MEM_MIB),
                           "--smp", str(LAB_CPUS), "--label", "run", "--", f"export PATH=/job/bin:$PATH; echo '$ {command}'; {command}"]
                          ).returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", action="store_true", help="use the nested lab even if this host's KVM boots guests")
    parser.add_argument("--l1-cpus", type=int, default=None, metavar="N",
                        help="vCPUs of the lab's L1 (default 1, or SWIFTLET_LAB_CPUS)")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("probe")
    p = sub.add_parser("test")
    p.add_argument("--only", metavar="PATTERN", help="only integration tests whose name contains PATTERN")
    p = sub.add_parser("bench")
    p.add_argument("--bench", metavar="NAME")
    p.add_argument("--runs", type=int, default=None, help="rounds (default: 10 for boot, 3 for blk and net)")
    p.add_argument("--baseline", metavar="REV", help="also run the build of git revision REV in every round (blk, "
                   "net), for an A/B in one lab run (tools/build-baseline.sh builds and caches it)")
    p.add_argument("--l1-shapes", metavar="N,N", default=None,
                   help="run the benchmark once per L1 shape, with that many L1 vCPUs each (default: "
                        + ", ".join(f"{b} {s}" for b, s in DEFAULT_L1_SHAPES.items()) + "; others 1)")
    p = sub.add_parser("lab")
    p.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("run")
    args = parser.parse_args()
    global LAB_CPUS
    if args.l1_cpus:
        LAB_CPUS = args.l1_cpus
    if args.verb == "probe":
        native, verdict = probe()
        print(verdict)
        return 0 if native else 1
    return {"test": cmd_test, "bench": cmd_bench, "lab": cmd_lab, "run": cmd_run}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
