# The peer's run of swiftlet-blk.sh: the same guest scenarios and image checks with QEMU's microvm and its
# virtio-blk-device. When this passes and swiftlet-blk fails, the difference is Swiftlet's.
if ! [ -x "$(command -v "$QEMU")" ]; then
    . "$INTEGRATION/lib.sh"
    test_skip qemu-blk "no $QEMU here"
    exit 0
fi
BLK_VMM=qemu
. "$INTEGRATION/tests/swiftlet-blk.sh"
