# test-timeout: 400
# The jail (docs/SECURITY.md, "The jail"): a VM with a disk, a NIC in a network namespace and the agent over vsock,
# jailed as an unprivileged uid in a cgroup. While it runs: its root is the jail, every thread runs as the uid with
# no capabilities, NO_NEW_PRIVS and seccomp, in namespaces of its own and the network namespace asked for, with the
# cgroup's limits and the rlimits in effect; the disk, the NIC and `swiftlet exec` through the socket in the jail
# work, with 8 MiB through the disk, TCP and vsock each way. After it: no socket, cgroup, directory or mount is left. The test build (swiftlet-trigger) then tries to open
# host files from inside the jail, and the bad inputs get their errors.
. "$INTEGRATION/lib.sh"
t=swiftlet-jail
J=$WORK/jail
S=$J/run/v.sock
UID_=1234
GID_=1235
NS=$WORK/netns
TAP=jail0
CG=swiftlet-jail-test
check() { if [ "$2" = "$3" ]; then test_pass "$t.$1"; else test_fail "$t.$1" "got '$2', want '$3'; $4"; fi; }
status_field() { sed -n "s/^$2:[[:space:]]*//p" "/proc/$1/status" | tr -s ' \t' ' '; }

mkdir -p "$J/run" && chown "$UID_:$GID_" "$J/run"
# A KVM node of our own, readable by the jail's group only (the real one's mode stays as it is).
mknod -m 0660 "$WORK/kvm" c 10 232 && chgrp "$GID_" "$WORK/kvm" || { test_fail "$t.kvm-node" "cannot make a KVM node"; exit 0; }
# Files only root may read: the VMM opens the disk before it drops to the uid, and cannot open the secret after.
dd if=/dev/zero of="$WORK/disk.img" bs=1M count=16 2>/dev/null && chmod 600 "$WORK/disk.img"
echo secret >"$J/secret" && chmod 600 "$J/secret"
# cgroup v2 (the lab's L1 does not mount it).
if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; then
    mount -t cgroup2 none /sys/fs/cgroup || { test_fail "$t.cgroup2" "cannot mount cgroup2 at /sys/fs/cgroup"; exit 0; }
fi
# A network namespace with the TAP in it, holding the host's end of the guest's link.
touch "$NS" && unshare --net="$NS" true || { test_fail "$t.netns" "cannot make a network namespace at $NS"; exit 0; }
cleanup() { umount "$NS" 2>/dev/null; rm -f "$NS"; }
trap cleanup EXIT
innet() { nsenter --net="$NS" "$@"; }
{ if command -v tunctl >/dev/null 2>&1; then innet tunctl -t "$TAP" >/dev/null; else innet ip tuntap add dev "$TAP" mode tap; fi; } &&
    innet ip addr add 10.0.4.1/24 dev "$TAP" && innet ip link set "$TAP" up && innet ip link set lo up ||
    { test_fail "$t.tap" "cannot create the TAP $TAP in $NS"; exit 0; }

echo "step: a jailed VM (uid $UID_, gid $GID_, netns, cgroup) with a disk, a NIC and the agent"
mkfifo "$WORK/stdin"
sleep 600 >"$WORK/stdin" &
holder=$!
"$SWIFTLET" run --jail "$J" --uid $UID_ --gid $GID_ --netns "$NS" --cgroup "$CG,memory=512M,cpus=1.5,pids=200" \
    --kvm "$WORK/kvm" --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs-full.cpio" --memory 256M \
    --cmdline "$SWIFTLET_CMDLINE_BASE" --console stdio --disk "$WORK/disk.img" --net "tap=$TAP" --vsock "socket=$S" \
    --agent <"$WORK/stdin" >"$WORK/console" 2>"$WORK/vm.err" &
vm=$!
i=0
while [ ! -S "$S" ] && kill -0 "$vm" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
check socket-message "$(grep -c "jail: --vsock socket=$S is /run/v.sock inside the jail; clients on the host use $S" "$WORK/vm.err")" 1 \
    "$(tail -c 300 "$WORK/vm.err")"
