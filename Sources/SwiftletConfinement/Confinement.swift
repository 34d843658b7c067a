import CSwiftlet
import Glibc
import SwiftletHost

/// The seccomp filters of one VM, compiled during set-up: one per thread class, and the process filter.
///
/// Order matters, because a thread keeps its creator's filters and can only add more:
/// 1. `confineProcess()` (the CLI does this; an embedding app may not want its own threads filtered) loads the
///    process filter on every thread, once set-up is done;
/// 2. each dedicated thread then calls `enter(_:)` first thing, and runs under its class's list as well.
/// Dedicated threads never create threads or wake the Swift concurrency pool (which may create one), so a pool thread
/// never inherits a narrow list.
public final class Confinement: Sendable {
    public let mode: SeccompMode
    private let classFilters: [ThreadClass: SeccompFilter]
    private let processFilter: SeccompFilter?

    public init(mode: SeccompMode) throws(SwiftletError) {
        self.mode = mode
        guard mode != .off else {
            classFilters = [:]
            processFilter = nil
            return
        }
        Self.prepareMalloc()
        var filters: [ThreadClass: SeccompFilter] = [:]
        for threadClass in ThreadClass.allCases {
            filters[threadClass] = try SeccompFilter(name: threadClass.rawValue, rules: SeccompPolicy.rules(threadClass), mode: mode)
        }
        classFilters = filters
        processFilter = try SeccompFilter(name: "process", rules: SeccompPolicy.process, mode: mode)
    }

    /// Settles, before any filter is loaded, the two things glibc malloc otherwise finds out from a file the first
    /// time it needs them, with an `openat` that no thread's filter allows:
    /// - the arena limit, read from /sys/devices/system/cpu/online once more than 8 arenas exist: set here to what
    ///   glibc would compute (8 per online CPU);
    /// - whether a thread arena's heap may be shrunk by remapping, read from /proc/sys/vm/overcommit_memory the first
    ///   time such a heap shrinks. Seen in the lab: the device thread was killed with SIGSYS for it in the middle of
    ///   a 16 MiB exec stream, when vsock's pending buffer had grown and was freed. Heaps never shrink once the trim
    ///   threshold is 64 MiB, the most a thread arena's heap can be; with it fixed, the mmap threshold stays at its
    ///   default, 128 KiB, so large buffers (vsock's pending bytes among them) are mappings of their own, given back
    ///   to the host when freed.
    private static func prepareMalloc() {
        let cpus = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        _ = CSwiftlet_prepare_malloc_for_filters(Int32(clamping: 8 * cpus))
    }

    /// Loads the process filter on every thread of the process.
    public func confineProcess() throws(SwiftletError) {
        try processFilter?.load(allThreads: true)
        SeccompTrigger.fire("process")
    }

    /// Loads `threadClass`'s filter on the calling thread.
    public func enter(_ threadClass: ThreadClass) throws(SwiftletError) {
        try classFilters[threadClass]?.load()
        SeccompTrigger.fire(threadClass.rawValue)
    }

    /// The BPF instructions of each filter, for --help-style reports and tests.
    public var sizes: [String: Int] {
        var sizes = Dictionary(uniqueKeysWithValues: classFilters.map { ($0.key.rawValue, $0.value.count) })
        if let processFilter { sizes["process"] = processFilter.count }
        return sizes
    }
}
