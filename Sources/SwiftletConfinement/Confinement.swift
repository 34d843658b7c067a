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
        Self.fixMallocArenaLimit()
        var filters: [ThreadClass: SeccompFilter] = [:]
        for threadClass in ThreadClass.allCases {
            filters[threadClass] = try SeccompFilter(name: threadClass.rawValue, rules: SeccompPolicy.rules(threadClass), mode: mode)
        }
        classFilters = filters
        processFilter = try SeccompFilter(name: "process", rules: SeccompPolicy.process, mode: mode)
    }

    /// Sets glibc malloc's arena limit now, to what glibc would compute (8 per online CPU). Left unset, glibc computes
    /// it the first time a thread needs a new arena once there are more than 8, by reading
    /// /sys/devices/system/cpu/online (`get_nprocs`): an `openat` that no thread's filter allows. Seen in the lab: the
    /// device thread was killed with SIGSYS for it in the middle of a 16 MiB exec stream, once the process had made
    /// enough arenas. With the limit set, glibc never reads the file.
    private static func fixMallocArenaLimit() {
        let cpus = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        _ = CSwiftlet_set_malloc_arena_max(Int32(clamping: 8 * cpus))
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
