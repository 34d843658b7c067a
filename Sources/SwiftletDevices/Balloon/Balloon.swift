import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletSnapshot
import SwiftletVirtio

/// How the memory balloon is set up.
public struct BalloonConfiguration: Sendable, Equatable {
    /// The balloon size the guest is asked for at boot, in bytes (rounded down to 4 KiB pages).
    public var targetSize: UInt64
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest takes pages back out of the balloon rather than kill a
    /// process when it runs out of memory.
    public var deflateOnOOM: Bool
    /// Offer VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: the guest reports free blocks (2 MiB and up), which are released.
    public var freePageReporting: Bool
    /// Seconds between memory statistics requests; 0 does not offer the statistics queue.
    public var statisticsInterval: UInt32
    /// Offer VIRTIO_F_RING_PACKED (on by default): the guest's driver then picks the packed or the split layout.
    public var packedRing: Bool

    public init(targetSize: UInt64 = 0, deflateOnOOM: Bool = false, freePageReporting: Bool = false, statisticsInterval: UInt32 = 0,
                packedRing: Bool = true) {
        self.targetSize = targetSize
        self.deflateOnOOM = deflateOnOOM
        self.freePageReporting = freePageReporting
        self.statisticsInterval = statisticsInterval
        self.packedRing = packedRing
    }
}

/// Where the balloon stands, and what it did.
public struct BalloonStatus: Sendable, Equatable {
    /// The balloon size the host asks for, and the size the guest says it has reached (its own word, clamped to
    /// guest RAM), in 4 KiB pages.
    public var targetPages: UInt32
    public var actualPages: UInt32
    /// The guest's latest memory statistics, when the statistics queue is on and the guest sent some.
    public var statistics: BalloonStatistics?
    /// Pages that went into the balloon (inflate) and came back out (deflate): a page counts when it changes sides,
    /// so page numbers sent again, outside RAM, or deflated without being in the balloon count nothing.
    public var inflatedPages: UInt64
    public var deflatedPages: UInt64
    /// Bytes of free memory the guest reported (free page reporting).
    public var reportedBytes: UInt64
    /// Bytes given back to the host (madvise(MADV_DONTNEED)), from inflation and reporting together.
    public var releasedBytes: UInt64
    /// Bytes that could not be released because they do not cover a whole host page (hosts with pages over 4 KiB).
    public var unreleasedBytes: UInt64
    /// Page frame numbers the guest sent that lie outside guest RAM: ignored and counted.
    public var ignoredPages: UInt64
    /// madvise calls made (one per merged range).
    public var releaseCalls: UInt64

    public var targetBytes: UInt64 { UInt64(targetPages) * Balloon.pageSize }
    public var actualBytes: UInt64 { UInt64(actualPages) * Balloon.pageSize }
}

/// virtio-balloon (virtio 1.2 §5.5): the host asks the guest for a balloon size through `num_pages`; the guest
/// gives pages (4 KiB page frame numbers, whatever the host's page size) through the inflate queue, which are
/// released to the host, takes them back through the deflate queue, reports free blocks through the reporting
/// queue (released the same way) and sends memory statistics through the statistics queue whenever the device
/// returns its buffer, which a timer on the device loop does every `statisticsInterval` seconds.
public final class Balloon: VirtioDevice, ConfigurationChanging {
    /// Balloon page frame numbers count 4 KiB pages (VIRTIO_BALLOON_PFN_SHIFT).
    public static let pageSize: UInt64 = 4096
    public static let queueSize: UInt16 = 256
    /// Frames gathered before they are merged and released: bounds the scratch space whatever a chain's length.
    static let batchFrames = 1024
    /// Page frame numbers one request may carry (Linux sends at most 256, VIRTIO_BALLOON_ARRAY_PFNS_MAX): bounds
    /// the work of one request; a longer one is a guest error, and its frames past the bound are not looked at.
    public static let maximumFramesPerRequest = 1 << 16
    /// A statistics buffer longer than this is malformed (Linux sends 10 entries of 10 bytes).
    static let statisticsMaximumBytes = 64 * BalloonStatistics.entrySize

