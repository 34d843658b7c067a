/*
 * virtio-vsock (virtio 1.2 §5.10) as a hostile driver. What Swiftlet does (Sources/SwiftletDevices/Vsock/): a
 * transmit chain is device-readable only and starts with a 44-byte header; a spoofed source CID or a short header is
 * dropped; a destination that is not the host (CID 2), a type that is not STREAM, an unknown op, a length beyond the
 * buffer or over 64 KiB get an RST for those ports, and end a connection that has them (its host socket closes);
 * a packet for no connection gets an RST (but an RST gets none). A receive buffer of exactly 44 bytes cannot carry
 * data: it goes back with length 0 and the data waits for the next proper buffer. No data goes to the guest beyond
 * the credit it advertised.
 *
 * The host side (hostile.host=1): the harness runs an echo listener for host ports 5000-5005 (Swiftlet: Unix
 * sockets SOCKET_<port>; QEMU's vhost-vsock: AF_VSOCK in L1). Port 1 has no listener: a REQUEST there is refused
 * with an RST, which is how the generic cases see a packet served. Guest ports are unique per packet (the tag), so
 * an answer is recognised by its destination port.
 */
#include "hostile.h"

#define VSOCK_F_STREAM (1ull << 0)
enum { OP_REQUEST = 1, OP_RESPONSE = 2, OP_RST = 3, OP_SHUTDOWN = 4, OP_RW = 5, OP_CREDIT_UPDATE = 6, OP_CREDIT_REQUEST = 7 };
enum { TYPE_STREAM = 1 };
#define HOST_CID 2
#define UNBOUND_PORT 1
#define RX_BUFFER 4096
#define HDR 44

struct __attribute__((packed)) vsock_hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
};
_Static_assert(sizeof(struct vsock_hdr) == HDR, "virtio_vsock_hdr is 44 bytes");

static u64 guest_cid;
static u32 next_port = 20000;

static u32 new_port(void) { return next_port++; }

static struct vsock_hdr *packet(u16 op, u32 src_port, u32 dst_port, u32 len, u32 payload)
{
    struct vsock_hdr *h = arena_alloc(HDR + payload, 16);
    *h = (struct vsock_hdr){ guest_cid, HOST_CID, src_port, dst_port, len, TYPE_STREAM, op, 0, 65536, 0 };
    return h;
}

/* ---- Queues ------------------------------------------------------------------------------------------------------- */

static void rx_post(struct dev_queues *dq, u32 size)
{
    struct vq *rx = &dq->q[0];
    vq_publish(rx, vq_desc(rx, (u64)arena_alloc(size, 16), size, VRING_DESC_F_WRITE));
}

static void rx_fill(struct dev_queues *dq, int count)
{
    for (int i = 0; i < count; i++) rx_post(dq, RX_BUFFER);
    vq_notify(&dq->q[0]);
}

/* Consumes received packets for up to `polls` polls until one for guest port `port` arrives (copied to out, its
 * payload to data when given). Buffers go back to the ring (only one-descriptor buffers of RX_BUFFER bytes). */
static bool rx_wait(struct dev_queues *dq, u32 port, u64 polls, struct vsock_hdr *out, u8 *data, u32 data_size)
{
    struct vq *rx = &dq->q[0];
    for (u64 i = 0; i < polls; i++) {
        struct vring_used_elem e;
        if (!vq_take_used(rx, &e)) { poll_step(dq->dev); continue; }
        u16 head = (u16)(e.id % rx->size);
        const struct vsock_hdr *h = (const struct vsock_hdr *)rx->desc[head].addr;
        bool mine = e.len >= HDR && h->dst_port == port;
        if (mine && out) *out = *h;
        if (mine && data && e.len > HDR) memcpy(data, (const u8 *)h + HDR, e.len - HDR < data_size ? e.len - HDR : data_size);
        if (rx->desc[head].len == RX_BUFFER) { vq_publish(rx, head); vq_notify(rx); }
        if (mine) return true;
    }
    return false;
}

/* Sends a chain on the transmit queue and waits for it to come back. */
static bool tx_send(struct dev_queues *dq, const struct buf *bufs, int n)
{
    return chain_submit(&dq->q[1], bufs, n, NULL);
}

/* Header and payload in one buffer. */
static bool tx_packet(struct dev_queues *dq, struct vsock_hdr *h, u32 payload)
{
    struct buf b = { (u64)h, HDR + payload, false };
    return tx_send(dq, &b, 1);
}

