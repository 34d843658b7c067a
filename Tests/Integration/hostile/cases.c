/*
 * The cases every virtio device gets, whatever its type: the transport (status machine, features, queue set-up,
 * register and config-space accesses, notifies, reset) and the split ring (malformed descriptor chains, indirect
 * tables, a corrupt avail ring). What each expects is what Swiftlet's code does:
 *   - MmioTransport.swift: writes the state machine does not allow are ignored (read back unchanged); QueueReady
 *     stays 0 for a queue that QueueConfiguration.problem refuses; FEATURES_OK stays clear without VERSION_1 or with
 *     a feature that was not offered; registers below 0x100 are read and written 32 bits wide and aligned only;
 *     config space reads any width at any offset, zeros past its end (ConfigurationSpace.read).
 *   - Queue.swift (SplitQueue.pop/walk) and Drain.swift: a malformed chain goes back with used length 0 and the
 *     device goes on; an avail->idx more than the queue size ahead or a head >= the queue size is a corrupt ring:
 *     DEVICE_NEEDS_RESET (status bit 0x40) and a configuration-change interrupt (InterruptStatus bit 1).
 */
#include "hostile.h"

/* Queue size of the chain cases: small, so a chain longer than the queue is cheap to build. */
#define CHAIN_QUEUE_SIZE 16

static char why[200];

/* ---- Chains --------------------------------------------------------------------------------------------------- */

static u16 emit(struct vq *q, const struct buf *b) { return vq_desc(q, b->addr, b->len, b->write ? VRING_DESC_F_WRITE : 0); }

/* Emits prefix, `bodies`, suffix (the suffix only when with_suffix), linked in order; their indices go to idx. */
static int chain_parts(struct vq *q, const struct shape *s, const struct buf *bodies, int nbodies, bool with_suffix,
                       u16 *idx)
{
    int n = 0;
    for (int i = 0; i < s->prefixes; i++) idx[n++] = emit(q, &s->prefix[i]);
    for (int i = 0; i < nbodies; i++) idx[n++] = emit(q, &bodies[i]);
    if (with_suffix)
        for (int i = 0; i < s->suffixes; i++) idx[n++] = emit(q, &s->suffix[i]);
    for (int i = 0; i + 1 < n; i++) vq_link(q, idx[i], idx[i + 1]);
    return n;
}

u16 chain_build(struct vq *q, const struct shape *s)
{
    u16 idx[8];
    chain_parts(q, s, &s->body, 1, true, idx);
    return idx[0];
}

bool chain_submit(struct vq *q, const struct buf *bufs, int n, struct vring_used_elem *e)
{
    u16 first = 0, prev = 0;
    for (int i = 0; i < n; i++) {
        u16 d = vq_desc(q, bufs[i].addr, bufs[i].len, bufs[i].write ? VRING_DESC_F_WRITE : 0);
        if (i == 0) first = d; else vq_link(q, prev, d);
        prev = d;
    }
    vq_publish(q, first);
    vq_notify(q);
    struct vring_used_elem local;
    return vq_wait_used(q, e ? e : &local);
}

static struct vring_desc entry(const struct buf *b)
{
    return (struct vring_desc){ b->addr, b->len, b->write ? VRING_DESC_F_WRITE : 0, 0 };
}

/* An indirect table of the shape's buffers (prefix, bodies, suffix), chained with NEXT; returns its entry count. */
static int table_fill(struct vring_desc *t, const struct shape *s, const struct buf *bodies, int nbodies)
{
    int n = 0;
    for (int i = 0; i < s->prefixes; i++) t[n++] = entry(&s->prefix[i]);
    for (int i = 0; i < nbodies; i++) t[n++] = entry(&bodies[i]);
    for (int i = 0; i < s->suffixes; i++) t[n++] = entry(&s->suffix[i]);
    for (int i = 0; i + 1 < n; i++) {
        t[i].flags |= VRING_DESC_F_NEXT;
        t[i].next = (u16)(i + 1);
    }
    return n;
}

static u16 indirect_head(struct vq *q, void *table, u32 len)
{
    return vq_desc(q, (u64)table, len, VRING_DESC_F_INDIRECT);
}

/* A small piece of the body (for chains made of many buffers), same direction. */
static struct buf piece(const struct shape *s, u32 len)
{
    return (struct buf){ s->body.addr, len < s->body.len ? len : s->body.len, s->body.write };
}

/* ---- The chain variants ----------------------------------------------------------------------------------------- */

/* EXPECT_IGNORED: the device must not take the chain at all (nothing used, no reset), and then serve a good one
 * written in its place. EXPECT_SKIP: the variant means nothing in that layout. */
enum expect { EXPECT_LEN0, EXPECT_SERVED, EXPECT_SERVED_IF_INDIRECT, EXPECT_NEEDS_RESET, EXPECT_IGNORED, EXPECT_SKIP };

struct variant {
    const char *name;
    enum expect expect;        /* split ring */
    enum expect packed;        /* packed ring (use_packed): PackedQueue.swift's reaction to the same chain */
    bool without_indirect;     /* negotiate without VIRTIO_F_INDIRECT_DESC */
    /* Builds the chain and returns its head; for ring variants, publishes it the corrupt way and returns -1. */
    int (*build)(struct vq *q, struct shape *s, struct vdev *d);
};

static int v_well_formed(struct vq *q, struct shape *s, struct vdev *d) { (void)d; return chain_build(q, s); }

static int v_body(struct vq *q, struct shape *s, struct buf b)
{
    u16 idx[8];
    chain_parts(q, s, &b, 1, true, idx);
    return idx[0];
}

/* The body with one field changed. */
static int v_outside_ram(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf b = s->body;
    b.addr = outside_ram;
    return v_body(q, s, b);
}

static int v_in_mmio(struct vq *q, struct shape *s, struct vdev *d)
{
    struct buf b = s->body;
    b.addr = d->base; /* the device's own registers */
    return v_body(q, s, b);
}

static int v_len_max(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf b = s->body;
    b.len = 0xffffffffu;
    return v_body(q, s, b);
}

static int v_wrap(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf b = s->body;
    b.addr = 0xfffffffffffff000ull; /* + 0x2000 wraps past 2^64 */
    b.len = 0x2000;
    return v_body(q, s, b);
}

static int v_zero_len(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf b = s->body;
    b.len = 0;
    return v_body(q, s, b);
}

static int v_sum_over_4g(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf b[2] = { s->body, s->body };
    b[0].len = b[1].len = 0x80000000u; /* each fits in u32; together 2^32 */
    u16 idx[8];
    chain_parts(q, s, b, 2, true, idx);
    return idx[0];
}

static int v_next_out_of_range(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    u16 idx[8];
    int n = chain_parts(q, s, &s->body, 1, false, idx);
    q->desc[idx[n - 1]].flags |= VRING_DESC_F_NEXT;
    q->desc[idx[n - 1]].next = (u16)(q->size + 3);
    return idx[0];
}

