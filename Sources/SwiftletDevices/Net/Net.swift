import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletSnapshot
import SwiftletVirtio
import SystemPackage

/// Where frames go and come from: a TAP, or a socket pair in tests. Frames carry a 12-byte virtio_net_hdr_v1.
public protocol PacketEndpoint: Sendable {
    var rawValue: Int32 { get }
    /// The TUN_F_* offloads the endpoint can take (what the device may offer the guest for received frames).
    var supportedOffloads: UInt32 { get }
    /// The TUN_F_* offloads the guest accepted for received frames; returns those the endpoint took.
    @discardableResult
    func setOffloads(_ flags: UInt32) throws(SwiftletError) -> UInt32
}

extension Tap: PacketEndpoint {}

public struct NetConfiguration: Sendable, Equatable {
    public var tap: String
    public var mac: [UInt8]
    public var mtu: UInt16?
    /// What the NIC is called by whoever configured it (Firecracker's `iface_id`): a snapshot keeps it, so that a
    /// restore's overrides can name the NIC.
    public var id: String?
    /// Offer VIRTIO_F_RING_PACKED (on by default): the guest's driver then picks the packed or the split layout.
    public var packedRing: Bool
    public init(tap: String, mac: [UInt8], mtu: UInt16? = nil, id: String? = nil, packedRing: Bool = true) {
        self.tap = tap
        self.mac = mac
        self.mtu = mtu
        self.id = id
        self.packedRing = packedRing
    }
}

/// virtio-net on a TAP (virtio 1.2 §5.1): one receive and one transmit queue. Frames pass between the guest's
/// buffers and the TAP with one readv/writev each, headers included (the TAP speaks virtio_net_hdr_v1), so checksum
/// and segmentation offloads go through to the host untouched. With MRG_RXBUF a received frame may span several
/// receive chains. When the guest has posted no receive buffers, the TAP is parked (not polled) until it does.
///
/// Per frame, the work is one readv or writev and the ring updates: receive chains are popped once each and held
/// until a frame fills them (a frame's size is only known once read, so enough chains for the largest are held);
/// the driver is asked for receive notifications only when the device runs short of chains (EVENT_IDX); and the
/// interrupt for everything a round of the device loop completed, on either queue, is raised once at its end.
public final class Net: LoopDevice {
    public static let queueSize: UInt16 = 256
    /// The largest frame with its header: 12 + 65550 (a 64 KiB TSO frame and its Ethernet header).
    public static let maximumFrame = 65562
    /// The smallest: the header and an Ethernet header.
    public static let minimumFrame = VirtioNetHeader.size + 14
    /// The most buffers one readv takes (IOV_MAX: Linux's UIO_MAXIOV); more makes it fail with EINVAL. A chain has
    /// at most `queueSize` buffers (the queue's bound), so one chain always fits; held receive chains stop there.
    public static let maximumVectors = 1024
    /// Frames one receive round reads from the TAP at most, dropped ones included: a flooded TAP cannot keep the
    /// device loop from its other sources. The TAP is level-triggered, so the loop comes back for the rest.
    public static let receiveBudget = 64
    static let receiveQueue = 0, transmitQueue = 1

    public let configuration: NetConfiguration
    public let endpoint: any PacketEndpoint
    public let counters = DeviceCounters()
    public let queueEvents: [EventFd]
    public let offeredFeatures: UInt64
    public var deviceType: UInt32 { 1 }
    public var queueMaximumSizes: [UInt16] { [Self.queueSize, Self.queueSize] }
    private let configurationSpace: ConfigurationSpace
    private let link = DeviceLink()
    private let loop = Mutex<(EventLoop, EventLoop.Registration)?>(nil)
    /// Set when registered on a loop: interrupts wait for the end of the loop's round (`interruptPending`).
    private let defersInterrupts = Atomic<Bool>(false)
    private let interruptPending = Atomic<Bool>(false)

    /// @unchecked Sendable: the iovecs point into guest memory and are only used under `active`'s lock.
    private struct Active: @unchecked Sendable {
        var receive: (any Virtqueue)?
        var transmit: (any Virtqueue)?
        var mergeable: Bool
        var chain = DescriptorChain(capacity: Int(Net.queueSize))
        var transmitVectors: [iovec] = []
        /// Receive chains popped and not yet used, in ring order, with their buffers in `heldVectors`.
        var held: [(head: UInt16, capacity: Int, vectorCount: Int)] = []
        var heldVectors: [iovec] = []
        var heldCapacity = 0
        var receiveParked = false
    }
    private let active = Mutex<Active?>(nil)