/* ---- The generic cases' view ------------------------------------------------------------------------------------- */

/* The guest's CID (struct virtio_vsock_config): every packet's source; one with another is dropped as spoofed. */
static void learn_cid(struct vdev *d)
{
    guest_cid = mmio_read32(d->base + VIRTIO_MMIO_CONFIG) | (u64)mmio_read32(d->base + VIRTIO_MMIO_CONFIG + 4) << 32;
}

static void vsock_prepare(struct dev_queues *dq, int qi)
{
    learn_cid(dq->dev);
    if (qi != 0) rx_fill(dq, 12);
}

static void vsock_shape(struct dev_queues *dq, int qi, struct shape *s)
{
    learn_cid(dq->dev);
    memset(s, 0, sizeof *s);
    s->tag = new_port();
    if (qi == 0) s->body = (struct buf){ (u64)arena_alloc(RX_BUFFER, 16), RX_BUFFER, true };
    else s->body = (struct buf){ (u64)packet(OP_REQUEST, s->tag, UNBOUND_PORT, 0, 0), HDR, false };
}

static void vsock_trigger(struct dev_queues *dq, int qi, struct shape *s)
{
    vq_notify(&dq->q[qi]);
    if (qi == 0) tx_packet(dq, packet(OP_REQUEST, s->tag, UNBOUND_PORT, 0, 0), 0); /* refused: an RST to deliver */
}

static bool vsock_served(struct dev_queues *dq, int qi, struct shape *s, struct vring_used_elem *e, char *out, usize n)
{
    if (qi == 0) {
        const struct vsock_hdr *h = (const struct vsock_hdr *)s->body.addr;
        snprintk(out, n, "len=%u,op=%u,dst_port=%u", e->len, h->op, h->dst_port);
        return e->len == HDR && h->op == OP_RST && h->dst_port == s->tag;
    }
    struct vsock_hdr h;
    bool answered = rx_wait(dq, s->tag, wait_polls, &h, NULL, 0);
    snprintk(out, n, "tx_len=%u,answer_op=%u", e->len, answered ? h.op : 0);
    return e->len == 0 && answered && h.op == OP_RST;
}

static bool vsock_no_effect(struct dev_queues *dq, int qi, struct shape *s, char *out, usize n)
{
    (void)qi;
    struct vsock_hdr h;
    bool answered = rx_wait(dq, s->tag, quiet_polls, &h, NULL, 0);
    snprintk(out, n, "answer_op=%u", answered ? h.op : 0);
    return !answered;
}

const struct device_ops vsock_ops = {
    .name = "vsock", .device_id = 19, .queue_count = 3, .features = F_INDIRECT_DESC | VSOCK_F_STREAM,
    .queue_names = { "rx", "tx", NULL }, .receive = { true, false, false }, .primary = 1, .needs_queues = true,
    .config_size = 8, .config_readonly = 0,
    .prepare = vsock_prepare, .shape = vsock_shape, .trigger = vsock_trigger, .served = vsock_served,
    .no_effect = vsock_no_effect,
};

/* ---- Device cases -------------------------------------------------------------------------------------------------- */

static bool up(struct vdev *d, struct dev_queues *dq, int rx_buffers)
{
    if (!dev_up(d, 3, dq, F_INDIRECT_DESC | VSOCK_F_STREAM, 64)) return false;
    if (rx_buffers) rx_fill(dq, rx_buffers);
    return true;
}

enum answer { ANSWER_RST, ANSWER_NONE };

/* Sends bufs (a packet from guest port `port`) and checks the answer: an RST for that port, or nothing. */
static void packet_case(struct vdev *d, const char *what, enum answer want, const struct buf *bufs, int n, u32 port)
{
    char name[120];
    snprintk(name, sizeof name, "vsock.%s", what);
    if (!case_enabled(name)) return;
    const char *expect = want == ANSWER_RST ? "rst_for_its_ports" : "dropped(no_answer)";
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!up(d, &dq, 16)) { report(name, expect, false, "bring-up_refused,status=0x%x", vstatus(d)); goto out; }
    if (!tx_send(&dq, bufs, n)) { report(name, expect, false, "no_used_entry,status=0x%x", vstatus(d)); goto out; }
    struct vsock_hdr h;
    bool answered = rx_wait(&dq, port, want == ANSWER_RST ? wait_polls : quiet_polls, &h, NULL, 0);
    bool ok = want == ANSWER_RST ? answered && h.op == OP_RST && h.src_cid == HOST_CID && h.dst_cid == guest_cid
                                 : !answered;
    report(name, expect, ok && !(vstatus(d) & STATUS_NEEDS_RESET), "answer_op=%u,status=0x%x", answered ? h.op : 0, vstatus(d));