static int v_loop1(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    u16 idx[8];
    int n = chain_parts(q, s, &s->body, 1, false, idx);
    vq_link(q, idx[n - 1], idx[n - 1]);
    return idx[0];
}

static int v_loop2(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf b[2] = { piece(s, 16), piece(s, 16) };
    u16 idx[8];
    int n = chain_parts(q, s, b, 2, false, idx);
    vq_link(q, idx[n - 1], idx[n - 2]);
    return idx[0];
}

static int v_readable_after_writable(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf b[2] = { { s->body.addr, 16, true }, { s->body.addr + 64, 16, false } };
    u16 idx[8];
    chain_parts(q, s, b, 2, true, idx);
    return idx[0];
}

/* size - 2 direct descriptors, then an indirect one with three more buffers: size + 1 buffers in all, in size - 1
 * descriptors of the table (one stays free for the good buffer a receive queue gets behind it). */
static int v_chain_over_queue(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf bodies[CHAIN_QUEUE_SIZE];
    int direct = q->size - 2 - s->prefixes;
    for (int i = 0; i < direct; i++) bodies[i] = piece(s, 16);
    u16 idx[CHAIN_QUEUE_SIZE + 4];
    int n = chain_parts(q, s, bodies, direct, false, idx);
    struct vring_desc *t = arena_alloc(16 * 4, 16);
    struct buf tails[2] = { piece(s, 16), piece(s, 16) };
    struct shape rest = *s;
    rest.prefixes = 0;
    if (rest.suffixes == 0) { rest.suffix[0] = tails[0]; rest.suffixes = 1; }
    int entries = table_fill(t, &rest, tails, 2);
    u16 last = indirect_head(q, t, 16u * (u32)entries);
    vq_link(q, idx[n - 1], last);
    return idx[0];
}

/* An indirect table of queue size + 1 entries (more than a chain may carry, §2.7.5.3.1). */
static int v_indirect_over_queue(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf bodies[CHAIN_QUEUE_SIZE + 1];
    int nbodies = q->size + 1 - s->prefixes - s->suffixes;
    for (int i = 0; i < nbodies; i++) bodies[i] = piece(s, 16);
    struct vring_desc *t = arena_alloc(16ull * (q->size + 1), 16);
    int entries = table_fill(t, s, bodies, nbodies);
    return indirect_head(q, t, 16u * (u32)entries);
}

/* An indirect descriptor whose length says 7M entries (112 MiB, as far as RAM allows), of which only the first MiB
 * (65536 entries of one-byte buffers chained with NEXT) is written. A device that walked it would allocate per
 * entry and read far into RAM; Swiftlet refuses a table of more than queue-size entries before reading it. */
static int v_indirect_huge(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct vring_desc *t = (struct vring_desc *)huge_base;
    u64 entries = huge_size / 16;
    u32 written = entries < 65536 ? (u32)entries : 65536;
    for (u32 i = 0; i < written; i++) {
        const struct buf *b = i < (u32)s->prefixes ? &s->prefix[i] : &s->body;
        t[i].addr = b->addr;
        t[i].len = i < (u32)s->prefixes ? b->len : 1;
        t[i].flags = (u16)((b->write ? VRING_DESC_F_WRITE : 0) | VRING_DESC_F_NEXT);
        t[i].next = (u16)(i + 1); /* the last written one points past the first MiB */
    }
    return indirect_head(q, t, (u32)(entries * 16));
}

static int v_indirect_nested(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct vring_desc *inner = arena_alloc(16 * 4, 16);
    struct shape rest = *s;
    rest.prefixes = 0;
    int inner_entries = table_fill(inner, &rest, &s->body, 1);
    struct vring_desc *outer = arena_alloc(16 * 4, 16);
    int n = 0;
    for (int i = 0; i < s->prefixes; i++) {
        outer[n] = (struct vring_desc){ s->prefix[i].addr, s->prefix[i].len, VRING_DESC_F_NEXT, (u16)(n + 1) };
        n++;
    }
    outer[n++] = (struct vring_desc){ (u64)inner, 16u * (u32)inner_entries, VRING_DESC_F_INDIRECT, 0 };
    return indirect_head(q, outer, 16u * (u32)n);
}

static struct vring_desc *valid_table(const struct shape *s, int *entries)
{
    struct vring_desc *t = arena_alloc(16 * 8, 16);
    *entries = table_fill(t, s, &s->body, 1);
    return t;
}

static int v_indirect_valid(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    int n;
    struct vring_desc *t = valid_table(s, &n);
    return indirect_head(q, t, 16u * (u32)n);
}

static int v_indirect_with_next(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    int n;
    struct vring_desc *t = valid_table(s, &n);
    u16 head = indirect_head(q, t, 16u * (u32)n);
    u16 extra = emit(q, &s->body);
    vq_link(q, head, extra); /* INDIRECT together with NEXT (§2.7.5.3.1: the driver must not) */
    return head;
}

static int v_indirect_len_not16(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    int n;
    struct vring_desc *t = valid_table(s, &n);
    return indirect_head(q, t, 16u * (u32)n + 8);
}

static int v_indirect_len0(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    int n;
    struct vring_desc *t = valid_table(s, &n);
    return indirect_head(q, t, 0);
}

static int v_indirect_outside_ram(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    int n;
    valid_table(s, &n);
    return vq_desc(q, outside_ram, 16u * (u32)n, VRING_DESC_F_INDIRECT);
}

static int v_indirect_loop(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct vring_desc *t = arena_alloc(16 * 4, 16);
    struct shape rest = *s;
    rest.suffixes = 0;
    int n = table_fill(t, &rest, &s->body, 1);
    t[n - 1].flags |= VRING_DESC_F_NEXT;
    t[n - 1].next = (u16)(n - 1);
    return indirect_head(q, t, 16u * (u32)n);
}

static int v_indirect_next_out_of_range(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct vring_desc *t = arena_alloc(16 * 4, 16);
    struct shape rest = *s;
    rest.suffixes = 0;
    int n = table_fill(t, &rest, &s->body, 1);
    t[n - 1].flags |= VRING_DESC_F_NEXT;
    t[n - 1].next = 40; /* past the table's n entries */
    return indirect_head(q, t, 16u * (u32)n);
}

/* Ring corruption: published here, the corrupt way. */
static int v_avail_idx_jump(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    u16 head = chain_build(q, s);
    q->avail->ring[q->next_avail % q->size] = head;
    q->next_avail = (u16)(q->next_avail + q->size + 1); /* more than a ring's worth ahead of the device */
    barrier();
    q->avail->idx = q->next_avail;
    mfence();
    return -1;
}

static int publish_head(struct vq *q, u16 head)
{
    q->avail->ring[q->next_avail % q->size] = head;
    barrier();
    q->next_avail++;
    q->avail->idx = q->next_avail;
    mfence();
    return -1;
}

