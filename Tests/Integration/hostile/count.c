/*
 * hostile.end=count: instead of ending, the guest keeps working, for the snapshot tests. It writes a pseudo-random
 * word into a region of its memory per step (hostile.count_kib, default and at most 4096 KiB), keeping the sum of
 * the region as it goes, and every hostile.count_step steps (default 1<<20) it
 *   - adds the region up again from scratch and compares it with the running sum (memory that changed under it, or
 *     a page lost across a restore, shows as verify=bad),
 *   - reads back the disk sector it wrote at the last report (written=N is what it holds: the previous report's
 *     counter; a restore that lost or reverted the disk shows as disk=bad), then writes this report's counter to
 *     the next sector (sectors 2..33 in turn, the blk scratch area),
 *   - prints one line:
 *
 *       HOSTILE count n=<steps> sum=0x<sum> verify=ok|bad disk=ok|bad|none written=<n of the sector read>
 *
 * A restored guest goes on counting from where the snapshot stopped it; the harness compares the lines before the
 * snapshot with those after. It never ends by itself (the harness stops the VMM). The region starts at 64 MiB, which
 * no case touches when hostile.only=none. (A KVM that emulates ring-0 code, as this project's PVM host does, runs
 * this loop thousands of times slower than hardware: the host tests use a small region and step.)
 */
#include "hostile.h"

#define COUNT_BASE (64ull << 20)
#define COUNT_MAX_WORDS ((4ull << 20) / 8)
#define COUNT_SECTORS 32

struct count_header { u32 type; u32 reserved; u64 sector; };
static struct count_header header __attribute__((aligned(16)));
static u8 status;
static u64 sector_data[64] __attribute__((aligned(512)));

/* One blk request of 512 bytes at `sector` from or into sector_data: true when served with status OK. */
static bool disk_io(struct dev_queues *dq, u64 sector, bool write)
{
    header.type = write ? 1 : 0;
    header.sector = sector;
    status = 0xff;
    struct buf bufs[3] = { { (u64)&header, 16, false }, { (u64)sector_data, 512, !write }, { (u64)&status, 1, true } };
    struct vring_used_elem e;
    return chain_submit(&dq->q[0], bufs, 3, &e) && status == 0 && e.len == (write ? 1u : 513u);
}

static u64 mix(u64 x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

void count_forever(void)
{
    struct vdev *blk = find_device(2);
    struct dev_queues dq;
    bool disk = blk && blk->version == 2 && dev_up(blk, 1, &dq, 0, 64);
    volatile u64 *region = (volatile u64 *)COUNT_BASE;
    u64 words = cmdline_number("hostile.count_kib", 4096) * 1024 / 8;
    if (words == 0 || words > COUNT_MAX_WORDS) words = COUNT_MAX_WORDS;
    for (u64 i = 0; i < words; i++) region[i] = 0;
    u64 sum = 0, step = cmdline_number("hostile.count_step", 1ull << 20), last_report = 0;
    if (step == 0) step = 1;
    info("count region=0x%llx+0x%llx step=%llu disk=%s", COUNT_BASE, words * 8, step, disk ? "yes" : "none");
    for (u64 n = 1;; n++) {
        u64 slot = mix(n) % words, value = mix(n ^ 0x5157);
        sum -= region[slot];
        region[slot] = value;
        sum += value;
        if (n % step) continue;
        u64 check = 0;
        for (u64 i = 0; i < words; i++) check += region[i];
        const char *disk_state = "none";
        u64 written = 0;
        if (disk) {
            /* The sector the last report wrote holds that report's counter (nothing before the first report). */
            u64 previous = 2 + (last_report / step) % COUNT_SECTORS;
            bool read = last_report == 0 || disk_io(&dq, previous, false);
            written = last_report == 0 ? 0 : sector_data[0];
            bool same = read && (last_report == 0 || (sector_data[0] == last_report && sector_data[1] == mix(last_report)));
            sector_data[0] = n;
            sector_data[1] = mix(n);
            bool wrote = disk_io(&dq, 2 + (n / step) % COUNT_SECTORS, true);
            disk_state = same && wrote ? "ok" : "bad";
        }
        info("count n=%llu sum=0x%llx verify=%s disk=%s written=%llu", n, sum, check == sum ? "ok" : "bad", disk_state, written);
        last_report = n;
    }
}
