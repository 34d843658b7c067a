#include "CSwiftlet.h"
#include <fcntl.h>
#include <malloc.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

int CSwiftlet_fallocate(int fd, int mode, int64_t offset, int64_t length) { return fallocate(fd, mode, offset, length); }
long CSwiftlet_getrandom(void *buffer, size_t length, unsigned int flags) { return getrandom(buffer, length, flags); }
int CSwiftlet_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }
int CSwiftlet_accept4(int fd, int flags) { return accept4(fd, NULL, NULL, flags); }
int CSwiftlet_set_thread_batch(int batch) {
    struct sched_param parameters = {0};
    return sched_setscheduler(0, batch ? SCHED_BATCH : SCHED_OTHER, &parameters) == 0 ? 0 : -errno;
}
int CSwiftlet_thread_is_batch(void) { return sched_getscheduler(0) == SCHED_BATCH; }
int CSwiftlet_prepare_malloc_for_filters(int arenas) {
    return mallopt(M_ARENA_MAX, arenas) == 1 && mallopt(M_MMAP_THRESHOLD, 128 << 10) == 1
        && mallopt(M_TRIM_THRESHOLD, 64 << 20) == 1;
}

int CSwiftlet_io_uring_setup(unsigned entries, struct io_uring_params *parameters) {
    long result = syscall(__NR_io_uring_setup, entries, parameters);
    return result < 0 ? -errno : (int)result;
}
int CSwiftlet_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
    long result = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
    return result < 0 ? -errno : (int)result;
}
int CSwiftlet_io_uring_register(int fd, unsigned opcode, void *argument, unsigned count) {
    long result = syscall(__NR_io_uring_register, fd, opcode, argument, count);
    return result < 0 ? -errno : (int)result;
}

int CSwiftlet_ioctl_ptr(int fd, unsigned long request, void *argument) { return ioctl(fd, request, argument); }
int CSwiftlet_ioctl_value(int fd, unsigned long request, unsigned long argument) { return ioctl(fd, request, argument); }

const unsigned long CSwiftlet_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
const unsigned long CSwiftlet_KVM_CREATE_VM = KVM_CREATE_VM;
const unsigned long CSwiftlet_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
const unsigned long CSwiftlet_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
const unsigned long CSwiftlet_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
const unsigned long CSwiftlet_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
const unsigned long CSwiftlet_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
const unsigned long CSwiftlet_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
const unsigned long CSwiftlet_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
const unsigned long CSwiftlet_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
const unsigned long CSwiftlet_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
const unsigned long CSwiftlet_KVM_CREATE_PIT2 = KVM_CREATE_PIT2;
const unsigned long CSwiftlet_KVM_IRQ_LINE = KVM_IRQ_LINE;
const unsigned long CSwiftlet_KVM_IRQFD = KVM_IRQFD;
const unsigned long CSwiftlet_KVM_IOEVENTFD = KVM_IOEVENTFD;
const unsigned long CSwiftlet_KVM_GET_CLOCK = KVM_GET_CLOCK;
const unsigned long CSwiftlet_KVM_SET_CLOCK = KVM_SET_CLOCK;
const unsigned long CSwiftlet_KVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
const unsigned long CSwiftlet_KVM_RUN = KVM_RUN;
const unsigned long CSwiftlet_KVM_GET_REGS = KVM_GET_REGS;
const unsigned long CSwiftlet_KVM_SET_REGS = KVM_SET_REGS;
const unsigned long CSwiftlet_KVM_GET_SREGS = KVM_GET_SREGS;
const unsigned long CSwiftlet_KVM_SET_SREGS = KVM_SET_SREGS;
const unsigned long CSwiftlet_KVM_SET_FPU = KVM_SET_FPU;
const unsigned long CSwiftlet_KVM_SET_MSRS = KVM_SET_MSRS;
const unsigned long CSwiftlet_KVM_SET_CPUID2 = KVM_SET_CPUID2;
const unsigned long CSwiftlet_KVM_GET_LAPIC = KVM_GET_LAPIC;
const unsigned long CSwiftlet_KVM_SET_LAPIC = KVM_SET_LAPIC;
// The state a snapshot saves and a restore sets back.
const unsigned long CSwiftlet_KVM_GET_XSAVE = KVM_GET_XSAVE;
const unsigned long CSwiftlet_KVM_SET_XSAVE = KVM_SET_XSAVE;
const unsigned long CSwiftlet_KVM_GET_XCRS = KVM_GET_XCRS;
const unsigned long CSwiftlet_KVM_SET_XCRS = KVM_SET_XCRS;
const unsigned long CSwiftlet_KVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
const unsigned long CSwiftlet_KVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
const unsigned long CSwiftlet_KVM_GET_MSRS = KVM_GET_MSRS;
const unsigned long CSwiftlet_KVM_GET_CPUID2 = KVM_GET_CPUID2;
const unsigned long CSwiftlet_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
const unsigned long CSwiftlet_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
const unsigned long CSwiftlet_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
const unsigned long CSwiftlet_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
const unsigned long CSwiftlet_KVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
const unsigned long CSwiftlet_KVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
const unsigned long CSwiftlet_KVM_GET_PIT2 = KVM_GET_PIT2;
const unsigned long CSwiftlet_KVM_SET_PIT2 = KVM_SET_PIT2;
const unsigned long CSwiftlet_KVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
const unsigned long CSwiftlet_KVM_SET_TSC_KHZ = KVM_SET_TSC_KHZ;
const unsigned long CSwiftlet_TUNSETIFF = TUNSETIFF;
const unsigned long CSwiftlet_TUNSETOFFLOAD = TUNSETOFFLOAD;
const unsigned long CSwiftlet_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;

// aarch64 (CSwiftletAArch64.h): built from the arm64 encoding, so that they exist on every host.
const unsigned long CSwiftlet_KVM_ARM_VCPU_INIT = _IOW(KVMIO, 0xae, struct CSwiftlet_kvm_vcpu_init);
const unsigned long CSwiftlet_KVM_ARM_PREFERRED_TARGET = _IOR(KVMIO, 0xaf, struct CSwiftlet_kvm_vcpu_init);
const unsigned long CSwiftlet_KVM_GET_ONE_REG = KVM_GET_ONE_REG;
const unsigned long CSwiftlet_KVM_SET_ONE_REG = KVM_SET_ONE_REG;
const unsigned long CSwiftlet_KVM_CREATE_DEVICE = KVM_CREATE_DEVICE;
const unsigned long CSwiftlet_KVM_SET_DEVICE_ATTR = KVM_SET_DEVICE_ATTR;
const unsigned long CSwiftlet_KVM_HAS_DEVICE_ATTR = KVM_HAS_DEVICE_ATTR;