static int v_head_eq_size(struct vq *q, struct shape *s, struct vdev *d) { (void)s; (void)d; return publish_head(q, q->size); }
static int v_head_ffff(struct vq *q, struct shape *s, struct vdev *d) { (void)s; (void)d; return publish_head(q, 0xffff); }

/* Packed ring corruption (§2.8): a buffer ID beyond the queue, a list whose second descriptor is not made available
 * (the device cannot tell where it ends), a head whose AVAIL/USED bits make it available in the other lap (not
 * this one: ignored). */
static int v_id_eq_size(struct vq *q, struct shape *s, struct vdev *d) { (void)d; vq_publish_packed(q, chain_build(q, s), q->size, -1); return -1; }
static int v_id_ffff(struct vq *q, struct shape *s, struct vdev *d) { (void)d; vq_publish_packed(q, chain_build(q, s), 0xffff, -1); return -1; }
static int v_second_not_available(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    struct buf bodies[2] = { piece(s, 16), piece(s, 16) };
    u16 idx[8];
    chain_parts(q, s, bodies, 2, true, idx);
    vq_publish_packed(q, idx[0], idx[0], 1);
    return -1;
}
static int v_head_of_another_lap(struct vq *q, struct shape *s, struct vdev *d)
{
    (void)d;
    u16 head = chain_build(q, s);
    vq_publish_packed(q, head, head, 0);
    return -1;
}

static const struct variant variants[] = {
    { "well-formed", EXPECT_SERVED, EXPECT_SERVED, false, v_well_formed },
    { "desc-outside-ram", EXPECT_LEN0, EXPECT_LEN0, false, v_outside_ram },
    { "desc-in-mmio-window", EXPECT_LEN0, EXPECT_LEN0, false, v_in_mmio },
    { "desc-len-ffffffff", EXPECT_LEN0, EXPECT_LEN0, false, v_len_max },
    { "desc-addr-len-wraps-2^64", EXPECT_LEN0, EXPECT_LEN0, false, v_wrap },
    { "desc-len-0", EXPECT_LEN0, EXPECT_LEN0, false, v_zero_len },
    { "chain-len-sum-2^32", EXPECT_LEN0, EXPECT_LEN0, false, v_sum_over_4g },
    { "next-out-of-range", EXPECT_LEN0, EXPECT_NEEDS_RESET, false, v_next_out_of_range },
    { "loop-of-one", EXPECT_LEN0, EXPECT_NEEDS_RESET, false, v_loop1 },
    { "loop-of-two", EXPECT_LEN0, EXPECT_NEEDS_RESET, false, v_loop2 },
    { "readable-after-writable", EXPECT_LEN0, EXPECT_LEN0, false, v_readable_after_writable },
    { "chain-longer-than-queue", EXPECT_LEN0, EXPECT_LEN0, false, v_chain_over_queue },
    { "indirect-well-formed", EXPECT_SERVED_IF_INDIRECT, EXPECT_SERVED_IF_INDIRECT, false, v_indirect_valid },
    { "indirect-not-negotiated", EXPECT_LEN0, EXPECT_LEN0, true, v_indirect_valid },
    { "indirect-longer-than-queue", EXPECT_LEN0, EXPECT_LEN0, false, v_indirect_over_queue },
    { "indirect-huge-7M-entries", EXPECT_LEN0, EXPECT_LEN0, false, v_indirect_huge },
    { "indirect-nested", EXPECT_LEN0, EXPECT_SKIP, false, v_indirect_nested },
    { "indirect-with-next", EXPECT_LEN0, EXPECT_LEN0, false, v_indirect_with_next },
    { "indirect-len-not-multiple-of-16", EXPECT_LEN0, EXPECT_LEN0, false, v_indirect_len_not16 },
    { "indirect-len-0", EXPECT_LEN0, EXPECT_LEN0, false, v_indirect_len0 },
    { "indirect-table-outside-ram", EXPECT_LEN0, EXPECT_LEN0, false, v_indirect_outside_ram },
    { "indirect-loop", EXPECT_LEN0, EXPECT_SKIP, false, v_indirect_loop },
    { "indirect-next-out-of-range", EXPECT_LEN0, EXPECT_SKIP, false, v_indirect_next_out_of_range },
    { "avail-idx-jumps-past-queue-size", EXPECT_NEEDS_RESET, EXPECT_SKIP, false, v_avail_idx_jump },
    { "head-eq-queue-size", EXPECT_NEEDS_RESET, EXPECT_SKIP, false, v_head_eq_size },
    { "head-ffff", EXPECT_NEEDS_RESET, EXPECT_SKIP, false, v_head_ffff },
    { "id-eq-queue-size", EXPECT_SKIP, EXPECT_NEEDS_RESET, false, v_id_eq_size },
    { "id-ffff", EXPECT_SKIP, EXPECT_NEEDS_RESET, false, v_id_ffff },
    { "second-descriptor-not-available", EXPECT_SKIP, EXPECT_NEEDS_RESET, false, v_second_not_available },
    { "head-available-in-another-lap", EXPECT_SKIP, EXPECT_IGNORED, false, v_head_of_another_lap },
};

static const char *expect_text(enum expect e, bool indirect)
{
    switch (e) {
    case EXPECT_LEN0: return "used_len_0,then_serves";
    case EXPECT_SERVED: return "served";
    case EXPECT_SERVED_IF_INDIRECT: return indirect ? "served" : "used_len_0(indirect_not_offered),then_serves";
    case EXPECT_NEEDS_RESET: return "needs_reset+config_irq";
    case EXPECT_IGNORED: return "ignored,then_serves";
    case EXPECT_SKIP: return "-";
    }
    return "?";
}

/* A well-formed request on queue qi: posted, triggered, its used element checked. */
static bool serve(const struct device_ops *ops, struct dev_queues *dq, int qi, char *out, usize n)
{
    out[0] = 0;
    struct vq *q = &dq->q[qi];
    struct shape s;
    ops->shape(dq, qi, &s);
    u16 head = chain_build(q, &s);
    vq_publish(q, head);
    ops->trigger(dq, qi, &s);
    struct vring_used_elem e;
    if (!vq_wait_used(q, &e)) { snprintk(out, n, "no_used_entry,status=0x%x", vstatus(dq->dev)); return false; }
    if (e.id != head) { snprintk(out, n, "used_id=%u,want=%u", e.id, head); return false; }
    return ops->served(dq, qi, &s, &e, out, n);
}