out=$("$SWIFTLET" exec --attach "$S" -- echo up 2>"$WORK/exec.err")
check agent "$out" up "$(tail -c 300 "$WORK/exec.err") vmm: $(tail -c 300 "$WORK/vm.err")"
out=$("$SWIFTLET" exec --attach "$S" -- sh -c 'echo data | dd of=/dev/vda conv=fsync 2>/dev/null;
    echo 3 >/proc/sys/vm/drop_caches; head -c 4 /dev/vda; echo;
    ip addr add 10.0.4.2/24 dev eth0; ip link set eth0 up; ping -c 2 -W 2 10.0.4.1 | grep -c "bytes from"' 2>"$WORK/exec.err")
check devices "$(echo $out)" "data 2" "$(tail -c 300 "$WORK/exec.err")"
check disk-on-host "$(head -c 4 "$WORK/disk.img")" data

echo "step: bulk: 8 MiB to the disk and back, over TCP to the namespace, and over vsock both ways"
ex() { "$SWIFTLET" exec --attach "$S" "$@"; }
innet "$TCPPEER" recv 5001 >"$WORK/tcp.recv" 2>"$WORK/tcp.err" &
rx=$!
sleep 0.3
# Under heartbeat: in a slow lab this exec prints nothing for more than the watchdog's 10 s (seen once).
bulk() {
    ex -- sh -c 'head -c 8388608 /dev/urandom | dd of=/dev/vda bs=1M conv=fsync 2>/dev/null
    echo 3 >/proc/sys/vm/drop_caches; head -c 8388608 /dev/vda | sha256sum | cut -d" " -f1
    head -c 8388608 /dev/vda | tcppeer send 5001 10.0.4.1 && echo sent' >"$WORK/bulk.out" 2>"$WORK/exec.err"
}
heartbeat bulk
out=$(cat "$WORK/bulk.out")
wait $rx
sum=$(sha256sum <"$WORK/tcp.recv" | cut -d' ' -f1)
check blk-tcp "$(echo $out)" "$sum sent" "$(tail -c 300 "$WORK/exec.err") $(tail -c 200 "$WORK/tcp.err")"
check blk-on-host "$(head -c 8388608 "$WORK/disk.img" | sha256sum | cut -d' ' -f1)" "$sum"
# A guest connection to host port 5000 reaches the listener at ${S}_5000, which the jailed VMM connects to as the
# uid: the listener's socket must be the uid's (connect needs write permission on it).
"$VSOCKPEER" listen "unix:${S}_5000" recv >"$WORK/g2h.host" 2>&1 &
peer=$!
i=0
while [ ! -S "${S}_5000" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
chown $UID_ "${S}_5000"
guest=$(ex -- vsockpeer connect vsock:2:5000 send 8M 2>"$WORK/exec.err")
wait $peer
check vsock-guest-to-host "$(echo "$guest" | sed 's/ ns=.*//')" "$(sed 's/ ns=.*//' "$WORK/g2h.host")" "$(tail -c 300 "$WORK/exec.err")"
case "$guest" in *bytes=8388608*) test_pass "$t.vsock-guest-to-host-size" ;; *) test_fail "$t.vsock-guest-to-host-size" "$guest" ;; esac
rm -f "${S}_5000"
ex -- vsockpeer listen vsock:6000 recv >"$WORK/h2g.guest" 2>&1 &
listener=$!
tries=0
while :; do
    "$VSOCKPEER" connect "hybrid:$S:6000" send 8M >"$WORK/h2g.host" 2>"$WORK/h2g.err" && break
    tries=$((tries + 1))
    [ $tries -lt 50 ] && grep -q refused "$WORK/h2g.err" || break
    sleep 0.2
done
wait $listener
check vsock-host-to-guest "$(sed 's/ ns=.*//' "$WORK/h2g.guest")" "$(sed 's/ ns=.*//' "$WORK/h2g.host")" "$(tail -c 200 "$WORK/h2g.err")"
ip link show "$TAP" >/dev/null 2>&1 && test_fail "$t.tap-not-on-host" "$TAP is in the host's namespace" || test_pass "$t.tap-not-on-host"

