/*
 * virtio-blk (virtio 1.2 §5.2) as a hostile driver. What Swiftlet does (Sources/SwiftletDevices/Block/Block.swift):
 * the status byte is the last byte of the last device-writable buffer, and without one the chain goes back with
 * length 0; a header shorter than 16 bytes is IOERR; an unknown type is UNSUPP; a sector or length outside the disk
 * (with overflow checks), a length that is not whole sectors, data in the wrong direction, more than one
 * discard/write-zeroes segment or more than UINT32_MAX/512 sectors is IOERR. The used length is the bytes written
 * into the writable buffers: data + 1 for the status byte.
 *
 * The disk: sectors 0..63 are this guest's scratch; from sector 64 on it is "untouched": every request that must be
 * refused and would write points there, so a device that wrongly executed one changes it, which the final check (and
 * the harness, by checksum on the host) sees.
 */
#include "hostile.h"

enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13 };
enum { S_OK = 0, S_IOERR = 1, S_UNSUPP = 2 };
#define BLK_F_FLUSH (1ull << 9)
#define BLK_F_DISCARD (1ull << 13)
#define BLK_F_WRITE_ZEROES (1ull << 14)
#define UNTOUCHED_SECTOR 64ull
#define UNTOUCHED_TARGET 100ull   /* where refused writes aim */
#define SNAPSHOT_BYTES (64u << 10)

struct blk_header { u32 type; u32 reserved; u64 sector; };
struct blk_segment { u64 sector; u32 count; u32 flags; };

static u8 untouched_snapshot[SNAPSHOT_BYTES];
static bool snapshot_taken;

static struct blk_header *header(u32 type, u64 sector)
{
    struct blk_header *h = arena_alloc(sizeof *h, 16);
    h->type = type;
    h->sector = sector;
    return h;
}

static u8 *status_byte(void)
{
    u8 *s = arena_alloc(1, 1);
    *s = 0xff; /* the device writes every status; 0xff is none of them */
    return s;
}

static void blk_prepare(struct dev_queues *dq, int qi) { (void)dq; (void)qi; }

static void blk_shape(struct dev_queues *dq, int qi, struct shape *s)
{
    (void)dq; (void)qi;
    memset(s, 0, sizeof *s);
    u8 *data = arena_alloc(512, 512);
    memset(data, 0xcc, 512);
    s->prefix[0] = (struct buf){ (u64)header(T_IN, 0), 16, false };
    s->prefixes = 1;
    s->body = (struct buf){ (u64)data, 512, true };
    s->suffix[0] = (struct buf){ (u64)status_byte(), 1, true };
    s->suffixes = 1;
}

static void blk_trigger(struct dev_queues *dq, int qi, struct shape *s) { (void)s; vq_notify(&dq->q[qi]); }

static bool blk_served(struct dev_queues *dq, int qi, struct shape *s, struct vring_used_elem *e, char *out, usize n)
{
    (void)dq; (void)qi;
    u8 status = *(volatile u8 *)s->suffix[0].addr;
    snprintk(out, n, "len=%u,blk_status=%u", e->len, status);
    return e->len == 513 && status == S_OK;
}

const struct device_ops blk_ops = {
    .name = "blk", .device_id = 2, .queue_count = 1, .features = F_INDIRECT_DESC,
    .queue_names = { "requestq" }, .receive = { false }, .primary = 0, .needs_queues = true,
    .config_size = 60, .config_readonly = 0,
    .prepare = blk_prepare, .shape = blk_shape, .trigger = blk_trigger, .served = blk_served, .no_effect = NULL,
};

/* ---- Requests ---------------------------------------------------------------------------------------------------- */

static u64 capacity_sectors(struct vdev *d)
{
    return mmio_read32(d->base + VIRTIO_MMIO_CONFIG) | (u64)mmio_read32(d->base + VIRTIO_MMIO_CONFIG + 4) << 32;
}

/* A request of header + data buffers + status byte; checks the used length and status. */
static void status_case(struct vdev *d, const char *what, const char *expect, u64 features, u32 type, u64 sector,
                        const struct buf *data, int ndata, u8 want_status, u32 want_len)
{
    char name[120];
    snprintk(name, sizeof name, "blk.%s", what);
    if (!case_enabled(name)) return;
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!dev_up(d, 1, &dq, features, 64)) { report(name, expect, false, "bring-up_refused,status=0x%x", vstatus(d)); goto out; }
    struct buf bufs[16];
    int n = 0;
    if (ndata > 14) { report(name, expect, false, "too_many_buffers_for_this_driver"); goto out; }
    bufs[n++] = (struct buf){ (u64)header(type, sector), 16, false };
    for (int i = 0; i < ndata; i++) bufs[n++] = data[i];
    u8 *status = status_byte();
    bufs[n++] = (struct buf){ (u64)status, 1, true };
    struct vring_used_elem e;
    if (!chain_submit(&dq.q[0], bufs, n, &e)) { report(name, expect, false, "no_used_entry,status=0x%x", vstatus(d)); goto out; }
    report(name, expect, e.len == want_len && *status == want_status, "len=%u,blk_status=%u", e.len, *status);