static void chain_case(struct vdev *d, const struct device_ops *ops, int qi, const struct variant *v)
{
    char name[120];
    snprintk(name, sizeof name, "%s.%s.%s%s", ops->name, ops->queue_names[qi], use_packed ? "packed." : "", v->name);
    enum expect expect = use_packed ? v->packed : v->expect;
    /* A receive queue takes a chain only when it has something to deliver: an ignored head there would leave that
     * waiting for the good buffer, which is then not the answer the case looks for. */
    if (expect == EXPECT_SKIP || (expect == EXPECT_IGNORED && ops->receive[qi])) return;
    if (!case_enabled(name)) return;
    u64 mark = arena_mark();
    bool indirect = (ops->features & F_INDIRECT_DESC) && !v->without_indirect;
    const char *expect_str = expect_text(expect, indirect);
    if (expect == EXPECT_SERVED_IF_INDIRECT) expect = indirect ? EXPECT_SERVED : EXPECT_LEN0;
    struct dev_queues dq;
    u64 features = v->without_indirect ? ops->features & ~F_INDIRECT_DESC : ops->features;
    if (!dev_up(d, ops->queue_count, &dq, features, CHAIN_QUEUE_SIZE)) {
        report(name, expect_str, false, "bring-up_refused,status=0x%x", vstatus(d));
        goto out;
    }
    ops->prepare(&dq, qi);
    struct vq *q = &dq.q[qi];
    struct shape s;
    ops->shape(&dq, qi, &s);
    int head = v->build(q, &s, d);

    if (expect == EXPECT_NEEDS_RESET) {
        if (head >= 0) vq_publish(q, (u16)head); /* a chain that corrupts the ring as the driver publishes it */
        struct shape t;
        ops->shape(&dq, qi, &t);
        ops->trigger(&dq, qi, &t);
        bool needs_reset = vdev_wait_needs_reset(d);
        u32 isr = vreg_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
        report(name, expect_str, needs_reset && (isr & INT_CONFIG_CHANGE), "status=0x%x,interrupt_status=0x%x",
               vstatus(d), isr);
        goto out;
    }
    if (expect == EXPECT_IGNORED) {
        /* Notified, the device must leave the descriptor alone; the good request written over it is served. */
        ops->trigger(&dq, qi, &s);
        bool quiet = vq_quiet(q);
        u32 status = vstatus(d);
        bool ok = quiet && !(status & STATUS_NEEDS_RESET) && serve(ops, &dq, qi, why, sizeof why);
        report(name, expect_str, ok, "quiet=%d,status=0x%x,then:%s", quiet, status, why);
        goto out;
    }
    vq_publish(q, (u16)head);
    if (expect == EXPECT_SERVED) {
        /* The chain itself is the well-formed request: trigger and check it was served. */
        ops->trigger(&dq, qi, &s);
        struct vring_used_elem e;
        bool ok = vq_wait_used(q, &e);
        if (!ok) snprintk(why, sizeof why, "no_used_entry,status=0x%x", vstatus(d));
        else if (e.id != (u32)head) { ok = false; snprintk(why, sizeof why, "used_id=%u,want=%u", e.id, head); }
        else ok = ops->served(&dq, qi, &s, &e, why, sizeof why);
        report(name, expect_str, ok, "%s", why);
        goto out;
    }

    /* A malformed chain: back with length 0, nothing done with it, and the queue still serves. */
    struct vring_used_elem e;
    struct shape good;
    bool ok;
    if (ops->receive[qi]) {
        /* A receive queue is popped when the device has something to deliver: the good buffer goes in behind the
         * malformed one, and the trigger makes something to deliver. */
        ops->shape(&dq, qi, &good);
        u16 good_head = chain_build(q, &good);
        vq_publish(q, good_head);
        ops->trigger(&dq, qi, &good);
        if (!vq_wait_used(q, &e)) { report(name, expect_str, false, "no_used_entry,status=0x%x", vstatus(d)); goto out; }
        if (e.id != (u32)head || e.len != 0) {
            report(name, expect_str, false, "used_id=%u,len=%u(want_id=%d,len=0)", e.id, e.len, head);
            goto out;
        }
        struct vring_used_elem g;
        ok = vq_wait_used(q, &g);
        if (!ok) snprintk(why, sizeof why, "no_used_entry_for_the_good_buffer,status=0x%x", vstatus(d));
        else if (g.id != good_head) { ok = false; snprintk(why, sizeof why, "good_used_id=%u,want=%u", g.id, good_head); }
        else ok = ops->served(&dq, qi, &good, &g, why, sizeof why);
        u32 status = vstatus(d);
        report(name, expect_str, ok && !(status & STATUS_NEEDS_RESET), "len=0,then:%s,status=0x%x", why, status);
        goto out;
    }
    ops->trigger(&dq, qi, &s);
    if (!vq_wait_used(q, &e)) { report(name, expect_str, false, "no_used_entry,status=0x%x", vstatus(d)); goto out; }
    if (e.id != (u32)head || e.len != 0) {
        report(name, expect_str, false, "used_id=%u,len=%u(want_id=%d,len=0)", e.id, e.len, head);
        goto out;
    }
    if (ops->no_effect && !ops->no_effect(&dq, qi, &s, why, sizeof why)) {
        report(name, expect_str, false, "len=0_but_acted_on:%s", why);
        goto out;
    }
    ok = serve(ops, &dq, qi, why, sizeof why);
    u32 status = vstatus(d);
    report(name, expect_str, ok && !(status & STATUS_NEEDS_RESET), "len=0,then:%s,status=0x%x", why, status);
out:
    arena_release(mark);
}

/* ---- Transport cases ---------------------------------------------------------------------------------------------- */

static bool begin(char *name, usize n, const struct device_ops *ops, const char *what)
{
    snprintk(name, n, "%s.%s", ops->name, what);
    return case_enabled(name);
}

/* Negotiates and sets up every queue but `skip` (the one the case programs itself). */
static bool up_to_queues(struct vdev *d, const struct device_ops *ops, struct dev_queues *dq, int skip)
{
    memset(dq, 0, sizeof *dq);
    dq->dev = d;
    dq->count = ops->queue_count;
    dq->features = vdev_negotiate(d, ops->features);
    if (!dq->features) return false;
    for (int i = 0; i < ops->queue_count; i++)
        if (i != skip && !vq_setup(d, &dq->q[i], (u16)i, CHAIN_QUEUE_SIZE)) return false;
    return true;
}

/* QueueNum / ring addresses the queue set-up must refuse: QueueReady reads back 0. */
struct bad_queue { const char *name; int what; };
enum { BQ_NUM_0, BQ_NUM_NPOT, BQ_NUM_OVER_MAX, BQ_NUM_65536, BQ_DESC_OUTSIDE, BQ_AVAIL_OUTSIDE, BQ_USED_OUTSIDE,
       BQ_USED_STRADDLES_END, BQ_DESC_IN_MMIO, BQ_DESC_HIGH, BQ_DESC_UNALIGNED, BQ_AVAIL_UNALIGNED, BQ_USED_UNALIGNED };
