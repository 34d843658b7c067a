/*
 * virtio-balloon (virtio 1.2 §5.5) as a hostile driver. What Swiftlet does (Sources/SwiftletDevices/Balloon/): an
 * inflate or deflate request is an array of le32 page frame numbers; frames outside guest RAM are ignored and
 * counted (ignored_pages); a trailing partial number is a guest error; a request of more than 65536 numbers is a
 * guest error and not looked at; what is counted follows a bitmap of the pages in the balloon (per activation), so
 * a repeated number counts once and deflating a page that is not in the balloon counts nothing; an inflated page is
 * released (madvise(MADV_DONTNEED): it reads back as zeros). The used length is always 0.
 *
 * The guest cannot read those counters; it adds up what they must be and prints them ("HOSTILE expect-host ..."),
 * and the harness compares them with `swiftlet balloon SOCKET get` while the guest waits in its final hold. Every
 * page it inflates is in SCRATCH, which nothing else uses.
 */
#include "hostile.h"

u64 balloon_inflated_expected, balloon_deflated_expected, balloon_ignored_expected;
static u32 next_scratch;

static u32 scratch_pfn(void) { return (u32)((scratch_base >> 12) + (next_scratch++ % (scratch_size >> 12))); }

static void balloon_prepare(struct dev_queues *dq, int qi) { (void)dq; (void)qi; }

static void balloon_shape(struct dev_queues *dq, int qi, struct shape *s)
{
    (void)dq; (void)qi;
    memset(s, 0, sizeof *s);
    u32 *pfn = arena_alloc(16, 16);
    *pfn = scratch_pfn();
    s->tag = *pfn;
    s->body = (struct buf){ (u64)pfn, 4, false };
}

static void balloon_trigger(struct dev_queues *dq, int qi, struct shape *s) { (void)s; vq_notify(&dq->q[qi]); }

/* A served request moved one page (a new one in this activation) into the balloon, or deflated one that was not in it. */
static bool balloon_served(struct dev_queues *dq, int qi, struct shape *s, struct vring_used_elem *e, char *out, usize n)
{
    (void)dq; (void)s;
    if (qi == 0 && e->len == 0) balloon_inflated_expected++;
    snprintk(out, n, "len=%u", e->len);
    return e->len == 0;
}

const struct device_ops balloon_ops = {
    .name = "balloon", .device_id = 5, .queue_count = 2, .features = 0,
    .queue_names = { "inflateq", "deflateq" }, .receive = { false, false }, .primary = 0, .needs_queues = false,
    .config_size = 16, .config_readonly = 0,
    .prepare = balloon_prepare, .shape = balloon_shape, .trigger = balloon_trigger, .served = balloon_served,
    .no_effect = NULL, .sent_counter = &balloon_inflated_expected,
};

/* Sends one request of `bytes` bytes of page numbers on queue qi; true when it came back with length 0. */
static bool request(struct dev_queues *dq, int qi, const u32 *pfns, u32 bytes)
{
    struct vq *q = &dq->q[qi];
    vq_publish(q, vq_desc(q, (u64)pfns, bytes, 0));
    vq_notify(q);
    struct vring_used_elem e;
    return vq_wait_used(q, &e) && e.len == 0;
}

/* One case: the requests (inflate, then deflate when given) and what they add to the host's counters. */
static void frames_case(struct vdev *d, const char *what, const char *expect, const u32 *inflate, u32 inflate_bytes,
                        const u32 *deflate, u32 deflate_bytes, u64 add_inflated, u64 add_deflated, u64 add_ignored)
{
    char name[120];
    snprintk(name, sizeof name, "balloon.%s", what);
    if (!case_enabled(name)) return;
    struct dev_queues dq;
    if (!dev_up(d, 2, &dq, 0, 16)) { report(name, expect, false, "bring-up_refused,status=0x%x", vstatus(d)); return; }
    bool ok = !inflate || request(&dq, 0, inflate, inflate_bytes);
    ok = ok && (!deflate || request(&dq, 1, deflate, deflate_bytes));
    if (ok) {
        balloon_inflated_expected += add_inflated;
        balloon_deflated_expected += add_deflated;
        balloon_ignored_expected += add_ignored;
    }
    report(name, expect, ok && !(vstatus(d) & STATUS_NEEDS_RESET),
           "used_len_0=%d,status=0x%x,host_counts+inflated=%llu,deflated=%llu,ignored=%llu", ok, vstatus(d), add_inflated,
           add_deflated, add_ignored);
}