# The jailed VMM is the supervisor's child.
inner=$(grep -l "^PPid:[[:space:]]*$vm\$" /proc/[0-9]*/status 2>/dev/null | head -n 1 | cut -d/ -f3)
if [ -z "$inner" ]; then
    test_fail "$t.child" "no child of the supervisor $vm"
else
    test_pass "$t.child"
    check root-is-jail "$(stat -L -c %d:%i "/proc/$inner/root")" "$(stat -c %d:%i "$J")"
    check root-holds "$(ls -A "/proc/$inner/root" | tr '\n' ' ')" "dev run secret "
    check root-dev "$(ls -A "/proc/$inner/root/dev" | tr '\n' ' ')" "kvm "
    check pid-one "$(status_field "$inner" NSpid | awk '{ print $NF }')" 1
    for ns in mnt pid ipc uts; do
        [ "$(readlink "/proc/$inner/ns/$ns")" != "$(readlink /proc/self/ns/$ns)" ] && test_pass "$t.own-$ns-namespace" ||
            test_fail "$t.own-$ns-namespace" "the VMM shares the host's $ns namespace"
    done
    check netns "$(stat -L -c %i "/proc/$inner/ns/net")" "$(stat -L -c %i "$NS")"
    bad=
    tasks=0
    for task in /proc/$inner/task/*; do
        tid=${task##*/}
        tasks=$((tasks + 1))
        state="$(cat "$task/comm") uid=$(status_field "$inner/task/$tid" Uid) gid=$(status_field "$inner/task/$tid" Gid) groups=$(status_field "$inner/task/$tid" Groups) cap=$(status_field "$inner/task/$tid" CapEff)/$(status_field "$inner/task/$tid" CapPrm) nnp=$(status_field "$inner/task/$tid" NoNewPrivs) seccomp=$(status_field "$inner/task/$tid" Seccomp)"
        echo "step: thread $state"
        case "$state" in
        *" uid=$UID_ $UID_ $UID_ $UID_ gid=$GID_ $GID_ $GID_ $GID_ groups= cap=0000000000000000/0000000000000000 nnp=1 seccomp=2") ;;
        kvm-*) ;; # KVM's own kernel worker (kvm-nx-lpage-recovery) is the kernel's, not ours
        *) bad="$bad [$state]" ;;
        esac
    done
    [ $tasks -ge 5 ] || bad="only $tasks threads"
    check every-thread-dropped "${bad:-none}" none
    check limit-nofile "$(awk '/^Max open files/ { print $4 "/" $5 }' "/proc/$inner/limits")" 1280/1280
    check limit-nproc "$(awk '/^Max processes/ { print $3 "/" $4 }' "/proc/$inner/limits")" 97/97
    check limit-fsize "$(awk '/^Max file size/ { print $4 }' "/proc/$inner/limits")" 67108864
    check cgroup-member "$(cat "/proc/$inner/cgroup")" "0::/$CG"
    check cgroup-memory.max "$(cat /sys/fs/cgroup/$CG/memory.max)" 536870912
    check cgroup-cpu.max "$(cat /sys/fs/cgroup/$CG/cpu.max)" "150000 100000"
    check cgroup-pids.max "$(cat /sys/fs/cgroup/$CG/pids.max)" 200
    check cgroup-pids.current "$([ "$(cat /sys/fs/cgroup/$CG/pids.current)" -ge 5 ] && echo counted)" counted
fi
check host-mounts "$(grep -c " $J" /proc/self/mountinfo)" 0
kill -TERM "$vm"
wait "$vm"; check vmm-exit $? 0 "$(tail -c 300 "$WORK/vm.err")"
kill "$holder" 2>/dev/null
[ -e "$S" ] && test_fail "$t.removed-socket" "$S is still there" || test_pass "$t.removed-socket"
[ -e "$J/dev" ] && test_fail "$t.removed-dev" "$J/dev is still there" || test_pass "$t.removed-dev"
[ -e "/sys/fs/cgroup/$CG" ] && test_fail "$t.removed-cgroup" "/sys/fs/cgroup/$CG is still there" || test_pass "$t.removed-cgroup"