static const struct bad_queue bad_queues[] = {
    { "queue-size-0", BQ_NUM_0 }, { "queue-size-not-power-of-2", BQ_NUM_NPOT },
    { "queue-size-over-max", BQ_NUM_OVER_MAX }, { "queue-size-65536", BQ_NUM_65536 },
    { "ring-desc-outside-ram", BQ_DESC_OUTSIDE }, { "ring-avail-outside-ram", BQ_AVAIL_OUTSIDE },
    { "ring-used-outside-ram", BQ_USED_OUTSIDE }, { "ring-used-straddles-ram-end", BQ_USED_STRADDLES_END },
    { "ring-desc-in-mmio-window", BQ_DESC_IN_MMIO }, { "ring-desc-above-2^40", BQ_DESC_HIGH },
    { "ring-desc-unaligned", BQ_DESC_UNALIGNED }, { "ring-avail-unaligned", BQ_AVAIL_UNALIGNED },
    { "ring-used-unaligned", BQ_USED_UNALIGNED },
};

static void bad_queue_case(struct vdev *d, const struct device_ops *ops, const struct bad_queue *b)
{
    char name[120];
    if (!begin(name, sizeof name, ops, b->name)) return;
    u64 mark = arena_mark();
    struct dev_queues dq;
    int qi = ops->primary;
    if (!up_to_queues(d, ops, &dq, qi)) { report(name, "queue_ready_reads_0", false, "bring-up_refused"); goto out; }
    vreg_write(d, VIRTIO_MMIO_QUEUE_SEL, (u32)qi);
    u32 max = vreg_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
    u64 size = 16;
    u64 desc = (u64)arena_alloc(4096, 4096), avail = (u64)arena_alloc(4096, 4096), used = (u64)arena_alloc(4096, 4096);
    switch (b->what) {
    case BQ_NUM_0: size = 0; break;
    case BQ_NUM_NPOT: size = max > 3 ? max - 1 : 3; break;
    case BQ_NUM_OVER_MAX: size = (u64)max * 2; break;
    case BQ_NUM_65536: size = 65536; break;
    case BQ_DESC_OUTSIDE: desc = outside_ram; break;
    case BQ_AVAIL_OUTSIDE: avail = outside_ram; break;
    case BQ_USED_OUTSIDE: used = outside_ram; break;
    case BQ_USED_STRADDLES_END: used = ram_end - 8; break;
    case BQ_DESC_IN_MMIO: desc = d->base; break;
    case BQ_DESC_HIGH: desc = desc | (1ull << 40); break;
    case BQ_DESC_UNALIGNED: desc += 8; break;
    case BQ_AVAIL_UNALIGNED: avail += 1; break;
    case BQ_USED_UNALIGNED: used += 2; break;
    }
    /* QueueNum goes out as 32 bits: 65536 arrives whole (a device that kept 16 bits of it would see 0). */
    u32 ready = vq_program(d, (u16)qi, (u32)size, desc, avail, used);
    report(name, "queue_ready_reads_0", ready == 0, "queue_ready=%u,size=%llu,max=%u", ready, size, max);
out:
    arena_release(mark);
}

/* Rings that overlap each other: nothing in the spec or in Swiftlet refuses them; the queue works (QEMU neither). */
enum { OV_DESC_AVAIL, OV_AVAIL_USED, OV_USED_DESC };
static void overlap_case(struct vdev *d, const struct device_ops *ops, const char *what, int how)
{
    char name[120];
    if (!begin(name, sizeof name, ops, what)) return;
    u64 mark = arena_mark();
    const char *expect = "accepted,serves";
    struct dev_queues dq;
    int qi = ops->primary;
    if (!up_to_queues(d, ops, &dq, qi)) { report(name, expect, false, "bring-up_refused"); goto out; }
    struct vq *q = &dq.q[qi];
    memset(q, 0, sizeof *q);
    q->dev = d;
    q->index = (u16)qi;
    q->size = CHAIN_QUEUE_SIZE;
    u8 *area = arena_alloc(8192, 4096);
    switch (how) {
    case OV_DESC_AVAIL: /* avail over the table's last 8 entries (the requests use the first ones) */
        q->desc = (void *)area; q->avail = (void *)(area + 128); q->used = (void *)(area + 4096); break;
    case OV_AVAIL_USED: /* the same address: used->idx is avail->idx */
        q->desc = (void *)area; q->avail = (void *)(area + 4096); q->used = (void *)(area + 4096); break;
    case OV_USED_DESC: /* used over the table's last entries */
        q->desc = (void *)area; q->used = (void *)(area + 128); q->avail = (void *)(area + 4096); break;
    }
    u32 ready = vq_program(d, (u16)qi, q->size, (u64)q->desc, (u64)q->avail, (u64)q->used);
    if (!ready) { report(name, expect, false, "queue_ready=0"); goto out; }
    if (!vdev_driver_ok(d)) { report(name, expect, false, "driver_ok_refused,status=0x%x", vstatus(d)); goto out; }
    ops->prepare(&dq, qi);
    if (how == OV_AVAIL_USED) {
        /* used->idx and avail->idx are one field, and used->ring[0] lies over avail->ring[0..3]. The device's
         * used element for the request overwrites avail->ring[1] (the high half of its id), which this driver set
         * to 0xbeef and never publishes: that is how it sees the request come back. */
        struct shape s;
        ops->shape(&dq, qi, &s);
        u16 head = chain_build(q, &s);
        q->avail->ring[0] = head;
        q->avail->ring[1] = 0xbeef;
        q->next_avail = 1;
        barrier();
        q->avail->idx = 1;
        mfence();
        ops->trigger(&dq, qi, &s);
        u64 i;
        for (i = 0; i < wait_polls && *(volatile u16 *)&q->avail->ring[1] == 0xbeef; i++) poll_step(d);
        struct vring_used_elem e = q->used->ring[0];
        bool ok = i < wait_polls && e.id == head && ops->served(&dq, qi, &s, &e, why, sizeof why);
        if (i == wait_polls) snprintk(why, sizeof why, "no_used_entry");
        u32 status = vstatus(d);
        report(name, "accepted,one_request_back", ok && !(status & STATUS_NEEDS_RESET), "used_id=%u,%s,status=0x%x",
               e.id, why, status);
        goto out;
    }
    bool ok = serve(ops, &dq, qi, why, sizeof why);
    report(name, expect, ok && !(vstatus(d) & STATUS_NEEDS_RESET), "%s,status=0x%x", why, vstatus(d));
out:
    arena_release(mark);
}

