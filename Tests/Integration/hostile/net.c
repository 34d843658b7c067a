/*
 * virtio-net (virtio 1.2 §5.1) as a hostile driver. What Swiftlet does (Sources/SwiftletDevices/Net/Net.swift): a
 * transmit chain is device-readable only and 26..65562 bytes (header included), written to the TAP with one writev,
 * always returned with used length 0; the TAP itself refuses what its virtio_net_hdr parser refuses (gso_size 0,
 * hdr_len or csum_start/csum_offset past the frame: drivers/net/tun.c, include/linux/virtio_net.h). Receive chains
 * must be device-writable; held chains stop at 1024 iovecs (IOV_MAX) and the next chain waits in the ring; a frame
 * that does not fit the held buffers is dropped.
 *
 * How the guest sees what reached the host: the harness gives the TAP 10.0.2.2/24, and every transmitted frame
 * worth checking is an ARP request "who has 10.0.2.2, tell 10.0.2.<tag>": the host kernel answers each one it
 * receives with an ARP reply to that tag, which comes back on the receive queue. A frame that must be dropped
 * carries one too, so a reply means it got through. The tag (16..215, rotating) tells replies apart; the final
 * exchange uses 10.0.2.15. The harness also compares the TAP's rx_packets with net_frames_expected.
 */
#include "hostile.h"

#define NET_F_CSUM (1ull << 0)
#define NET_F_HOST_TSO4 (1ull << 11)
#define NET_F_MRG_RXBUF (1ull << 15)
#define NET_HDR 12
#define ARP_FRAME (NET_HDR + 42)
#define RX_BUFFER 2048

u64 net_frames_expected;
static u8 mac[6];
static u32 next_tag;

static u32 new_tag(void) { return 16 + (next_tag++ % 200); }

/* virtio_net_hdr_v1 (all zero: no offloads) + Ethernet + ARP request, from 10.0.2.<tag> for 10.0.2.2. */
static void arp_request(u8 *f, u32 tag)
{
    memset(f, 0, ARP_FRAME);
    u8 *eth = f + NET_HDR;
    memset(eth, 0xff, 6);
    memcpy(eth + 6, mac, 6);
    eth[12] = 0x08; eth[13] = 0x06;
    u8 *arp = eth + 14;
    arp[0] = 0; arp[1] = 1;          /* Ethernet */
    arp[2] = 0x08; arp[3] = 0x00;    /* IPv4 */
    arp[4] = 6; arp[5] = 4;
    arp[6] = 0; arp[7] = 1;          /* request */
    memcpy(arp + 8, mac, 6);
    arp[14] = 10; arp[15] = 0; arp[16] = 2; arp[17] = (u8)tag;
    arp[24] = 10; arp[25] = 0; arp[26] = 2; arp[27] = 2;
}

static u8 *arp_frame(u32 tag, u32 size)
{
    u8 *f = arena_alloc(size, 16);
    arp_request(f, tag);
    return f;
}

/* Whether `len` bytes at f (a received frame with its header) are the host's ARP reply to 10.0.2.<tag>. */
static bool is_arp_reply(const u8 *f, u32 len, u32 tag)
{
    if (len < ARP_FRAME) return false;
    const u8 *eth = f + NET_HDR, *arp = eth + 14;
    return eth[12] == 0x08 && eth[13] == 0x06 && arp[7] == 2 && arp[14] == 10 && arp[15] == 0 && arp[16] == 2 &&
           arp[17] == 2 && arp[24] == 10 && arp[25] == 0 && arp[26] == 2 && arp[27] == (u8)tag;
}

/* ---- Queues ------------------------------------------------------------------------------------------------------- */

static void rx_fill(struct dev_queues *dq, int count)
{
    struct vq *rx = &dq->q[0];
    for (int i = 0; i < count; i++) vq_publish(rx, vq_desc(rx, (u64)arena_alloc(RX_BUFFER, 16), RX_BUFFER, VRING_DESC_F_WRITE));
    vq_notify(rx);
}

