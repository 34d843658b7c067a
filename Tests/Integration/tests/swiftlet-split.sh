# test-timeout: 1200
# The device suites again with the split virtqueue layout: the same scenarios and checks as swiftlet-blk,
# swiftlet-net, swiftlet-vsock and swiftlet-balloon, with packed=off on every device option (each device then offers
# only the split ring), and the guest checking that each of its virtio devices negotiated split
# (swiftlet.expect.ring=split; the other suites check packed, Swiftlet's default, which Linux takes). Results are
# named split.swiftlet-blk.*, and so on.
#
# The suites run unchanged through a wrapper in front of swiftlet that rewrites their arguments: ",packed=off" after
# the value of each --disk, --net, --vsock, --balloon and --rng, and swiftlet.expect.ring=packed into =split in the
# command line. SPLIT_SUITES (default: the four above) picks suites.
. "$INTEGRATION/lib.sh"

wrapper=$WORK/swiftlet-split
cat >"$wrapper" <<EOF
#!/bin/sh
# swiftlet with only the split ring offered by every device (tests/swiftlet-split.sh).
prev=
for arg do
    shift
    case \$prev in
        --disk|--net|--vsock|--balloon|--rng) arg="\$arg,packed=off" ;;
    esac
    case \$arg in
        *swiftlet.expect.ring=packed*) arg=\$(printf '%s' "\$arg" | sed 's/swiftlet\.expect\.ring=packed/swiftlet.expect.ring=split/') ;;
    esac
    prev=\$arg
    set -- "\$@" "\$arg"
done
exec "$SWIFTLET" "\$@"
EOF
chmod +x "$wrapper"

# The wrapper itself: what it hands swiftlet (describe prints each device's backend line with packed=).
described=$("$wrapper" describe --kernel "$GUEST/bzImage" --disk "$WORK/none.img" --rng on --balloon on 2>&1)
case $described in
    *"packed=on"*) test_fail split.wrapper "a device still offers the packed ring: $described" ;;
    *"backend blk0 $WORK/none.img readonly=off serial=- event-idx=on engine=sync packed=off"*) test_pass split.wrapper ;;
    *) test_fail split.wrapper "describe said: $described" ;;
esac

for suite in ${SPLIT_SUITES:-swiftlet-blk swiftlet-net swiftlet-vsock swiftlet-balloon}; do
    mkdir -p "$WORK/$suite"
    echo "step: $suite with the split ring"
    RESULT_PREFIX=split. SWIFTLET=$wrapper WORK=$WORK/$suite sh "$INTEGRATION/tests/$suite.sh"
    rm -rf "${WORK:?}/$suite"
done