out:
    arena_release(mark);
}

/* One packet with a header field changed. */
static void header_case(struct vdev *d, const char *what, enum answer want, u16 op, u32 len, u32 payload,
                        u16 type, u64 src_cid, u64 dst_cid)
{
    u64 mark = arena_mark();
    u32 port = new_port();
    struct vsock_hdr *h = packet(op, port, 5999, len, payload);
    h->type = type;
    h->src_cid = src_cid;
    h->dst_cid = dst_cid;
    struct buf b = { (u64)h, HDR + payload, false };
    packet_case(d, what, want, &b, 1, port);
    arena_release(mark);
}

static void packet_cases(struct vdev *d)
{
    u64 g = guest_cid, host = HOST_CID;
    header_case(d, "tx-rw-len-ffffffff", ANSWER_RST, OP_RW, 0xffffffffu, 16, TYPE_STREAM, g, host);
    header_case(d, "tx-rw-len-beyond-its-buffer", ANSWER_RST, OP_RW, 100, 10, TYPE_STREAM, g, host);
    header_case(d, "tx-rw-payload-over-64KiB", ANSWER_RST, OP_RW, 65537, 65537, TYPE_STREAM, g, host);
    header_case(d, "tx-unknown-op-99", ANSWER_RST, 99, 0, 0, TYPE_STREAM, g, host);
    header_case(d, "tx-op-0-invalid", ANSWER_RST, 0, 0, 0, TYPE_STREAM, g, host);
    header_case(d, "tx-type-2-seqpacket", ANSWER_RST, OP_REQUEST, 0, 0, 2, g, host);
    header_case(d, "tx-type-ffff", ANSWER_RST, OP_REQUEST, 0, 0, 0xffff, g, host);
    header_case(d, "tx-dst-cid-5-not-the-host", ANSWER_RST, OP_REQUEST, 0, 0, TYPE_STREAM, g, 5);
    header_case(d, "tx-dst-cid-the-guest-itself", ANSWER_RST, OP_REQUEST, 0, 0, TYPE_STREAM, g, g);
    header_case(d, "tx-dst-cid-2-plus-2^32", ANSWER_RST, OP_REQUEST, 0, 0, TYPE_STREAM, g, host | (1ull << 32));
    header_case(d, "tx-src-cid-spoofed-7", ANSWER_NONE, OP_REQUEST, 0, 0, TYPE_STREAM, 7, host);
    header_case(d, "tx-rw-without-connection", ANSWER_RST, OP_RW, 4, 4, TYPE_STREAM, g, host);
    header_case(d, "tx-shutdown-without-connection", ANSWER_RST, OP_SHUTDOWN, 0, 0, TYPE_STREAM, g, host);
    header_case(d, "tx-credit-request-without-connection", ANSWER_RST, OP_CREDIT_REQUEST, 0, 0, TYPE_STREAM, g, host);
    header_case(d, "tx-response-without-request", ANSWER_RST, OP_RESPONSE, 0, 0, TYPE_STREAM, g, host);
    header_case(d, "tx-rst-without-connection", ANSWER_NONE, OP_RST, 0, 0, TYPE_STREAM, g, host);
    header_case(d, "tx-request-to-a-port-nobody-listens-on", ANSWER_RST, OP_REQUEST, 0, 0, TYPE_STREAM, g, host);

    u64 mark = arena_mark();
    u32 port = new_port();
    struct vsock_hdr *h = packet(OP_REQUEST, port, UNBOUND_PORT, 0, 0);
    struct buf shortened = { (u64)h, 20, false };
    packet_case(d, "tx-header-20-bytes", ANSWER_NONE, &shortened, 1, port);
    port = new_port();
    h = packet(OP_REQUEST, port, UNBOUND_PORT, 0, 0);
    struct buf split[3] = { { (u64)h, 20, false }, { (u64)h + 20, 20, false }, { (u64)h + 40, 4, false } };
    packet_case(d, "tx-header-split-across-3-descriptors", ANSWER_RST, split, 3, port);
    port = new_port();
    h = packet(OP_REQUEST, port, UNBOUND_PORT, 0, 0);
    struct buf writable[2] = { { (u64)h, HDR, false }, { (u64)arena_alloc(64, 16), 64, true } };
    packet_case(d, "tx-with-a-device-writable-buffer", ANSWER_NONE, writable, 2, port);
    arena_release(mark);
}