/* The status machine and features (§3.1.1, MmioTransport.writeStatus). */
static void status_cases(struct vdev *d, const struct device_ops *ops)
{
    char name[120];
    u64 mark = arena_mark();
    const u32 ack = STATUS_ACKNOWLEDGE, drv = STATUS_DRIVER, fok = STATUS_FEATURES_OK, dok = STATUS_DRIVER_OK;

    if (begin(name, sizeof name, ops, "driver-ok-without-features-ok")) {
        vdev_reset(d);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv);
        vdev_write_features(d, F_VERSION_1 | (ops->features & vdev_read_features(d)));
        struct vq q;
        u32 ready = vq_setup(d, &q, (u16)ops->primary, 16) ? 1 : 0; /* refused: FEATURES_OK is not set */
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv | dok);
        u32 s = vstatus(d);
        report(name, "status_stays_0x3,queue_refused", s == (ack | drv) && ready == 0, "status=0x%x,queue_ready=%u", s, ready);
    }
    if (begin(name, sizeof name, ops, "features-without-version-1")) {
        vdev_reset(d);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv);
        vdev_write_features(d, vdev_read_features(d) & ~F_VERSION_1);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv | fok);
        u32 s = vstatus(d);
        report(name, "features_ok_refused(status_0x3)", s == (ack | drv), "status=0x%x", s);
    }
    if (begin(name, sizeof name, ops, "features-not-offered")) {
        vdev_reset(d);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv);
        u64 offered = vdev_read_features(d);
        u64 extra = 0;
        for (int bit = 63; bit >= 0 && !extra; bit--)
            if (!(offered & (1ull << bit))) extra = 1ull << bit;
        vdev_write_features(d, F_VERSION_1 | extra);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv | fok);
        u32 s = vstatus(d);
        report(name, "features_ok_refused(status_0x3)", s == (ack | drv), "status=0x%x,extra_feature=0x%llx", s, extra);
    }
    if (begin(name, sizeof name, ops, "driver-features-select-2")) {
        vdev_reset(d);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv);
        vdev_write_features(d, F_VERSION_1);
        vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
        vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES, 0xffffffffu); /* no features live above bit 63: dropped */
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv | fok);
        u32 s = vstatus(d);
        report(name, "write_ignored,features_ok_accepted", s == (ack | drv | fok), "status=0x%x", s);
    }
    if (begin(name, sizeof name, ops, "device-features-select-2")) {
        vdev_reset(d);
        vreg_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        u32 f2 = vreg_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
        vreg_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0xffffffffu);
        u32 fmax = vreg_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
        report(name, "reads_0", f2 == 0 && fmax == 0, "select_2=0x%x,select_ffffffff=0x%x", f2, fmax);
    }
    if (begin(name, sizeof name, ops, "status-all-bits-at-once")) {
        vdev_reset(d);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv | fok | dok);
        u32 s = vstatus(d);
        report(name, "ignored(status_0)", s == 0, "status=0x%x", s);
    }
    if (begin(name, sizeof name, ops, "status-clear-bits-without-reset")) {
        struct dev_queues dq;
        bool up = dev_up(d, ops->queue_count, &dq, ops->features, CHAIN_QUEUE_SIZE);
        if (up) ops->prepare(&dq, ops->primary);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv);
        u32 s = vstatus(d);
        bool served = up && serve(ops, &dq, ops->primary, why, sizeof why);
        report(name, "ignored(status_0xf),still_serves", up && s == (ack | drv | fok | dok) && served,
               "status=0x%x,then:%s", s, up ? why : "bring-up_refused");
    }
    if (begin(name, sizeof name, ops, "driver-ok-written-again")) {
        /* A second DRIVER_OK is no new activation: the device keeps its place in the rings (a re-activation would
         * start again at avail index 0 and serve the first request a second time). */
        struct dev_queues dq;
        bool up = dev_up(d, ops->queue_count, &dq, ops->features, CHAIN_QUEUE_SIZE);
        if (up) ops->prepare(&dq, ops->primary);
        bool first = up && serve(ops, &dq, ops->primary, why, sizeof why);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv | fok | dok);
        bool quiet = first && vq_quiet(&dq.q[ops->primary]);
        bool second = quiet && serve(ops, &dq, ops->primary, why, sizeof why);
        report(name, "ignored,no_request_served_twice", first && quiet && second, "first=%d,quiet=%d,second=%d:%s", first,
               quiet, second, up ? why : "bring-up_refused");
    }
    if (begin(name, sizeof name, ops, "features-written-after-features-ok")) {
        /* DriverFeatures after FEATURES_OK is refused: the features that count stay those accepted, so an indirect
         * request (where the device offers them) is still served. */
        struct dev_queues dq;
        bool up = up_to_queues(d, ops, &dq, -1);
        if (up) {
            vdev_write_features(d, 0);
            up = vdev_driver_ok(d);
        }
        bool ok = false;
        if (up) {
            ops->prepare(&dq, ops->primary);
            struct vq *q = &dq.q[ops->primary];
            struct shape s;
            ops->shape(&dq, ops->primary, &s);
            u16 head;
            if (ops->features & F_INDIRECT_DESC) {
                int n;
                struct vring_desc *t = valid_table(&s, &n);
                head = indirect_head(q, t, 16u * (u32)n);
            } else {
                head = chain_build(q, &s);
            }
            vq_publish(q, head);
            ops->trigger(&dq, ops->primary, &s);
            struct vring_used_elem e;
            snprintk(why, sizeof why, "no_used_entry");
            ok = vq_wait_used(q, &e) && e.id == head && ops->served(&dq, ops->primary, &s, &e, why, sizeof why);
        }
        report(name, (ops->features & F_INDIRECT_DESC) ? "ignored,indirect_still_served" : "ignored,still_served", ok,
               "%s", up ? why : "bring-up_refused");
    }
    if (begin(name, sizeof name, ops, "status-failed")) {
        vdev_reset(d);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv | STATUS_FAILED);
        u32 failed = vstatus(d);
        vdev_write_features(d, F_VERSION_1);
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv | STATUS_FAILED | fok);
        u32 after = vstatus(d);
        report(name, "failed_kept(0x83),features_ok_refused", failed == (ack | drv | STATUS_FAILED) && after == failed,
               "after_failed=0x%x,after_features_ok=0x%x", failed, after);
    }
    if (begin(name, sizeof name, ops, "driver-ok-without-queues")) {
        vdev_reset(d);
        bool negotiated = vdev_negotiate(d, ops->features) != 0;
        vreg_write(d, VIRTIO_MMIO_STATUS, ack | drv | fok | dok);
        bool needs = negotiated && vdev_wait_needs_reset(d);
        u32 s = vstatus(d), isr = vreg_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
        if (ops->needs_queues)
            report(name, "needs_reset+config_irq", needs && (isr & INT_CONFIG_CHANGE), "status=0x%x,interrupt_status=0x%x", s, isr);
        else
            report(name, "accepted(status_0xf)", negotiated && s == (ack | drv | fok | dok), "status=0x%x", s);
    }
    vdev_reset(d);
    arena_release(mark);
}

