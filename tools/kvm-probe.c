// kvm-probe: does this host's /dev/kvm run unmodified guest kernels?
//
// A PVM-style KVM (the host is itself a VM; see ../README.md, "The nested lab") emulates ring-0 guest code
// and stops with KVM_EXIT_INTERNAL_ERROR (suberror 1, emulation) at the first `int3`, which every Linux
// kernel executes in its alternatives self-test. Hardware VT-x/AMD-V runs it.
//
// So the probe runs a tiny long-mode guest that takes a breakpoint exception through its own IDT:
//   main:    int3                     ; vector 3 -> bp_handler
//            out 0xAA -> port PROBE   ; back from iretq
//            hlt
//   bp_handler: out 0xBB -> port PROBE; iretq
//   any other vector: out 0xEE -> port PROBE; hlt
// and expects the exits IO(0xBB), IO(0xAA), HLT in that order.
//
// Exit status: 0 native (guests run), 1 this KVM cannot run guests, 2 no usable /dev/kvm.
// It prints one verdict line; `-q` prints nothing.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

enum { MEM_SIZE = 0x200000, GDT = 0x500, PML4 = 0x1000, PDPT = 0x2000, PD = 0x3000, IDT = 0x4000,
       CODE = 0x6000, BP_HANDLER = 0x6100, BAD_HANDLER = 0x6200, STACK = 0x8000, PROBE_PORT = 0x10 };

static int quiet;