/* A receive chain whose header space is three descriptors (20 + 20 + 4 bytes), then room for data: the device
 * scatters the 44-byte header across them (ChainWriter). */
static void rx_split_header_case(struct vdev *d)
{
    const char *name = "vsock.rx-header-split-across-3-descriptors";
    if (!case_enabled(name)) return;
    const char *expect = "rst_header_gathered(len_44)";
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!up(d, &dq, 0)) { report(name, expect, false, "bring-up_refused"); goto out; }
    struct vq *rx = &dq.q[0];
    u8 *buffer = arena_alloc(128, 16);
    memset(buffer, 0xee, 128);
    u16 a = vq_desc(rx, (u64)buffer, 20, VRING_DESC_F_WRITE), b = vq_desc(rx, (u64)buffer + 20, 20, VRING_DESC_F_WRITE);
    u16 c = vq_desc(rx, (u64)buffer + 40, 4, VRING_DESC_F_WRITE), rest = vq_desc(rx, (u64)buffer + 44, 64, VRING_DESC_F_WRITE);
    vq_link(rx, a, b);
    vq_link(rx, b, c);
    vq_link(rx, c, rest);
    vq_publish(rx, a);
    vq_notify(rx);
    u32 port = new_port();
    tx_packet(&dq, packet(OP_REQUEST, port, UNBOUND_PORT, 0, 0), 0);
    struct vring_used_elem e;
    bool used = vq_wait_used(rx, &e);
    const struct vsock_hdr *h = (const struct vsock_hdr *)buffer;
    bool ok = used && e.id == a && e.len == HDR && h->op == OP_RST && h->dst_port == port && h->src_port == UNBOUND_PORT &&
              h->src_cid == HOST_CID && h->dst_cid == guest_cid && buffer[44] == 0xee;
    report(name, expect, ok, "used=%d,len=%u,op=%u,dst_port=%u(want_%u),after_header=0x%x", used, used ? e.len : 0, h->op,
           h->dst_port, port, buffer[44]);
out:
    vdev_reset(d);
    arena_release(mark);
}

/* A connection to host port `host_port` (the harness's echo listener): REQUEST, then the RESPONSE. */
static bool connect(struct dev_queues *dq, u32 port, u32 host_port, u32 buf_alloc)
{
    struct vsock_hdr *h = packet(OP_REQUEST, port, host_port, 0, 0);
    h->buf_alloc = buf_alloc;
    struct vsock_hdr answer;
    return tx_packet(dq, h, 0) && rx_wait(dq, port, wait_polls, &answer, NULL, 0) && answer.op == OP_RESPONSE;
}

/* Every packet carries the sender's credit (buf_alloc, fwd_cnt): what the device may send it (§5.10.6.3). */
static bool send_rw(struct dev_queues *dq, u32 port, u32 host_port, const char *text, u32 buf_alloc)
{
    u32 n = (u32)strlen(text);
    struct vsock_hdr *h = packet(OP_RW, port, host_port, n, n);
    h->buf_alloc = buf_alloc;
    memcpy((u8 *)h + HDR, text, n);
    return tx_packet(dq, h, n);
}

/* Closes from the guest side (SHUTDOWN both ways); the device answers with RST once the host end is closed. */
static bool close_connection(struct dev_queues *dq, u32 port, u32 host_port)
{
    struct vsock_hdr *h = packet(OP_SHUTDOWN, port, host_port, 0, 0);
    h->flags = 3;
    struct vsock_hdr answer;
    for (int i = 0; i < 4; i++) {
        if (i == 0 && !tx_packet(dq, h, 0)) return false;
        if (!rx_wait(dq, port, wait_polls, &answer, NULL, 0)) return false;
        if (answer.op == OP_RST) return true;
    }
    return false;
}