    // Feature bits (§5.5.3).
    public enum Feature {
        public static let statisticsQueue: UInt64 = 1 << 1   // VIRTIO_BALLOON_F_STATS_VQ
        public static let deflateOnOOM: UInt64 = 1 << 2      // VIRTIO_BALLOON_F_DEFLATE_ON_OOM
        public static let pageReporting: UInt64 = 1 << 5     // VIRTIO_BALLOON_F_PAGE_REPORTING
    }

    /// What a queue is for. The spec numbers them inflateq 0, deflateq 1, statsq 2, free_page_vq 3, reporting_vq 4,
    /// each present only with its feature; Linux's virtio-mmio driver (vm_find_vqs) numbers only the present ones,
    /// so the indices follow from the negotiated features (free page hinting is not offered).
    enum Role { case inflate, deflate, statistics, reporting }

    public let configuration: BalloonConfiguration
    public let counters = DeviceCounters()
    public let queueEvents: [EventFd]
    public let offeredFeatures: UInt64
    public var deviceType: UInt32 { 5 }
    public var queueMaximumSizes: [UInt16] { Array(repeating: Self.queueSize, count: queueEvents.count) }
    let guestMemorySize: UInt64
    private let statisticsTimer: TimerFd?
    /// Seconds between statistics requests: the configuration's, until `setStatisticsInterval` changes it.
    private let statisticsSeconds: Atomic<UInt32>
    private let statisticsTimerArmed = Atomic<Bool>(false)
    private let link = DeviceLink()

    private struct Sizes { var target: UInt32; var actual: UInt32 = 0 }
    private let sizes: Mutex<Sizes>
    private let latestStatistics = Mutex<BalloonStatistics?>(nil)
    private let configurationNotifier = Mutex<Callback?>(nil)
    private let inflated = Atomic<UInt64>(0), deflated = Atomic<UInt64>(0), reported = Atomic<UInt64>(0)
    private let released = Atomic<UInt64>(0), unreleased = Atomic<UInt64>(0), ignored = Atomic<UInt64>(0)
    private let releaseCalls = Atomic<UInt64>(0)

    /// The queues after DRIVER_OK and the scratch space their requests reuse; touched only by the event loop (and by
    /// activate/reset). @unchecked Sendable: the chain's buffers point into guest memory, used only under the lock.
    private struct Active: @unchecked Sendable {
        var memory: GuestMemory
        var queues: [(any Virtqueue)?]
        var roles: [Role?]
        var chain = DescriptorChain(capacity: Int(Balloon.queueSize))
        var frames: [UInt64] = []
        /// Page frame numbers are copied out of the chain a batch at a time into this (4 bytes per frame).
        var frameBytes = [UInt8](repeating: 0, count: 4 * Balloon.batchFrames)
        var ranges: [PageRange] = []
        /// The pages in the balloon now (inflated and not deflated), below the end of guest RAM.
        var pages: PageSet
        /// The statistics buffer the device holds until it wants fresh statistics (§5.5.6.3).
        var statisticsHead: UInt16?
    }
    private let active = Mutex<Active?>(nil)
    /// The balloon's pages from a snapshot, taken by the activation that follows the restore.
    private let restoredPages = Mutex<[UInt64]?>(nil)

    /// `guestMemorySize` bounds the target: the balloon cannot be bigger than guest RAM.
    public init(_ configuration: BalloonConfiguration, guestMemorySize: UInt64) throws(SwiftletError) {
        guard configuration.targetSize <= guestMemorySize else {
            throw SwiftletError(.invalidConfiguration, "balloon size \(configuration.targetSize >> 20) MiB is more than the guest's \(guestMemorySize >> 20) MiB of memory")
        }
        self.configuration = configuration
        self.guestMemorySize = guestMemorySize
        var features = VirtioFeature.version1
        if configuration.statisticsInterval > 0 { features |= Feature.statisticsQueue }
        if configuration.deflateOnOOM { features |= Feature.deflateOnOOM }
        if configuration.freePageReporting { features |= Feature.pageReporting }
        if configuration.packedRing { features |= VirtioFeature.ringPacked }
        offeredFeatures = features
        // inflate and deflate, then one queue for each optional one offered.
        let queueCount = 2 + (configuration.statisticsInterval > 0 ? 1 : 0) + (configuration.freePageReporting ? 1 : 0)
        var events: [EventFd] = []
        do {
            for _ in 0..<queueCount { events.append(try EventFd(nonBlocking: true)) }
        } catch {
            throw SwiftletError(.systemCall, "cannot create the balloon's queue eventfds", cause: error)
        }
        statisticsTimer = configuration.statisticsInterval > 0 ? try TimerFd() : nil
        statisticsSeconds = Atomic(configuration.statisticsInterval)
        queueEvents = events
        sizes = Mutex(Sizes(target: UInt32(configuration.targetSize / Self.pageSize)))
    }