/* Register and config-space accesses of odd widths and offsets (§4.2.2.2). */
static void access_cases(struct vdev *d, const struct device_ops *ops)
{
    char name[120];
    vdev_reset(d);
    u64 cfg = d->base + VIRTIO_MMIO_CONFIG;
    if (begin(name, sizeof name, ops, "register-read-16-bit")) {
        u16 magic16 = mmio_read16(d->base + VIRTIO_MMIO_MAGIC);
        u8 version8 = mmio_read8(d->base + VIRTIO_MMIO_VERSION);
        report(name, "reads_0", magic16 == 0 && version8 == 0, "magic16=0x%x,version8=0x%x", magic16, version8);
    }
    if (begin(name, sizeof name, ops, "register-read-unaligned")) {
        u32 v = mmio_read32(d->base + VIRTIO_MMIO_MAGIC + 2);
        report(name, "reads_0", v == 0, "read32@0x002=0x%x", v);
    }
    if (begin(name, sizeof name, ops, "register-write-8-bit")) {
        mmio_write8(d->base + VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE);
        u32 s = vstatus(d);
        report(name, "ignored(status_0)", s == 0, "status=0x%x", s);
    }
    if (begin(name, sizeof name, ops, "register-write-64-bit")) {
        mmio_write64(d->base + VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE);
        u32 s = vstatus(d);
        report(name, "ignored(status_0)", s == 0, "status=0x%x", s);
        vdev_reset(d);
    }
    if (begin(name, sizeof name, ops, "register-read-only-writes")) {
        vreg_write(d, VIRTIO_MMIO_MAGIC, 0);
        vreg_write(d, VIRTIO_MMIO_DEVICE_ID, 0);
        vreg_write(d, VIRTIO_MMIO_VERSION, 1);
        vreg_write(d, VIRTIO_MMIO_QUEUE_SEL, (u32)ops->primary);
        u32 max_before = vreg_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
        vreg_write(d, VIRTIO_MMIO_QUEUE_NUM_MAX, 1);
        u32 magic = vreg_read(d, VIRTIO_MMIO_MAGIC), id = vreg_read(d, VIRTIO_MMIO_DEVICE_ID);
        u32 version = vreg_read(d, VIRTIO_MMIO_VERSION), max = vreg_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
        report(name, "ignored(read_back_unchanged)", magic == 0x74726976 && id == d->device_id && version == d->version && max == max_before,
               "magic=0x%x,device_id=%u,version=%u,queue_num_max=%u", magic, id, version, max);
    }
    if (begin(name, sizeof name, ops, "config-read-out-of-range")) {
        u32 past = mmio_read32(cfg + ALIGN_UP(ops->config_size, 4));
        u32 last = mmio_read32(cfg + 0xefc);
        u8 byte = mmio_read8(d->base + 0xfff);
        report(name, "reads_0", past == 0 && last == 0 && byte == 0, "past_end=0x%x,at_0xefc=0x%x,byte_0xfff=0x%x", past, last, byte);
    }
    if (begin(name, sizeof name, ops, "config-read-64-bit")) {
        u64 wide = mmio_read64(cfg);
        u64 halves = mmio_read32(cfg) | (u64)mmio_read32(cfg + 4) << 32;
        report(name, "same_bytes_as_two_32-bit_reads", wide == halves, "read64=0x%llx,two_read32=0x%llx", wide, halves);
    }
    if (begin(name, sizeof name, ops, "config-read-unaligned")) {
        u32 unaligned = mmio_read32(cfg + 1);
        u32 bytes = 0;
        for (int i = 0; i < 4; i++) bytes |= (u32)mmio_read8(cfg + 1 + i) << (8 * i);
        u16 odd16 = mmio_read16(cfg + 3);
        u16 odd16_bytes = (u16)(mmio_read8(cfg + 3) | mmio_read8(cfg + 4) << 8);
        report(name, "same_bytes_as_8-bit_reads", unaligned == bytes && odd16 == odd16_bytes,
               "read32@1=0x%x,bytes=0x%x,read16@3=0x%x,bytes=0x%x", unaligned, bytes, odd16, odd16_bytes);
    }
    if (begin(name, sizeof name, ops, "config-write-read-only-field")) {
        /* While the driver sets the device up (DRIVER set), so the transport passes the write to the device. */
        vreg_write(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE);
        vreg_write(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        u64 at = cfg + ops->config_readonly;
        u32 before = mmio_read32(at);
        mmio_write32(at, ~before);
        mmio_write64(at & ~7ull, 0x5a5a5a5a5a5a5a5aull);
        mmio_write8(at + 1, 0xa5);
        u32 after = mmio_read32(at);
        report(name, "ignored(read_back_unchanged)", after == before, "before=0x%x,after=0x%x", before, after);
        vdev_reset(d);
    }
    if (begin(name, sizeof name, ops, "queue-select-beyond-queues")) {
        vdev_negotiate(d, ops->features);
        u32 sel = (u32)ops->queue_count;
        vreg_write(d, VIRTIO_MMIO_QUEUE_SEL, sel);
        u32 max = vreg_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
        u64 mark = arena_mark();
        u32 ready = vq_program(d, (u16)sel, 16, (u64)arena_alloc(4096, 4096), (u64)arena_alloc(4096, 4096), (u64)arena_alloc(4096, 4096));
        vreg_write(d, VIRTIO_MMIO_QUEUE_SEL, 0xffffffffu);
        u32 max_ffff = vreg_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
        vreg_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
        u32 ready_ffff = vreg_read(d, VIRTIO_MMIO_QUEUE_READY);
        arena_release(mark);
        report(name, "num_max_0,ready_refused", max == 0 && ready == 0 && max_ffff == 0 && ready_ffff == 0,
               "sel=%u:num_max=%u,ready=%u;sel=ffffffff:num_max=%u,ready=%u", sel, max, ready, max_ffff, ready_ffff);
        vdev_reset(d);
    }
    if (begin(name, sizeof name, ops, "queue-num-max")) {
        bool ok = true;
        char list[100] = "";
        usize at = 0;
        for (int i = 0; i < ops->queue_count; i++) {
            vreg_write(d, VIRTIO_MMIO_QUEUE_SEL, (u32)i);
            u32 max = vreg_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
            ok = ok && max >= CHAIN_QUEUE_SIZE && max <= 32768;
            at += (usize)snprintk(list + at, sizeof list - at, "%s%u", i ? "," : "", max);
        }
        report(name, "16_to_32768_per_queue", ok, "%s", list);
    }
}

/* Writes after QueueReady=1, notifies for queues that do not exist, a notify flood, an interrupt acknowledge. */
static void queue_cases(struct vdev *d, const struct device_ops *ops)
{
    char name[120];
    int qi = ops->primary;
    if (begin(name, sizeof name, ops, "queue-writes-after-ready")) {
        u64 mark = arena_mark();
        struct dev_queues dq;
        bool up = up_to_queues(d, ops, &dq, -1);
        if (up) {
            vreg_write(d, VIRTIO_MMIO_QUEUE_SEL, (u32)qi);
            vreg_write(d, VIRTIO_MMIO_QUEUE_NUM, 2);                 /* ready: refused */
            vreg_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)outside_ram);
            vreg_write(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, 3);
            up = vdev_driver_ok(d);
        }
        if (up) ops->prepare(&dq, qi);
        bool ok = up && serve(ops, &dq, qi, why, sizeof why);
        report(name, "ignored,serves_with_the_first_layout", ok, "%s", up ? why : "bring-up_refused");
        arena_release(mark);
    }
    if (begin(name, sizeof name, ops, "notify-queues-that-do-not-exist")) {
        u64 mark = arena_mark();
        struct dev_queues dq;
        bool up = dev_up(d, ops->queue_count, &dq, ops->features, CHAIN_QUEUE_SIZE);
        bool quiet = false, ok = false;
        if (up) {
            ops->prepare(&dq, qi);
            /* DRIVER_OK makes the device look at its queues once by itself (buffers queued before it, §3.1.1):
             * that look must be over before the request goes in, or it would serve it without any notify. */
            for (u64 i = 0; i < quiet_polls; i++) poll_step(d);
            struct vq *q = &dq.q[qi];
            struct shape s;
            ops->shape(&dq, qi, &s);
            u16 head = chain_build(q, &s);
            vq_publish(q, head);
            /* Queue numbers past the last, one whose low 16 bits are the right queue, and all ones. */
            vreg_write(d, VIRTIO_MMIO_QUEUE_NOTIFY, (u32)ops->queue_count);
            vreg_write(d, VIRTIO_MMIO_QUEUE_NOTIFY, 0x10000u | (u32)qi);
            vreg_write(d, VIRTIO_MMIO_QUEUE_NOTIFY, 0xffffffffu);
            quiet = vq_quiet(q);
            ops->trigger(&dq, qi, &s);
            struct vring_used_elem e;
            snprintk(why, sizeof why, "no_used_entry");
            ok = vq_wait_used(q, &e) && e.id == head && ops->served(&dq, qi, &s, &e, why, sizeof why);
        }
        report(name, "ignored,then_the_real_notify_serves", up && quiet && ok, "quiet=%d,then:%s,status=0x%x",
               quiet, up ? why : "bring-up_refused", vstatus(d));
        arena_release(mark);
    }
    if (begin(name, sizeof name, ops, "notify-flood")) {
        u64 mark = arena_mark();
        u64 count = cmdline_number("hostile.notifies", 100000);
        struct dev_queues dq;
        bool up = dev_up(d, ops->queue_count, &dq, ops->features, CHAIN_QUEUE_SIZE);
        bool ok = false;
        if (up) {
            ops->prepare(&dq, qi);
            for (u64 i = 0; i < count; i++) vreg_write(d, VIRTIO_MMIO_QUEUE_NOTIFY, (u32)qi);
            ok = serve(ops, &dq, qi, why, sizeof why);
        }
        report(name, "survives,then_serves", ok && !(vstatus(d) & STATUS_NEEDS_RESET), "notifies=%llu,then:%s,status=0x%x",
               count, up ? why : "bring-up_refused", vstatus(d));
        arena_release(mark);
    }
    if (begin(name, sizeof name, ops, "interrupt-status-and-ack")) {
        u64 mark = arena_mark();
        struct dev_queues dq;
        bool up = dev_up(d, ops->queue_count, &dq, ops->features, CHAIN_QUEUE_SIZE);
        bool ok = false;
        u32 isr = 0, after = 0;
        if (up) {
            ops->prepare(&dq, qi);
            vreg_write(d, VIRTIO_MMIO_INTERRUPT_ACK, 0xffffffffu);
            ok = serve(ops, &dq, qi, why, sizeof why);
            isr = vreg_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
            vreg_write(d, VIRTIO_MMIO_INTERRUPT_ACK, 0xffffffffu); /* bits that are not set too */
            after = vreg_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
        }
        report(name, "used_buffer_bit_set,ack_clears", ok && (isr & INT_USED_BUFFER) && after == 0,
               "interrupt_status=0x%x,after_ack=0x%x,%s", isr, after, up ? why : "bring-up_refused");
        arena_release(mark);
    }
}

