// The C shim: kernel constants Swift cannot import (ioctl request numbers are function-like macros) and the
// variadic ioctl(2), exported under a CSwiftlet_ prefix. No logic lives here.
#ifndef CSWIFTLET_H
#define CSWIFTLET_H

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <linux/falloc.h>
#include <linux/if_tun.h>
#include "CSwiftletAArch64.h"
// UDP segmentation offload on a TAP (include/uapi/linux/if_tun.h, Linux 6.2); older headers lack them.
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

// ioctl(2) with a pointer or an integer argument. The corresponding C function is `ioctl`.
int CSwiftlet_ioctl_ptr(int fd, unsigned long request, void *argument);
int CSwiftlet_ioctl_value(int fd, unsigned long request, unsigned long argument);

// Names the calling thread (GNU extension, hidden from Swift's Glibc module). The corresponding C function is
// `pthread_setname_np`.
int CSwiftlet_set_thread_name(const char *name);

// fallocate(2), a GNU extension hidden from Swift's Glibc module. The corresponding C function is `fallocate`.
int CSwiftlet_fallocate(int fd, int mode, int64_t offset, int64_t length);

// accept4(2) without the peer address, a GNU extension hidden from Swift's Glibc module.
int CSwiftlet_accept4(int fd, int flags);

// The calling thread's scheduling policy: SCHED_BATCH (batch != 0) or SCHED_OTHER, at priority 0; 0 or -errno.
// SCHED_BATCH is a GNU extension hidden from Swift's Glibc module. The corresponding C function is
// `sched_setscheduler(0, ...)`, which on Linux applies to the calling thread only.
int CSwiftlet_set_thread_batch(int batch);
// 1 when the calling thread runs under SCHED_BATCH. The corresponding C function is `sched_getscheduler(0)`.
int CSwiftlet_thread_is_batch(void);
/// mallopt before seccomp filters: M_ARENA_MAX `arenas`, M_MMAP_THRESHOLD 128 KiB and M_TRIM_THRESHOLD 64 MiB
/// (Confinement says why). 1 when all three were taken.
int CSwiftlet_prepare_malloc_for_filters(int arenas);

// getrandom(2), declared in <sys/random.h>, which Swift's Glibc module does not import. The corresponding C function
// is `getrandom`.
long CSwiftlet_getrandom(void *buffer, size_t length, unsigned int flags);

// TAP devices
extern const unsigned long CSwiftlet_KVM_GET_XSAVE;
extern const unsigned long CSwiftlet_KVM_SET_XSAVE;
extern const unsigned long CSwiftlet_KVM_GET_XCRS;
extern const unsigned long CSwiftlet_KVM_SET_XCRS;
extern const unsigned long CSwiftlet_KVM_GET_DEBUGREGS;
extern const unsigned long CSwiftlet_KVM_SET_DEBUGREGS;
extern const unsigned long CSwiftlet_KVM_GET_MSRS;
extern const unsigned long CSwiftlet_KVM_GET_CPUID2;
extern const unsigned long CSwiftlet_KVM_GET_MP_STATE;
extern const unsigned long CSwiftlet_KVM_SET_MP_STATE;
extern const unsigned long CSwiftlet_KVM_GET_VCPU_EVENTS;
extern const unsigned long CSwiftlet_KVM_SET_VCPU_EVENTS;
extern const unsigned long CSwiftlet_KVM_GET_IRQCHIP;
extern const unsigned long CSwiftlet_KVM_SET_IRQCHIP;
extern const unsigned long CSwiftlet_KVM_GET_PIT2;
extern const unsigned long CSwiftlet_KVM_SET_PIT2;
extern const unsigned long CSwiftlet_KVM_GET_TSC_KHZ;
extern const unsigned long CSwiftlet_KVM_SET_TSC_KHZ;
extern const unsigned long CSwiftlet_TUNSETIFF;
extern const unsigned long CSwiftlet_TUNSETOFFLOAD;
extern const unsigned long CSwiftlet_TUNSETVNETHDRSZ;

// /dev/kvm
extern const unsigned long CSwiftlet_KVM_GET_API_VERSION;
extern const unsigned long CSwiftlet_KVM_CREATE_VM;
extern const unsigned long CSwiftlet_KVM_CHECK_EXTENSION;
extern const unsigned long CSwiftlet_KVM_GET_VCPU_MMAP_SIZE;
extern const unsigned long CSwiftlet_KVM_GET_SUPPORTED_CPUID;
extern const unsigned long CSwiftlet_KVM_GET_MSR_INDEX_LIST;
// VM
extern const unsigned long CSwiftlet_KVM_CREATE_VCPU;
extern const unsigned long CSwiftlet_KVM_SET_USER_MEMORY_REGION;
extern const unsigned long CSwiftlet_KVM_SET_TSS_ADDR;
extern const unsigned long CSwiftlet_KVM_SET_IDENTITY_MAP_ADDR;
extern const unsigned long CSwiftlet_KVM_CREATE_IRQCHIP;
extern const unsigned long CSwiftlet_KVM_CREATE_PIT2;
extern const unsigned long CSwiftlet_KVM_IRQ_LINE;
extern const unsigned long CSwiftlet_KVM_IRQFD;
extern const unsigned long CSwiftlet_KVM_IOEVENTFD;
extern const unsigned long CSwiftlet_KVM_GET_CLOCK;
extern const unsigned long CSwiftlet_KVM_SET_CLOCK;
extern const unsigned long CSwiftlet_KVM_GET_DIRTY_LOG;
// vCPU
extern const unsigned long CSwiftlet_KVM_RUN;
extern const unsigned long CSwiftlet_KVM_GET_REGS;
extern const unsigned long CSwiftlet_KVM_SET_REGS;
extern const unsigned long CSwiftlet_KVM_GET_SREGS;
extern const unsigned long CSwiftlet_KVM_SET_SREGS;
extern const unsigned long CSwiftlet_KVM_SET_FPU;
extern const unsigned long CSwiftlet_KVM_SET_MSRS;
extern const unsigned long CSwiftlet_KVM_SET_CPUID2;
extern const unsigned long CSwiftlet_KVM_GET_LAPIC;
extern const unsigned long CSwiftlet_KVM_SET_LAPIC;

// The data of a KVM_EXIT_MMIO exit, inside the kvm_run mapping. (Swift imports kvm_run's anonymous union as
// computed properties, so taking the address of a member through Swift would point at a temporary copy.)
static inline uint8_t *CSwiftlet_kvm_run_mmio_data(struct kvm_run *run) { return run->mmio.data; }

// The data of a KVM_EXIT_IO exit lives at an offset inside the kvm_run mapping.
static inline uint8_t *CSwiftlet_kvm_run_io_data(struct kvm_run *run) {
    return (uint8_t *)run + run->io.data_offset;
}

// Guest memory shared with a running guest is accessed with explicit ordering where the virtio spec requires it
// (2.7.13 "Supplying Buffers to The Device", 2.7.8 "The Virtqueue Used Ring"): an acquire load of avail->idx before
// reading ring entries, a release store of used->idx after writing them, and full fences around event suppression.
static inline uint16_t CSwiftlet_load_acquire_u16(const void *address) {
    return __atomic_load_n((const uint16_t *)address, __ATOMIC_ACQUIRE);
}
static inline void CSwiftlet_store_release_u16(void *address, uint16_t value) {
    __atomic_store_n((uint16_t *)address, value, __ATOMIC_RELEASE);
}
static inline void CSwiftlet_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif
