#!/usr/bin/env bash
# Installs what building, testing and benchmarking Swiftlet needs on Debian 12, and nothing that is there already.
# Swift itself is not a Debian package: it must be on PATH (https://www.swift.org/install/linux/).
set -euo pipefail

packages=(
    gcc libc6-dev make            # kvm-probe, vmmbench, the guest init
    musl-tools                    # the guest agent (static with musl: 50 KB instead of 700 KB)
    bc bison flex libelf-dev libssl-dev perl xz-utils cpio lz4   # the guest kernel build (lz4: KERNEL_LZ4)
    linux-source-6.1              # the guest kernel's source
    busybox-static                # guest and lab userspace
    e2fsprogs                     # mkfs.ext4 in the guest (block device tests)
    dpkg-dev libaio-dev zlib1g-dev debian-archive-keyring   # the guest's static fio (guest/build-fio.sh)
    qemu-system-x86               # the nested lab and the benchmark peer
    kmod                          # depmod for the lab's L1 modules (build-l1.sh)
    iperf3                        # network benchmark: in the guest's full initramfs and in the lab's L1
    python3                       # the test harness and lab runner
    strace                        # diagnosing start-up in benchmarks
    libfdt-dev                    # the device tree an aarch64 guest boots with (CLibFDT)
    libseccomp-dev                # seccomp filters on every thread (CSeccomp; the static executable links libseccomp.a)
    device-tree-compiler python3-venv   # device-tree tests: dtc, and a venv for dtschema's dt-validate
    acpica-tools                  # ACPI table tests: iasl -d disassembles what Swiftlet writes
    debootstrap                   # the stock Debian guest of the ACPI test (tools/build-distro-image.sh)
    curl                          # Firecracker's API test drives the socket as its getting-started guide does
)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}"
    if [[ $(id -u) != 0 ]]; then
        echo "deps: need root to apt-get install ${missing[*]} (run as root, or install them yourself)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null 2>&1; then
    echo "deps: swift is not on PATH; install the Swift 6 toolchain for Linux (https://www.swift.org/install/linux/)" >&2
    exit 1
fi

# dtschema (pinned, in a venv), the processed upstream bindings and a Debian arm64 kernel Image for the device-tree
# tests, cached outside the clone; a failure there only skips those tests, with the reason.
"$(dirname "$0")/setup-devicetree-tools.sh"