out:
    arena_release(mark);
}

static u8 *pattern(u32 len, u8 value)
{
    u8 *p = arena_alloc(len, 512);
    memset(p, value, len);
    return p;
}

/* Submits a raw list of buffers; reports against the used length (and an optional status byte). */
static void raw_case(struct vdev *d, const char *what, const char *expect, const struct buf *bufs, int n,
                     u32 want_len, u8 *status, int want_status)
{
    char name[120];
    snprintk(name, sizeof name, "blk.%s", what);
    if (!case_enabled(name)) return;
    struct dev_queues dq;
    if (!dev_up(d, 1, &dq, F_INDIRECT_DESC, 64)) { report(name, expect, false, "bring-up_refused"); return; }
    struct vring_used_elem e;
    if (!chain_submit(&dq.q[0], bufs, n, &e)) { report(name, expect, false, "no_used_entry,status=0x%x", vstatus(d)); return; }
    int got_status = status ? *status : -1;
    report(name, expect, e.len == want_len && got_status == want_status && !(vstatus(d) & STATUS_NEEDS_RESET),
           "len=%u,blk_status=%d,status=0x%x", e.len, got_status, vstatus(d));
}

/* Reads `count` bytes from `sector` into buf; true when served with status OK. */
static bool blk_read(struct dev_queues *dq, u64 sector, void *buf, u32 count)
{
    u8 *status = status_byte();
    struct buf bufs[3] = { { (u64)header(T_IN, sector), 16, false }, { (u64)buf, count, true }, { (u64)status, 1, true } };
    struct vring_used_elem e;
    return chain_submit(&dq->q[0], bufs, 3, &e) && e.len == count + 1 && *status == S_OK;
}

static bool blk_write(struct dev_queues *dq, u64 sector, const void *buf, u32 count)
{
    u8 *status = status_byte();
    struct buf bufs[3] = { { (u64)header(T_OUT, sector), 16, false }, { (u64)buf, count, false }, { (u64)status, 1, true } };
    struct vring_used_elem e;
    return chain_submit(&dq->q[0], bufs, 3, &e) && e.len == 1 && *status == S_OK;
}

/* Before any case: a copy of the start of the untouched region, for blk_final to compare. */
void blk_snapshot(struct vdev *d)
{
    u64 mark = arena_mark();
    struct dev_queues dq;
    u8 *buf = arena_alloc(SNAPSHOT_BYTES, 4096);
    snapshot_taken = dev_up(d, 1, &dq, 0, 64) && blk_read(&dq, UNTOUCHED_SECTOR, buf, SNAPSHOT_BYTES);
    if (snapshot_taken) memcpy(untouched_snapshot, buf, SNAPSHOT_BYTES);
    else info("warning blk: could not read the untouched region before the cases");
    vdev_reset(d);
    arena_release(mark);
}

static void reset_during_reads_case(struct vdev *d);

/* VIRTIO_F_EVENT_IDX with a used_event that never matches (0xffff): the request is served, and no interrupt is raised
 * for it (§2.7.10: only when used->idx passes used_event). */
static void event_index_case(struct vdev *d)
{
    const char *name = "blk.event-idx-used-event-ffff";
    if (!case_enabled(name)) return;
    const char *expect = "served,no_interrupt";
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!dev_up(d, 1, &dq, F_EVENT_IDX, 64) || !(dq.features & F_EVENT_IDX)) {
        report(name, expect, false, "bring-up_refused_or_no_event_idx,features=0x%llx", dq.features);
        goto out;
    }
    struct vq *q = &dq.q[0];
    q->avail->ring[q->size] = 0xffff; /* used_event sits after the avail ring's entries */
    vreg_write(d, VIRTIO_MMIO_INTERRUPT_ACK, vreg_read(d, VIRTIO_MMIO_INTERRUPT_STATUS));
    u8 *data = pattern(512, 0xcc), *status = status_byte();
    struct buf bufs[3] = { { (u64)header(T_IN, 0), 16, false }, { (u64)data, 512, true }, { (u64)status, 1, true } };
    struct vring_used_elem e;
    bool served = chain_submit(q, bufs, 3, &e) && e.len == 513 && *status == S_OK;
    for (u64 i = 0; i < quiet_polls; i++) poll_step(d);
    u32 isr = vreg_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
    report(name, expect, served && !(isr & INT_USED_BUFFER), "served=%d,interrupt_status=0x%x", served, isr);