/* Consumes received frames (each buffer goes straight back to the ring) for up to `polls` polls, until the ARP
 * reply to `tag` arrives. Only for receive buffers rx_fill posted (one descriptor each). */
static bool rx_find_reply(struct dev_queues *dq, u32 tag, u64 polls)
{
    struct vq *rx = &dq->q[0];
    for (u64 i = 0; i < polls; i++) {
        struct vring_used_elem e;
        if (!vq_take_used(rx, &e)) { poll_step(dq->dev); continue; }
        u16 head = (u16)(e.id % rx->size);
        bool reply = rx->desc[head].len == RX_BUFFER && is_arp_reply((const u8 *)rx->desc[head].addr, e.len, tag);
        vq_publish(rx, head);
        vq_notify(rx);
        if (reply) return true;
    }
    return false;
}

/* Sends a chain of buffers on the transmit queue and waits for it to come back; false on timeout. */
static bool tx_send(struct dev_queues *dq, const struct buf *bufs, int n, struct vring_used_elem *e)
{
    return chain_submit(&dq->q[1], bufs, n, e);
}

/* A well-formed ARP request from `tag`: sent, counted, its chain back. */
static bool send_arp(struct dev_queues *dq, u32 tag)
{
    struct buf b = { (u64)arp_frame(tag, ARP_FRAME), ARP_FRAME, false };
    net_frames_expected++;
    return tx_send(dq, &b, 1, NULL);
}

/* ---- The generic cases' view ------------------------------------------------------------------------------------- */

static void net_prepare(struct dev_queues *dq, int qi)
{
    if (qi != 0) rx_fill(dq, 12);
}

static void net_shape(struct dev_queues *dq, int qi, struct shape *s)
{
    (void)dq;
    memset(s, 0, sizeof *s);
    s->tag = new_tag();
    if (qi == 0) s->body = (struct buf){ (u64)arena_alloc(RX_BUFFER, 16), RX_BUFFER, true };
    else s->body = (struct buf){ (u64)arp_frame(s->tag, ARP_FRAME), ARP_FRAME, false };
}

static void net_trigger(struct dev_queues *dq, int qi, struct shape *s)
{
    /* For the receive queue: first something to receive (the host's reply to this ARP request), then the notify;
     * in that order, because a corrupt receive ring stops the whole device, and the request must be out by then. */
    if (qi == 0) send_arp(dq, s->tag);
    vq_notify(&dq->q[qi]);
}

static bool net_served(struct dev_queues *dq, int qi, struct shape *s, struct vring_used_elem *e, char *out, usize n)
{
    if (qi == 0) {
        snprintk(out, n, "frame_len=%u", e->len);
        return e->len >= NET_HDR + 14 && e->len <= RX_BUFFER;
    }
    net_frames_expected++;
    bool reply = rx_find_reply(dq, s->tag, wait_polls);
    snprintk(out, n, "tx_len=%u,arp_reply=%d", e->len, reply);
    return e->len == 0 && reply;
}

static bool net_no_effect(struct dev_queues *dq, int qi, struct shape *s, char *out, usize n)
{
    (void)qi;
    bool reply = rx_find_reply(dq, s->tag, quiet_polls);
    snprintk(out, n, "arp_reply=%d", reply);
    return !reply;
}

const struct device_ops net_ops = {
    .name = "net", .device_id = 1, .queue_count = 2, .features = F_INDIRECT_DESC,
    .queue_names = { "receiveq", "transmitq" }, .receive = { true, false }, .primary = 1, .needs_queues = true,
    .config_size = 12, .config_readonly = 0,
    .prepare = net_prepare, .shape = net_shape, .trigger = net_trigger, .served = net_served, .no_effect = net_no_effect,
    .sent_counter = &net_frames_expected,
};