static void host_cases(struct vdev *d)
{
    char got[160];
    u64 mark;
    struct dev_queues dq;

    /* A malformed packet on a connection's ports ends that connection on both sides. */
    if (case_enabled("vsock.bad-packet-on-a-connection-resets-it")) {
        mark = arena_mark();
        u32 port = new_port();
        bool ok = up(d, &dq, 16) && connect(&dq, port, 5001, 65536);
        struct vsock_hdr answer = { 0 }, after = { 0 };
        bool rst = false, rst_after = false;
        if (ok) {
            struct vsock_hdr *bad = packet(OP_RW, port, 5001, 100, 10); /* length beyond its buffer */
            rst = tx_packet(&dq, bad, 10) && rx_wait(&dq, port, wait_polls, &answer, NULL, 0) && answer.op == OP_RST;
            /* The connection is gone: data on its ports is answered with RST, not delivered. */
            rst_after = send_rw(&dq, port, 5001, "after", 65536) && rx_wait(&dq, port, wait_polls, &after, NULL, 0) && after.op == OP_RST;
        }
        snprintk(got, sizeof got, "connected=%d,rst=%d,rw_after_answered_with=%u", ok, rst, after.op);
        report("vsock.bad-packet-on-a-connection-resets-it", "rst,connection_gone(host_socket_closed)", ok && rst && rst_after, "%s", got);
        vdev_reset(d);
        arena_release(mark);
    }
    if (case_enabled("vsock.request-twice-on-one-connection")) {
        mark = arena_mark();
        u32 port = new_port();
        bool ok = up(d, &dq, 16) && connect(&dq, port, 5002, 65536);
        struct vsock_hdr answer = { 0 };
        bool rst = ok && tx_packet(&dq, packet(OP_REQUEST, port, 5002, 0, 0), 0) &&
                   rx_wait(&dq, port, wait_polls, &answer, NULL, 0) && answer.op == OP_RST;
        report("vsock.request-twice-on-one-connection", "rst,connection_gone(host_socket_closed)", ok && rst,
               "connected=%d,answer_op=%u", ok, answer.op);
        vdev_reset(d);
        arena_release(mark);
    }
    /* Receive buffers of exactly 44 bytes (a header, no room for data) while data waits: each goes back with length
     * 0, and the data arrives in the next proper buffer (the issue-14 stall: it never did). */
    if (case_enabled("vsock.rx-buffers-of-44-bytes")) {
        mark = arena_mark();
        u32 port = new_port();
        bool ok = up(d, &dq, 0);
        /* One buffer for the RESPONSE, of a size rx_wait does not put back: then only 44-byte ones are left. */
        if (ok) { rx_post(&dq, RX_BUFFER / 2); vq_notify(&dq.q[0]); }
        ok = ok && connect(&dq, port, 5003, 65536);
        int zero = 0, control = 0, other = 0;
        bool data = false;
        char text[16] = "";
        if (ok) {
            struct vq *rx = &dq.q[0];
            for (int i = 0; i < 4; i++) rx_post(&dq, HDR);
            vq_notify(rx);
            ok = send_rw(&dq, port, 5003, "stall-44", 65536);
            struct vring_used_elem e;
            for (int i = 0; ok && i < 4 && vq_wait_used(rx, &e); i++) {
                const struct vsock_hdr *h = (const struct vsock_hdr *)rx->desc[e.id % rx->size].addr;
                if (e.len == 0) zero++;
                else if (e.len == HDR && h->op != OP_RW) control++;
                else other++;
            }
            /* Now a proper buffer: the echoed bytes must come. */
            struct vsock_hdr h;
            rx_post(&dq, RX_BUFFER);
            vq_notify(rx);
            data = rx_wait(&dq, port, wait_polls, &h, (u8 *)text, sizeof text - 1) && h.op == OP_RW && h.len == 8 &&
                   memcmp(text, "stall-44", 8) == 0;
            close_connection(&dq, port, 5003);
        }
        report("vsock.rx-buffers-of-44-bytes", "44-byte_buffers_back_len_0,data_in_the_next_buffer",
               ok && zero + control == 4 && zero > 0 && other == 0 && data,
               "connected=%d,len0=%d,control=%d,other=%d,data=%d", ok, zero, control, other, data);
        vdev_reset(d);
        arena_release(mark);
    }
    /* buf_alloc 0: the device sends no data; a CREDIT_UPDATE with room lets it through (§5.10.6.3). */
    if (case_enabled("vsock.no-credit-then-credit-update")) {
        mark = arena_mark();
        u32 port = new_port();
        bool ok = up(d, &dq, 16) && connect(&dq, port, 5004, 0);
        bool held = false, data = false;
        char text[16] = "";
        if (ok) {
            ok = send_rw(&dq, port, 5004, "credit", 0);
            struct vsock_hdr h;
            /* No data may come; control packets (a CREDIT_REQUEST, say) may. */
            held = true;
            for (int i = 0; held && i < 8 && rx_wait(&dq, port, quiet_polls, &h, NULL, 0); i++) held = h.op != OP_RW;
            struct vsock_hdr *update = packet(OP_CREDIT_UPDATE, port, 5004, 0, 0);
            update->buf_alloc = 65536;
            data = tx_packet(&dq, update, 0) && rx_wait(&dq, port, wait_polls, &h, (u8 *)text, sizeof text - 1) &&
                   h.op == OP_RW && h.len == 6 && memcmp(text, "credit", 6) == 0;
            close_connection(&dq, port, 5004);
        }
        report("vsock.no-credit-then-credit-update", "no_data_without_credit,data_after_the_update", ok && held && data,
               "connected=%d,held=%d,data_after_update=%d", ok, held, data);
        vdev_reset(d);
        arena_release(mark);
    }
    /* Reset with a connection open: the host socket closes (the harness sees its listener's peer end), and nothing
     * of the old connection reaches the re-initialised device. */
    if (case_enabled("vsock.reset-with-an-open-connection")) {
        mark = arena_mark();
        u32 port = new_port();
        bool ok = up(d, &dq, 16) && connect(&dq, port, 5005, 65536) && send_rw(&dq, port, 5005, "reset", 65536);
        bool reset = ok && vdev_reset(d);
        bool quiet = false;
        if (reset && up(d, &dq, 16)) {
            struct vsock_hdr h;
            quiet = !rx_wait(&dq, port, quiet_polls, &h, NULL, 0);
        }
        report("vsock.reset-with-an-open-connection", "reset,nothing_of_the_old_connection_after(host_socket_closed)",
               ok && reset && quiet, "connected=%d,reset=%d,quiet_after=%d", ok, reset, quiet);
        vdev_reset(d);
        arena_release(mark);
    }
}

