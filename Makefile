# Swiftlet: `make run` boots the bundled guest, `make test` runs every test. Both install what is missing first.
# Guests boot on this host when its KVM can run them (tools/kvm-probe decides), otherwise in the nested lab.

SHELL := /bin/bash
SWIFT ?= swift
GUEST_OUT := .build/guest
PYTHON ?= python3
HARNESS := $(PYTHON) Tests/Integration/harness.py $(if $(L1_CPUS),--l1-cpus $(L1_CPUS))

.PHONY: all deps build trigger guest probe test unit bench fuzz lab run clean help

all: build guest

help:
	@echo "make run            boot the bundled guest and show its console (host KVM, or the nested lab)"
	@echo "make test           unit tests, then integration tests; ends with 'N passed, N failed'"
	@echo "make bench [BENCH=boot] [RUNS=10]   Swiftlet and QEMU side by side, one 'bench:' line per metric"
	@echo "make bench BENCH=net BASELINE=REV    ... with the build of git revision REV in the same rounds (blk, net)"
	@echo "make bench BENCH=blk L1_SHAPES=1,2   ... once per lab L1 shape (vCPUs; blk, net, vsock default to 1,2)"
	@echo "L1_CPUS=N           on any target: the lab's L1 gets N vCPUs (default 1)"
	@echo "make fuzz [TARGET=queue] [SECONDS=60]   run the libFuzzer targets (all of them by default; Fuzz/README.md)"
	@echo "make lab CMD='...'  run a command in the nested lab (/job holds swiftlet, the guest, the tests)"
	@echo "make probe          does this host's /dev/kvm boot guests?"

# schemathesis (the API's schema test) comes from PyPI into a venv of its own, cached by its version.
deps:
	@tools/install-deps.sh
	@tools/setup-schemathesis.sh

# A fully static executable: nothing for the dynamic loader to do at start-up, nothing to stage into the lab.
# (The linker warns that FoundationEssentials' getpwnam & co. need glibc's NSS at run time and that it uses mktemp;
# Swiftlet calls neither. Those warnings are filtered; the build's own status still counts.)
build: deps
	@set -o pipefail; $(SWIFT) build -c release --static-swift-stdlib -Xswiftc -static-executable 2>&1 | \
		{ grep -v -e "statically linked applications requires at runtime" -e "mktemp' is dangerous" || true; }

# The seccomp tests' build: the same sources with -D SWIFTLET_SECCOMP_TRIGGER, which makes a thread call execve on
# demand (SWIFTLET_SECCOMP_TRIGGER=CLASS). Its own scratch directory; only the tests run it.
trigger: deps
	@set -o pipefail; $(SWIFT) build -c release --scratch-path .build/trigger --static-swift-stdlib -Xswiftc -static-executable \
		-Xswiftc -DSWIFTLET_SECCOMP_TRIGGER 2>&1 | \
		{ grep -v -e "statically linked applications requires at runtime" -e "mktemp' is dangerous" || true; }

# The kernel build is cached under $${SWIFTLET_CACHE:-~/.cache/swiftlet}, keyed by its config and source version.
# Two initramfs images: initramfs.cpio is the tiny guest (busybox, our init and the guest agent) that make run, the
# boot tests and the boot benchmark use; initramfs-full.cpio adds mkfs.ext4 and e2fsck (Debian's, with their
# libraries), a static fio (guest/build-fio.sh, cached too) and Debian's iperf3 (with libiperf, libcrypto, libsctp,
# libm) for the device and network tests and benchmarks.
guest: deps
	@guest/build-kernel.sh $(GUEST_OUT)
	@KERNEL_VARIANT=acpi guest/build-kernel.sh $(GUEST_OUT)
	@guest/build-fio.sh $(GUEST_OUT)
	@guest/mkinitramfs.sh $(GUEST_OUT)/initramfs.cpio
	@gcc -static -O2 -Wall -Wextra -o $(GUEST_OUT)/tcppeer Tests/Integration/tools/tcppeer.c
	@gcc -static -O2 -Wall -Wextra -o $(GUEST_OUT)/vsockpeer Tests/Integration/tools/vsockpeer.c
	@Tests/Integration/hostile/build.sh $(GUEST_OUT)
	@guest/mkinitramfs.sh $(GUEST_OUT)/initramfs-full.cpio $(GUEST_OUT)/fio:/usr/bin/fio $(GUEST_OUT)/tcppeer:/usr/bin/tcppeer $(GUEST_OUT)/vsockpeer:/usr/bin/vsockpeer \
		/usr/sbin/mke2fs:/usr/sbin/mkfs.ext4 /usr/sbin/e2fsck:/usr/sbin/e2fsck /etc/mke2fs.conf:/etc/mke2fs.conf \
		/usr/bin/iperf3:/usr/bin/iperf3
	@# Debian's stock cloud kernel, its initrd and its root disk (the ACPI and distro tests): built from the Debian
	@# mirror, cached by version; the 1 GiB sparse disk image stays in the cache (distro-debian.raw links to it).
	@d=$$(tools/build-distro-image.sh $(GUEST_OUT)/swiftlet-agent) && cp "$$d/vmlinuz" $(GUEST_OUT)/distro-vmlinuz && \
		cp "$$d/initrd.img" $(GUEST_OUT)/distro-initrd.img && cat "$$d/versions" >$(GUEST_OUT)/distro-versions && \
		ln -sfn "$$d/debian.raw" $(GUEST_OUT)/distro-debian.raw || \
		{ rm -f $(GUEST_OUT)/distro-vmlinuz $(GUEST_OUT)/distro-initrd.img $(GUEST_OUT)/distro-debian.raw; \
		  echo "make guest: warning: no Debian image (tools/build-distro-image.sh said why above): swiftlet-distro will skip"; }

probe: deps
	@$(HARNESS) probe || true

test: build trigger guest
	@SWIFTLET_GUEST_KERNEL_DIR=$(CURDIR)/$(GUEST_OUT) $(HARNESS) test

unit: deps
	$(SWIFT) test

bench: build guest
	@$(HARNESS) bench $(if $(BENCH),--bench $(BENCH)) $(if $(RUNS),--runs $(RUNS)) $(if $(BASELINE),--baseline $(BASELINE)) $(if $(L1_SHAPES),--l1-shapes $(L1_SHAPES))

# The fuzz targets build in their own scratch directory (.build/fuzz) with -sanitize=fuzzer,address.
fuzz: deps
	@tools/fuzz.sh build
	@tools/fuzz.sh run $(TARGET) $(SECONDS)

lab: build guest
	@$(HARNESS) lab -- $(CMD)

run: build guest
	@$(HARNESS) run

clean:
	rm -rf .build
