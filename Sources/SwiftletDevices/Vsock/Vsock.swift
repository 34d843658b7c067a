import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletSnapshot
import SwiftletVirtio
import SystemPackage

public struct VsockConfiguration: Sendable, Equatable {
    /// The guest's context ID: 3 or more (0-2 are reserved, 2 is the host), below 2^32 - 1.
    public var guestCID: UInt64
    /// The host end, Firecracker's hybrid vsock: host programs connect here and send `CONNECT <port>\n`; a guest
    /// connection to host port P reaches a listener at `<socketPath>_<P>`.
    public var socketPath: String
    /// Offer VIRTIO_F_RING_PACKED (on by default): the guest's driver then picks the packed or the split layout.
    public var packedRing: Bool

    public init(guestCID: UInt64 = 3, socketPath: String, packedRing: Bool = true) {
        self.guestCID = guestCID
        self.socketPath = socketPath
        self.packedRing = packedRing
    }
}

/// virtio-vsock (virtio 1.2 §5.10) in userspace, stream sockets only, bridged to Unix sockets on the host.
///
/// Everything runs on the device loop: the rx, tx and event queue notifications, and a `Poller` holding the host
/// listener, the host sockets that have not said `CONNECT` yet, and one socket per connection. Data moves between
/// guest buffers and host sockets with one readv or writev per packet; bytes from the guest are copied only when the
/// host socket is full, and then never more than the credit this device advertised for the connection.
public final class Vsock: LoopDevice {
    public static let queueSize: UInt16 = 256
    public static let hostCID: UInt64 = 2
    /// Credit each connection advertises to the guest (what Linux uses too).
    public static let bufferAllocation: UInt32 = 256 << 10
    /// The largest payload of one packet (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
    public static let maximumPayload = 64 << 10
    public static let maximumConnections = 1024
    /// Receive chains one round fills at most: a guest that keeps posting buffers while a flood of host data and
    /// control packets waits cannot keep the device loop from its other sources (the rest goes next round).
    public static let receiveBudget = 64
    /// Host sockets that connected but have not sent their CONNECT line.
    public static let maximumPendingClients = 64
    /// How long a host CONNECT waits for the guest's answer, and a new host socket for its CONNECT line.
    public static let connectTimeout: UInt64 = 2_000_000_000
    static let receiveQueue = 0, transmitQueue = 1, eventQueue = 2
    /// VIRTIO_VSOCK_F_STREAM (§5.10.3).
    public static let featureStream: UInt64 = 1 << 0

    public let configuration: VsockConfiguration
    public let counters = DeviceCounters()
    public let queueEvents: [EventFd]
    public var offeredFeatures: UInt64 {
        VirtioFeature.version1 | VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors | Vsock.featureStream
            | (configuration.packedRing ? VirtioFeature.ringPacked : 0)
    }
    public var deviceType: UInt32 { 19 }
    public var queueMaximumSizes: [UInt16] { [Self.queueSize, Self.queueSize, Self.queueSize] }
    private let configurationSpace: ConfigurationSpace
    private let link = DeviceLink()
    let listener: UnixSocket
    let poller: Poller
    let timer: TimerFd
    let clock: @Sendable () -> UInt64
    private let state: Mutex<State>

    static let listenerToken: UInt64 = 0
    static let timerToken: UInt64 = 1
    static let clientTokenBit: UInt64 = 1 << 63

    public init(_ configuration: VsockConfiguration, clock: @escaping @Sendable () -> UInt64) throws(SwiftletError) {
        guard configuration.guestCID >= 3, configuration.guestCID < UInt64(UInt32.max) else {
            throw SwiftletError(.invalidConfiguration, "vsock guest CID \(configuration.guestCID) is reserved or too large (use 3 to 4294967294)")
        }
        self.configuration = configuration
        self.clock = clock
        do {
            queueEvents = [try EventFd(nonBlocking: true), try EventFd(nonBlocking: true), try EventFd(nonBlocking: true)]
        } catch {
            throw SwiftletError(.systemCall, "cannot create the vsock queue eventfds", cause: error)
        }
        listener = try UnixSocket.listen(path: configuration.socketPath)
        poller = try Poller()
        timer = try TimerFd()
        do {
            try poller.add(listener.rawValue, token: Self.listenerToken, events: UInt32(EPOLLIN.rawValue))
            try poller.add(timer.rawValue, token: Self.timerToken, events: UInt32(EPOLLIN.rawValue))
        } catch {
            throw SwiftletError(.systemCall, "cannot watch the vsock socket \(configuration.socketPath)", cause: error)
        }
        var space = [UInt8](repeating: 0, count: 8) // struct virtio_vsock_config { le64 guest_cid; }
        for index in 0..<8 { space[index] = UInt8(truncatingIfNeeded: configuration.guestCID >> (8 * UInt64(index))) }
        configurationSpace = ConfigurationSpace(space)
        state = Mutex(State())
    }