/* 5000 REQUESTs to a port nobody listens on, with no receive buffer posted: each earns an RST, but the device keeps
 * at most 4 x 1024 control packets waiting (Vsock.resetUnknown); the rest are dropped. Then buffers: exactly 4096
 * RSTs arrive, and nothing more. */
static void rst_flood_case(struct vdev *d)
{
    const char *name = "vsock.rst-flood-without-receive-buffers";
    if (!case_enabled(name)) return;
    u32 count = (u32)cmdline_number("hostile.vsock_flood", 5000);
    const char *expect = "exactly_4096_rst_queued(the_rest_dropped)";
    u64 mark = arena_mark();
    struct dev_queues dq;
    if (!up(d, &dq, 0)) { report(name, expect, false, "bring-up_refused"); goto out; }
    struct vq *tx = &dq.q[1], *rx = &dq.q[0];
    u32 first = next_port;
    next_port += count;
    struct vsock_hdr *packets = arena_alloc((u64)HDR * 32, 16);
    bool sent = true;
    for (u32 done = 0; sent && done < count;) {
        u32 batch = count - done < 32 ? count - done : 32;
        for (u32 i = 0; i < batch; i++) {
            packets[i] = (struct vsock_hdr){ guest_cid, HOST_CID, first + done + i, UNBOUND_PORT, 0, TYPE_STREAM, OP_REQUEST, 0, 65536, 0 };
            vq_publish(tx, vq_desc(tx, (u64)&packets[i], HDR, 0));
        }
        vq_notify(tx);
        for (u32 i = 0; sent && i < batch; i++) sent = vq_wait_used(tx, NULL);
        done += batch;
    }
    /* Now receive: every packet goes back to the ring, counted, until the device has nothing more. */
    rx_fill(&dq, 32);
    u32 rsts = 0, others = 0;
    /* Until the device has been quiet for a while; and never more packets than were asked for (a device that kept
     * sending would otherwise keep the guest here). */
    for (u64 quiet = 0; quiet < quiet_polls && rsts + others <= count;) {
        struct vring_used_elem e;
        if (!vq_take_used(rx, &e)) { poll_step(d); quiet++; continue; }
        quiet = 0;
        u16 head = (u16)(e.id % rx->size);
        const struct vsock_hdr *h = (const struct vsock_hdr *)rx->desc[head].addr;
        if (e.len == HDR && h->op == OP_RST && h->dst_port >= first && h->dst_port < first + count) rsts++;
        else others++;
        vq_publish(rx, head);
        vq_notify(rx);
    }
    report(name, expect, sent && rsts == 4096 && others == 0 && !(vstatus(d) & STATUS_NEEDS_RESET),
           "requests_sent=%u/%u,rst=%u,other=%u,status=0x%x", sent ? count : 0, count, rsts, others, vstatus(d));
out:
    vdev_reset(d);
    arena_release(mark);
}