/* A table of `count` device-writable buffers of `size` bytes, consecutive from `memory`, chained with NEXT. */
static void writable_table(struct vring_desc *t, u8 *memory, int count, u32 size)
{
    for (int i = 0; i < count; i++) {
        u16 flags = VRING_DESC_F_WRITE | (i + 1 < count ? VRING_DESC_F_NEXT : 0);
        t[i] = (struct vring_desc){ (u64)(memory + (u64)size * i), size, flags, (u16)(i + 1) };
    }
}

/* ---- Device cases -------------------------------------------------------------------------------------------------- */

static bool up(struct vdev *d, struct dev_queues *dq, u64 features, u16 size, int rx_buffers)
{
    if (!dev_up(d, 2, dq, features, size)) return false;
    if (rx_buffers) rx_fill(dq, rx_buffers);
    return true;
}

/* A transmitted chain the device must drop: back with length 0, no reply to its ARP request, and a good frame
 * afterwards still goes through. */
static void dropped_case(struct vdev *d, const char *what, u64 features, const struct buf *bufs, int n, u32 tag)
{
    char name[120];
    snprintk(name, sizeof name, "net.%s", what);
    if (!case_enabled(name)) return;
    const char *expect = "dropped(len_0,no_reply),then_serves";
    struct dev_queues dq;
    u64 mark = arena_mark();
    if (!up(d, &dq, features, 256, 16)) { report(name, expect, false, "bring-up_refused,status=0x%x", vstatus(d)); goto out; }
    struct vring_used_elem e;
    if (!tx_send(&dq, bufs, n, &e)) { report(name, expect, false, "no_used_entry,status=0x%x", vstatus(d)); goto out; }
    bool reply = tag && rx_find_reply(&dq, tag, quiet_polls);
    u32 good = new_tag();
    bool served = send_arp(&dq, good) && rx_find_reply(&dq, good, wait_polls);
    report(name, expect, e.len == 0 && !reply && served && !(vstatus(d) & STATUS_NEEDS_RESET),
           "len=%u,reply=%d,then_served=%d,status=0x%x", e.len, reply, served, vstatus(d));
out:
    arena_release(mark);
}

/* A transmitted chain the device must deliver (an odd but legal layout): the host's reply comes back. */
static void delivered_case(struct vdev *d, const char *what, const struct buf *bufs, int n, u32 tag)
{
    char name[120];
    snprintk(name, sizeof name, "net.%s", what);
    if (!case_enabled(name)) return;
    const char *expect = "delivered(arp_reply)";
    struct dev_queues dq;
    u64 mark = arena_mark();
    if (!up(d, &dq, F_INDIRECT_DESC, 256, 16)) { report(name, expect, false, "bring-up_refused,status=0x%x", vstatus(d)); goto out; }
    struct vring_used_elem e;
    net_frames_expected++;
    if (!tx_send(&dq, bufs, n, &e)) { report(name, expect, false, "no_used_entry,status=0x%x", vstatus(d)); goto out; }
    bool reply = rx_find_reply(&dq, tag, wait_polls);
    report(name, expect, e.len == 0 && reply, "len=%u,reply=%d", e.len, reply);
out:
    arena_release(mark);
}

/* An ARP request frame of `size` bytes (padded) whose virtio_net_hdr asks for offloads (§5.1.6). */
static u8 *offload_frame(u32 size, u8 flags, u8 gso_type, u16 hdr_len, u16 gso_size, u16 csum_start, u16 csum_offset, u32 tag)
{
    u8 *f = arp_frame(tag, size);
    f[0] = flags;
    f[1] = gso_type;
    *(u16 *)(f + 2) = hdr_len;
    *(u16 *)(f + 4) = gso_size;
    *(u16 *)(f + 6) = csum_start;
    *(u16 *)(f + 8) = csum_offset;
    return f;
}