    public func attach(interrupt: VirtioInterrupt, onFatalError: @escaping @Sendable () -> Void) {
        link.attach(interrupt: interrupt, onFatalError: onFatalError)
    }

    public func register(on loop: EventLoop) throws(SwiftletError) {
        try loop.register(queueEvents[Self.receiveQueue].rawValue) { [self] _ in receiveQueueNotified() }
        try loop.register(queueEvents[Self.transmitQueue].rawValue) { [self] _ in transmitQueueNotified() }
        // The event queue only ever receives TRANSPORT_RESET, sent once after a restore (`restoreState`).
        try loop.register(queueEvents[Self.eventQueue].rawValue) { [self] _ in eventQueueNotified() }
        try loop.register(poller.rawValue) { [self] _ in pollerReady() }
    }

    public func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        configurationSpace.read(offset: offset, into: data)
    }

    public func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {}

    public func activate(_ activation: VirtioActivation) throws(SwiftletError) {
        guard activation.queues.count == 3, let receive = activation.queues[0], let transmit = activation.queues[1] else {
            throw SwiftletError(.guestFault, "the driver activated virtio-vsock without its rx and tx queues")
        }
        state.withLock { state in
            state.closeAll(poller: poller)
            state.receive = receive
            state.transmit = transmit
            state.events = activation.queues[2]
        }
        queueEvents[Self.transmitQueue].signal()
        if state.withLock({ $0.transportResetPending }) { queueEvents[Self.eventQueue].signal() }
    }

    public func reset() {
        state.withLock { state in
            state.closeAll(poller: poller)
            state.receive = nil
            state.transmit = nil
            state.events = nil
            state.transportResetPending = false
        }
    }

    // MARK: - Snapshots

    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (§5.10.6.7): the only event, struct virtio_vsock_event { le32 id; }.
    static let transportResetEvent: UInt32 = 0

    /// No chain is held across rounds: each is used or given back in the round that popped it.
    public func queuePositions() -> [QueuePosition?] {
        state.withLock { [$0.receive?.position, $0.transmit?.position, $0.events?.position] }
    }

    /// Connections do not survive a snapshot (their host sockets belong to the process that saved it): the restored
    /// device tells the driver with TRANSPORT_RESET, which resets every connected socket in the guest (Linux's
    /// virtio_vsock_event_handle; listening sockets stay) and makes it read the guest CID again, as the virtio spec
    /// and Firecracker do after a migration. The device's own state is therefore only that event, pending.
    public func restoreState(from decoder: SnapshotDecoder) throws(SnapshotError) {
        state.withLock { $0.transportResetPending = true }
    }

    /// The event queue: writes a pending TRANSPORT_RESET into the driver's first event buffer (or waits for one).
    func eventQueueNotified() {
        if let count = queueEvents[Self.eventQueue].consume() {
            counters.countNotifications(queue: Self.eventQueue, count)
        }
        run { state in
            var outcome = Outcome()
            guard state.transportResetPending, let queue = state.events else { return outcome }
            var completed = false
            do {
                // At most a ring's worth of buffers per notification, however many the guest keeps posting.
                for _ in 0..<Int(queue.size) {
                    guard try queue.popValid(into: &state.chain, completed: &completed,
                                             onMalformed: { counters.errorCount.add(1, ordering: .relaxed) }) else { break }
                    var writer = ChainWriter(state.chain)
                    let written = withUnsafeBytes(of: Self.transportResetEvent.littleEndian) { writer.write($0) }
                    queue.addUsed(head: state.chain.head, length: UInt32(written))
                    completed = true
                    guard written == 4 else { counters.errorCount.add(1, ordering: .relaxed); continue } // too small: the next one
                    state.transportResetPending = false
                    break
                }
            } catch {
                outcome.fatal = true
            }
            outcome.interrupt = completed && queue.needsInterrupt()
            return outcome
        }
    }

    /// Removes the socket file and closes every connection and host socket waiting to connect.
    public func shutDown() {
        unlink(configuration.socketPath)
        state.withLock { state in
            state.closeAll(poller: poller)
            for id in Array(state.clients.keys) { state.dropClient(self, id) }
        }
    }

    /// Open connections (for statistics and tests).
    public var connectionCount: Int { state.withLock { $0.connections.count } }

    // MARK: - Event handlers (device loop thread)

    func receiveQueueNotified() {
        guard let count = queueEvents[Self.receiveQueue].consume() else { return }
        counters.countNotifications(queue: Self.receiveQueue, count)
        run { $0.sendToGuest(self) }
    }

    func transmitQueueNotified() {
        if let count = queueEvents[Self.transmitQueue].consume() {
            counters.countNotifications(queue: Self.transmitQueue, count)
        }
        run { state in
            var outcome = state.receiveFromGuest(self)
            outcome.merge(state.sendToGuest(self))
            return outcome
        }
    }

    func pollerReady() {
        run { state in
            state.handleHostEvents(self)
            return state.sendToGuest(self)
        }
    }

    struct Outcome {
        var interrupt = false
        var fatal = false
        /// The receive budget ran out with packets still to send.
        var more = false
        mutating func merge(_ other: Outcome) {
            interrupt = interrupt || other.interrupt
            fatal = fatal || other.fatal
            more = more || other.more
        }
    }

    private func run(_ body: (inout State) -> Outcome) {
        let outcome = state.withLock { body(&$0) }
        if outcome.interrupt { link.signalUsedBuffers() }
        if outcome.more { counters.resume(queue: Self.receiveQueue, queueEvents[Self.receiveQueue]) }
        if outcome.fatal {
            state.withLock { state in
                state.closeAll(poller: poller)
                state.receive = nil
                state.transmit = nil
                state.events = nil
            }
            link.reportFatalError()
        }
    }

    // MARK: - State (its parts: VsockConnection.swift, VsockMuxer.swift, VsockTransmit.swift, VsockReceive.swift)

    /// @unchecked Sendable: queue and chain pointers into guest memory, only used under the lock.
    struct State: @unchecked Sendable {
        // The device's own types, for the parts of State in the other files (extensions of a nested type do not
        // see their enclosing type's members).
        typealias Connection = Vsock.Connection
        typealias PortPair = Vsock.PortPair
        typealias PendingClient = Vsock.PendingClient
        typealias ControlPacket = Vsock.ControlPacket
        typealias Outcome = Vsock.Outcome

        var receive: (any Virtqueue)?
        var transmit: (any Virtqueue)?
        var events: (any Virtqueue)?
        /// A restored device owes the driver a TRANSPORT_RESET event.
        var transportResetPending = false
        var chain = DescriptorChain(capacity: Int(Vsock.queueSize))
        var vectors: [iovec] = []
        var headerBytes = [UInt8](repeating: 0, count: VsockHeader.size)
        var connections: [UInt64: Connection] = [:]
        var byPorts: [PortPair: UInt64] = [:]
        var clients: [UInt64: PendingClient] = [:]
        var control: [ControlPacket] = []
        var controlStart = 0
        var dataReady: [UInt64] = []
        var dataStart = 0
        var nextID: UInt64 = 16
        var nextLocalPort: UInt32 = 1 << 30
        var ready: [(token: UInt64, events: UInt32)] = []
        var timerArmed = false

        mutating func closeAll(poller: Poller) {
            for connection in connections.values { poller.remove(connection.socket.rawValue) }
            connections.removeAll()
            byPorts.removeAll()
            control.removeAll()
            controlStart = 0
            dataReady.removeAll()
            dataStart = 0
        }

        mutating func takeID() -> UInt64 {
            defer { nextID += 1 }
            return nextID
        }
    }
}