out:
    vdev_reset(d);
    arena_release(mark);
}

void blk_cases(struct vdev *d)
{
    u64 cap = capacity_sectors(d);
    info("blk capacity_sectors=%llu untouched_from_sector=%llu", cap, UNTOUCHED_SECTOR);
    u64 all = F_INDIRECT_DESC | BLK_F_FLUSH | BLK_F_DISCARD | BLK_F_WRITE_ZEROES;
    u64 mark = arena_mark();
    struct buf sector_w = { (u64)pattern(512, 0xcc), 512, true };
    struct buf sector_r = { (u64)pattern(512, 0x5a), 512, false };

    status_case(d, "read-well-formed", "ok(len_513)", all, T_IN, 0, &sector_w, 1, S_OK, 513);
    {
        struct buf split_data[3];
        /* The header across three descriptors (4 + 4 + 8 bytes): the device gathers it. */
        struct blk_header *h = header(T_IN, 0);
        u8 *status = status_byte();
        split_data[0] = (struct buf){ (u64)h, 4, false };
        split_data[1] = (struct buf){ (u64)h + 4, 4, false };
        split_data[2] = (struct buf){ (u64)h + 8, 8, false };
        struct buf bufs[5] = { split_data[0], split_data[1], split_data[2], sector_w, { (u64)status, 1, true } };
        raw_case(d, "header-split-across-3-descriptors", "ok(len_513)", bufs, 5, 513, status, S_OK);
    }
    {
        u8 *status = status_byte();
        struct buf bufs[2] = { { (u64)header(T_IN, 0), 8, false }, { (u64)status, 1, true } };
        raw_case(d, "short-header-8-bytes", "ioerr(len_1)", bufs, 2, 1, status, S_IOERR);
    }
    status_case(d, "unknown-type-0x55", "unsupp(len_1)", all, 0x55, 0, NULL, 0, S_UNSUPP, 1);
    status_case(d, "unknown-type-ffffffff", "unsupp(len_1)", all, 0xffffffffu, 0, &sector_w, 1, S_UNSUPP, 1);
    status_case(d, "read-sector-ffffffffffffffff", "ioerr(len_1)", all, T_IN, ~0ull, &sector_w, 1, S_IOERR, 1);
    status_case(d, "read-sector-2^55(byte-offset-2^64)", "ioerr(len_1)", all, T_IN, 1ull << 55, &sector_w, 1, S_IOERR, 1);
    status_case(d, "read-at-capacity", "ioerr(len_1)", all, T_IN, cap, &sector_w, 1, S_IOERR, 1);
    {
        struct buf two = { (u64)pattern(1024, 0xcc), 1024, true };
        status_case(d, "read-across-the-end", "ioerr(len_1)", all, T_IN, cap - 1, &two, 1, S_IOERR, 1);
    }
    status_case(d, "read-last-sector", "ok(len_513)", all, T_IN, cap - 1, &sector_w, 1, S_OK, 513);
    {
        struct buf odd = { (u64)pattern(100, 0xcc), 100, true };
        status_case(d, "read-length-not-whole-sectors", "ioerr(len_1)", all, T_IN, 0, &odd, 1, S_IOERR, 1);
    }
    {
        /* Data the device should write into, offered device-readable: refused, and the buffer is not written. */
        u8 *data = pattern(512, 0x5a);
        struct buf r = { (u64)data, 512, false };
        status_case(d, "read-into-device-readable-data", "ioerr(len_1)", all, T_IN, 0, &r, 1, S_IOERR, 1);
        char name[] = "blk.read-into-device-readable-data-untouched";
        if (case_enabled(name)) {
            bool same = true;
            for (int i = 0; i < 512; i++) same = same && data[i] == 0x5a;
            report(name, "buffer_unchanged", same, "unchanged=%d", same);
        }
    }
    {
        /* A write whose data is device-writable (wrong direction), aimed at the untouched region. */
        u8 *data = pattern(512, 0x77);
        struct buf w = { (u64)data, 512, true };
        status_case(d, "write-from-device-writable-data", "ioerr(len_1),disk_unchanged", all, T_OUT, UNTOUCHED_TARGET,
                    &w, 1, S_IOERR, 1);
    }
    status_case(d, "write-at-capacity", "ioerr(len_1)", all, T_OUT, cap, &sector_r, 1, S_IOERR, 1);
    status_case(d, "write-sector-ffffffffffffffff", "ioerr(len_1)", all, T_OUT, ~0ull, &sector_r, 1, S_IOERR, 1);
    {
        struct buf bufs[1] = { { (u64)header(T_IN, 0), 16, false } };
        raw_case(d, "missing-status-byte", "used_len_0", bufs, 1, 0, NULL, -1);
    }
    {
        /* The status byte is the last byte of the last writable buffer: data and status in one 513-byte buffer. */
        u8 *both = pattern(513, 0xcc);
        both[512] = 0xff;
        struct buf bufs[2] = { { (u64)header(T_IN, 0), 16, false }, { (u64)both, 513, true } };
        raw_case(d, "status-in-the-data-buffer", "ok(len_513)", bufs, 2, 513, both + 512, S_OK);
    }
    {
        /* One segment larger than the SIZE_MAX (1 MiB) the device advertises: Swiftlet does not enforce it. */
        struct buf big = { (u64)arena_alloc(2u << 20, 4096), 2u << 20, true };
        status_case(d, "segment-over-size-max", "ok(not_enforced)", all, T_IN, 0, &big, 1, S_OK, (2u << 20) + 1);
    }
    {
        struct blk_segment *two = arena_alloc(2 * sizeof *two, 16);
        two[0] = (struct blk_segment){ UNTOUCHED_TARGET, 8, 0 };
        two[1] = (struct blk_segment){ UNTOUCHED_TARGET + 16, 8, 0 };
        struct buf b = { (u64)two, 32, false };
        status_case(d, "discard-two-segments(max-1)", "ioerr(len_1),disk_unchanged", all, T_DISCARD, 0, &b, 1, S_IOERR, 1);
        struct buf partial = { (u64)two, 20, false };
        status_case(d, "discard-segment-not-16-bytes", "ioerr(len_1),disk_unchanged", all, T_DISCARD, 0, &partial, 1, S_IOERR, 1);
        struct blk_segment *end = arena_alloc(sizeof *end, 16);
        *end = (struct blk_segment){ cap - 1, 8, 0 };
        struct buf e = { (u64)end, 16, false };
        status_case(d, "discard-across-the-end", "ioerr(len_1)", all, T_DISCARD, 0, &e, 1, S_IOERR, 1);
        struct blk_segment *huge = arena_alloc(sizeof *huge, 16);
        *huge = (struct blk_segment){ UNTOUCHED_TARGET, 0xffffffffu, 0 };
        struct buf h = { (u64)huge, 16, false };
        status_case(d, "write-zeroes-ffffffff-sectors", "ioerr(len_1),disk_unchanged", all, T_WRITE_ZEROES, 0, &h, 1, S_IOERR, 1);
        struct blk_segment *wrap = arena_alloc(sizeof *wrap, 16);
        *wrap = (struct blk_segment){ ~0ull - 3, 8, 0 };
        struct buf w = { (u64)wrap, 16, false };
        status_case(d, "discard-sector-wraps-2^64", "ioerr(len_1)", all, T_DISCARD, 0, &w, 1, S_IOERR, 1);
    }
    {
        /* One sector read into eight 64-byte buffers: the device scatters it (ChainWriter). */
        u8 *whole = pattern(512, 0xcc);
        struct buf eight[8];
        for (int i = 0; i < 8; i++) eight[i] = (struct buf){ (u64)whole + 64u * i, 64, true };
        status_case(d, "read-into-8-descriptors-of-64-bytes", "ok(len_513)", all, T_IN, 0, eight, 8, S_OK, 513);
    }
    event_index_case(d);
    status_case(d, "flush", "ok(len_1)", all, T_FLUSH, 0, NULL, 0, S_OK, 1);
    {
        struct buf id = { (u64)pattern(4, 0), 4, true };
        status_case(d, "get-id-4-byte-buffer", "ok(len_5)", all, T_GET_ID, 0, &id, 1, S_OK, 5);
    }
    arena_release(mark);
    reset_during_reads_case(d);
    vdev_reset(d);
}