static void tx_cases(struct vdev *d)
{
    u64 mark = arena_mark();
    u32 tag;
    struct buf b[17];

    tag = new_tag();
    b[0] = (struct buf){ (u64)arp_frame(tag, ARP_FRAME), NET_HDR, false };
    dropped_case(d, "tx-header-only", F_INDIRECT_DESC, b, 1, 0);
    b[0].len = NET_HDR + 10;
    dropped_case(d, "tx-shorter-than-ethernet-header", F_INDIRECT_DESC, b, 1, 0);

    /* Offloads the TAP's header parser refuses; the device passes them on (Swiftlet does not parse the header). */
    u64 tso = F_INDIRECT_DESC | NET_F_CSUM | NET_F_HOST_TSO4;
    enum { NEEDS_CSUM = 1, GSO_TCPV4 = 1 };
    tag = new_tag();
    b[0] = (struct buf){ (u64)offload_frame(600, NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16, tag), 600, false };
    dropped_case(d, "tx-gso-tcpv4-gso-size-0", tso, b, 1, tag);
    tag = new_tag();
    b[0] = (struct buf){ (u64)offload_frame(600, 0, GSO_TCPV4, 60000, 1448, 0, 0, tag), 600, false };
    dropped_case(d, "tx-gso-hdr-len-past-the-frame", tso, b, 1, tag);
    tag = new_tag();
    b[0] = (struct buf){ (u64)offload_frame(600, NEEDS_CSUM, 0, 0, 0, 5000, 16, tag), 600, false };
    dropped_case(d, "tx-csum-start-past-the-frame", tso, b, 1, tag);
    tag = new_tag();
    b[0] = (struct buf){ (u64)offload_frame(600, NEEDS_CSUM, 0, 0, 0, 20, 60000, tag), 600, false };
    dropped_case(d, "tx-csum-offset-past-the-frame", tso, b, 1, tag);

    /* 1 MiB: the ARP request, then 16 buffers of 64 KiB (the same memory, never read). */
    tag = new_tag();
    b[0] = (struct buf){ (u64)arp_frame(tag, ARP_FRAME), ARP_FRAME, false };
    for (int i = 1; i <= 16; i++) b[i] = (struct buf){ scratch_base, 64u << 10, false };
    dropped_case(d, "tx-frame-1MiB", F_INDIRECT_DESC, b, 17, tag);
    /* 65563 bytes: one more than the largest frame (12 + 65550 + 1). */
    tag = new_tag();
    b[0] = (struct buf){ (u64)arp_frame(tag, 65563), 65563, false };
    dropped_case(d, "tx-frame-one-byte-over-the-maximum", F_INDIRECT_DESC, b, 1, tag);
    /* A device-writable buffer in a transmit chain. */
    tag = new_tag();
    b[0] = (struct buf){ (u64)arp_frame(tag, ARP_FRAME), ARP_FRAME, false };
    b[1] = (struct buf){ (u64)arena_alloc(64, 16), 64, true };
    dropped_case(d, "tx-with-a-device-writable-buffer", F_INDIRECT_DESC, b, 2, tag);

    /* Legal edges: the largest frame, and a frame in 256 descriptors (a whole queue: one writev of 256 iovecs). */
    tag = new_tag();
    b[0] = (struct buf){ (u64)arp_frame(tag, 65562), 65562, false };
    delivered_case(d, "tx-largest-frame-65562", b, 1, tag);
    if (case_enabled("net.tx-frame-in-256-descriptors")) {
        tag = new_tag();
        u8 *f = arp_frame(tag, 268);
        static struct buf many[256];
        for (int i = 0; i < 255; i++) many[i] = (struct buf){ (u64)f + (u64)i, 1, false };
        many[255] = (struct buf){ (u64)f + 255, 13, false };
        delivered_case(d, "tx-frame-in-256-descriptors", many, 256, tag);
    }
    arena_release(mark);
}

