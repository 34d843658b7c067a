/* The order of the run, the memory layout, and the handshake with the harness. */
#include "hostile.h"

u64 scratch_base, scratch_size, huge_base, huge_size, outside_ram;
bool with_host;

void layout_init(void)
{
    arena_init(16ull << 20, 48ull << 20);
    scratch_base = 48ull << 20;
    scratch_size = 8ull << 20;
    huge_base = 64ull << 20;
    /* 7M entries (112 MiB) where RAM allows, or as many as fit. */
    u64 room = ram_end > huge_base ? ram_end - huge_base : 0;
    huge_size = 7ull * 1024 * 1024 * 16;
    if (huge_size > room) huge_size = room & ~15ull;
    /* The first byte past RAM, where that is below the MMIO hole (an off-by-one in a bounds check shows there);
     * otherwise far above anything. */
    outside_ram = ram_end < 0xc0000000ull ? ram_end : 1ull << 40;
    info("layout arena=0x%llx-0x%llx scratch=0x%llx+0x%llx huge_table=0x%llx+0x%llx outside_ram=0x%llx", 16ull << 20,
         48ull << 20, scratch_base, scratch_size, huge_base, huge_size, outside_ram);
}

bool host_hold(const char *name, u32 want_pages)
{
    struct vdev *balloon = find_device(5);
    if (!cmdline_number("hostile.handshake", 0) || !balloon) {
        info("hold name=%s skipped(no_handshake)", name);
        return false;
    }
    info("hold name=%s want_pages=%u", name, want_pages);
    /* Each poll is one MMIO read (an exit to the VMM), with a short pause between: the harness's answer arrives
     * within seconds; the bound only keeps a missing harness from hanging the run. */
    u64 polls = cmdline_number("hostile.hold", 2000000);
    for (u64 i = 0; i < polls; i++) {
        if (mmio_read32(balloon->base + VIRTIO_MMIO_CONFIG) == want_pages) {
            info("hold name=%s released", name);
            return true;
        }
        for (int j = 0; j < 32; j++) cpu_relax();
    }
    info("hold name=%s timed-out", name);
    return false;
}

static bool usable(struct vdev *d, const char *what)
{
    if (!d) { info("absent %s", what); return false; }
    if (d->version != 2) { info("skipped %s: legacy virtio-mmio (version %u), this driver is modern only", what, d->version); return false; }
    return true;
}

void run_all(void)
{
    with_host = cmdline_number("hostile.host", 0) != 0;
    struct vdev *blk = find_device(2), *net = find_device(1), *vsock = find_device(19), *balloon = find_device(5);
    bool b = usable(blk, "blk"), n = usable(net, "net"), v = usable(vsock, "vsock"), l = usable(balloon, "balloon");
    report("machine.devices", "blk,net,vsock,balloon(version_2)", b && n && v && l, "blk=%d,net=%d,vsock=%d,balloon=%d", b, n, v, l);

    if (b) blk_snapshot(blk);
    if (b) { generic_cases(blk, &blk_ops); blk_cases(blk); }
    if (n) { generic_cases(net, &net_ops); net_cases(net); }
    if (v) { generic_cases(vsock, &vsock_ops); vsock_cases(vsock); }
    if (l) { generic_cases(balloon, &balloon_ops); balloon_cases(balloon); }
    /* virtio-rng where the VMM has one (Swiftlet with --rng; not required, as QEMU's reference run has none). */
    struct vdev *rng = find_device(4);
    bool r = rng && usable(rng, "rng");
    if (r) { generic_cases(rng, &rng_ops); rng_cases(rng); }

    /* Every device still serves a well-formed request. */
    if (b) blk_final(blk);
    if (n) net_final(net);
    if (v) vsock_final(vsock);
    if (r) rng_final(rng);
    if (l) balloon_final(balloon); /* last: it leaves the balloon up with actual = 0xffffffff for the harness */
    host_hold("final", 768);
}
