/* How the parts of the hostile guest fit together: the memory layout, the devices, the suites. */
#ifndef HOSTILE_H
#define HOSTILE_H
#include "virtio.h"

/* Guest-physical layout (identity-mapped), derived from ram_end in layout_init:
 *   1 MiB            this image
 *   ARENA            rings and buffers of the current case (arena.c), 16..48 MiB
 *   SCRATCH          pages the balloon cases inflate and deflate (never used for anything else), 48..56 MiB
 *   HUGE             the huge indirect table (only its first MiB is written), from 64 MiB to the end of RAM
 *   OUTSIDE          an address that is neither RAM nor a device: between ram_end and the MMIO hole */
extern u64 scratch_base, scratch_size, huge_base, huge_size, outside_ram;
void layout_init(void);

struct vdev *find_device(u32 id);
/* hostile.host=1: a harness is on the other side (net peer, vsock listeners, balloon handshakes). */
extern bool with_host;

/* A well-formed request of one queue, as buffers: the generic chain cases keep `prefix` and `suffix` (a blk header,
 * its status byte) and replace `body` with the malformed part, so that the malformation under test is the only
 * thing wrong with the chain. */
struct buf { u64 addr; u32 len; bool write; };
struct shape {
    struct buf prefix[2], body, suffix[2];
    int prefixes, suffixes;
    u32 tag;                    /* what identifies the device's answer (an ARP sender, a vsock port) */
};

/* What a device is to the generic cases (cases.c). */
struct device_ops {
    const char *name;
    u32 device_id;
    int queue_count;
    u64 features;               /* what the generic cases negotiate (INDIRECT_DESC where offered) */
    const char *queue_names[5];
    /* Queues the device pops only when it has something to deliver (receive queues): the good buffer is posted
     * together with the malformed one, before the trigger. */
    bool receive[5];
    int primary;                /* the queue of the transport cases (the one a notify makes the device process) */
    bool needs_queues;          /* activation without queues is DEVICE_NEEDS_RESET (Swiftlet: blk, net, vsock) */
    u32 config_size;            /* bytes of config space the device defines */
    u32 config_readonly;        /* offset of a read-only 32-bit config field */
    /* After dev_up, before a case on queue qi: post what the device needs to answer (receive buffers). */
    void (*prepare)(struct dev_queues *dq, int qi);
    /* A well-formed request for queue qi, its buffers allocated from the arena and filled in. */
    void (*shape)(struct dev_queues *dq, int qi, struct shape *s);
    /* Makes the device process queue qi (a notify; for receive queues also something to deliver). */
    void (*trigger)(struct dev_queues *dq, int qi, struct shape *s);
    /* Whether the used element of a well-formed request shows it was served; `why` says what was seen. */
    bool (*served)(struct dev_queues *dq, int qi, struct shape *s, struct vring_used_elem *e, char *why, usize n);
    /* After a malformed chain came back: true when the device did not act on it (no frame, no packet); may be NULL. */
    bool (*no_effect)(struct dev_queues *dq, int qi, struct shape *s, char *why, usize n);
    /* Requests of the primary queue that take effect on the host (frames reach the TAP, pages are inflated), which
     * the harness counts: the reset case adds those the device used before the reset. May be NULL. */
    u64 *sent_counter;
};

/* Builds the chain of `s` in q (prefix, body, suffix; direct descriptors) and returns its head. */
u16 chain_build(struct vq *q, const struct shape *s);
/* Emits `bufs` as one chain of direct descriptors on q, publishes and notifies it, and waits for it to come back
 * (vq_wait_used's bound); false on timeout. The used element goes to *e (which may be NULL). */
bool chain_submit(struct vq *q, const struct buf *bufs, int n, struct vring_used_elem *e);

/* The suites. */
void run_all(void);
void generic_cases(struct vdev *d, const struct device_ops *ops);
void blk_snapshot(struct vdev *d);
void blk_cases(struct vdev *d);
void net_cases(struct vdev *d);
void vsock_cases(struct vdev *d);
void balloon_cases(struct vdev *d);
void rng_cases(struct vdev *d);
/* hostile.end=count: the snapshot tests' guest (count.c); never returns. */
void count_forever(void);
/* The end: every device serves a well-formed request. */
void blk_final(struct vdev *d);
void net_final(struct vdev *d);
void vsock_final(struct vdev *d);
void balloon_final(struct vdev *d);
void rng_final(struct vdev *d);

extern const struct device_ops blk_ops, net_ops, vsock_ops, balloon_ops, rng_ops;
extern u64 net_frames_expected, balloon_inflated_expected;

/* Host handshake through the balloon's num_pages (the harness sets a target with `swiftlet balloon SOCKET set`):
 * prints "HOSTILE hold name=NAME want_pages=P" and polls the balloon config until num_pages == P, bounded by
 * hostile.hold= polls. Returns whether the host answered. Without a balloon or hostile.host=1, returns false. */
bool host_hold(const char *name, u32 want_pages);

#endif
