import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletVirtio

/// A virtio-rng device: its optional rate limit.
public struct RngConfiguration: Sendable, Equatable {
    /// Bytes a second the guest may take; nil for no limit. The bucket holds one second's worth.
    public var bytesPerSecond: UInt64?
    /// Offer VIRTIO_F_RING_PACKED (on by default): the guest's driver then picks the packed or the split layout.
    public var packedRing: Bool

    public init(bytesPerSecond: UInt64? = nil, packedRing: Bool = true) {
        self.bytesPerSecond = bytesPerSecond
        self.packedRing = packedRing
    }
}

/// virtio-rng (virtio 1.2 §5.4): one request queue of device-writable buffers, each filled from the host's
/// `getrandom` (the kernel's CSPRNG). At most `requestMaximum` bytes go into one chain (the guest's hwrng driver
/// asks for far less), and with a rate limit a chain gets what the bucket holds: an empty bucket leaves the rest of
/// the ring waiting for a timer, so a guest that reads in a loop costs the host one bounded refill per tick.
public final class Rng: VirtioDevice {
    public static let queueSize: UInt16 = 256
    /// The most bytes one chain gets: the drain's work per chain stays bounded whatever the guest posts.
    public static let requestMaximum = 64 << 10
    /// How often an empty bucket is looked at again.
    static let refillInterval: UInt64 = 10_000_000 // 10 ms

    public let configuration: RngConfiguration
    public let counters = DeviceCounters()
    public let queueEvents: [EventFd]
    public var deviceType: UInt32 { 4 }
    public var queueMaximumSizes: [UInt16] { [Self.queueSize] }
    public var offeredFeatures: UInt64 {
        VirtioFeature.version1 | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
            | (configuration.packedRing ? VirtioFeature.ringPacked : 0)
    }
    private let link = DeviceLink()
    private let refill: TimerFd?
    private let clock: @Sendable () -> UInt64

    private struct Active: @unchecked Sendable { // @unchecked: the chain and iovecs point into guest memory; used under the lock
        var queue: any Virtqueue
        var chain = DescriptorChain(capacity: Int(Rng.queueSize))
        /// The chain's writable buffers as iovecs, refilled per chain without reallocating (at most one per buffer).
        var vectors: [iovec] = []
    }
    private struct Bucket {
        var tokens: UInt64
        var updatedAt: UInt64
        var waiting = false
    }
    private let active = Mutex<Active?>(nil)
    private let bucket: Mutex<Bucket>
    /// Bytes the rate limit held back (chains that waited for the bucket).
    public var throttled: UInt64 { throttledCount.load(ordering: .relaxed) }
    private let throttledCount = Atomic<UInt64>(0)

    public init(_ configuration: RngConfiguration, clock: @escaping @Sendable () -> UInt64) throws(SwiftletError) {
        if let rate = configuration.bytesPerSecond, rate == 0 {
            throw SwiftletError(.invalidConfiguration, "--rng rate=0 would give the guest no entropy at all; leave rate= out for no limit")
        }
        self.configuration = configuration
        self.clock = clock
        do { queueEvents = [try EventFd(nonBlocking: true)] } catch {
            throw SwiftletError(.systemCall, "cannot create the entropy device's queue eventfd", cause: error)
        }
        refill = configuration.bytesPerSecond == nil ? nil : try TimerFd()
        bucket = Mutex(Bucket(tokens: configuration.bytesPerSecond ?? 0, updatedAt: clock()))
    }

    public func attach(interrupt: VirtioInterrupt, onFatalError: @escaping @Sendable () -> Void) {
        link.attach(interrupt: interrupt, onFatalError: onFatalError)
    }