    /// Connects the device to its interrupt and to what it does when the driver broke a queue beyond use.
    public func attach(interrupt: VirtioInterrupt, onFatalError: @escaping @Sendable () -> Void) {
        link.attach(interrupt: interrupt, onFatalError: onFatalError)
    }

    /// What the device calls when it changed `num_pages` (the transport's configuration change notice).
    public func attachConfigurationNotifier(_ notify: @escaping @Sendable () -> Void) {
        configurationNotifier.withLock { $0 = Callback(notify) }
    }

    // MARK: Control

    /// Asks the guest for a balloon of `bytes` (rounded down to 4 KiB pages). The guest gets there at its own pace:
    /// `status().actualPages` says how far it got.
    public func setTarget(bytes: UInt64) throws(SwiftletError) {
        guard bytes <= guestMemorySize else {
            throw SwiftletError(.invalidConfiguration, "balloon size \(bytes >> 20) MiB is more than the guest's \(guestMemorySize >> 20) MiB of memory")
        }
        sizes.withLock { $0.target = UInt32(bytes / Self.pageSize) }
        if active.withLock({ $0 != nil }) { configurationNotifier.withLock { $0 }?() }
    }

    /// Seconds between the device's statistics requests; 0 for a balloon made without the statistics queue.
    public var statisticsInterval: UInt32 { statisticsSeconds.load(ordering: .relaxed) }

    /// Changes how often the device asks the driver for statistics (Firecracker's PATCH /balloon/statistics). The
    /// statistics queue is offered, or not, when the device is made, so only a balloon made with an interval can
    /// change it, and not to 0 (the driver negotiated the queue). The next request comes `seconds` from now.
    public func setStatisticsInterval(seconds: UInt32) throws(SwiftletError) {
        guard let statisticsTimer else {
            throw SwiftletError(.invalidConfiguration, "this balloon was made without statistics (an interval of 0): it has no statistics queue whose interval could change")
        }
        guard seconds > 0 else {
            throw SwiftletError(.invalidConfiguration, "the statistics interval cannot become 0 while the guest runs: the driver negotiated the statistics queue")
        }
        statisticsSeconds.store(seconds, ordering: .relaxed)
        if statisticsTimerArmed.load(ordering: .acquiring) {
            let interval = UInt64(seconds) * 1_000_000_000
            statisticsTimer.arm(initial: interval, interval: interval)
        }
    }

    public func status() -> BalloonStatus {
        let current = sizes.withLock { $0 }
        // `actual` is whatever the guest wrote: no more than guest RAM is reported.
        let actual = min(current.actual, UInt32(guestMemorySize / Self.pageSize))
        return BalloonStatus(targetPages: current.target, actualPages: actual,
                             statistics: latestStatistics.withLock { $0 },
                             inflatedPages: inflated.load(ordering: .relaxed), deflatedPages: deflated.load(ordering: .relaxed),
                             reportedBytes: reported.load(ordering: .relaxed), releasedBytes: released.load(ordering: .relaxed),
                             unreleasedBytes: unreleased.load(ordering: .relaxed), ignoredPages: ignored.load(ordering: .relaxed),
                             releaseCalls: releaseCalls.load(ordering: .relaxed))
    }

    // MARK: VirtioDevice

