#include "virtio.h"

u64 wait_polls = 200000, quiet_polls = 3000;
bool use_packed;

u32 vstatus(struct vdev *d) { return vreg_read(d, VIRTIO_MMIO_STATUS); }

void poll_step(struct vdev *d)
{
    (void)vreg_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
    cpu_relax();
}

bool vdev_reset(struct vdev *d)
{
    vreg_write(d, VIRTIO_MMIO_STATUS, 0);
    for (u64 i = 0; i < wait_polls; i++) {
        if (vstatus(d) == 0) {
            /* Whatever interrupt the old incarnation left pending is gone with it. */
            vreg_write(d, VIRTIO_MMIO_INTERRUPT_ACK, vreg_read(d, VIRTIO_MMIO_INTERRUPT_STATUS));
            return true;
        }
    }
    return false;
}

void vdev_write_features(struct vdev *d, u64 features)
{
    vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)features);
    vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(features >> 32));
}

u64 vdev_read_features(struct vdev *d)
{
    vreg_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    u64 low = vreg_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
    vreg_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    u64 high = vreg_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
    return low | high << 32;
}

u64 vdev_negotiate(struct vdev *d, u64 want)
{
    if (!vdev_reset(d)) return 0;
    vreg_write(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE);
    vreg_write(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    u64 features = (want | F_VERSION_1 | (use_packed ? F_RING_PACKED : 0)) & vdev_read_features(d);
    vdev_write_features(d, features);
    vreg_write(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(vstatus(d) & STATUS_FEATURES_OK)) return 0;
    d->accepted = features;
    return features;
}

bool vdev_driver_ok(struct vdev *d)
{
    vreg_write(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    u32 s = vstatus(d);
    return (s & STATUS_DRIVER_OK) && !(s & STATUS_NEEDS_RESET);
}

u32 vq_program(struct vdev *d, u16 index, u32 size, u64 desc, u64 avail, u64 used)
{
    vreg_write(d, VIRTIO_MMIO_QUEUE_SEL, index);
    vreg_write(d, VIRTIO_MMIO_QUEUE_NUM, size);
    vreg_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)desc);
    vreg_write(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (u32)(desc >> 32));
    vreg_write(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (u32)avail);
    vreg_write(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
    vreg_write(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (u32)used);
    vreg_write(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
    vreg_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
    return vreg_read(d, VIRTIO_MMIO_QUEUE_READY);
}

bool vq_setup(struct vdev *d, struct vq *q, u16 index, u16 size)
{
    memset(q, 0, sizeof *q);
    q->dev = d;
    q->index = index;
    q->size = size;
    if (d->accepted & F_RING_PACKED) {
        /* The shadow table, the ring, and the two event suppression structures, each on its own page. */
        q->packed = true;
        q->p_avail_wrap = q->p_used_wrap = true;
        q->desc = arena_alloc(16ull * size, 4096);
        q->ring = arena_alloc(16ull * size, 4096);
        q->driver_event = arena_alloc(4, 4096);
        q->device_event = arena_alloc(4, 4096);
        return vq_program(d, index, size, (u64)q->ring, (u64)q->driver_event, (u64)q->device_event) == 1;
    }
    /* Each area on its own page: the alignments of §2.7 (16, 2, 4) and no overlap. */
    q->desc = arena_alloc(16ull * size, 4096);
    q->avail = arena_alloc(6 + 2ull * size, 4096);
    q->used = arena_alloc(6 + 8ull * size, 4096);
    return vq_program(d, index, size, (u64)q->desc, (u64)q->avail, (u64)q->used) == 1;
}

u16 vq_desc(struct vq *q, u64 addr, u32 len, u16 flags)
{
    u16 i = q->free_head++ % q->size;
    q->desc[i].addr = addr;
    q->desc[i].len = len;
    q->desc[i].flags = flags;
    q->desc[i].next = 0;
    return i;
}

void vq_link(struct vq *q, u16 a, u16 b)
{
    q->desc[a].flags |= VRING_DESC_F_NEXT;
    q->desc[a].next = b;
}

/* A split-format indirect table, rewritten in the packed format (addr, len, id, flags; only WRITE counts, §2.8.8)
 * where it is one the device may read: in RAM, a whole number of entries, no more than the queue has. */
static void packed_table(struct vq *q, u64 addr, u32 len)
{
    if (len == 0 || len % 16 || len / 16 > q->size || addr >= ram_end || len > ram_end - addr) return;
    struct vring_desc *t = (struct vring_desc *)addr;
    for (u32 i = 0; i < len / 16; i++) {
        struct vring_desc e = t[i];
        struct pvring_desc *p = (struct pvring_desc *)&t[i];
        p->addr = e.addr;
        p->len = e.len;
        p->id = 0;
        p->flags = e.flags;
    }
}

u16 vq_publish_packed(struct vq *q, u16 head, u16 id, int spoil)
{
    u16 first = q->p_avail;
    bool first_wrap = q->p_avail_wrap;
    u16 head_flags = 0;
    u16 index = head;
    int count = 0;
    /* At most a ring's worth: a looping or runaway shadow chain ends there with NEXT still set. */
    for (; count < q->size; count++) {
        struct vring_desc *s = &q->desc[index];
        if ((s->flags & VRING_DESC_F_INDIRECT)) packed_table(q, s->addr, s->len);
        u16 bits = q->p_avail_wrap ? PVRING_F_AVAIL : PVRING_F_USED;
        /* Spoiled: the head as the other lap makes a descriptor available (so that neither the device nor this
         * driver's own used check takes it), a later descriptor as used in this lap. */
        if (count == spoil && spoil == 0) bits = q->p_avail_wrap ? PVRING_F_USED : PVRING_F_AVAIL;
        else if (count == spoil) bits = q->p_avail_wrap ? PVRING_F_AVAIL | PVRING_F_USED : 0;
        u16 flags = (u16)((s->flags & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT)) | bits);
        struct pvring_desc *r = &q->ring[q->p_avail];
        r->addr = s->addr;
        r->len = s->len;
        r->id = id;
        if (count == 0) head_flags = flags; else r->flags = flags;
        if (++q->p_avail == q->size) { q->p_avail = 0; q->p_avail_wrap = !q->p_avail_wrap; }
        if (!(s->flags & VRING_DESC_F_NEXT) || s->next >= q->size) { count++; break; }
        index = s->next;
    }
    if (id < 256) q->p_len[id] = (u16)count;
    barrier();
    *(volatile u16 *)&q->ring[first].flags = head_flags; /* the head last: it hands the chain over */
    mfence();
    if (spoil == 0) { /* a head the device must ignore: the driver writes its next chain over it */
        q->p_avail = first;
        q->p_avail_wrap = first_wrap;
    }
    return first;
}

void vq_publish(struct vq *q, u16 head)
{
    if (q->packed) { vq_publish_packed(q, head, head, -1); return; }
    q->avail->ring[q->next_avail % q->size] = head;
    barrier();
    q->next_avail++;
    q->avail->idx = q->next_avail;
    mfence(); /* avail->idx is visible before the notify (and before the used ring is read again) */
}

void vq_notify(struct vq *q) { vreg_write(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index); }

/* Whether the device wrote a used descriptor at the driver's place (packed): AVAIL and USED both the lap's value. */
static bool packed_used(struct vq *q)
{
    u16 flags = *(volatile u16 *)&q->ring[q->p_used].flags;
    bool avail = flags & PVRING_F_AVAIL, used = flags & PVRING_F_USED;
    return avail == q->p_used_wrap && used == q->p_used_wrap;
}

static bool has_used(struct vq *q)
{
    if (q->packed) return packed_used(q);
    return (u16)(*(volatile u16 *)&q->used->idx - q->used_seen) != 0;
}

bool vq_take_used(struct vq *q, struct vring_used_elem *out)
{
    if (!has_used(q)) return false;
    barrier();
    struct vring_used_elem e;
    if (q->packed) {
        struct pvring_desc *r = &q->ring[q->p_used];
        e.id = r->id;
        e.len = r->len; /* as written: Swiftlet sets WRITE exactly when it wrote data, and the cases check lengths */
        u16 skip = e.id < 256 && q->p_len[e.id] ? q->p_len[e.id] : 1;
        q->p_used = (u16)(q->p_used + skip);
        if (q->p_used >= q->size) { q->p_used = (u16)(q->p_used - q->size); q->p_used_wrap = !q->p_used_wrap; }
    } else {
        e = q->used->ring[q->used_seen % q->size];
    }
    q->used_seen++;
    if (out) *out = e;
    return true;
}

bool vq_wait_used(struct vq *q, struct vring_used_elem *out)
{
    for (u64 i = 0; i < wait_polls; i++) {
        if (q->packed) {
            if (vq_take_used(q, out)) return true;
        } else if ((u16)(*(volatile u16 *)&q->used->idx - q->used_seen) != 0) {
            barrier();
            struct vring_used_elem e = q->used->ring[q->used_seen % q->size];
            q->used_seen++;
            if (out) *out = e;
            return true;
        }
        /* A device that needs a reset serves nothing more (§2.1.2): no point waiting out the bound. */
        if (i % 64 == 63 && (vstatus(q->dev) & STATUS_NEEDS_RESET)) return false;
        poll_step(q->dev);
    }
    return false;
}

bool vq_quiet(struct vq *q)
{
    for (u64 i = 0; i < quiet_polls; i++) {
        if (has_used(q)) return false;
        poll_step(q->dev);
    }
    return !has_used(q);
}

bool vdev_wait_needs_reset(struct vdev *d)
{
    for (u64 i = 0; i < wait_polls; i++) {
        if (vstatus(d) & STATUS_NEEDS_RESET) return true;
        cpu_relax();
    }
    return false;
}

bool dev_up(struct vdev *d, int queue_count, struct dev_queues *dq, u64 features, u16 queue_size)
{
    memset(dq, 0, sizeof *dq);
    dq->dev = d;
    dq->features = vdev_negotiate(d, features);
    if (!dq->features) return false;
    dq->count = queue_count;
    for (int i = 0; i < queue_count; i++)
        if (!vq_setup(d, &dq->q[i], (u16)i, queue_size)) return false;
    return vdev_driver_ok(d);
}