void balloon_cases(struct vdev *d)
{
    u64 mark = arena_mark();
    u32 ram_pfns = (u32)(ram_end >> 12);
    u32 *p = arena_alloc(64, 16);

    p[0] = ram_pfns + 16; p[1] = 0xffffffffu; p[2] = 0x7fffffffu; p[3] = (u32)(d->base >> 12);
    frames_case(d, "inflate-pfns-beyond-ram", "used_len_0,ignored_and_counted", p, 16, NULL, 0, 0, 0, 4);
    p[4] = 0xffffffffu;
    frames_case(d, "deflate-pfns-beyond-ram", "used_len_0,ignored_and_counted", NULL, 0, p + 4, 4, 0, 0, 1);

    u32 *six = arena_alloc(16, 16);
    six[0] = scratch_pfn();
    six[1] = 0xffff;
    frames_case(d, "inflate-array-of-6-bytes", "used_len_0,the_whole_pfn_counted", six, 6, NULL, 0, 1, 0, 0);

    u32 *same = arena_alloc(4000, 16);
    u32 pfn = scratch_pfn();
    for (int i = 0; i < 1000; i++) same[i] = pfn;
    frames_case(d, "inflate-the-same-pfn-1000-times", "used_len_0,counted_once", same, 4000, NULL, 0, 1, 0, 0);

    if (case_enabled("balloon.inflate-the-same-pfn-in-two-requests")) {
        struct dev_queues dq;
        u32 *one = arena_alloc(16, 16);
        one[0] = scratch_pfn();
        bool ok = dev_up(d, 2, &dq, 0, 16) && request(&dq, 0, one, 4) && request(&dq, 0, one, 4);
        if (ok) balloon_inflated_expected += 1;
        report("balloon.inflate-the-same-pfn-in-two-requests", "used_len_0,counted_once", ok, "used_len_0=%d", ok);
    }

    /* 65537 numbers: one more than a request may carry; not looked at (none of these pages goes into the balloon). */
    u32 pages = (u32)(scratch_size >> 12);
    u32 *many = arena_alloc(4ull * 65537, 16);
    for (u32 i = 0; i < 65537; i++) many[i] = (u32)(scratch_base >> 12) + i % pages;
    frames_case(d, "inflate-65537-pfns-in-one-request", "used_len_0,not_looked_at(nothing_counted)", many, 4 * 65537,
                NULL, 0, 0, 0, 0);
    /* 65536: exactly the bound, looked at: every scratch page once. */
    frames_case(d, "inflate-65536-pfns-in-one-request", "used_len_0,each_distinct_page_counted_once", many, 4 * 65536,
                NULL, 0, pages, 0, 0);

    if (case_enabled("balloon.pfn-split-across-2-descriptors")) {
        /* One page number, two bytes in each of two descriptors: the device reads across them (ChainReader). */
        struct dev_queues dq;
        u32 *one = arena_alloc(16, 16);
        one[0] = scratch_pfn();
        bool ok = dev_up(d, 2, &dq, 0, 16);
        if (ok) {
            struct vq *q = &dq.q[0];
            u16 a = vq_desc(q, (u64)one, 2, 0), b = vq_desc(q, (u64)one + 2, 2, 0);
            vq_link(q, a, b);
            vq_publish(q, a);
            vq_notify(q);
            struct vring_used_elem e;
            ok = vq_wait_used(q, &e) && e.len == 0;
        }
        if (ok) balloon_inflated_expected += 1;
        report("balloon.pfn-split-across-2-descriptors", "used_len_0,one_page_counted", ok, "used_len_0=%d", ok);
    }

    u32 *lone = arena_alloc(16, 16);
    lone[0] = scratch_pfn();
    frames_case(d, "deflate-a-page-not-in-the-balloon", "used_len_0,nothing_counted", NULL, 0, lone, 4, 0, 0, 0);

    u32 *three = arena_alloc(16, 16);
    for (int i = 0; i < 3; i++) three[i] = scratch_pfn();
    frames_case(d, "inflate-3-then-deflate-them", "used_len_0,3_in,3_out", three, 12, three, 12, 3, 3, 0);

    if (case_enabled("balloon.inflated-page-is-released")) {
        struct dev_queues dq;
        u32 *one = arena_alloc(16, 16);
        one[0] = scratch_pfn();
        u8 *page = (u8 *)((u64)one[0] << 12);
        memset(page, 0x5a, 4096);
        bool ok = dev_up(d, 2, &dq, 0, 16) && request(&dq, 0, one, 4);
        if (ok) balloon_inflated_expected += 1;
        bool zero = true;
        for (int i = 0; i < 4096; i++) zero = zero && page[i] == 0;
        report("balloon.inflated-page-is-released", "page_reads_back_zero(madvise_dontneed)", ok && zero,
               "used_len_0=%d,zeroed=%d,first_byte=0x%x", ok, zero, page[0]);
    }
    vdev_reset(d);
    arena_release(mark);
}

void balloon_final(struct vdev *d)
{
    u64 mark = arena_mark();
    struct dev_queues dq;
    bool up = dev_up(d, 2, &dq, 0, 16);
    if (case_enabled("balloon.final-inflate-and-deflate")) {
        u32 *one = arena_alloc(16, 16);
        one[0] = scratch_pfn();
        bool in = up && request(&dq, 0, one, 4);
        bool out = in && request(&dq, 1, one, 4);
        if (in) balloon_inflated_expected++;
        if (out) balloon_deflated_expected++;
        report("balloon.final-inflate-and-deflate", "both_served", in && out, "inflate=%d,deflate=%d,num_pages=%u", in, out,
               mmio_read32(d->base + VIRTIO_MMIO_CONFIG));
    }
    if (case_enabled("balloon.actual-ffffffff")) {
        /* `actual` is the driver's to write (bytes 4..7, any width); the host must report it clamped to guest RAM.
         * The device stays up with it until the final hold, where the harness reads the status. */
        mmio_write32(d->base + VIRTIO_MMIO_CONFIG + 4, 0xffffffffu);
        u32 actual = mmio_read32(d->base + VIRTIO_MMIO_CONFIG + 4);
        report("balloon.actual-ffffffff", "stored(read_back_ffffffff),host_reports_it_clamped", up && actual == 0xffffffffu,
               "actual=0x%x", actual);
    }
    info("expect-host balloon_inflated_pages=%llu balloon_deflated_pages=%llu balloon_ignored_pages=%llu",
         balloon_inflated_expected, balloon_deflated_expected, balloon_ignored_expected);
    arena_release(mark);
}