/* Reset while a request is posted (and possibly being served): afterwards the device must not touch the old rings,
 * and a fresh set-up serves. */
static void reset_case(struct vdev *d, const struct device_ops *ops)
{
    char name[120];
    if (!begin(name, sizeof name, ops, "reset-in-the-middle-of-a-request")) return;
    u64 mark = arena_mark();
    struct dev_queues dq;
    int qi = ops->primary;
    bool up = dev_up(d, ops->queue_count, &dq, ops->features, CHAIN_QUEUE_SIZE);
    bool reset = false, untouched = false, ok = false;
    u16 used_after_reset = 0, used_later = 0;
    if (up) {
        ops->prepare(&dq, qi);
        struct vq *q = &dq.q[qi];
        for (int i = 0; i < 4; i++) {
            struct shape s;
            ops->shape(&dq, qi, &s);
            vq_publish(q, chain_build(q, &s));
        }
        vq_notify(q);
        reset = vdev_reset(d);
        used_after_reset = q->used->idx;
        for (u64 i = 0; i < quiet_polls; i++) poll_step(d);
        used_later = q->used->idx;
        untouched = used_later == used_after_reset;
        if (ops->sent_counter) *ops->sent_counter += used_after_reset; /* served before the reset took them away */
        struct dev_queues again;
        ok = dev_up(d, ops->queue_count, &again, ops->features, CHAIN_QUEUE_SIZE);
        if (ok) {
            ops->prepare(&again, qi);
            ok = serve(ops, &again, qi, why, sizeof why);
        } else {
            snprintk(why, sizeof why, "bring-up_refused");
        }
    }
    report(name, "status_0,old_rings_untouched,then_serves", up && reset && untouched && ok,
           "reset=%d,used_idx_at_reset=%u,later=%u,then:%s", reset, used_after_reset, used_later, up ? why : "bring-up_refused");
    arena_release(mark);
}

void generic_cases(struct vdev *d, const struct device_ops *ops)
{
    status_cases(d, ops);
    access_cases(d, ops);
    for (usize i = 0; i < ARRAY_SIZE(bad_queues); i++) bad_queue_case(d, ops, &bad_queues[i]);
    overlap_case(d, ops, "ring-overlap-desc-avail", OV_DESC_AVAIL);
    overlap_case(d, ops, "ring-overlap-avail-used", OV_AVAIL_USED);
    overlap_case(d, ops, "ring-overlap-used-desc", OV_USED_DESC);
    queue_cases(d, ops);
    reset_case(d, ops);
    for (int qi = 0; qi < ops->queue_count; qi++) {
        if (!ops->queue_names[qi]) continue;
        for (usize v = 0; v < ARRAY_SIZE(variants); v++) chain_case(d, ops, qi, &variants[v]);
    }
    /* The same chains in the packed layout, where the device offers it (Swiftlet does by default). */
    if (d->offered & F_RING_PACKED) {
        use_packed = true;
        for (int qi = 0; qi < ops->queue_count; qi++) {
            if (!ops->queue_names[qi]) continue;
            for (usize v = 0; v < ARRAY_SIZE(variants); v++) chain_case(d, ops, qi, &variants[v]);
        }
        use_packed = false;
    }
    vdev_reset(d);
}
