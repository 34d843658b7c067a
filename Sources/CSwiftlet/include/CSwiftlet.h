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
#include <linux/io_uring.h>
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

// io_uring (the block device's io_uring engine, SwiftletHost's IoUring). The three system calls have no glibc
// wrappers; each returns the result or -errno. The corresponding C functions are `syscall(__NR_io_uring_*)`.
int CSwiftlet_io_uring_setup(unsigned entries, struct io_uring_params *parameters);
int CSwiftlet_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags);
int CSwiftlet_io_uring_register(int fd, unsigned opcode, void *argument, unsigned count);
// The io_uring constants, with one type each (the header has them in anonymous enums and macros built on them).
static const uint32_t CSwiftlet_IORING_SETUP_R_DISABLED = IORING_SETUP_R_DISABLED;
static const uint32_t CSwiftlet_IORING_FEAT_SINGLE_MMAP = IORING_FEAT_SINGLE_MMAP;
static const uint64_t CSwiftlet_IORING_OFF_SQ_RING = IORING_OFF_SQ_RING;
static const uint64_t CSwiftlet_IORING_OFF_SQES = IORING_OFF_SQES;
static const uint32_t CSwiftlet_IORING_ENTER_GETEVENTS = IORING_ENTER_GETEVENTS;
static const uint32_t CSwiftlet_IORING_FSYNC_DATASYNC = IORING_FSYNC_DATASYNC;
static const uint8_t CSwiftlet_IORING_OP_READV = IORING_OP_READV;
static const uint8_t CSwiftlet_IORING_OP_WRITEV = IORING_OP_WRITEV;
static const uint8_t CSwiftlet_IORING_OP_FSYNC = IORING_OP_FSYNC;
static const uint8_t CSwiftlet_IOSQE_FIXED_FILE = IOSQE_FIXED_FILE;
static const uint8_t CSwiftlet_IOSQE_IO_DRAIN = IOSQE_IO_DRAIN;
static const uint32_t CSwiftlet_IORING_REGISTER_FILES = IORING_REGISTER_FILES;
static const uint32_t CSwiftlet_IORING_REGISTER_EVENTFD = IORING_REGISTER_EVENTFD;
static const uint32_t CSwiftlet_IORING_REGISTER_FILES_UPDATE = IORING_REGISTER_FILES_UPDATE;
static const uint32_t CSwiftlet_IORING_REGISTER_RESTRICTIONS = IORING_REGISTER_RESTRICTIONS;
static const uint32_t CSwiftlet_IORING_REGISTER_ENABLE_RINGS = IORING_REGISTER_ENABLE_RINGS;
static const uint16_t CSwiftlet_IORING_RESTRICTION_REGISTER_OP = IORING_RESTRICTION_REGISTER_OP;
static const uint16_t CSwiftlet_IORING_RESTRICTION_SQE_OP = IORING_RESTRICTION_SQE_OP;
static const uint16_t CSwiftlet_IORING_RESTRICTION_SQE_FLAGS_ALLOWED = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
static const uint16_t CSwiftlet_IORING_RESTRICTION_SQE_FLAGS_REQUIRED = IORING_RESTRICTION_SQE_FLAGS_REQUIRED;
// Fills one submission queue entry (zeroing the rest): a readv/writev of `count` iovecs at `address`, or an fsync
// (`operation_flags` IORING_FSYNC_DATASYNC), on fixed file `fd` when `flags` has IOSQE_FIXED_FILE. (Swift imports
// io_uring_sqe's unions as computed properties, so the layout is written here.)
static inline void CSwiftlet_io_uring_prepare(void *entry, uint8_t opcode, uint8_t flags, int32_t fd, uint64_t offset,
                                              const void *address, uint32_t count, uint32_t operation_flags,
                                              uint64_t user_data) {
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)entry;
    __builtin_memset(sqe, 0, sizeof *sqe);
    sqe->opcode = opcode;
    sqe->flags = flags;
    sqe->fd = fd;
    sqe->off = offset;
    sqe->addr = (uint64_t)(uintptr_t)address;
    sqe->len = count;
    sqe->rw_flags = operation_flags; // fsync_flags shares the union
    sqe->user_data = user_data;
}
// One restriction of IORING_REGISTER_RESTRICTIONS: `kind` IORING_RESTRICTION_*, `value` the operation or flags.
static inline void CSwiftlet_io_uring_restriction(struct io_uring_restriction *restriction, uint16_t kind, uint8_t value) {
    __builtin_memset(restriction, 0, sizeof *restriction);
    restriction->opcode = kind;
    restriction->sqe_op = value; // register_op, sqe_op and sqe_flags share the union
}
static inline uint32_t CSwiftlet_load_acquire_u32(const void *address) {
    return __atomic_load_n((const uint32_t *)address, __ATOMIC_ACQUIRE);
}
static inline void CSwiftlet_store_release_u32(void *address, uint32_t value) {
    __atomic_store_n((uint32_t *)address, value, __ATOMIC_RELEASE);
}


#endif