/* Receive chains that are malformed for a receive queue: back with length 0 at the notify. */
static void rx_malformed_case(struct vdev *d, const char *what, int entries, bool readable)
{
    char name[120];
    snprintk(name, sizeof name, "net.%s", what);
    if (!case_enabled(name)) return;
    const char *expect = "used_len_0,then_serves";
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!up(d, &dq, F_INDIRECT_DESC, 256, 0)) { report(name, expect, false, "bring-up_refused,status=0x%x", vstatus(d)); goto out; }
    struct vq *rx = &dq.q[0];
    u16 head;
    if (entries) {
        /* One chain of `entries` one-byte buffers in an indirect table (a 256-entry queue holds no longer direct
         * chain): more than a chain may have, refused before the table is read. */
        struct vring_desc *t = arena_alloc(16ull * entries, 16);
        writable_table(t, arena_alloc((u64)entries, 16), entries, 1);
        head = vq_desc(rx, (u64)t, 16u * (u32)entries, VRING_DESC_F_INDIRECT);
    } else {
        head = vq_desc(rx, (u64)arena_alloc(RX_BUFFER, 16), RX_BUFFER, readable ? 0 : VRING_DESC_F_WRITE);
    }
    vq_publish(rx, head);
    vq_notify(rx);
    struct vring_used_elem e;
    if (!vq_wait_used(rx, &e)) { report(name, expect, false, "no_used_entry(held?),status=0x%x", vstatus(d)); goto out; }
    rx_fill(&dq, 8);
    u32 tag = new_tag();
    bool served = send_arp(&dq, tag) && rx_find_reply(&dq, tag, wait_polls);
    report(name, expect, e.id == head && e.len == 0 && served && !(vstatus(d) & STATUS_NEEDS_RESET),
           "id=%u,len=%u,then_served=%d,status=0x%x", e.id, e.len, served, vstatus(d));
out:
    arena_release(mark);
}

/* First one receive chain of 1100 descriptors (an indirect table: the issue-14 spin), then five chains of 250
 * four-byte buffers each (MRG_RXBUF): the device returns the first with length 0, holds four of the others (1000
 * iovecs, under IOV_MAX) and leaves the fifth in the ring; frames still arrive, spread over the tiny buffers, and the
 * device thread does not spin (the harness measures its CPU time in the hold window, while it sends frames here). */
static void rx_iov_max_case(struct vdev *d)
{
    const char *name = "net.rx-chains-over-iov-max";
    if (!case_enabled(name)) return;
    const char *expect = "1100-chain_len_0,frames_delivered_into_4-byte_buffers,num_buffers_1,no_spin";
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!up(d, &dq, F_INDIRECT_DESC | NET_F_MRG_RXBUF, 256, 0)) {
        report(name, expect, false, "bring-up_refused,status=0x%x", vstatus(d));
        goto out;
    }
    struct vq *rx = &dq.q[0];
    struct vring_desc *long_table = arena_alloc(16ull * 1100, 16);
    writable_table(long_table, arena_alloc(1100, 16), 1100, 1);
    u16 long_head = vq_desc(rx, (u64)long_table, 16u * 1100, VRING_DESC_F_INDIRECT);
    vq_publish(rx, long_head);
    enum { CHAINS = 5, PER_CHAIN = 250 };
    u8 *memory[CHAINS];
    u16 heads[CHAINS];
    for (int c = 0; c < CHAINS; c++) {
        struct vring_desc *t = arena_alloc(16ull * PER_CHAIN, 16);
        memory[c] = arena_alloc(4ull * PER_CHAIN, 16);
        writable_table(t, memory[c], PER_CHAIN, 4);
        heads[c] = vq_desc(rx, (u64)t, 16u * PER_CHAIN, VRING_DESC_F_INDIRECT);
        vq_publish(rx, heads[c]);
    }
    vq_notify(rx);
    bool held = host_hold("net-rx-iov-max", 512);
    u32 tag = new_tag();
    send_arp(&dq, tag);
    /* Frames arrive (the host's reply, and the harness's frames during the hold); each chain's buffers are one array,
     * so a frame is contiguous. A used chain goes straight back to the ring, until the reply to our tag. */
    int frames = 0, zero = 0, replies = 0, bad_count = 0;
    bool long_back = false;
    struct vring_used_elem e;
    while (frames < 64 && !replies && vq_wait_used(rx, &e)) {
        if (e.id == long_head && e.len == 0 && !long_back) { long_back = true; continue; }
        frames++;
        int c = -1;
        for (int i = 0; i < CHAINS; i++) if (heads[i] == e.id) c = i;
        if (e.len == 0 || c < 0) { zero++; continue; }
        if (*(u16 *)(memory[c] + 10) != 1) bad_count++;
        if (is_arp_reply(memory[c], e.len, tag)) replies++;
        vq_publish(rx, heads[c]);
        vq_notify(rx);
    }
    report(name, expect, long_back && frames > 0 && zero == 0 && bad_count == 0 && replies == 1 &&
           !(vstatus(d) & STATUS_NEEDS_RESET), "1100-chain_back_len_0=%d,frames=%d,len0=%d,num_buffers_wrong=%d,"
           "arp_reply=%d,host_hold=%d,status=0x%x", long_back, frames, zero, bad_count, replies, held, vstatus(d));