    public func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 } // virtio-rng has no configuration space
    }

    public func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {}

    public func activate(_ activation: VirtioActivation) throws(SwiftletError) {
        guard let queue = activation.queues.first ?? nil else {
            throw SwiftletError(.guestFault, "the driver activated virtio-rng without its request queue")
        }
        var state = Active(queue: queue)
        state.vectors.reserveCapacity(Int(Self.queueSize))
        active.withLock { $0 = state }
        queueEvents[0].signal()
    }

    public func reset() { active.withLock { $0 = nil } }

    /// A chain waiting for the rate limit's bucket stays in the ring, unpopped: none is held.
    public func queuePositions() -> [QueuePosition?] { [active.withLock { $0?.queue.position }] }

    public func register(on loop: EventLoop) throws(SwiftletError) {
        try loop.register(queueEvents[0].rawValue) { [self] _ in handleQueueEvent(notified: true) }
        if let refill {
            try loop.register(refill.rawValue) { [self] _ in
                _ = refill.consume()
                bucket.withLock { $0.waiting = false }
                handleQueueEvent(notified: false)
            }
        }
    }

    /// Tokens available now (the bucket refills at the rate, up to one second's worth); nil without a limit.
    private func available() -> UInt64? {
        guard let rate = configuration.bytesPerSecond else { return nil }
        let now = clock()
        return bucket.withLock { bucket in
            let elapsed = now &- bucket.updatedAt
            let earned = elapsed >= 1_000_000_000 ? rate : rate.multipliedFullWidth(by: elapsed).low / 1_000_000_000
            if earned > 0 {
                bucket.tokens = min(rate, bucket.tokens + earned)
                bucket.updatedAt = now
            }
            return bucket.tokens
        }
    }

    private func take(_ count: UInt64) {
        guard configuration.bytesPerSecond != nil else { return }
        bucket.withLock { $0.tokens -= min(count, $0.tokens) }
    }

    /// Waits for the bucket: the refill timer fires in `refillInterval`.
    private func waitForTokens() {
        guard let refill else { return }
        let arm = bucket.withLock { bucket -> Bool in
            defer { bucket.waiting = true }
            return !bucket.waiting
        }
        if arm { refill.arm(initial: Self.refillInterval) }
    }

    public func handleQueueEvent(notified: Bool) {
        if notified {
            guard let count = queueEvents[0].consume() else { return }
            counters.countNotifications(queue: 0, count)
        }
        var interrupt = false
        var fatal = false
        var more = false
        active.withLock { state in
            guard state != nil else { return }
            let queue = state!.queue
            // With a limit, one chain per drain, each taking from the bucket, until it is empty; without, one drain.
            for _ in 0..<Drain.budget {
                let tokens = available()
                if tokens == 0 {
                    more = false
                    if queue.hasAvailable { waitForTokens() }
                    return
                }
                let result = queue.drain(&state!, chain: \.chain, budget: tokens == nil ? Drain.budget : 1,
                                         onMalformed: { counters.errorCount.add(1, ordering: .relaxed) }) { state, completion in
                    let wanted = Int(min(state.chain.writableLength, UInt64(Self.requestMaximum)))
                    let filled = fill(state.chain, limit: tokens.map { min(Int(min($0, UInt64(Self.requestMaximum))), wanted) } ?? wanted,
                                      vectors: &state.vectors)
                    take(UInt64(filled))
                    if filled < wanted { throttledCount.add(UInt64(wanted - filled), ordering: .relaxed) }
                    completion.use(state.chain.head, length: UInt32(filled))
                    counters.requestCount.add(1, ordering: .relaxed)
                    counters.addBytes(filled)
                }
                interrupt = interrupt || result.interrupt
                fatal = result.fatal
                more = result.more
                if fatal || !more || tokens == nil { return }
            }
        }
        if interrupt { link.signalUsedBuffers() }
        if more { counters.resume(queue: 0, queueEvents[0]) }
        if fatal {
            active.withLock { $0 = nil }
            link.reportFatalError()
        }
    }

    /// Fills the chain's device-writable buffers with random bytes, up to `limit`, straight from getrandom into guest
    /// memory; returns how many. A chain with no writable buffer (or readable ones only) gets nothing and counts as the
    /// guest's error.
    func fill(_ chain: DescriptorChain, limit: Int, vectors: inout [iovec]) -> Int {
        guard chain.writableLength > 0 else {
            counters.errorCount.add(1, ordering: .relaxed)
            return 0
        }
        var writer = ChainWriter(chain)
        vectors.removeAll(keepingCapacity: true)
        writer.vectors(limit, into: &vectors)
        var total = 0
        for vector in vectors {
            var done = 0
            while done < vector.iov_len {
                let got = CSwiftlet_getrandom(vector.iov_base! + done, vector.iov_len - done, 0)
                // EINTR, or nothing before the kernel's pool is ready: the guest gets what was filled and asks again.
                guard got > 0 else { return total + done }
                done += got
            }
            total += done
        }
        return total
    }
}

extension Rng: LoopDevice {}