/* A reset written while the device works through 16 reads of 256 KiB: Swiftlet's reset takes the device's lock,
 * so it waits for the drain in progress; afterwards the device writes nothing more into the old rings or into the
 * buffers of requests it had not served. */
static void reset_during_reads_case(struct vdev *d)
{
    const char *name = "blk.reset-during-4MiB-of-reads";
    if (!case_enabled(name)) return;
    const char *expect = "status_0,unserved_requests_untouched,then_serves";
    enum { REQUESTS = 16, SIZE = 256u << 10 };
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!dev_up(d, 1, &dq, F_INDIRECT_DESC, 64)) { report(name, expect, false, "bring-up_refused"); goto out; }
    struct vq *q = &dq.q[0];
    u8 *data[REQUESTS], *status[REQUESTS];
    for (int i = 0; i < REQUESTS; i++) {
        data[i] = arena_alloc(SIZE, 4096);
        data[i][0] = data[i][SIZE - 1] = 0xee;
        status[i] = status_byte();
        u16 h = vq_desc(q, (u64)header(T_IN, (u64)i * (SIZE / 512)), 16, 0);
        u16 b = vq_desc(q, (u64)data[i], SIZE, VRING_DESC_F_WRITE);
        u16 st = vq_desc(q, (u64)status[i], 1, VRING_DESC_F_WRITE);
        vq_link(q, h, b);
        vq_link(q, b, st);
        vq_publish(q, h);
    }
    vq_notify(q);
    bool reset = vdev_reset(d);
    u16 at_reset = q->used->idx;
    for (u64 i = 0; i < quiet_polls; i++) poll_step(d);
    u16 later = q->used->idx;
    /* The used entries name the served requests (their heads, in order); the rest must be as the guest left them. */
    bool served_ok = true, unserved_untouched = true;
    for (int i = 0; i < REQUESTS; i++) {
        bool served = false;
        for (u16 u = 0; u < at_reset; u++) served = served || q->used->ring[u % q->size].id == (u32)(3 * i);
        if (served) served_ok = served_ok && *status[i] == S_OK;
        else unserved_untouched = unserved_untouched && *status[i] == 0xff && data[i][0] == 0xee && data[i][SIZE - 1] == 0xee;
    }
    struct dev_queues again;
    bool ok = dev_up(d, 1, &again, F_INDIRECT_DESC, 64);
    u8 *check = arena_alloc(512, 512);
    ok = ok && blk_read(&again, 0, check, 512);
    report(name, expect, reset && later == at_reset && served_ok && unserved_untouched && ok,
           "reset=%d,served_before_reset=%u/%d,later=%u,served_ok=%d,unserved_untouched=%d,then_serves=%d", reset,
           at_reset, REQUESTS, later, served_ok, unserved_untouched, ok);
