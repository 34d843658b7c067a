import CSeccomp
import Glibc
import SwiftletHost
import SystemPackage

/// What seccomp does with a system call outside a thread's list (`--seccomp`).
public enum SeccompMode: String, Sendable, CaseIterable {
    /// The call is trapped: the VMM prints which thread made which call and exits with status 159 (128 + SIGSYS).
    case on
    /// The call goes through, and the kernel records it in its log (dmesg: `audit: type=1326 … comm="THREAD" …
    /// syscall=NR`), so that a user can find out what their set-up needs.
    case log
    /// No filters.
    case off
}

/// A compiled seccomp filter: classic BPF, ready for any thread to load with one system call. Compiling (libseccomp)
/// allocates and can fail; it is done during set-up, so that a thread's start only loads what is already checked.
public struct SeccompFilter: Sendable {
    public let name: String
    let instructions: [UInt64] // struct sock_filter is 8 bytes

    /// The number of BPF instructions.
    public var count: Int { instructions.count }

    /// Compiles `rules` for this host's architecture: every call they name is allowed (under its conditions), any
    /// other gets `mode`'s action. A call the architecture lacks (e.g. `open` on aarch64) is left out.
    public init(name: String, rules: [SystemCallRule], mode: SeccompMode) throws(SwiftletError) {
        self.name = name
        let otherwise: UInt32 = mode == .log ? UInt32(SCMP_ACT_LOG) : UInt32(SCMP_ACT_TRAP)
        guard let context = seccomp_init(otherwise) else {
            throw SwiftletError(.systemCall, "seccomp: libseccomp could not start the \(name) filter")
        }
        defer { seccomp_release(context) }
        _ = seccomp_attr_set(context, SCMP_FLTATR_CTL_OPTIMIZE, 2) // a binary tree over the call numbers
        for rule in rules {
            guard let number = rule.number else { continue }
            for conditions in rule.alternatives {
                let result = conditions.withUnsafeBufferPointer {
                    seccomp_rule_add_exact_array(context, UInt32(SCMP_ACT_ALLOW), number, UInt32($0.count), $0.baseAddress)
                }
                guard result == 0 else {
                    throw SwiftletError(.systemCall, "seccomp: libseccomp refused the rule for \(rule.name) in the \(name) filter",
                                        cause: Errno(rawValue: -result))
                }
            }
        }
        instructions = try Self.export(context, name: name)
    }

    /// The compiled program, at most BPF_MAXINSNS (4096) instructions.
    private static func export(_ context: scmp_filter_ctx, name: String) throws(SwiftletError) -> [UInt64] {
        var instructions = [UInt64](repeating: 0, count: 4096)
        let bytes = instructions.withUnsafeMutableBytes { CSeccomp_export(context, $0.baseAddress, $0.count) }
        guard bytes > 0, bytes % 8 == 0 else {
            throw SwiftletError(.systemCall, "seccomp: libseccomp could not compile the \(name) filter",
                                cause: bytes < 0 ? Errno(rawValue: Int32(-bytes)) : nil)
        }
        instructions.removeLast(instructions.count - bytes / 8)
        return instructions
    }

    /// Loads the filter on the calling thread (or, with `allThreads`, on every thread of the process), for good.
    public func load(allThreads: Bool = false) throws(SwiftletError) {
        Seccomp.prepareReporter()
        CSeccomp_unblock_sigsys()
        let result = instructions.withUnsafeBytes { CSeccomp_load($0.baseAddress, UInt16(instructions.count), allThreads ? 1 : 0) }
        if result < 0 {
            throw SwiftletError(.systemCall, "seccomp: cannot load the \(name) filter", cause: Errno(rawValue: Int32(-result)))
        }
        if result > 0 {
            throw SwiftletError(.systemCall, "seccomp: cannot load the \(name) filter on every thread: thread \(result) already has filters of its own")
        }
    }
}

/// One allowed system call: by name, with any argument, or only with one of `alternatives` (each a list of argument
/// comparisons that must all hold).
public struct SystemCallRule: Sendable {
    public let name: String
    let alternatives: [[scmp_arg_cmp]]

    public init(_ name: String) {
        self.name = name
        alternatives = [[]]
    }

    /// Allowed when argument `argument` (0-based) has one of `values` in its low 32 bits (ioctl request numbers and
    /// socket domains are ints in the kernel).
    public init(_ name: String, argument: UInt32, in values: [UInt64]) {
        self.name = name
        alternatives = values.map { [scmp_arg_cmp(arg: argument, op: SCMP_CMP_MASKED_EQ, datum_a: 0xffff_ffff, datum_b: $0 & 0xffff_ffff)] }
    }

    /// Allowed when argument `argument` (0-based) has none of the bits of `mask` set (mmap and mprotect without
    /// PROT_EXEC).
    public init(_ name: String, argument: UInt32, withoutBits mask: UInt64) {
        self.name = name
        alternatives = [[scmp_arg_cmp(arg: argument, op: SCMP_CMP_MASKED_EQ, datum_a: mask, datum_b: 0)]]
    }

    /// The call's number on this host's architecture; nil when the architecture has no such call.
    public var number: Int32? {
        let number = seccomp_syscall_resolve_name(name)
        return number >= 0 ? number : nil
    }
}

public enum Seccomp {
    /// The call names the SIGSYS reporter prints, by number (strings from libseccomp, kept for the process's life).
    private static let reporterInstalled: Bool = {
        let count = 1024
        let names = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: count)
        for number in 0..<count {
            names[number] = seccomp_syscall_resolve_num_arch(UInt32(SCMP_ARCH_NATIVE), Int32(number)).map { UnsafePointer($0) }
        }
        return CSeccomp_install_reporter(UnsafePointer(names), Int32(count)) == 0
    }()

    /// Installs the SIGSYS reporter once per process (before the first filter).
    static func prepareReporter() { _ = reporterInstalled }

    /// The calling thread's seccomp mode: 0 (none) or 2 (filtered).
    public static var currentThreadMode: Int32 { CSeccomp_current_mode() }
}

/// A forbidden system call on purpose, for the tests that check each thread class's filter and its report. Only in
/// test builds (`-D SWIFTLET_SECCOMP_TRIGGER`: the Makefile's `trigger` build, staged as swiftlet-trigger); in any
/// other build it compiles to nothing. With SWIFTLET_SECCOMP_TRIGGER=CLASS in the environment, the first thread that
/// enters CLASS's filter (or `process`, the thread that loads the process filter) then calls execve, which no filter
/// allows.
public enum SeccompTrigger {
    static func fire(_ name: String) {
        #if SWIFTLET_SECCOMP_TRIGGER
        guard let value = getenv("SWIFTLET_SECCOMP_TRIGGER"), String(cString: value) == name else { return }
        // SWIFTLET_SECCOMP_TRIGGER_CALL picks the call: execve (the default), or an executable mapping, which the
        // filters refuse by its argument.
        switch getenv("SWIFTLET_SECCOMP_TRIGGER_CALL").map({ String(cString: $0) }) {
        case "mprotect-exec":
            let page = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            _ = mprotect(page, 4096, PROT_READ | PROT_EXEC)
        case "mmap-exec":
            _ = mmap(nil, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        default:
            var arguments: [UnsafeMutablePointer<CChar>?] = [nil]
            _ = execve("/nonexistent/swiftlet-seccomp-trigger", &arguments, &arguments)
        }
        #endif
    }

    /// Whether this build has the trigger.
    public static var isBuiltIn: Bool {
        #if SWIFTLET_SECCOMP_TRIGGER
        true
        #else
        false
        #endif
    }
}