    public init(_ configuration: NetConfiguration, endpoint: any PacketEndpoint) throws(SwiftletError) {
        guard configuration.mac.count == 6 else { throw SwiftletError(.invalidConfiguration, "a MAC address has 6 bytes") }
        if let mtu = configuration.mtu, mtu < 68 || mtu > 65535 - 14 {
            throw SwiftletError(.invalidConfiguration, "MTU \(mtu) is out of range (68 to 65521)")
        }
        self.configuration = configuration
        self.endpoint = endpoint
        do {
            queueEvents = [try EventFd(nonBlocking: true), try EventFd(nonBlocking: true)]
        } catch {
            throw SwiftletError(.systemCall, "cannot create the network queue eventfds", cause: error)
        }
        var features = VirtioFeature.version1 | VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors
            | NetFeature.mac | NetFeature.status | NetFeature.checksum | NetFeature.guestChecksum
            | NetFeature.hostTSO4 | NetFeature.hostTSO6 | NetFeature.hostECN
            | NetFeature.guestTSO4 | NetFeature.guestTSO6 | NetFeature.guestECN | NetFeature.mergeableReceiveBuffers
        features |= NetFeature.udpSegmentationFeatures(tapOffloads: endpoint.supportedOffloads)
        if configuration.mtu != nil { features |= NetFeature.mtu }
        if configuration.packedRing { features |= VirtioFeature.ringPacked }
        offeredFeatures = features
        // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
        var space = configuration.mac + [1, 0] + [1, 0]
        let mtu = configuration.mtu ?? 1500
        space += [UInt8(mtu & 0xff), UInt8(mtu >> 8)]
        configurationSpace = ConfigurationSpace(space)
    }

    public func attach(interrupt: VirtioInterrupt, onFatalError: @escaping @Sendable () -> Void) {
        link.attach(interrupt: interrupt, onFatalError: onFatalError)
    }

    public func register(on loop: EventLoop) throws(SwiftletError) {
        try loop.register(queueEvents[Self.receiveQueue].rawValue) { [self] _ in receiveQueueNotified() }
        try loop.register(queueEvents[Self.transmitQueue].rawValue) { [self] _ in transmitQueueNotified() }
        // Parked until the driver activates the device: frames that arrive before then wait in the TAP (a readable
        // TAP with nowhere to put its frames would wake the loop over and over).
        let registration = try loop.register(endpoint.rawValue, events: 0) { [self] _ in endpointReadable() }
        try loop.registerRoundEnd { [self] in raisePendingInterrupt() }
        self.loop.withLock { $0 = (loop, registration) }
        defersInterrupts.store(true, ordering: .relaxed)
    }

    /// The end of a round of the device loop: one interrupt for what both queues completed in it.
    func raisePendingInterrupt() {
        if interruptPending.exchange(false, ordering: .acquiringAndReleasing) { link.signalUsedBuffers() }
    }

