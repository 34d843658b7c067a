import CSeccomp
import CSwiftlet
import Glibc
import SwiftletHost

/// The kinds of thread a Swiftlet process runs after set-up, each with the system calls it needs.
public enum ThreadClass: String, Sendable, CaseIterable {
    /// `vcpuN`: KVM_RUN, and the port and MMIO exits it serves (serial output, device registers, reset).
    case vcpu
    /// The device event loop: virtqueues, the TAP, disk images, vsock sockets, the balloon's madvise.
    case device
    /// `console-in`: the terminal or stdin, copied into the serial port.
    case console
    /// `control`: the control socket (the balloon, pause, resume, snapshot).
    case control
}

/// What each thread may call. The process filter (`SeccompPolicy.process`) holds for every thread: the main thread,
/// the Swift concurrency pool, the signal thread, the API's `exec` threads; each dedicated thread narrows it with its
/// class's list. Every list includes `runtime`: what the Swift runtime, the allocator and glibc call on their own.
public enum SeccompPolicy {
    /// The Swift runtime, malloc and glibc on any thread, and the SIGSYS reporter (prctl PR_GET_NAME, write).
    static let runtime: [SystemCallRule] = [
        "read", "write", "close", "futex", "munmap", "madvise", "brk", "mremap",
        "rt_sigreturn", "rt_sigprocmask", "sigaltstack", "exit", "exit_group", "gettid", "getpid", "tgkill",
        "clock_gettime", "clock_nanosleep", "nanosleep", "sched_yield", "restart_syscall", "rseq", "getrandom",
        "sched_getaffinity",
    ].map(SystemCallRule.init) + [SystemCallRule("prctl", argument: 0, in: [UInt64(PR_GET_NAME)]),
        // Memory, but never executable: the static executable loads no code after set-up, and its thread stacks are
        // not executable (PT_GNU_STACK is RW), so a PROT_EXEC mapping could only be injected code.
        SystemCallRule("mmap", argument: 2, withoutBits: UInt64(PROT_EXEC)),
        SystemCallRule("mprotect", argument: 2, withoutBits: UInt64(PROT_EXEC))]

    /// KVM_RUN and KVM_GET_REGS (for the report of an internal error); TUNSETOFFLOAD when the net driver's
    /// features (its offloads) are accepted, which happens in a register write.
    static let vcpuIoctls: [UInt64] = [CSwiftlet_KVM_RUN, CSwiftlet_KVM_GET_REGS, CSwiftlet_TUNSETOFFLOAD].map { UInt64($0) }
    /// TUNSETOFFLOAD when the guest's offloads change, FIONREAD for how much a socket holds.
    static let deviceIoctls: [UInt64] = [UInt64(CSwiftlet_TUNSETOFFLOAD), UInt64(FIONREAD)]
    /// Pause and resume (`MicroVM.pause`, from the API's thread): the guest's kvmclock and each vCPU's TSC, saved and set back. A
    /// snapshot (`MicroVM.snapshot`, from the same threads): the state of the paused vCPUs and of the VM's
    /// interrupt controllers and PIT, read only (a restore sets state during set-up, before any filter), and KVM's
    /// dirty log.
    static let controlIoctls: [UInt64] = [
        CSwiftlet_KVM_GET_CLOCK, CSwiftlet_KVM_SET_CLOCK, CSwiftlet_KVM_SET_MSRS, // the clock and the TSCs a pause stops
        CSwiftlet_KVM_GET_MP_STATE, CSwiftlet_KVM_GET_REGS, CSwiftlet_KVM_GET_SREGS, CSwiftlet_KVM_GET_XSAVE,
        CSwiftlet_KVM_GET_XCRS, CSwiftlet_KVM_GET_DEBUGREGS, CSwiftlet_KVM_GET_LAPIC, CSwiftlet_KVM_GET_TSC_KHZ,
        CSwiftlet_KVM_GET_CPUID2, CSwiftlet_KVM_GET_MSRS, CSwiftlet_KVM_GET_VCPU_EVENTS,
        CSwiftlet_KVM_GET_IRQCHIP, CSwiftlet_KVM_GET_PIT2,
        CSwiftlet_KVM_GET_DIRTY_LOG, // a diff snapshot's pages (and the reset after any snapshot, with dirty-page tracking)
    ].map { UInt64($0) }
    /// The terminal, saved and restored around raw mode (`--console stdio`).
    static let terminalIoctls: [UInt64] = [TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ].map { UInt64($0) }

