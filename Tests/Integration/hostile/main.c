/*
 * The hostile guest: a freestanding x86_64 program that drives every virtio-mmio device it finds as a malicious
 * virtio 1.x driver, prints one result line per case, proves at the end that every device still serves a
 * well-formed request, and resets the machine.
 *
 *   HOSTILE case=<device>.<name> expect=<reaction> got=<observed> result=pass|fail
 *   HOSTILE done passed=N failed=M
 *
 * Command line (besides the VMM's virtio_mmio.device= entries):
 *   hostile.wait=N     polls (MMIO reads) a wait for the device gives up after (default 200000)
 *   hostile.quiet=N    polls a wait for "nothing happens" lasts (default 3000)
 *   hostile.notifies=N the notify flood (default 100000)
 *   hostile.only=P,... hostile.skip=P,...   run only / skip the cases whose names start with P
 *   hostile.host=1     a harness is on the other side: the net peer at 10.0.2.2, vsock listeners on host ports 5000-5005
 *   hostile.handshake=1  ... and it answers the guest's holds (through the balloon's num_pages: suite.c)
 *   hostile.trace=1    print "HOSTILE begin <case>" before each case
 *   hostile.ram=SIZE   guest RAM, where the boot information has no memory map
 *   hostile.vsock_flood=N  REQUESTs of the vsock RST flood (default 5000; the device keeps 4096)
 *   hostile.end=halt   halt (interrupts off) after the last case instead of resetting: a guest that stays running,
 *                      for tests of the VMM's control plane (with hostile.only=none it runs no case at all)
 *   hostile.end=count  count and checksum its memory and disk for good after the last case (count.c): the snapshot
 *                      tests' guest
 */
#include "boot.h"
#include "hostile.h"

static struct vdev devices[16];
static int device_count;

static const char *device_name(u32 id)
{
    switch (id) {
    case 1: return "net";
    case 2: return "blk";
    case 4: return "rng";
    case 5: return "balloon";
    case 19: return "vsock";
    default: return "unknown";
    }
}

/* Parses one number of a virtio_mmio.device= entry (decimal or 0x hex, with an optional K/M/G). */
static const char *parse_number(const char *p, u64 *out)
{
    u64 v = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        for (;; p++) {
            int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
                  : *p >= 'A' && *p <= 'F' ? *p - 'A' + 10 : -1;
            if (d < 0) break;
            v = v * 16 + (u64)d;
        }
    } else {
        for (; *p >= '0' && *p <= '9'; p++) v = v * 10 + (u64)(*p - '0');
    }
    switch (*p) {
    case 'k': case 'K': v <<= 10; p++; break;
    case 'm': case 'M': v <<= 20; p++; break;
    case 'g': case 'G': v <<= 30; p++; break;
    }
    *out = v;
    return p;
}

/* virtio_mmio.device=SIZE@ADDRESS:IRQ (drivers/virtio/virtio_mmio.c, vm_cmdline_set): Swiftlet writes one per
 * device (MachineDescription.x86CommandLine), QEMU's microvm with auto-kernel-cmdline too. */
static void discover(void)
{
    const char *key = "virtio_mmio.device=";
    for (const char *p = cmdline(); *p; p++) {
        if ((p != cmdline() && p[-1] != ' ') || !starts_with(p, key)) continue;
        u64 size, base, irq;
        const char *q = parse_number(p + strlen(key), &size);
        if (*q++ != '@') continue;
        q = parse_number(q, &base);
        if (*q++ != ':') continue;
        parse_number(q, &irq);
        if (device_count == ARRAY_SIZE(devices) || base < 0xc0000000ull || base >= 0x100000000ull) {
            info("warning ignored virtio_mmio.device at 0x%llx (outside the mapped MMIO hole, or too many)", base);
            continue;
        }
        struct vdev *d = &devices[device_count];
        d->base = base;
        d->size = (u32)size;
        d->irq = (u32)irq;
        if (vreg_read(d, VIRTIO_MMIO_MAGIC) != 0x74726976) {
            info("warning no virtio magic at 0x%llx", base);
            continue;
        }
        d->version = vreg_read(d, VIRTIO_MMIO_VERSION);
        d->device_id = vreg_read(d, VIRTIO_MMIO_DEVICE_ID);
        if (d->device_id == 0) continue; /* an empty transport slot (QEMU microvm has several) */
        d->name = device_name(d->device_id);
        d->offered = vdev_read_features(d);
        info("device %s id=%u version=%u base=0x%llx size=0x%x irq=%u features=0x%llx", d->name, d->device_id,
             d->version, base, d->size, d->irq, d->offered);
        device_count++;
    }
}

struct vdev *find_device(u32 id)
{
    for (int i = 0; i < device_count; i++)
        if (devices[i].device_id == id) return &devices[i];
    return NULL;
}

void hostile_main(int kind, u64 boot)
{
    console_init();
    paging_init();
    idt_init();
    const char *line = boot_info(kind, boot);
    cmdline_set(line);
    printk("\r\nHOSTILE start entry=%s ram_end=0x%llx cmdline=%s\r\n", kind == BOOT_PVH ? "pvh" : "linux64", ram_end,
           cmdline());
    /* Without a RAM map in the boot information (a PVH start_info of version 0), the command line says. */
    if (line && !ram_end) ram_end = cmdline_number("hostile.ram", 0);
    if (!line || ram_end < (64ull << 20)) {
        printk("HOSTILE fatal no command line or less than 64 MiB of RAM\r\n");
        printk("HOSTILE done passed=0 failed=1\r\n");
        machine_reset();
    }
    wait_polls = cmdline_number("hostile.wait", wait_polls);
    quiet_polls = cmdline_number("hostile.quiet", quiet_polls);
    layout_init();
    discover();
    run_all();
    printk("HOSTILE done passed=%d failed=%d\r\n", cases_passed, cases_failed);
    char end[8];
    if (cmdline_string("hostile.end", end, sizeof end) && strncmp(end, "halt", sizeof end) == 0) {
        printk("HOSTILE halted\r\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    if (cmdline_string("hostile.end", end, sizeof end) && strncmp(end, "count", sizeof end) == 0) count_forever();
    machine_reset();
}
