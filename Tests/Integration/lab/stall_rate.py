#!/usr/bin/env python3
"""How often does L1 stall under network load? Runs the virtio-net transfer of tests/swiftlet-net.sh (guest->host,
then host->guest, each NET_MIB MiB, checksummed) again and again in the lab, with lab.py's silence watchdog and no
retries, and counts the transfers that finished and the ones L1 stalled in.

  stall_rate.py [--transfers N] [--per-boot K] [--mib M] [--vmm swiftlet|qemu] [--smp S] [--kernel PKG=VERSION]
                [--append ARGS] [--json FILE]

Each L1 boot runs up to K transfers (one guest boot each); a stall ends that L1 boot and the next boot carries on,
until N transfers have been tried. Prints one line per L1 boot and a summary: transfers tried, stalls, stall rate
per transfer, with the L1 kernel and QEMU versions. Needs `make build guest` (it stages the same payload as the tests).
Standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

LAB_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(LAB_DIR))
import harness  # noqa: E402  (Tests/Integration/harness.py: the payload and the lab's environment)

LAB = os.path.join(LAB_DIR, "lab.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transfers", type=int, default=10, help="transfers to try in all (default 10)")
    ap.add_argument("--per-boot", type=int, default=5, help="transfers per L1 boot (default 5)")
    ap.add_argument("--mib", type=int, default=256, help="MiB each way per transfer (default 256)")
    ap.add_argument("--vmm", choices=("swiftlet", "qemu"), default="swiftlet")
    ap.add_argument("--smp", type=int, default=1, help="L1 vCPUs (default 1)")
    ap.add_argument("--kernel", help="L1 kernel package, NAME=VERSION (default: the pin)")
    ap.add_argument("--append", help="extra L1 kernel command line")
    ap.add_argument("--quiet-timeout", type=float, default=10)
    ap.add_argument("--kick", type=int, default=0, help="lab.py --kick: NMIs to a silent L1 before giving up")
    ap.add_argument("--json", metavar="FILE", help="write the counts as JSON")
    args = ap.parse_args()

    harness.stage_payload()
    env = dict(os.environ)
    if args.kernel:
        env["SWIFTLET_LAB_KERNEL_PKG"] = args.kernel
    tried = done = stalls = other = 0
    boots = []
    versions = None
    while tried < args.transfers:
        k = min(args.per_boot, args.transfers - tried)
        with tempfile.TemporaryDirectory() as tmp:
            result_file = os.path.join(tmp, "result.json")
            log = os.path.join(harness.BUILD, "lab", "stall-rate.log")
            script = (f"NET_ROUNDS={k} NET_MIB={args.mib} NET_VMM={args.vmm} {harness.LAB_ENV} "
                      f"WORK=$(mktemp -d) INTEGRATION=/job/integration sh /job/integration/tests/swiftlet-net.sh")
            cmd = [sys.executable, LAB, "run", "-q", "--payload", harness.PAYLOAD, "--mem", str(harness.LAB_MEM_MIB),
                   "--smp", str(args.smp), "--retries", "0", "--quiet-timeout", str(args.quiet_timeout),
                   "--label", "stall-rate", "--log", log, "--result", result_file, "--timeout", "3000"]
            if args.append:
                cmd += ["--append", args.append]
            if args.kick:
                cmd += ["--kick", str(args.kick)]
            t0 = time.monotonic()
            status = subprocess.run(cmd + ["--", script], env=env).returncode
            with open(log, errors="replace") as f:
                text = f.read()
            rounds = len(re.findall(r"NET-ROUND-DONE \d+", text))
            fails = len(re.findall(r"TEST-RESULT \S+ fail", text))
            try:
                with open(result_file) as f:
                    res = json.load(f)
                versions = res.get("versions", versions)
                diag = re.findall(r"==== hang diagnosis: (.*)", text)
            except (OSError, ValueError):
                res, diag = {}, []
            stalled = status == 124
            tried += rounds + (1 if stalled or status != 0 and rounds < k else 0)
            done += rounds
            stalls += 1 if stalled else 0
            other += 1 if status not in (0, 124) else 0
            kicks = sum(a.get("kicks", 0) for a in res.get("attempts", []))
            revived = sum(a.get("revived", 0) for a in res.get("attempts", []))
            boot = {"transfers_done": rounds, "stalled": stalled, "status": status, "failed_checks": fails,
                    "kicks": kicks, "revived": revived,
                    "seconds": round(time.monotonic() - t0), "diagnosis": json.loads(diag[0]) if diag else None}
            boots.append(boot)
            print(f"stall-rate: L1 boot {len(boots)}: {rounds}/{k} transfers done, "
                  f"{'STALLED' if stalled else f'exit {status}'}, {fails} failed checks, {boot['seconds']} s"
                  f"{f', {kicks} NMI kicks, {revived} revived' if kicks else ''}"
                  f"{' (' + boot['diagnosis']['summary'] + ')' if boot['diagnosis'] else ''}", flush=True)
            if status not in (0, 124) and rounds == 0:
                print("stall-rate: the job failed without a stall; see .build/lab/stall-rate.log", file=sys.stderr)
                break
    summary = {"vmm": args.vmm, "mib": args.mib, "smp": args.smp, "append": args.append, "versions": versions,
               "transfers_tried": tried, "transfers_done": done, "stalls": stalls, "other_failures": other,
               "stall_rate_per_transfer": round(stalls / tried, 3) if tried else None, "boots": boots}
    v = versions or {}
    print(f"stall-rate: {args.vmm}, {args.mib} MiB each way, L1 -smp {args.smp}"
          f"{' --append ' + repr(args.append) if args.append else ''}, L1 kernel "
          f"{v.get('l1_kernel_package', '?')} {v.get('l1_kernel_package_version', '?')}, QEMU {v.get('qemu', '?')}: "
          f"{stalls} stalls in {tried} transfers ({done} done): rate {summary['stall_rate_per_transfer']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