/* Connections the host starts: the harness connects to the hybrid socket ("CONNECT <port>") during a hold, and the
 * device sends the guest a REQUEST for that port, from a host port of its choosing. */
static bool wait_request(struct dev_queues *dq, u32 port, u32 *host_port)
{
    struct vsock_hdr h;
    if (!rx_wait(dq, port, wait_polls, &h, NULL, 0) || h.op != OP_REQUEST) return false;
    *host_port = h.src_port;
    return true;
}

static u64 fnv1a(u64 hash, const u8 *bytes, u32 n)
{
    for (u32 i = 0; i < n; i++) { hash ^= bytes[i]; hash *= 0x100000001b3ull; }
    return hash;
}

static void host_connect_cases(struct vdev *d)
{
    struct dev_queues dq;
    u64 mark;
    /* The guest never answers: the device gives up after its connect timeout (2 s) with an RST, and closes the host
     * end (whose CONNECT gets no OK). */
    if (case_enabled("vsock.host-connect-never-answered")) {
        mark = arena_mark();
        u32 host_port = 0;
        bool ok = up(d, &dq, 16);
        bool held = ok && host_hold("vsock-host-connect-never-answered", 1024);
        bool request = held && wait_request(&dq, 6001, &host_port);
        struct vsock_hdr h = { 0 };
        bool rst = false;
        for (int i = 0; request && !rst && i < 8; i++) rst = rx_wait(&dq, 6001, wait_polls, &h, NULL, 0) && h.op == OP_RST;
        report("vsock.host-connect-never-answered", "request,then_rst_after_the_connect_timeout", request && rst,
               "held=%d,request=%d,rst=%d", held, request, rst);
        vdev_reset(d);
        arena_release(mark);
    }
    /* Data before the RESPONSE: the device resets the connection (and the host end gets no OK). */
    if (case_enabled("vsock.host-connect-data-before-response")) {
        mark = arena_mark();
        u32 host_port = 0;
        bool ok = up(d, &dq, 16);
        bool held = ok && host_hold("vsock-host-connect-data-before-response", 1280);
        bool request = held && wait_request(&dq, 6002, &host_port);
        struct vsock_hdr h = { 0 };
        bool rst = request && send_rw(&dq, 6002, host_port, "early", 65536) && rx_wait(&dq, 6002, wait_polls, &h, NULL, 0) &&
                   h.op == OP_RST;
        report("vsock.host-connect-data-before-response", "rst", request && rst, "held=%d,request=%d,answer_op=%u", held,
               request, h.op);
        vdev_reset(d);
        arena_release(mark);
    }
    /* Accepted with a credit of 1 KiB: the host sends 4 KiB, and the device never has more than 1 KiB in flight
     * (sent minus the fwd_cnt the guest reported, §5.10.6.3); each CREDIT_UPDATE lets the next KiB through. The
     * guest hashes what it got like vsockpeer does, and the harness compares. */
    if (case_enabled("vsock.host-connect-credit-1KiB")) {
        mark = arena_mark();
        u32 host_port = 0, received = 0, most_in_flight = 0, updates = 0;
        u64 hash = 0xcbf29ce484222325ull;
        bool ok = up(d, &dq, 16);
        bool held = ok && host_hold("vsock-host-connect-credit", 1536);
        bool request = held && wait_request(&dq, 6003, &host_port);
        bool ended = false, violation = false;
        if (request) {
            struct vsock_hdr *response = packet(OP_RESPONSE, 6003, host_port, 0, 0);
            response->buf_alloc = 1024;
            tx_packet(&dq, response, 0);
            u32 forwarded = 0;
            static u8 data[RX_BUFFER];
            for (int rounds = 0; rounds < 64 && !ended; rounds++) {
                struct vsock_hdr h;
                if (rx_wait(&dq, 6003, rounds ? quiet_polls * 4 : wait_polls, &h, data, sizeof data)) {
                    if (h.op == OP_RW) {
                        hash = fnv1a(hash, data, h.len);
                        received += h.len;
                        if (received - forwarded > most_in_flight) most_in_flight = received - forwarded;
                        if (received - forwarded > 1024) violation = true;
                    } else if (h.op == OP_SHUTDOWN || h.op == OP_RST) {
                        ended = true;
                    }
                    continue;
                }
                /* Nothing more under this credit: the guest "consumed" all of it. */
                forwarded = received;
                struct vsock_hdr *update = packet(OP_CREDIT_UPDATE, 6003, host_port, 0, 0);
                update->buf_alloc = 1024;
                update->fwd_cnt = forwarded;
                tx_packet(&dq, update, 0);
                updates++;
            }
            close_connection(&dq, 6003, host_port);
        }
        info("vsock-host-stream bytes=%u fnv=%016llx", received, hash);
        report("vsock.host-connect-credit-1KiB", "4096_bytes,at_most_1024_in_flight", request && received == 4096 && !violation,
               "held=%d,request=%d,received=%u,most_in_flight=%u,credit_updates=%u,host_ended=%d", held, request, received,
               most_in_flight, updates, ended);
        vdev_reset(d);
        arena_release(mark);
    }
}

