# The peer's run of swiftlet-net.sh: the same guest scenarios and host checks with QEMU's microvm, its
# virtio-net-device and a TAP netdev (vhost=off: a userspace backend, like Swiftlet's). When this passes and
# swiftlet-net fails, the difference is Swiftlet's.
if ! [ -x "$(command -v "$QEMU")" ]; then
    . "$INTEGRATION/lib.sh"
    test_skip qemu-net "no $QEMU here"
    exit 0
fi
NET_VMM=qemu
. "$INTEGRATION/tests/swiftlet-net.sh"