out:
    vdev_reset(d);
    arena_release(mark);
}

void blk_final(struct vdev *d)
{
    u64 mark = arena_mark();
    struct dev_queues dq;
    bool up = dev_up(d, 1, &dq, F_INDIRECT_DESC | BLK_F_FLUSH, 64);
    if (case_enabled("blk.final-write-read-back")) {
        u8 *out = arena_alloc(512, 512), *in = arena_alloc(512, 512);
        const char *mark_text = "HOSTILE-BLK-FINAL sector 1 written by the hostile guest";
        memcpy(out, mark_text, strlen(mark_text));
        for (int i = 64; i < 512; i++) out[i] = (u8)(i * 7);
        bool wrote = up && blk_write(&dq, 1, out, 512);
        u8 *status = status_byte();
        struct buf flush[2] = { { (u64)header(T_FLUSH, 0), 16, false }, { (u64)status, 1, true } };
        struct vring_used_elem e;
        bool flushed = wrote && chain_submit(&dq.q[0], flush, 2, &e) && *status == S_OK;
        bool read = flushed && blk_read(&dq, 1, in, 512);
        bool same = read && memcmp(in, out, 512) == 0;
        report("blk.final-write-read-back", "written,flushed,read_back_equal", same, "write=%d,flush=%d,read=%d,equal=%d",
               wrote, flushed, read, same);
    }
    if (case_enabled("blk.final-untouched-region-unchanged")) {
        u8 *now = arena_alloc(SNAPSHOT_BYTES, 4096);
        bool read = up && snapshot_taken && blk_read(&dq, UNTOUCHED_SECTOR, now, SNAPSHOT_BYTES);
        u32 first_diff = SNAPSHOT_BYTES;
        for (u32 i = 0; read && i < SNAPSHOT_BYTES; i++)
            if (now[i] != untouched_snapshot[i]) { first_diff = i; break; }
        report("blk.final-untouched-region-unchanged", "64KiB_from_sector_64_byte-for-byte_equal",
               read && first_diff == SNAPSHOT_BYTES, "read=%d,first_difference_at=%u", read, first_diff);
    }
    vdev_reset(d);
    arena_release(mark);
}