echo "step: bad input"
# bad NAME MESSAGE-PATTERN SWIFTLET-RUN-OPTIONS...: the run fails at once, with status 1 or 64 and the message.
bad() {
    _name=$1 _want=$2
    shift 2
    timeout 30 "$SWIFTLET" run --kernel "$GUEST/bzImage" --console none "$@" </dev/null >/dev/null 2>"$WORK/bad.err"
    _status=$?
    if [ $_status != 1 ] && [ $_status != 64 ]; then
        test_fail "$t.bad-$_name" "exit status $_status, want 1 or 64: $(tail -c 300 "$WORK/bad.err")"
    elif grep -q -- "$_want" "$WORK/bad.err"; then
        test_pass "$t.bad-$_name"
    else
        test_fail "$t.bad-$_name" "want '$_want' in: $(tail -c 300 "$WORK/bad.err")"
    fi
}
bad missing-dir "jail $WORK/nope does not exist: make the directory first" --jail "$WORK/nope" --uid $UID_ --gid $GID_
bad kvm-permission "uid $UID_ --gid 4321 cannot open $WORK/kvm (mode 660, owner 0, group $GID_)" \
    --jail "$J" --uid $UID_ --gid 4321 --kvm "$WORK/kvm"
bad cgroup-parent "cannot create the cgroup: its parent /sys/fs/cgroup/nope does not exist" \
    --jail "$J" --uid $UID_ --gid $GID_ --kvm "$WORK/kvm" --cgroup nope/vm1,pids=10
bad netns "netns /etc/passwd is not a network namespace" --jail "$J" --uid $UID_ --gid $GID_ --kvm "$WORK/kvm" --netns /etc/passwd
bad root-uid "uid and gid 0 would keep root's powers" --jail "$J" --uid 0 --gid $GID_
bad no-uid "jail needs --uid and --gid" --jail "$J"
bad socket-outside "socket=$WORK/v.sock is outside the jail" --jail "$J" --uid $UID_ --gid $GID_ --kvm "$WORK/kvm" --vsock "socket=$WORK/v.sock"
[ -e "$J/dev" ] || [ -e "/sys/fs/cgroup/nope" ] && test_fail "$t.bad-leftovers" "$(ls "$J")" || test_pass "$t.bad-leftovers"

if [ ! -x "${SWIFTLET_TRIGGER:-}" ]; then
    test_skip "$t.probe" "no test build at ${SWIFTLET_TRIGGER:-(SWIFTLET_TRIGGER unset)}: make trigger"
    exit 0
fi
echo "step: inside the jail, the VMM tries to open host files (test build)"
SWIFTLET_JAIL_PROBE="/etc/passwd:/../../etc/passwd:$WORK/disk.img:$GUEST/bzImage:/secret:/dev/kvm" timeout 120 "$SWIFTLET_TRIGGER" run \
    --jail "$J" --uid $UID_ --gid $GID_ --kvm "$WORK/kvm" --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs.cpio" \
    --memory 128M --cmdline "$SWIFTLET_CMDLINE_BASE swiftlet.test=hello" --console "$WORK/probe.console" 2>"$WORK/probe.err"
check probe.exit $? 0 "$(tail -c 300 "$WORK/probe.err")"
guest_results "$t.probe" "$WORK/probe.console"
probe() { sed -n "s|^swiftlet: trigger: open $1: ||p" "$WORK/probe.err" | cut -d' ' -f1-2; }
check probe-host-file "$(probe /etc/passwd)" "errno 2"
check probe-dotdot "$(probe /../../etc/passwd)" "errno 2"
check probe-disk-path "$(probe "$WORK/disk.img")" "errno 2"
check probe-kernel-path "$(probe "$GUEST/bzImage")" "errno 2"
check probe-root-only-file "$(probe /secret)" "errno 13"
# The KVM device is in the jail, for the uid: opening it again works (it is all the jail gives).
check probe-kvm "$(probe /dev/kvm)" "opened"
[ -e "$J/dev" ] && test_fail "$t.probe.removed-dev" "$J/dev is still there" || test_pass "$t.probe.removed-dev"
exit 0