out:
    vdev_reset(d);
    arena_release(mark);
}

/* A receive buffer of 4 bytes (less than the 12-byte header) without MRG_RXBUF: the device holds it and frames that
 * do not fit are dropped; it is never used, and the device neither spins nor needs a reset. */
static void rx_tiny_case(struct vdev *d)
{
    const char *name = "net.rx-buffer-smaller-than-header";
    if (!case_enabled(name)) return;
    const char *expect = "held,frames_dropped,no_used_entry";
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!up(d, &dq, F_INDIRECT_DESC, 16, 0)) { report(name, expect, false, "bring-up_refused"); goto out; }
    struct vq *rx = &dq.q[0];
    vq_publish(rx, vq_desc(rx, (u64)arena_alloc(4, 16), 4, VRING_DESC_F_WRITE));
    vq_notify(rx);
    for (int i = 0; i < 3; i++) send_arp(&dq, new_tag());
    bool quiet = vq_quiet(rx);
    report(name, expect, quiet && !(vstatus(d) & STATUS_NEEDS_RESET), "no_used_entry=%d,status=0x%x", quiet, vstatus(d));
out:
    vdev_reset(d);
    arena_release(mark);
}

/* With MRG_RXBUF a frame larger than one receive chain goes on in the next ones (num_buffers, §5.1.6.4): chains of 40
 * bytes take the 54-byte ARP reply as 40 + 14, with num_buffers 2 in the first. Other frames (the host's IPv6
 * chatter) may come too: each frame is put together from its num_buffers chains, which go back to the ring. */
static void rx_merge_case(struct vdev *d)
{
    const char *name = "net.rx-frame-across-two-chains";
    if (!case_enabled(name)) return;
    const char *expect = "arp_reply_in_2_chains(40+14),num_buffers_2";
    enum { CHAINS = 16, SIZE = 40 };
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!up(d, &dq, F_INDIRECT_DESC | NET_F_MRG_RXBUF, CHAINS, 0)) { report(name, expect, false, "bring-up_refused"); goto out; }
    struct vq *rx = &dq.q[0];
    u8 *memory = arena_alloc(SIZE * CHAINS, 16);
    for (int i = 0; i < CHAINS; i++) vq_publish(rx, vq_desc(rx, (u64)(memory + SIZE * i), SIZE, VRING_DESC_F_WRITE));
    vq_notify(rx);
    u32 tag = new_tag();
    send_arp(&dq, tag);
    static u8 frame[RX_BUFFER];
    bool found = false;
    u32 got_buffers = 0, lens[2] = { 0, 0 }, frames = 0;
    struct vring_used_elem e;
    for (int used = 0; used < 64 && !found && vq_wait_used(rx, &e);) {
        /* The first chain of a frame: its header says how many chains the frame has. */
        u32 len = 0, first = e.len;
        u16 buffers = *(u16 *)(memory + SIZE * (e.id % CHAINS) + 10);
        for (u16 k = 0; k < buffers; k++) {
            if (k && !vq_wait_used(rx, &e)) break;
            used++;
            u32 n = e.len <= SIZE ? e.len : SIZE;
            if (len + n <= sizeof frame) memcpy(frame + len, memory + SIZE * (e.id % CHAINS), n);
            len += n;
            vq_publish(rx, (u16)(e.id % CHAINS));
        }
        vq_notify(rx);
        frames++;
        if (is_arp_reply(frame, len, tag)) {
            found = true;
            got_buffers = buffers;
            lens[0] = first;
            lens[1] = len - first;
        }
    }
    report(name, expect, found && got_buffers == 2 && lens[0] == SIZE && lens[1] == ARP_FRAME - SIZE,
           "reply=%d,num_buffers=%u,lens=%u+%u,frames_seen=%u", found, got_buffers, lens[0], lens[1], frames);