void vsock_cases(struct vdev *d)
{
    learn_cid(d);
    info("vsock guest_cid=%llu", guest_cid);
    packet_cases(d);
    rx_split_header_case(d);
    rst_flood_case(d);
    if (with_host) host_cases(d);
    else info("vsock: no host (hostile.host=0): the connection cases are left out");
    if (cmdline_number("hostile.handshake", 0)) host_connect_cases(d);
    else info("vsock: no handshake (hostile.handshake=0): the connections from the host are left out");
    vdev_reset(d);
}

void vsock_final(struct vdev *d)
{
    const char *name = "vsock.final-echo-through-host-port-5000";
    if (!case_enabled(name) || !with_host) return;
    u64 mark = arena_mark();
    struct dev_queues dq;
    u32 port = new_port();
    bool ok = up(d, &dq, 32) && connect(&dq, port, 5000, 65536);
    /* 3000 bytes out in three packets, the same 3000 back from the echo. */
    enum { CHUNK = 1000, TOTAL = 3000 };
    static u8 sent[TOTAL], back[TOTAL];
    for (int i = 0; i < TOTAL; i++) sent[i] = (u8)(i * 131 + 7);
    u32 received = 0, packets = 0;
    for (int i = 0; ok && i < TOTAL / CHUNK; i++) {
        struct vsock_hdr *h = packet(OP_RW, port, 5000, CHUNK, CHUNK);
        memcpy((u8 *)h + HDR, sent + i * CHUNK, CHUNK);
        if (i == 1) {
            /* The second packet's payload in three descriptors after the header's (ChainReader, one writev). */
            u64 p = (u64)h + HDR;
            struct buf parts[4] = { { (u64)h, HDR, false }, { p, 300, false }, { p + 300, 300, false }, { p + 600, 400, false } };
            ok = tx_send(&dq, parts, 4);
        } else {
            ok = tx_packet(&dq, h, CHUNK);
        }
    }
    while (ok && received < TOTAL && packets++ < 256) {
        struct vsock_hdr h;
        u8 data[RX_BUFFER];
        if (!rx_wait(&dq, port, wait_polls, &h, data, sizeof data)) { ok = false; break; }
        if (h.op == OP_RW && h.len <= TOTAL - received) {
            memcpy(back + received, data, h.len);
            received += h.len;
        } else if (h.op != OP_CREDIT_UPDATE && h.op != OP_CREDIT_REQUEST) {
            ok = false;
        }
    }
    bool same = ok && memcmp(sent, back, TOTAL) == 0;
    bool closed = ok && close_connection(&dq, port, 5000);
    report(name, "3000_bytes_echoed_equal(one_packet_in_4_descriptors),closed_with_rst", same && closed, "connected_and_sent=%d,received=%u,equal=%d,closed=%d",
           ok, received, same, closed);
    vdev_reset(d);
    arena_release(mark);
}