    public func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        configurationSpace.read(offset: offset, into: data)
    }

    public func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {
        // The MAC is only writable with VIRTIO_NET_F_CTRL_MAC_ADDR, which is not offered.
    }

    public func activate(_ activation: VirtioActivation) throws(SwiftletError) {
        let features = activation.features
        guard activation.queues.count == 2, activation.queues[0] != nil || activation.queues[1] != nil else {
            throw SwiftletError(.guestFault, "the driver activated virtio-net without queues")
        }
        try endpoint.setOffloads(NetFeature.tapOffloads(negotiated: features))
        var state = Active(receive: activation.queues[0], transmit: activation.queues[1],
                           mergeable: features & NetFeature.mergeableReceiveBuffers != 0)
        state.transmitVectors.reserveCapacity(Int(Self.queueSize))
        state.heldVectors.reserveCapacity(Int(Self.queueSize))
        state.held.reserveCapacity(Int(Self.queueSize))
        active.withLock { current in
            current = state
            setReceiveParked(false)
        }
        queueEvents[Self.transmitQueue].signal()
    }

    public func reset() {
        active.withLock { state in // parked under the lock: ordered against activate's unparking
            state = nil
            setReceiveParked(true)
        }
        _ = try? endpoint.setOffloads(0)
    }

    /// The receive chains held for frames not yet read are given back: a restored device pops them again.
    public func queuePositions() -> [QueuePosition?] {
        active.withLock { state in
            guard let state else { return [nil, nil] }
            return [state.receive?.position(holding: state.held.count), state.transmit?.position]
        }
    }

    private func setReceiveParked(_ parked: Bool) {
        guard let (loop, registration) = loop.withLock({ $0 }) else { return }
        loop.setInterest(registration, events: parked ? 0 : UInt32(EPOLLIN.rawValue))
    }

    // MARK: - Event handlers (device loop thread)

    func receiveQueueNotified() {
        guard let count = queueEvents[Self.receiveQueue].consume() else { return }
        counters.countNotifications(queue: Self.receiveQueue, count)
        // New receive buffers: a parked TAP can be read again.
        endpointReadable()
    }

    func endpointReadable() {
        let outcome = active.withLock { state -> Outcome in
            guard state != nil, let queue = state!.receive else {
                setReceiveParked(true) // not (or no longer) active; under the lock, ordered against activate
                return Outcome()
            }
            return receiveFrames(&state!, queue: queue)
        }
        conclude(outcome)
    }

    func transmitQueueNotified() {
        if let count = queueEvents[Self.transmitQueue].consume() {
            counters.countNotifications(queue: Self.transmitQueue, count)
        }
        let outcome = active.withLock { state -> Outcome in
            guard state != nil, let queue = state!.transmit else { return Outcome() }
            return transmitFrames(&state!, queue: queue)
        }
        conclude(outcome)
    }

    struct Outcome {
        var interrupt = false
        var fatal = false
        var park: Bool?
    }

    private func conclude(_ outcome: Outcome) {
        if let park = outcome.park { setReceiveParked(park) }
        if outcome.interrupt {
            if defersInterrupts.load(ordering: .relaxed) { interruptPending.store(true, ordering: .releasing) }
            else { link.signalUsedBuffers() }
        }
        if outcome.fatal {
            active.withLock { $0 = nil }
            setReceiveParked(true)
            link.reportFatalError()
        }
    }

    /// Pops the next valid chain (Virtqueue.popValid: malformed ones go back with length 0 and are counted).
    private func nextChain(_ state: inout Active, _ queue: any Virtqueue, completed: inout Bool) throws(QueueError) -> Bool {
        try queue.popValid(into: &state.chain, completed: &completed) { counters.errorCount.add(1, ordering: .relaxed) }
    }

    /// Pops receive chains until the held ones can take the largest frame (one chain without MRG_RXBUF). When the
    /// ring runs dry first, asks the driver to notify when it posts more (EVENT_IDX's avail_event), and goes on if it
    /// did meanwhile; otherwise the driver is not asked, so it posts buffers without notifying while the device has
    /// enough. Malformed chains go back at once, with length 0.
    private func holdReceiveChains(_ state: inout Active, _ queue: any Virtqueue, completed: inout Bool) throws(QueueError) {
        while state.mergeable ? state.heldCapacity < Self.maximumFrame : state.held.isEmpty {
            guard try nextChain(&state, queue, completed: &completed) else {
                if queue.enableNotification() { continue }
                return
            }
            guard state.chain.readableCount == 0 else { // receive buffers are written by the device only
                counters.errorCount.add(1, ordering: .relaxed)
                queue.addUsed(head: state.chain.head, length: 0)
                completed = true
                continue
            }
            guard state.heldVectors.count + state.chain.writable.count <= Self.maximumVectors else {
                // One readv carries the held chains: this one waits in the ring (given back) until frames have used
                // some of them. A guest whose tiny buffers cannot hold the largest frame within IOV_MAX buffers gets
                // such frames dropped and counted, never a readv that fails again and again.
                queue.rewind(1)
                return
            }
            for buffer in state.chain.writable {
                state.heldVectors.append(iovec(iov_base: buffer.host, iov_len: Int(buffer.length)))
            }
            let capacity = Int(state.chain.writableLength)
            state.held.append((state.chain.head, capacity, state.chain.buffers.count - state.chain.readableCount))
            state.heldCapacity += capacity
        }
    }

    /// Reads frames from the endpoint into receive chains until it has no more, the guest has no buffers, or the
    /// round's budget (`receiveBudget`) is spent.
    private func receiveFrames(_ state: inout Active, queue: any Virtqueue) -> Outcome {
        var outcome = Outcome()
        var completed = false
        for _ in 0..<Self.receiveBudget {
            do {
                try holdReceiveChains(&state, queue, completed: &completed)
            } catch {
                counters.errorCount.add(1, ordering: .relaxed)
                outcome.fatal = true
                break
            }
            if state.held.isEmpty {
                // Nowhere to put a frame: stop polling the endpoint until the guest posts buffers (it was asked to
                // notify). Frames wait in the TAP's queue meanwhile; none is read and lost.
                if !state.receiveParked {
                    state.receiveParked = true
                    outcome.park = true
                }
                break
            }
            if state.receiveParked {
                state.receiveParked = false
                outcome.park = false
            }
            let count = state.heldVectors.withUnsafeBufferPointer { readv(endpoint.rawValue, $0.baseAddress, Int32($0.count)) }
            if count <= 0 {
                if count < 0 && errno != EAGAIN && errno != EINTR { counters.errorCount.add(1, ordering: .relaxed) }
                break
            }
            guard count >= VirtioNetHeader.size,
                  let used = receiveChainCount(length: count, capacities: state.held.lazy.map(\.capacity),
                                               mergeable: state.mergeable) else {
                // A frame shorter than its header, or larger than the chains (a TAP truncates it to them: only
                // without MRG_RXBUF, when the driver posted buffers smaller than §5.1.6.3.1 asks, or when the
                // guest had fewer buffers than the largest frame needs): dropped; the chains stay held.
                counters.errorCount.add(1, ordering: .relaxed)
                continue
            }
            setNumBuffers(UInt16(used), in: state.heldVectors)
            var remaining = count
            var vectorCount = 0
            for index in 0..<used {
                let chain = state.held[index]
                let length = min(chain.capacity, remaining)
                queue.addUsed(head: chain.head, length: UInt32(length))
                remaining -= length
                vectorCount += chain.vectorCount
                state.heldCapacity -= chain.capacity
            }
            state.held.removeFirst(used)
            state.heldVectors.removeFirst(vectorCount)
            counters.requestCount.add(1, ordering: .relaxed)
            counters.addBytes(count)
            completed = true
        }
        outcome.interrupt = completed && queue.needsInterrupt()
        return outcome
    }

    /// num_buffers (the last field of the header at the start of the first chain), wherever the header's bytes lie
    /// (with MRG_RXBUF, tiny chains may split the header over several).
    private func setNumBuffers(_ value: UInt16, in vectors: [iovec]) {
        var writer = ChainWriter(vectors: vectors[...], limit: VirtioNetHeader.size)
        writer.skip(VirtioNetHeader.numBuffersOffset)
        _ = withUnsafeBytes(of: value.littleEndian) { writer.write($0) }
    }

    /// Writes every frame the guest queued to the endpoint, each with one writev straight from its buffers
    /// (Virtqueue.drain: malformed chains, a corrupt ring, the budget per round).
    private func transmitFrames(_ state: inout Active, queue: any Virtqueue) -> Outcome {
        let result = queue.drain(&state, chain: \.chain, onMalformed: { counters.errorCount.add(1, ordering: .relaxed) }) { state, completion in
            let length = state.chain.readableLength
            // A transmit chain is device-readable only, holds at least the headers and at most the largest frame.
            if state.chain.readableCount == state.chain.buffers.count, length >= UInt64(Self.minimumFrame),
               length <= UInt64(Self.maximumFrame) {
                state.transmitVectors.removeAll(keepingCapacity: true)
                for buffer in state.chain.readable {
                    state.transmitVectors.append(iovec(iov_base: buffer.host, iov_len: Int(buffer.length)))
                }
                let written = state.transmitVectors.withUnsafeBufferPointer { writev(endpoint.rawValue, $0.baseAddress, Int32($0.count)) }
                if written < 0 { counters.errorCount.add(1, ordering: .relaxed) } // dropped, as a wire would
                else {
                    counters.requestCount.add(1, ordering: .relaxed)
                    counters.addBytes(written)
                }
            } else {
                counters.errorCount.add(1, ordering: .relaxed)
            }
            completion.use(state.chain.head, length: 0)
        }
        if result.more { counters.resume(queue: Self.transmitQueue, queueEvents[Self.transmitQueue]) }
        return Outcome(interrupt: result.interrupt, fatal: result.fatal)
    }
}
