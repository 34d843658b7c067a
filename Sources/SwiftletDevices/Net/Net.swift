import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletVirtio
import SystemPackage

/// Where frames go and come from: a TAP, or a socket pair in tests. Frames carry a 12-byte virtio_net_hdr_v1.
public protocol PacketEndpoint: Sendable {
    var rawValue: Int32 { get }
    /// The TUN_F_* offloads the guest accepted for received frames.
    func setOffloads(_ flags: UInt32) throws(SwiftletError)
}

extension Tap: PacketEndpoint {}

public struct NetConfiguration: Sendable {
    public var tap: String
    public var mac: [UInt8]
    public var mtu: UInt16?
    public init(tap: String, mac: [UInt8], mtu: UInt16? = nil) {
        self.tap = tap
        self.mac = mac
        self.mtu = mtu
    }
}

/// virtio-net on a TAP (virtio 1.2 §5.1): one receive and one transmit queue. Frames pass between the guest's
/// buffers and the TAP with one readv/writev each, headers included (the TAP speaks virtio_net_hdr_v1), so checksum
/// and segmentation offloads go through to the host untouched. With MRG_RXBUF a received frame may span several
/// receive chains. When the guest has posted no receive buffers, the TAP is parked (not polled) until it does.
public final class Net: LoopDevice {
    public static let queueSize: UInt16 = 256
    /// The largest frame with its header: 12 + 65550 (a 64 KiB TSO frame and its Ethernet header).
    public static let maximumFrame = 65562
    /// The smallest: the header and an Ethernet header.
    public static let minimumFrame = VirtioNetHeader.size + 14
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

    /// @unchecked Sendable: the iovecs point into guest memory and are only used under `active`'s lock.
    private struct Active: @unchecked Sendable {
        var receive: SplitQueue?
        var transmit: SplitQueue?
        var mergeable: Bool
        var chain = DescriptorChain(capacity: Int(Net.queueSize))
        var vectors: [iovec] = []
        var reserved: [(head: UInt16, capacity: Int)] = []
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
        if configuration.mtu != nil { features |= NetFeature.mtu }
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
        let registration = try loop.register(endpoint.rawValue) { [self] _ in endpointReadable() }
        self.loop.withLock { $0 = (loop, registration) }
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
        state.vectors.reserveCapacity(Int(Self.queueSize))
        state.reserved.reserveCapacity(Int(Self.queueSize))
        active.withLock { $0 = state }
        setReceiveParked(false)
        queueEvents[Self.transmitQueue].signal()
    }

    public func reset() {
        active.withLock { $0 = nil }
        _ = try? endpoint.setOffloads(0)
    }

    private func setReceiveParked(_ parked: Bool) {
        guard let (loop, registration) = loop.withLock({ $0 }) else { return }
        loop.setInterest(registration, events: parked ? 0 : UInt32(EPOLLIN.rawValue))
    }

    // MARK: - Event handlers (device loop thread)

    func receiveQueueNotified() {
        guard let count = queueEvents[Self.receiveQueue].consume() else { return }
        counters.notificationCount.add(count, ordering: .relaxed)
        // New receive buffers: a parked TAP can be read again.
        endpointReadable()
    }

    func endpointReadable() {
        let outcome = active.withLock { state -> Outcome in
            guard state != nil, let queue = state!.receive else { return Outcome() }
            return receiveFrames(&state!, queue: queue)
        }
        conclude(outcome)
    }

