#include "virtio.h"

u64 wait_polls = 200000, quiet_polls = 3000;

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
    u64 features = (want | F_VERSION_1) & vdev_read_features(d);
    vdev_write_features(d, features);
    vreg_write(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(vstatus(d) & STATUS_FEATURES_OK)) return 0;
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

void vq_publish(struct vq *q, u16 head)
{
    q->avail->ring[q->next_avail % q->size] = head;
    barrier();
    q->next_avail++;
    q->avail->idx = q->next_avail;
    mfence(); /* avail->idx is visible before the notify (and before the used ring is read again) */
}

void vq_notify(struct vq *q) { vreg_write(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index); }

bool vq_wait_used(struct vq *q, struct vring_used_elem *out)
{
    for (u64 i = 0; i < wait_polls; i++) {
        if ((u16)(*(volatile u16 *)&q->used->idx - q->used_seen) != 0) {
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
        if (*(volatile u16 *)&q->used->idx != q->used_seen) return false;
        poll_step(q->dev);
    }
    return *(volatile u16 *)&q->used->idx == q->used_seen;
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