    /// Each class's calls beyond `runtime`.
    public static func rules(_ threadClass: ThreadClass) -> [SystemCallRule] {
        switch threadClass {
        case .vcpu:
            return runtime + [SystemCallRule("ioctl", argument: 1, in: vcpuIoctls)]
                + ["writev", "pwrite64", "fstat", "newfstatat", "fsync", "fdatasync", "epoll_ctl",
                   // A disk's reset (a register write) waits for its io_uring requests in flight.
                   "io_uring_enter"].map(SystemCallRule.init)
        case .device:
            return runtime + [SystemCallRule("socket", argument: 0, in: [UInt64(AF_UNIX)]),
                              SystemCallRule("ioctl", argument: 1, in: deviceIoctls)]
                + ["epoll_wait", "epoll_pwait", "epoll_ctl", "readv", "writev", "preadv", "pwritev", "preadv2",
                   "pwritev2", "pread64", "pwrite64", "fallocate", "fdatasync", "fsync", "accept4", "connect",
                   "timerfd_settime", "timerfd_gettime", "sendmsg", "recvmsg", "sendto", "recvfrom", "shutdown",
                   "getsockopt", "setsockopt", "fcntl", "sched_setscheduler", "sched_getscheduler", "lseek",
                   "fstat", "newfstatat",
                   // The io_uring block engine: submissions and completions, and its fixed file after a
                   // replaceImage. The ring itself is set up before the filters, and restricted to reads, writes
                   // and syncs of that file (IoUring).
                   "io_uring_enter", "io_uring_register"].map(SystemCallRule.init)
        case .console:
            return runtime + ["poll", "ppoll", "epoll_wait", "epoll_pwait"].map(SystemCallRule.init)
        case .control:
            return runtime + [SystemCallRule("ioctl", argument: 1, in: controlIoctls)]
                + ["poll", "ppoll", "accept", "accept4", "fcntl", "shutdown", "sendto", "recvfrom",
                   // A snapshot's two files: created by path, sized, written, checked (the memory file against the
                   // one a restored VM maps).
                   "openat", "ftruncate", "pwrite64", "fstat", "newfstatat"].map(SystemCallRule.init)
        }
    }

    /// The process filter: every class's calls, and what the main thread, the concurrency pool, the signal thread
    /// and the API threads need (threads, Unix sockets to the guest's vsock, the terminal, removing the sockets
    /// Swiftlet made at exit).
    public static var process: [SystemCallRule] {
        var all = ThreadClass.allCases.flatMap { threadClass in
            rules(threadClass).filter { !["ioctl", "socket", "prctl"].contains($0.name) }
        }
        all += [
            SystemCallRule("socket", argument: 0, in: [UInt64(AF_UNIX)]),
            // A new thread names itself, then loads its class's filter (NO_NEW_PRIVS, seccomp).
            SystemCallRule("prctl", argument: 0, in: [PR_GET_NAME, PR_SET_NAME, PR_SET_NO_NEW_PRIVS].map { UInt64($0) }),
            // Every class's ioctls (each thread runs under this filter too) and the terminal's, each once.
            SystemCallRule("ioctl", argument: 1, in: (vcpuIoctls + deviceIoctls + terminalIoctls + controlIoctls).reduce(into: []) {
                if !$0.contains($1) { $0.append($1) }
            }),
        ]
        all += ["clone", "clone3", "set_robust_list", "rt_sigaction", "rt_sigsuspend", "rt_sigtimedwait", "signalfd4",
                  "unlink", "unlinkat", "pipe2", "eventfd2", "dup", "dup3", "wait4", "kill", "getuid", "geteuid",
                  "openat", "bind", "listen", "socketpair", "uname", "sysinfo", "getcwd", "ftruncate", "seccomp", "umask",
                  "setpriority", "getpriority",
                  // The Firecracker API's event loop (SwiftNIO) on its accepted connections.
                  "getsockname", "getpeername",
                  // A running disk's new image (MicroVM.replaceDiskImage, the API's drive PATCH): its write lock.
                  "flock"]
            .map(SystemCallRule.init)
        var seen = Set<String>()
        return all.filter { seen.insert($0.name).inserted } // each class repeats `runtime`
    }
}
