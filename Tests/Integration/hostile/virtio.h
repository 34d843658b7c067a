/* A small virtio-mmio (modern, version 2) driver layer for the hostile guest: register access, device bring-up and
 * virtqueues (virtio 1.2 §2.7 split, §2.8 packed, §4.2), with every wait bounded. The cases use it for the well-formed parts
 * and reach past it (raw registers, raw descriptors) for the malformed parts. */
#ifndef HOSTILE_VIRTIO_H
#define HOSTILE_VIRTIO_H
#include "lib.h"

/* Registers (§4.2.2). */
enum {
    VIRTIO_MMIO_MAGIC = 0x000, VIRTIO_MMIO_VERSION = 0x004, VIRTIO_MMIO_DEVICE_ID = 0x008,
    VIRTIO_MMIO_VENDOR_ID = 0x00c, VIRTIO_MMIO_DEVICE_FEATURES = 0x010, VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014,
    VIRTIO_MMIO_DRIVER_FEATURES = 0x020, VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024, VIRTIO_MMIO_QUEUE_SEL = 0x030,
    VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034, VIRTIO_MMIO_QUEUE_NUM = 0x038, VIRTIO_MMIO_QUEUE_READY = 0x044,
    VIRTIO_MMIO_QUEUE_NOTIFY = 0x050, VIRTIO_MMIO_INTERRUPT_STATUS = 0x060, VIRTIO_MMIO_INTERRUPT_ACK = 0x064,
    VIRTIO_MMIO_STATUS = 0x070, VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080, VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084,
    VIRTIO_MMIO_QUEUE_DRIVER_LOW = 0x090, VIRTIO_MMIO_QUEUE_DRIVER_HIGH = 0x094,
    VIRTIO_MMIO_QUEUE_DEVICE_LOW = 0x0a0, VIRTIO_MMIO_QUEUE_DEVICE_HIGH = 0x0a4,
    VIRTIO_MMIO_CONFIG_GENERATION = 0x0fc, VIRTIO_MMIO_CONFIG = 0x100,
};

/* Device status (§2.1). */
enum {
    STATUS_ACKNOWLEDGE = 1, STATUS_DRIVER = 2, STATUS_DRIVER_OK = 4, STATUS_FEATURES_OK = 8,
    STATUS_NEEDS_RESET = 64, STATUS_FAILED = 128,
};

/* Device-independent feature bits (§6). */
#define F_INDIRECT_DESC (1ull << 28)
#define F_EVENT_IDX (1ull << 29)
#define F_VERSION_1 (1ull << 32)
#define F_RING_PACKED (1ull << 34)

/* Descriptor flags (§2.7.5). */
enum { VRING_DESC_F_NEXT = 1, VRING_DESC_F_WRITE = 2, VRING_DESC_F_INDIRECT = 4 };
enum { VRING_AVAIL_F_NO_INTERRUPT = 1 };
enum { INT_USED_BUFFER = 1, INT_CONFIG_CHANGE = 2 };

struct vring_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct vring_avail { u16 flags; u16 idx; u16 ring[]; };
struct vring_used_elem { u32 id; u32 len; };
struct vring_used { u16 flags; u16 idx; struct vring_used_elem ring[]; };

/* The packed ring (§2.8). */
struct pvring_desc { u64 addr; u32 len; u16 id; u16 flags; };
enum { PVRING_F_AVAIL = 1 << 7, PVRING_F_USED = 1 << 15 };

/* With use_packed set, vdev_negotiate asks for VIRTIO_F_RING_PACKED too, and vq_setup lays a queue out packed when
 * the device accepted it. The queue API stays the same: descriptors are made (vq_desc) and linked (vq_link) in a
 * table private to this driver (q->desc, its shadow), and vq_publish copies the chain at `head` into the ring at
 * the driver's place, in order, with the buffer ID `head` and the AVAIL/USED bits of its lap, the head's flags last
 * (§2.8.6). Used descriptors are read at the driver's own place, which moves on by each ID's chain length. */
extern bool use_packed;

/* One virtio-mmio device found on the command line. */
struct vdev {
    u64 base;
    u32 size, irq;
    u32 version, device_id;
    const char *name;       /* blk, net, vsock, balloon */
    u64 offered;            /* DeviceFeatures as read at discovery */
    u64 accepted;           /* what the last vdev_negotiate accepted */
};