    func transmitQueueNotified() {
        if let count = queueEvents[Self.transmitQueue].consume() {
            counters.notificationCount.add(count, ordering: .relaxed)
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
        if outcome.interrupt { link.signalUsedBuffers() }
        if outcome.fatal {
            active.withLock { $0 = nil }
            setReceiveParked(true)
            link.reportFatalError()
        }
    }

    /// Pops the next valid chain; malformed ones are returned with length 0 and counted. nil when the ring is empty.
    private func nextChain(_ state: inout Active, _ queue: SplitQueue, completed: inout Bool) throws(QueueError) -> Bool {
        while true {
            do {
                return try queue.pop(into: &state.chain)
            } catch .invalidChain(let head, _) {
                counters.errorCount.add(1, ordering: .relaxed)
                queue.addUsed(head: head, length: 0)
                completed = true
            }
        }
    }

    /// Reads frames from the endpoint into receive chains until it has no more or the guest has no buffers.
    private func receiveFrames(_ state: inout Active, queue: SplitQueue) -> Outcome {
        var outcome = Outcome()
        var completed = false
        while true {
            // Reserve chains until they can hold the largest frame (one chain without MRG_RXBUF).
            state.vectors.removeAll(keepingCapacity: true)
            state.reserved.removeAll(keepingCapacity: true)
            var capacity = 0
            do {
                while capacity < Self.maximumFrame, try nextChain(&state, queue, completed: &completed) {
                    guard state.chain.readableCount == 0 else { // receive buffers are written by the device only
                        counters.errorCount.add(1, ordering: .relaxed)
                        queue.addUsed(head: state.chain.head, length: 0)
                        completed = true
                        continue
                    }
                    for buffer in state.chain.writable {
                        state.vectors.append(iovec(iov_base: buffer.host, iov_len: Int(buffer.length)))
                    }
                    let chainCapacity = Int(state.chain.writableLength)
                    state.reserved.append((state.chain.head, chainCapacity))
                    capacity += chainCapacity
                    if !state.mergeable { break }
                }
            } catch {
                counters.errorCount.add(1, ordering: .relaxed)
                queue.rewind(UInt16(state.reserved.count))
                outcome.fatal = true
                break
            }
            if state.reserved.isEmpty {
                // Nowhere to put a frame: stop polling the endpoint until the guest posts buffers. Frames wait in
                // the TAP's queue meanwhile; none is read and lost.
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
            let count = state.vectors.withUnsafeBufferPointer { readv(endpoint.rawValue, $0.baseAddress, Int32($0.count)) }
            if count <= 0 {
                queue.rewind(UInt16(state.reserved.count))
                if count < 0 && errno != EAGAIN && errno != EINTR { counters.errorCount.add(1, ordering: .relaxed) }
                break
            }
            guard count >= VirtioNetHeader.size,
                  let used = receiveChainCount(length: count, capacities: state.reserved.lazy.map(\.capacity),
                                               mergeable: state.mergeable) else {
                // A frame shorter than its header, or larger than the chains (only without MRG_RXBUF, when the
                // driver posted buffers smaller than §5.1.6.3.1 asks): dropped, the chains go back unused.
                counters.errorCount.add(1, ordering: .relaxed)
                queue.rewind(UInt16(state.reserved.count))
                continue
            }
            setNumBuffers(UInt16(used), in: state.vectors)
            var remaining = count
            for index in 0..<used {
                let length = min(state.reserved[index].capacity, remaining)
                queue.addUsed(head: state.reserved[index].head, length: UInt32(length))
                remaining -= length
            }
            queue.rewind(UInt16(state.reserved.count - used))
            counters.requestCount.add(1, ordering: .relaxed)
            completed = true
        }
        // Ask for a notification when the guest posts more buffers (EVENT_IDX's avail_event).
        if !outcome.fatal { _ = queue.enableNotification() }
        outcome.interrupt = completed && queue.needsInterrupt()
        return outcome
    }

    /// num_buffers (the last field of the header at the start of the first chain), wherever the header's bytes lie.
    private func setNumBuffers(_ value: UInt16, in vectors: [iovec]) {
        var position = 0 // of the first byte of the current vector within the frame
        for vector in vectors {
            for byteIndex in 0..<2 {
                let offset = VirtioNetHeader.numBuffersOffset + byteIndex - position
                if offset >= 0 && offset < vector.iov_len {
                    vector.iov_base.storeBytes(of: UInt8(truncatingIfNeeded: value >> (8 * byteIndex)), toByteOffset: offset, as: UInt8.self)
                }
            }
            position += vector.iov_len
            if position >= VirtioNetHeader.size { return }
        }
    }

    /// Writes every frame the guest queued to the endpoint, each with one writev straight from its buffers.
    private func transmitFrames(_ state: inout Active, queue: SplitQueue) -> Outcome {
        var outcome = Outcome()
        var completed = false
        repeat {
            while true {
                let popped: Bool
                do { popped = try nextChain(&state, queue, completed: &completed) } catch {
                    counters.errorCount.add(1, ordering: .relaxed)
                    outcome.fatal = true
                    outcome.interrupt = completed && queue.needsInterrupt()
                    return outcome
                }
                guard popped else { break }
                let length = state.chain.readableLength
                // A transmit chain is device-readable only, holds at least the headers and at most the largest frame.
                if state.chain.readableCount == state.chain.buffers.count, length >= UInt64(Self.minimumFrame),
                   length <= UInt64(Self.maximumFrame) {
                    state.vectors.removeAll(keepingCapacity: true)
                    for buffer in state.chain.readable {
                        state.vectors.append(iovec(iov_base: buffer.host, iov_len: Int(buffer.length)))
                    }
                    let written = state.vectors.withUnsafeBufferPointer { writev(endpoint.rawValue, $0.baseAddress, Int32($0.count)) }
                    if written < 0 { counters.errorCount.add(1, ordering: .relaxed) } // dropped, as a wire would
                    else { counters.requestCount.add(1, ordering: .relaxed) }
                } else {
                    counters.errorCount.add(1, ordering: .relaxed)
                }
                queue.addUsed(head: state.chain.head, length: 0)
                completed = true
            }
        } while queue.enableNotification()
        outcome.interrupt = completed && queue.needsInterrupt()
        return outcome
    }
}
