/*
 * virtio-rng (virtio 1.2 §5.4) as a hostile driver. What Swiftlet does (Sources/SwiftletDevices/Rng/): a request is
 * one chain of device-writable buffers, which the device fills with random bytes, at most Rng.requestMaximum
 * (64 KiB) of them; a chain with no writable buffer is the guest's error and comes back with length 0; the used
 * length is what was written. The generic cases (cases.c) give it every malformed chain; these add the rng's own.
 */
#include "hostile.h"

#define RNG_REQUEST_MAXIMUM (64u << 10)

static void rng_prepare(struct dev_queues *dq, int qi) { (void)dq; (void)qi; }

/* 64 writable bytes, pre-filled with a pattern the device must overwrite. */
static void rng_shape(struct dev_queues *dq, int qi, struct shape *s)
{
    (void)dq; (void)qi;
    memset(s, 0, sizeof *s);
    u8 *buf = arena_alloc(64, 16);
    memset(buf, 0xa5, 64);
    s->body = (struct buf){ (u64)buf, 64, true };
}

static void rng_trigger(struct dev_queues *dq, int qi, struct shape *s) { (void)s; vq_notify(&dq->q[qi]); }

/* Served: all 64 bytes written, and not left as the pattern (the chance that 64 random bytes are all 0xa5 is nil). */
static bool rng_served(struct dev_queues *dq, int qi, struct shape *s, struct vring_used_elem *e, char *out, usize n)
{
    (void)dq; (void)qi;
    const volatile u8 *buf = (const volatile u8 *)s->body.addr;
    int untouched = 0;
    for (u32 i = 0; i < s->body.len; i++) untouched += buf[i] == 0xa5;
    snprintk(out, n, "len=%u,bytes_left_as_pattern=%d", e->len, untouched);
    return e->len == s->body.len && untouched < (int)s->body.len;
}

const struct device_ops rng_ops = {
    .name = "rng", .device_id = 4, .queue_count = 1, .features = F_INDIRECT_DESC,
    .queue_names = { "requestq" }, .receive = { false }, .primary = 0, .needs_queues = true,
    /* No configuration space: offset 0 reads as zero, and a write there must change nothing. */
    .config_size = 0, .config_readonly = 0,
    .prepare = rng_prepare, .shape = rng_shape, .trigger = rng_trigger, .served = rng_served, .no_effect = NULL,
};

/* One request of the given buffers; the used length in *len. False when nothing came back. */
static bool request(struct dev_queues *dq, const struct buf *bufs, int count, u32 *len)
{
    struct vring_used_elem e;
    if (!chain_submit(&dq->q[0], bufs, count, &e)) return false;
    *len = e.len;
    return true;
}

void rng_cases(struct vdev *d)
{
    struct dev_queues dq;
    const char *name = "rng.read-only-buffer";
    if (case_enabled(name)) {
        /* A buffer the device may only read: nothing to fill, a guest error, length 0, and the queue still serves. */
        u64 mark = arena_mark();
        bool up = dev_up(d, 1, &dq, F_INDIRECT_DESC, 16);
        u8 *buf = arena_alloc(64, 16);
        memset(buf, 0xa5, 64);
        struct buf b = { (u64)buf, 64, false };
        u32 len = 0xffffffffu;
        bool back = up && request(&dq, &b, 1, &len);
        bool untouched = true;
        for (int i = 0; i < 64; i++) untouched = untouched && buf[i] == 0xa5;
        report(name, "len_0,buffer_untouched", back && len == 0 && untouched && !(vstatus(d) & STATUS_NEEDS_RESET),
               "back=%d,len=%u,untouched=%d,status=0x%x", back, len, untouched, vstatus(d));
        arena_release(mark);
    }
    name = "rng.more-than-the-request-maximum";
    if (case_enabled(name)) {
        /* 1 MiB of writable buffers in one chain (16 of 64 KiB): the device fills at most 64 KiB of it. */
        u64 mark = arena_mark();
        bool up = dev_up(d, 1, &dq, F_INDIRECT_DESC, 32);
        struct buf bufs[16];
        for (int i = 0; i < 16; i++) bufs[i] = (struct buf){ (u64)arena_alloc(64 << 10, 4096), 64 << 10, true };
        u32 len = 0;
        bool back = up && request(&dq, bufs, 16, &len);
        report(name, "len_65536", back && len == RNG_REQUEST_MAXIMUM, "back=%d,len=%u", back, len);
        arena_release(mark);
    }
    name = "rng.readable-then-writable";
    if (case_enabled(name)) {
        /* A device-readable buffer before the writable one: the readable part is ignored, the writable one filled. */
        u64 mark = arena_mark();
        bool up = dev_up(d, 1, &dq, F_INDIRECT_DESC, 16);
        u8 *in = arena_alloc(32, 16), *out = arena_alloc(32, 16);
        memset(in, 0x11, 32);
        memset(out, 0xa5, 32);
        struct buf bufs[2] = { { (u64)in, 32, false }, { (u64)out, 32, true } };
        u32 len = 0;
        bool back = up && request(&dq, bufs, 2, &len);
        int changed_in = 0;
        for (int i = 0; i < 32; i++) changed_in += in[i] != 0x11;
        report(name, "len_32,readable_untouched", back && len == 32 && changed_in == 0, "back=%d,len=%u,readable_changed=%d",
               back, len, changed_in);
        arena_release(mark);
    }
}

void rng_final(struct vdev *d)
{
    const char *name = "rng.final-request";
    if (!case_enabled(name)) return;
    u64 mark = arena_mark();
    struct dev_queues dq;
    bool up = dev_up(d, 1, &dq, F_INDIRECT_DESC, 16);
    struct shape s;
    rng_shape(&dq, 0, &s);
    u32 len = 0;
    bool back = up && request(&dq, &s.body, 1, &len);
    struct vring_used_elem e = { 0, len };
    char why[96];
    bool served = back && rng_served(&dq, 0, &s, &e, why, sizeof why);
    report(name, "served", served, "%s", back ? why : "no_used_entry");
    arena_release(mark);
}