out:
    vdev_reset(d);
    arena_release(mark);
}

/* Receive buffers the device holds when the driver resets it: afterwards nothing is written into them. */
static void rx_reset_case(struct vdev *d)
{
    const char *name = "net.reset-with-held-receive-buffers";
    if (!case_enabled(name)) return;
    const char *expect = "old_buffers_untouched,new_ones_serve";
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!up(d, &dq, F_INDIRECT_DESC, 16, 0)) { report(name, expect, false, "bring-up_refused"); goto out; }
    struct vq *rx = &dq.q[0];
    u8 *old[4];
    for (int i = 0; i < 4; i++) {
        old[i] = arena_alloc(RX_BUFFER, 16);
        memset(old[i], 0xa5, RX_BUFFER);
        vq_publish(rx, vq_desc(rx, (u64)old[i], RX_BUFFER, VRING_DESC_F_WRITE));
    }
    vq_notify(rx);
    for (u64 i = 0; i < quiet_polls; i++) poll_step(d); /* let the device take them */
    vdev_reset(d);
    u16 used_at_reset = rx->used->idx;
    struct dev_queues again;
    bool served = up(d, &again, F_INDIRECT_DESC, 16, 8);
    for (int i = 0; served && i < 3; i++) {
        u32 tag = new_tag();
        served = send_arp(&again, tag) && rx_find_reply(&again, tag, wait_polls);
    }
    bool untouched = rx->used->idx == used_at_reset;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < RX_BUFFER; j++) untouched = untouched && old[i][j] == 0xa5;
    report(name, expect, untouched && served, "old_untouched=%d,old_used_idx=%u,new_served=%d", untouched, used_at_reset, served);
out:
    vdev_reset(d);
    arena_release(mark);
}

void net_cases(struct vdev *d)
{
    memset(mac, 0, sizeof mac);
    for (int i = 0; i < 6; i++) mac[i] = mmio_read8(d->base + VIRTIO_MMIO_CONFIG + i);
    info("net mac=%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    tx_cases(d);
    rx_malformed_case(d, "rx-chain-of-1100-descriptors", 1100, false);
    rx_malformed_case(d, "rx-device-readable-buffer", 0, true);
    rx_iov_max_case(d);
    rx_merge_case(d);
    rx_tiny_case(d);
    rx_reset_case(d);
    vdev_reset(d);
}

void net_final(struct vdev *d)
{
    const char *name = "net.final-arp-exchange";
    if (!case_enabled(name)) return;
    u64 mark = arena_mark();
    struct dev_queues dq;
    bool ok = up(d, &dq, F_INDIRECT_DESC, 64, 32);
    bool sent = ok && send_arp(&dq, 15);
    bool reply = sent && rx_find_reply(&dq, 15, wait_polls);
    report(name, "arp_request_out,reply_in", reply, "sent=%d,reply=%d,status=0x%x", sent, reply, vstatus(d));
    info("expect-host net_tx_frames=%llu", net_frames_expected);
    vdev_reset(d);
    arena_release(mark);
}