    /// struct virtio_balloon_config (§5.5.4): num_pages, actual, free_page_hint_cmd_id, poison_val (both unused).
    public func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        let current = sizes.withLock { $0 }
        var bytes = [UInt8](repeating: 0, count: 16)
        for index in 0..<4 {
            bytes[index] = UInt8(truncatingIfNeeded: current.target >> (8 * index))
            bytes[4 + index] = UInt8(truncatingIfNeeded: current.actual >> (8 * index))
        }
        ConfigurationSpace(bytes).read(offset: offset, into: data)
    }

    /// The driver writes `actual` (bytes 4..7), in any width; everything else is read-only.
    public func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {
        sizes.withLock { current in
            for index in data.indices {
                let position = offset + index
                guard position >= 4 && position < 8 else { continue }
                let shift = UInt32(8 * (position - 4))
                current.actual = (current.actual & ~(0xff << shift)) | UInt32(data[index]) << shift
            }
        }
    }

    public func activate(_ activation: VirtioActivation) throws(SwiftletError) {
        var roles: [Role?] = [.inflate, .deflate]
        if activation.features & Feature.statisticsQueue != 0 { roles.append(.statistics) }
        if activation.features & Feature.pageReporting != 0 { roles.append(.reporting) }
        while roles.count < queueEvents.count { roles.append(nil) }
        // A queue the driver left unused stays nil: its notifications are ignored.
        let end = activation.memory.regions.map { $0.end.rawValue }.max() ?? 0
        var pages = PageSet(frames: end / Self.pageSize)
        if let bitmap = restoredPages.withLock({ current -> [UInt64]? in defer { current = nil }; return current }) {
            guard let restored = PageSet(frames: end / Self.pageSize, bitmap: bitmap) else {
                throw SwiftletError(.invalidConfiguration, "the snapshot's balloon page map is not this guest memory's size")
            }
            pages = restored
        }
        var state = Active(memory: activation.memory, queues: Array(activation.queues.prefix(queueEvents.count)), roles: roles,
                           pages: pages)
        state.frames.reserveCapacity(Self.batchFrames)
        active.withLock { $0 = state }
        // Buffers the driver queued before DRIVER_OK (Linux hands over its first statistics buffer then).
        for event in queueEvents { event.signal() }
    }

    public func reset() {
        active.withLock { $0 = nil }
        sizes.withLock { $0.actual = 0 }
    }

    // MARK: Snapshots

    /// A held statistics buffer is given back in the position: the restored device pops it again and holds it.
    public func queuePositions() -> [QueuePosition?] {
        active.withLock { state in
            guard let state else { return Array(repeating: nil, count: queueEvents.count) }
            return state.queues.indices.map { index in
                guard let queue = state.queues[index] else { return nil }
                let holding = state.roles[index] == .statistics && state.statisticsHead != nil ? 1 : 0
                return queue.position(holding: holding)
            }
        }
    }

    /// The target and actual sizes, the statistics interval, the guest's latest statistics (their entries), and the
    /// pages in the balloon (a bitmap of guest frames), so that deflating after a restore counts as it would have.
    public func saveState(into encoder: inout SnapshotEncoder) {
        let current = sizes.withLock { $0 }
        encoder.record("targ", integer: UInt64(current.target))
        encoder.record("actl", integer: UInt64(current.actual))
        encoder.record("sint", integer: UInt64(statisticsSeconds.load(ordering: .relaxed)))
        if let statistics = latestStatistics.withLock({ $0 }) { encoder.record("stat", bytes: statistics.entries) }
        if let bitmap = active.withLock({ $0?.pages.bitmap }) { encoder.record("page", array: bitmap) }
    }

    public func restoreState(from decoder: SnapshotDecoder) throws(SnapshotError) {
        let frames = guestMemorySize / Self.pageSize
        let target = try decoder.integer("targ"), actual = try decoder.integer("actl"), interval = try decoder.integer("sint")
        guard target <= frames, actual <= UInt64(UInt32.max), interval <= 86_400 else {
            throw .malformed("the balloon's target (\(target) pages), actual size (\(actual)) or statistics interval (\(interval) s) is out of range for this guest")
        }
        guard (interval == 0) == (statisticsTimer == nil) else {
            throw .malformed("the snapshot's balloon \(interval == 0 ? "has no" : "has a") statistics queue and this one \(statisticsTimer == nil ? "has none" : "has one"): restore with the saved balloon configuration")
        }
        sizes.withLock { $0 = Sizes(target: UInt32(target), actual: UInt32(actual)) }
        statisticsSeconds.store(UInt32(interval), ordering: .relaxed)
        if decoder.contains("stat") {
            let entries = Array(try decoder.bytes("stat"))
            guard entries.count <= 64 * BalloonStatistics.entrySize, var statistics = BalloonStatistics(parsing: entries) else {
                throw .malformed("the balloon's saved statistics are not whole entries")
            }
            statistics.receivedAt = monotonicNanoseconds()
            latestStatistics.withLock { $0 = statistics }
        }
        if decoder.contains("page") {
            // Guest memory may have holes below its end (the x86 MMIO gap): the map covers frames to the end.
            let words = try decoder.array("page", of: UInt64.self, maximum: Int((1 << 52) / Self.pageSize / 64))
            restoredPages.withLock { $0 = words }
        }
    }

    // MARK: Event loop

    /// The event-loop handler of queue `index`'s ioeventfd.
    public func handleQueueEvent(_ index: Int) {
        guard let count = queueEvents[index].consume() else { return }
        counters.countNotifications(queue: index, count)
        let result = active.withLock { state -> DrainResult in
            guard state != nil, index < state!.queues.count, let queue = state!.queues[index], let role = state!.roles[index] else {
                return DrainResult()
            }
            return drain(queue, role: role, state: &state!)
        }
        if result.interrupt { link.signalUsedBuffers() }
        if result.more { counters.resume(queue: index, queueEvents[index]) }
        if result.fatal {
            active.withLock { $0 = nil }
            link.reportFatalError()
        }
    }

    /// The statistics timer: gives the held statistics buffer back, which asks the driver for fresh statistics.
    public func requestStatistics() {
        _ = statisticsTimer?.consume()
        let raise = active.withLock { state -> Bool in
            guard state != nil, let head = state!.statisticsHead,
                  let index = state!.roles.firstIndex(of: .statistics), let queue = state!.queues[index] else { return false }
            state!.statisticsHead = nil
            queue.addUsed(head: head, length: 0)
            return queue.needsInterrupt()
        }
        if raise { link.signalUsedBuffers() }
    }

    /// Drains one queue (Virtqueue.drain). Buffers outside guest RAM are malformed chains: nothing in them is acted on.
    private func drain(_ queue: any Virtqueue, role: Role, state: inout Active) -> DrainResult {
        queue.drain(&state, chain: \.chain, onMalformed: { counters.errorCount.add(1, ordering: .relaxed) }) { state, completion in
            counters.requestCount.add(1, ordering: .relaxed)
            switch role {
            case .inflate, .deflate:
                handleFrames(state: &state, inflate: role == .inflate)
            case .reporting:
                handleReport(state: &state)
            case .statistics:
                handleStatistics(state: &state)
                if let previous = state.statisticsHead, previous != state.chain.head {
                    completion.use(previous, length: 0) // the driver sent another: the older one goes back
                }
                state.statisticsHead = state.chain.head
                return // held, not returned
            }
            completion.use(state.chain.head, length: 0)
        }
    }

    /// An inflate or deflate request: an array of le32 page frame numbers in the device-readable buffers.
    private func handleFrames(state: inout Active, inflate: Bool) {
        state.frames.removeAll(keepingCapacity: true)
        var reader = ChainReader(state.chain)
        guard reader.remaining <= 4 * Self.maximumFramesPerRequest else {
            counters.errorCount.add(1, ordering: .relaxed)
            return
        }
        // A batch of le32 frame numbers at a time (one copy per batch, not per frame).
        while reader.remaining >= 4 {
            let count = min(reader.remaining / 4, Self.batchFrames)
            let memory = state.memory
            var outside: UInt64 = 0
            state.frameBytes.withUnsafeMutableBytes { bytes in
                _ = reader.read(into: UnsafeMutableRawBufferPointer(rebasing: bytes[0..<4 * count]))
                for index in 0..<count {
                    let value = UInt64(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * index, as: UInt32.self)))
                    if memory.contains(GuestAddress(value << 12), count: Self.pageSize) {
                        state.frames.append(value)
                    } else {
                        outside += 1
                    }
                }
            }
            if outside > 0 { ignored.add(outside, ordering: .relaxed) }
            flushFrames(state: &state, inflate: inflate)
        }
        if reader.remaining != 0 { counters.errorCount.add(1, ordering: .relaxed) } // a trailing partial frame number
        flushFrames(state: &state, inflate: inflate)
    }

    private func flushFrames(state: inout Active, inflate: Bool) {
        guard !state.frames.isEmpty else { return }
        state.ranges.removeAll(keepingCapacity: true)
        PageRanges.merge(&state.frames, into: &state.ranges)
        state.frames.removeAll(keepingCapacity: true)
        // Only pages that change sides count (and an inflated page is released once): a guest that sends the same
        // page numbers again and again moves no counter.
        var pages: UInt64 = 0
        let memory = state.memory
        for range in state.ranges {
            if inflate {
                state.pages.insert(range) { added in
                    pages += added.count
                    release(memory, start: added.first * Self.pageSize, length: added.count * Self.pageSize)
                }
            } else {
                // Deflating needs nothing from the host: a released page faults back in as zeroes when used.
                state.pages.remove(range) { removed in pages += removed.count }
            }
        }
        if inflate { inflated.add(pages, ordering: .relaxed) } else { deflated.add(pages, ordering: .relaxed) }
    }

    /// A free page report: each buffer is a free block of guest memory (already checked to lie in guest RAM).
    private func handleReport(state: inout Active) {
        for buffer in state.chain.buffers {
            reported.add(UInt64(buffer.length), ordering: .relaxed)
            release(state.memory, start: buffer.address.rawValue, length: UInt64(buffer.length))
        }
    }

    /// Releases the whole host pages inside [start, start + length) and counts what could not be.
    private func release(_ memory: GuestMemory, start: UInt64, length: UInt64) {
        guard let pages = PageRanges.wholePages(start: start, length: length, pageSize: hostPageSize) else {
            unreleased.add(length, ordering: .relaxed)
            return
        }
        do {
            try memory.discard(GuestAddress(pages.start), count: pages.length)
            released.add(pages.length, ordering: .relaxed)
            unreleased.add(length - pages.length, ordering: .relaxed)
            releaseCalls.add(1, ordering: .relaxed)
        } catch {
            unreleased.add(length, ordering: .relaxed)
            counters.errorCount.add(1, ordering: .relaxed)
        }
    }

    /// A statistics buffer: tag/value entries in the device-readable buffers.
    private func handleStatistics(state: inout Active) {
        var reader = ChainReader(state.chain)
        guard reader.remaining <= Self.statisticsMaximumBytes else {
            counters.errorCount.add(1, ordering: .relaxed)
            return
        }
        var bytes = [UInt8](repeating: 0, count: reader.remaining)
        _ = bytes.withUnsafeMutableBytes { reader.read(into: $0) }
        guard var statistics = BalloonStatistics(parsing: bytes) else {
            counters.errorCount.add(1, ordering: .relaxed)
            return
        }
        statistics.receivedAt = monotonicNanoseconds()
        latestStatistics.withLock { $0 = statistics }
    }

    /// Registers the queue eventfds and the statistics timer.
    func registerSources(on loop: EventLoop) throws(SwiftletError) {
        for (index, event) in queueEvents.enumerated() {
            try loop.register(event.rawValue) { [self] _ in handleQueueEvent(index) }
        }
        if let statisticsTimer {
            let interval = UInt64(statisticsSeconds.load(ordering: .relaxed)) * 1_000_000_000
            statisticsTimer.arm(initial: interval, interval: interval)
            statisticsTimerArmed.store(true, ordering: .releasing)
            try loop.register(statisticsTimer.rawValue) { [self] _ in requestStatistics() }
        }
    }
}