/* A split virtqueue as this driver set it up. */
struct vq {
    struct vdev *dev;
    u16 index, size;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    u16 next_avail;         /* avail->idx this driver publishes next */
    u16 used_seen;          /* used->idx entries already consumed */
    u16 free_head;          /* simple allocator: descriptors are taken in order and given back by vq_reset_descs */
    /* The packed layout (q->desc is then the driver's shadow table, never seen by the device). */
    bool packed;
    struct pvring_desc *ring;
    volatile u32 *driver_event, *device_event;
    u16 p_avail, p_used;    /* the driver's slots for the next available and the next used descriptor */
    bool p_avail_wrap, p_used_wrap;
    u16 p_len[256];         /* per buffer ID: the ring descriptors its chain took */
};

static inline u32 vreg_read(struct vdev *d, u32 off) { return mmio_read32(d->base + off); }
static inline void vreg_write(struct vdev *d, u32 off, u32 v) { mmio_write32(d->base + off, v); }
u32 vstatus(struct vdev *d);

/* Limits of waits, in polls: a poll is one MMIO read of InterruptStatus (one VM exit), so waits scale with what an
 * exit costs on the machine instead of with its instruction speed. From hostile.wait= and hostile.quiet=. */
extern u64 wait_polls, quiet_polls;
/* One poll step of a wait (reads the device's InterruptStatus). */
void poll_step(struct vdev *d);

/* Reset (status 0), then wait until Status reads 0 (§4.2.3.1: the driver reads it back after writing 0). */
bool vdev_reset(struct vdev *d);
/* ACKNOWLEDGE, DRIVER, the features in `want` that are offered (always VERSION_1), FEATURES_OK (checked).
 * Returns the features accepted, or 0 when the device refused FEATURES_OK. */
u64 vdev_negotiate(struct vdev *d, u64 want);
/* Writes the 64-bit driver feature set (both select words). */
void vdev_write_features(struct vdev *d, u64 features);
u64 vdev_read_features(struct vdev *d);
/* Sets DRIVER_OK; false when the device then shows NEEDS_RESET or refused it. */
bool vdev_driver_ok(struct vdev *d);

/* Allocates rings (from the arena) and configures queue `index` with `size` entries; false when QueueReady does not
 * read back 1. */
bool vq_setup(struct vdev *d, struct vq *q, u16 index, u16 size);
/* Programs queue `index` with the given addresses and size, raw, and returns what QueueReady reads back. */
u32 vq_program(struct vdev *d, u16 index, u32 size, u64 desc, u64 avail, u64 used);
/* A descriptor, taken in order. */
u16 vq_desc(struct vq *q, u64 addr, u32 len, u16 flags);
/* Links descriptor a -> b (sets NEXT). */
void vq_link(struct vq *q, u16 a, u16 b);
/* Puts `head` in the avail ring and publishes avail->idx (not notified). Packed: copies its chain into the ring. */
void vq_publish(struct vq *q, u16 head);
/* Packed only: publishes the chain at `head` with buffer ID `id`; with `spoil` the flags of the chain's descriptor
 * number `spoil` (1 = the second) say "not available" (both AVAIL and USED at the lap's value: used), and with
 * spoil = 0 the head's say "available in the other lap" (the device must ignore it; the driver's place stays, for
 * the next chain to be written over it). Returns the first slot. */
u16 vq_publish_packed(struct vq *q, u16 head, u16 id, int spoil);
/* The next used element, if there is one (consumed); never waits. */
bool vq_take_used(struct vq *q, struct vring_used_elem *out);
void vq_notify(struct vq *q);
/* Waits for used->idx to reach used_seen + 1; returns the element (and consumes it) or false on timeout. */
bool vq_wait_used(struct vq *q, struct vring_used_elem *out);
/* Waits `quiet_polls` polls; true when used->idx did not move (nothing came back). */
bool vq_quiet(struct vq *q);
/* Waits for Status to show NEEDS_RESET. */
bool vdev_wait_needs_reset(struct vdev *d);

/* Device-specific set-up of the whole device, for each device type (blk.c, net.c, vsock.c, balloon.c):
 * reset, negotiate `features`, set up every queue the device needs, DRIVER_OK. */
struct dev_queues {
    struct vdev *dev;
    struct vq q[5];
    int count;
    u64 features;
};

/* Brings the device up with every queue at `queue_size` entries; false when any step is refused. */
bool dev_up(struct vdev *d, int queue_count, struct dev_queues *dq, u64 features, u16 queue_size);

#endif