static void verdict(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void verdict(int status, const char *fmt, ...) {
    if (!quiet) {
        va_list ap;
        va_start(ap, fmt);
        fputs("kvm-probe: ", stdout);
        vprintf(fmt, ap);
        fputc('\n', stdout);
        va_end(ap);
    }
    exit(status);
}

static void on_alarm(int sig) { (void)sig; }

static void set_idt_entry(uint8_t *mem, int vector, uint64_t handler) {
    uint8_t *e = mem + IDT + vector * 16;
    memset(e, 0, 16);
    e[0] = handler & 0xff;
    e[1] = (handler >> 8) & 0xff;
    e[2] = 0x08; // code selector
    e[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    e[6] = (handler >> 16) & 0xff;
    e[7] = (handler >> 24) & 0xff;
    uint32_t high = (uint32_t)(handler >> 32);
    memcpy(e + 8, &high, 4);
}

static struct kvm_segment segment(uint16_t selector, uint8_t type, int code) {
    struct kvm_segment s = { .base = 0, .limit = 0xffffffff, .selector = selector, .type = type,
                             .present = 1, .dpl = 0, .db = code ? 0 : 1, .s = 1, .l = code ? 1 : 0, .g = 1 };
    return s;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-q") == 0) quiet = 1;

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) verdict(2, "no usable /dev/kvm (%s)", strerror(errno));
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) verdict(2, "unexpected KVM API version");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) verdict(2, "KVM_CREATE_VM failed (%s)", strerror(errno));
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);

    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) verdict(2, "mmap of guest memory failed (%s)", strerror(errno));
    struct kvm_userspace_memory_region region = { .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE,
                                                  .userspace_addr = (uint64_t)(uintptr_t)mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) verdict(2, "KVM_SET_USER_MEMORY_REGION failed (%s)", strerror(errno));

    // Identity map of the first 2 MiB with one large page.
    uint64_t *pml4 = (uint64_t *)(mem + PML4), *pdpt = (uint64_t *)(mem + PDPT), *pd = (uint64_t *)(mem + PD);
    pml4[0] = PDPT | 0x3;
    pdpt[0] = PD | 0x3;
    pd[0] = 0x0 | 0x83; // present, writable, 2 MiB page
    uint64_t *gdt = (uint64_t *)(mem + GDT);
    gdt[0] = 0;
    gdt[1] = 0x00af9b000000ffffULL; // 64-bit code
    gdt[2] = 0x00cf93000000ffffULL; // data
    for (int v = 0; v < 256; v++) set_idt_entry(mem, v, v == 3 ? BP_HANDLER : BAD_HANDLER);

    static const uint8_t main_code[] = { 0xcc,                 // int3
                                         0xb0, 0xaa, 0xe6, PROBE_PORT, // mov al,0xaa; out PROBE,al
                                         0xf4 };               // hlt
    static const uint8_t bp_code[] = { 0xb0, 0xbb, 0xe6, PROBE_PORT, // mov al,0xbb; out PROBE,al
                                       0x48, 0xcf };           // iretq
    static const uint8_t bad_code[] = { 0xb0, 0xee, 0xe6, PROBE_PORT, 0xf4 };
    memcpy(mem + CODE, main_code, sizeof main_code);
    memcpy(mem + BP_HANDLER, bp_code, sizeof bp_code);
    memcpy(mem + BAD_HANDLER, bad_code, sizeof bad_code);

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) verdict(2, "KVM_CREATE_VCPU failed (%s)", strerror(errno));
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) verdict(2, "mmap of kvm_run failed (%s)", strerror(errno));

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) verdict(2, "KVM_GET_SREGS failed (%s)", strerror(errno));
    sregs.cs = segment(0x08, 11, 1);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = segment(0x10, 3, 0);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 3 * 8 - 1;
    sregs.idt.base = IDT;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.cr3 = PML4;
    sregs.cr4 = 1u << 5;                                // PAE
    sregs.cr0 = (1u << 0) | (1u << 4) | (1u << 31);     // PE, ET, PG
    sregs.efer = (1u << 8) | (1u << 10);                // LME, LMA
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) verdict(2, "KVM_SET_SREGS failed (%s)", strerror(errno));
    struct kvm_regs regs = { .rip = CODE, .rsp = STACK, .rflags = 2 };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) verdict(2, "KVM_SET_REGS failed (%s)", strerror(errno));

    // A KVM that emulates everything slowly still finishes this in well under a second; ten seconds
    // bounds a KVM that loops forever.
    struct sigaction sa = { .sa_handler = on_alarm };
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval timer = { .it_value = { .tv_sec = 10 } };
    setitimer(ITIMER_REAL, &timer, NULL);

    static const uint8_t expected[] = { 0xbb, 0xaa };
    size_t seen = 0;
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR) verdict(1, "no: the probe guest did not finish in 10 s (this KVM cannot run guests; use the nested lab)");
            verdict(1, "no: KVM_RUN failed (%s)", strerror(errno));
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            if (run->io.port != PROBE_PORT || run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 1) continue;
            uint8_t value = *((uint8_t *)run + run->io.data_offset);
            if (value == 0xee) verdict(1, "no: the probe guest took an unexpected exception");
            if (seen >= sizeof expected || value != expected[seen])
                verdict(1, "no: unexpected probe value 0x%02x", value);
            seen++;
            break;
        }
        case KVM_EXIT_HLT:
            if (seen == sizeof expected)
                verdict(0, "yes: this host's KVM runs guest kernels natively (int3 through the guest IDT works)");
            verdict(1, "no: the probe guest halted early");
        case KVM_EXIT_INTERNAL_ERROR: {
            struct kvm_regs now = { 0 };
            ioctl(vcpu, KVM_GET_REGS, &now);
            verdict(1, "no: KVM_EXIT_INTERNAL_ERROR suberror %u at rip 0x%llx%s: a PVM-style KVM that emulates ring-0 "
                       "guest code cannot run Linux guests (use the nested lab, or a host with VT-x/AMD-V)",
                    run->internal.suberror, (unsigned long long)now.rip, now.rip == CODE ? " (the int3)" : "");
        }
        case KVM_EXIT_SHUTDOWN:
            verdict(1, "no: the probe guest triple-faulted");
        default:
            verdict(1, "no: unexpected KVM exit %u", run->exit_reason);
        }
    }
}
