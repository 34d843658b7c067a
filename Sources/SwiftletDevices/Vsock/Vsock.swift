import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletVirtio
import SystemPackage

public struct VsockConfiguration: Sendable {
    /// The guest's context ID: 3 or more (0-2 are reserved, 2 is the host), below 2^32 - 1.
    public var guestCID: UInt64
    /// The host end, Firecracker's hybrid vsock: host programs connect here and send `CONNECT <port>\n`; a guest
    /// connection to host port P reaches a listener at `<socketPath>_<P>`.
    public var socketPath: String

    public init(guestCID: UInt64 = 3, socketPath: String) {
        self.guestCID = guestCID
        self.socketPath = socketPath
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
    public let offeredFeatures: UInt64 = VirtioFeature.version1 | VirtioFeature.eventIndex
        | VirtioFeature.indirectDescriptors | Vsock.featureStream
    public var deviceType: UInt32 { 19 }
    public var queueMaximumSizes: [UInt16] { [Self.queueSize, Self.queueSize, Self.queueSize] }
    private let configurationSpace: ConfigurationSpace
    private let link = DeviceLink()
    private let listener: UnixSocket
    private let poller: Poller
    private let timer: TimerFd
    private let clock: @Sendable () -> UInt64
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
        // The event queue only ever receives TRANSPORT_RESET, which a device that is never migrated does not send.
        try loop.register(queueEvents[Self.eventQueue].rawValue) { [self] _ in _ = queueEvents[Self.eventQueue].consume() }
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
        }
        queueEvents[Self.transmitQueue].signal()
    }

    public func reset() {
        state.withLock { state in
            state.closeAll(poller: poller)
            state.receive = nil
            state.transmit = nil
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
        counters.notificationCount.add(count, ordering: .relaxed)
        run { $0.sendToGuest(self) }
    }

    func transmitQueueNotified() {
        if let count = queueEvents[Self.transmitQueue].consume() {
            counters.notificationCount.add(count, ordering: .relaxed)
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
        mutating func merge(_ other: Outcome) {
            interrupt = interrupt || other.interrupt
            fatal = fatal || other.fatal
        }
    }

    private func run(_ body: (inout State) -> Outcome) {
        let outcome = state.withLock { body(&$0) }
        if outcome.interrupt { link.signalUsedBuffers() }
        if outcome.fatal {
            state.withLock { state in
                state.closeAll(poller: poller)
                state.receive = nil
                state.transmit = nil
            }
            link.reportFatalError()
        }
    }

    // MARK: - State

    struct PortPair: Hashable {
        var local: UInt32 // the host's port
        var peer: UInt32  // the guest's port
    }

    final class Connection {
        enum Phase { case connecting, connected }
        let id: UInt64
        let ports: PortPair
        let socket: UnixSocket
        var phase: Phase
        var credit = VsockCredit(bufferAllocation: Vsock.bufferAllocation)
        /// Guest-to-host bytes the host socket could not take yet, in order, from `pendingStart`.
        var pending: [UInt8] = []
        var pendingStart = 0
        /// How many bytes at the front of `pending` are the device's own (the `OK` line), outside the credit.
        var ownPending = 0
        var watchingWritable = false
        /// The host socket may have bytes to read (edge-triggered: true until a read says EAGAIN).
        var hostReadable = false
        var hostEnded = false
        /// In the round-robin list of connections with data for the guest.
        var queued = false
        /// SHUTDOWN flags received from the guest.
        var guestShutdown: UInt32 = 0
        var creditUpdateQueued = false
        let deadline: UInt64?

        init(id: UInt64, ports: PortPair, socket: UnixSocket, phase: Phase, deadline: UInt64?) {
            self.id = id
            self.ports = ports
            self.socket = socket
            self.phase = phase
            self.deadline = deadline
        }

        var pendingCount: Int { pending.count - pendingStart }
    }

    struct PendingClient {
        let socket: UnixSocket
        var line: [UInt8] = []
        let deadline: UInt64
    }

    /// A packet for the guest that carries no payload.
    struct ControlPacket {
        var header: VsockHeader
        /// The connection whose credit fields it carries, if it still exists when the packet is sent.
        var connection: UInt64?
    }

    /// @unchecked Sendable: queue and chain pointers into guest memory, only used under the lock.
    struct State: @unchecked Sendable {
        var receive: SplitQueue?
        var transmit: SplitQueue?
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

        // MARK: Host side

        mutating func handleHostEvents(_ device: Vsock) {
            device.poller.poll(into: &ready)
            let events = ready
            for (token, flags) in events {
                if token == Vsock.listenerToken {
                    acceptClients(device)
                } else if token == Vsock.timerToken {
                    _ = device.timer.consume()
                    expire(device)
                } else if token & Vsock.clientTokenBit != 0 {
                    readConnectLine(device, id: token & ~Vsock.clientTokenBit)
                } else if let connection = connections[token] {
                    if flags & UInt32(EPOLLOUT.rawValue) != 0 { flushPending(device, connection) }
                    if connections[token] != nil,
                       flags & (UInt32(EPOLLIN.rawValue) | UInt32(EPOLLHUP.rawValue) | UInt32(EPOLLERR.rawValue) | UInt32(EPOLLRDHUP.rawValue)) != 0 {
                        connection.hostReadable = true
                        enqueueData(connection)
                    }
                }
            }
        }

        mutating func acceptClients(_ device: Vsock) {
            while true {
                guard let socket = try? device.listener.accept() else { return }
                guard receive != nil, clients.count < Vsock.maximumPendingClients,
                      connections.count < Vsock.maximumConnections else {
                    continue // closed at once: the driver is not ready, or too many connections
                }
                let id = takeID()
                guard (try? device.poller.add(socket.rawValue, token: id | Vsock.clientTokenBit, events: UInt32(EPOLLIN.rawValue))) != nil else { continue }
                clients[id] = PendingClient(socket: socket, deadline: device.clock() + Vsock.connectTimeout)
                armTimer(device)
            }
        }

        /// Reads the `CONNECT <port>\n` line a byte at a time, so no byte after it is consumed here.
        mutating func readConnectLine(_ device: Vsock, id: UInt64) {
            guard var client = clients[id] else { return }
            var byte: [UInt8] = [0]
            while true {
                let count: Int?
                do { count = try client.socket.read(into: &byte) } catch {
                    return dropClient(device, id)
                }
                guard let count else { clients[id] = client; return } // nothing more yet
                guard count == 1 else { return dropClient(device, id) } // closed before the line ended
                if byte[0] == UInt8(ascii: "\n") { break }
                client.line.append(byte[0])
                guard client.line.count <= 32 else { return dropClient(device, id) }
            }
            clients[id] = nil
            device.poller.remove(client.socket.rawValue)
            guard let port = parseConnectLine(client.line), receive != nil, connections.count < Vsock.maximumConnections else {
                return // closed: not a CONNECT line, or nowhere to connect
            }
            // A host port that no connection uses: the guest tells connections apart by both ports.
            var local = nextLocalPort
            while byPorts[PortPair(local: local, peer: port)] != nil { local &+= 1 }
            nextLocalPort = local &+ 1 < (1 << 30) ? 1 << 30 : local &+ 1
            let connection = Connection(id: takeID(), ports: PortPair(local: local, peer: port), socket: client.socket,
                                        phase: .connecting, deadline: device.clock() + Vsock.connectTimeout)
            guard add(device, connection) else { return }
            queueControl(device, connection, .request)
            armTimer(device)
        }

        mutating func dropClient(_ device: Vsock, _ id: UInt64) {
            guard let client = clients.removeValue(forKey: id) else { return }
            device.poller.remove(client.socket.rawValue)
        }

        mutating func add(_ device: Vsock, _ connection: Connection) -> Bool {
            let events = UInt32(EPOLLIN.rawValue) | UInt32(EPOLLRDHUP.rawValue) | UInt32(EPOLLET.rawValue)
            guard (try? device.poller.add(connection.socket.rawValue, token: connection.id, events: events)) != nil else { return false }
            connections[connection.id] = connection
            byPorts[connection.ports] = connection.id
            return true
        }

        mutating func remove(_ device: Vsock, _ connection: Connection) {
            device.poller.remove(connection.socket.rawValue)
            connections[connection.id] = nil
            byPorts[connection.ports] = nil
        }

        /// Ends a connection abruptly: the host socket closes and the guest gets RST.
        mutating func reset(_ device: Vsock, _ connection: Connection) {
            remove(device, connection)
            queueControl(device, connection, .reset)
        }

        mutating func armTimer(_ device: Vsock) {
            guard !timerArmed else { return }
            timerArmed = true
            device.timer.arm(initial: Vsock.connectTimeout / 4, interval: Vsock.connectTimeout / 4)
        }

        mutating func expire(_ device: Vsock) {
            let now = device.clock()
            for (id, client) in clients where client.deadline <= now { dropClient(device, id) }
            var waiting = !clients.isEmpty
            for connection in Array(connections.values) where connection.phase == .connecting {
                if let deadline = connection.deadline, deadline <= now {
                    reset(device, connection) // the guest never answered the REQUEST
                } else {
                    waiting = true
                }
            }
            if !waiting {
                timerArmed = false
                device.timer.arm(initial: 0)
            }
        }

        mutating func enqueueData(_ connection: Connection) {
            guard !connection.queued, connection.phase == .connected, !connection.hostEnded else { return }
            connection.queued = true
            dataReady.append(connection.id)
        }

        mutating func queueControl(_ device: Vsock, _ connection: Connection, _ operation: VsockHeader.Operation, flags: UInt32 = 0) {
            let header = VsockHeader(sourceCID: Vsock.hostCID, destinationCID: device.configuration.guestCID,
                                     sourcePort: connection.ports.local, destinationPort: connection.ports.peer,
                                     operation: operation, flags: flags)
            control.append(ControlPacket(header: header, connection: connection.id))
        }

        /// Writes what the host socket takes of the bytes already waiting.
        mutating func flushPending(_ device: Vsock, _ connection: Connection) {
            while connection.pendingCount > 0 {
                let written: Int?
                do {
                    written = try connection.socket.write(connection.pending, from: connection.pendingStart)
                } catch {
                    return reset(device, connection) // the host end is gone
                }
                guard let written else {
                    watchWritable(device, connection, true)
                    return
                }
                connection.pendingStart += written
                // The OK line at the front is the device's own, not guest bytes under credit.
                let own = min(written, connection.ownPending)
                connection.ownPending -= own
                connection.credit.didForward(UInt32(written - own))
            }
            connection.pending.removeAll(keepingCapacity: connection.pending.capacity <= 64 << 10)
            connection.pendingStart = 0
            watchWritable(device, connection, false)
            afterForwarding(device, connection)
        }

        mutating func watchWritable(_ device: Vsock, _ connection: Connection, _ on: Bool) {
            guard connection.watchingWritable != on else { return }
            connection.watchingWritable = on
            var events = UInt32(EPOLLIN.rawValue) | UInt32(EPOLLRDHUP.rawValue) | UInt32(EPOLLET.rawValue)
            if on { events |= UInt32(EPOLLOUT.rawValue) }
            try? device.poller.modify(connection.socket.rawValue, token: connection.id, events: events)
        }

        /// After bytes reached the host socket: a half-close the guest asked for can happen, and the guest may need
        /// to hear that it has room again.
        mutating func afterForwarding(_ device: Vsock, _ connection: Connection) {
            guard connections[connection.id] != nil, connection.pendingCount == 0 else { return }
            if connection.guestShutdown == VsockHeader.shutdownReceive | VsockHeader.shutdownSend {
                return reset(device, connection)
            }
            if connection.guestShutdown & VsockHeader.shutdownSend != 0 {
                connection.socket.shutdown(reading: false, writing: true)
            }
            if !connection.creditUpdateQueued,
               connection.credit.creditUpdateDue(threshold: UInt32(Vsock.maximumPayload)) {
                connection.creditUpdateQueued = true
                queueControl(device, connection, .creditUpdate)
            }
        }

        // MARK: Guest to host (tx queue)

        /// Pops the next valid chain into `chain`: malformed ones go back with length 0 and are counted. false when
        /// the ring is empty, nil when it is corrupt beyond use (the device then needs a reset).
        mutating func popChain(_ device: Vsock, _ queue: SplitQueue, completed: inout Bool) -> Bool? {
            while true {
                do { return try queue.pop(into: &chain) } catch .invalidChain(let head, _) {
                    device.counters.errorCount.add(1, ordering: .relaxed)
                    queue.addUsed(head: head, length: 0)
                    completed = true
                } catch {
                    device.counters.errorCount.add(1, ordering: .relaxed)
                    return nil
                }
            }
        }


        mutating func receiveFromGuest(_ device: Vsock) -> Outcome {
            var outcome = Outcome()
            guard let queue = transmit else { return outcome }
            var completed = false
            repeat {
                while true {
                    guard let popped = popChain(device, queue, completed: &completed) else {
                        outcome.fatal = true
                        return outcome
                    }
                    guard popped else { break }
                    handleTransmitChain(device)
                    queue.addUsed(head: chain.head, length: 0)
                    completed = true
                }
            } while queue.enableNotification()
            outcome.interrupt = completed && queue.needsInterrupt()
            return outcome
        }

        /// Gathers the header from the chain's first readable bytes; nil when the chain is too short.
        mutating func readHeader() -> VsockHeader? {
            var copied = 0
            for buffer in chain.readable where copied < VsockHeader.size {
                let count = min(Int(buffer.length), VsockHeader.size - copied)
                headerBytes.withUnsafeMutableBytes { ($0.baseAddress! + copied).copyMemory(from: buffer.host, byteCount: count) }
                copied += count
            }
            guard copied == VsockHeader.size else { return nil }
            return headerBytes.withUnsafeBytes { VsockHeader($0) }
        }

        /// The payload part of `buffers` (what follows the header), up to `length` bytes, as iovecs in `vectors`.
        mutating func payloadVectors(_ buffers: ArraySlice<DescriptorBuffer>, length: Int) {
            vectors.removeAll(keepingCapacity: true)
            var skip = VsockHeader.size
            var remaining = length
            for buffer in buffers where remaining > 0 {
                var start = 0
                if skip > 0 {
                    start = min(skip, Int(buffer.length))
                    skip -= start
                }
                let count = min(Int(buffer.length) - start, remaining)
                if count > 0 {
                    vectors.append(iovec(iov_base: buffer.host + start, iov_len: count))
                    remaining -= count
                }
            }
        }

        mutating func handleTransmitChain(_ device: Vsock) {
            // A tx chain is device-readable only: the header, then the payload.
            guard chain.readableCount == chain.buffers.count, let header = readHeader() else {
                device.counters.errorCount.add(1, ordering: .relaxed)
                return
            }
            let available = chain.readableLength - UInt64(VsockHeader.size)
            guard header.sourceCID == device.configuration.guestCID else {
                device.counters.errorCount.add(1, ordering: .relaxed) // spoofed source: dropped
                return
            }
            let ports = PortPair(local: header.destinationPort, peer: header.sourcePort)
            let operation = header.op
            guard header.destinationCID == Vsock.hostCID, header.type == VsockHeader.typeStream,
                  UInt64(header.length) <= available, Int(header.length) <= Vsock.maximumPayload,
                  operation != nil, operation != .invalid else {
                device.counters.errorCount.add(1, ordering: .relaxed)
                // The guest hears RST for these ports, so a connection on them ends here too: the host socket
                // closes, and guest and device agree that it is gone (it used to stay open and go on delivering).
                if let connection = byPorts[ports].flatMap({ connections[$0] }) {
                    if operation == .reset { remove(device, connection) } else { reset(device, connection) }
                } else if operation != .reset {
                    resetUnknown(device, header)
                }
                return
            }
            let connection = byPorts[ports].flatMap { connections[$0] }
            if operation == .request {
                guard connection == nil else {
                    device.counters.errorCount.add(1, ordering: .relaxed)
                    if let connection { reset(device, connection) }
                    return
                }
                return connectToHost(device, header, ports)
            }
            guard let connection else {
                if operation != .reset { resetUnknown(device, header) }
                return
            }
            connection.credit.update(peerBufferAllocation: header.bufferAllocation, peerForwardCount: header.forwardCount)
            // Any packet may carry new credit: a connection that stopped for the lack of it goes on.
            if connection.hostReadable && connection.credit.peerFree > 0 { enqueueData(connection) }
            switch operation! {
            case .response:
                guard connection.phase == .connecting else {
                    device.counters.errorCount.add(1, ordering: .relaxed)
                    return reset(device, connection)
                }
                connection.phase = .connected
                // The host program learns the connection is up, then reads the guest's bytes after this line.
                let reply = Array("OK \(connection.ports.local)\n".utf8)
                connection.pending.append(contentsOf: reply)
                connection.ownPending += reply.count
                flushPending(device, connection)
                if connections[connection.id] != nil {
                    connection.hostReadable = true
                    enqueueData(connection)
                }
            case .reset:
                remove(device, connection)
            case .shutdown:
                connection.guestShutdown |= header.flags & (VsockHeader.shutdownReceive | VsockHeader.shutdownSend)
                // The guest closed (both flags): once the bytes still waiting for the host socket are out, the host
                // end closes and the guest's close completes with RST (afterForwarding).
                afterForwarding(device, connection)
            case .readWrite:
                guard connection.phase == .connected, connection.guestShutdown & VsockHeader.shutdownSend == 0 else {
                    device.counters.errorCount.add(1, ordering: .relaxed)
                    return reset(device, connection)
                }
                deliver(device, connection, length: Int(header.length))
            case .creditUpdate:
                if connection.hostReadable { enqueueData(connection) }
            case .creditRequest:
                if !connection.creditUpdateQueued {
                    connection.creditUpdateQueued = true
                    queueControl(device, connection, .creditUpdate)
                }
            case .request, .invalid:
                break // handled above
            }
            device.counters.requestCount.add(1, ordering: .relaxed)
        }

        /// An RST for a packet that belongs to no connection (§5.10.6.4: a request to an unbound port, or a stray).
        mutating func resetUnknown(_ device: Vsock, _ header: VsockHeader) {
            guard control.count - controlStart < 4 * Vsock.maximumConnections else { return } // a flood: dropped
            let reply = VsockHeader(sourceCID: Vsock.hostCID, destinationCID: device.configuration.guestCID,
                                    sourcePort: header.destinationPort, destinationPort: header.sourcePort, operation: .reset)
            control.append(ControlPacket(header: reply, connection: nil))
        }

        /// A guest connection to host port P reaches the Unix listener at `<path>_<P>`; none there is RST.
        mutating func connectToHost(_ device: Vsock, _ header: VsockHeader, _ ports: PortPair) {
            guard connections.count < Vsock.maximumConnections,
                  let socket = try? UnixSocket.connect(path: "\(device.configuration.socketPath)_\(ports.local)") else {
                return resetUnknown(device, header)
            }
            let connection = Connection(id: takeID(), ports: ports, socket: socket, phase: .connected, deadline: nil)
            connection.credit.update(peerBufferAllocation: header.bufferAllocation, peerForwardCount: header.forwardCount)
            guard add(device, connection) else { return resetUnknown(device, header) }
            queueControl(device, connection, .response)
            connection.hostReadable = true
            enqueueData(connection)
        }

        /// Moves an RW payload to the host socket: straight from guest memory while the socket takes it, into the
        /// connection's bounded buffer when it does not.
        mutating func deliver(_ device: Vsock, _ connection: Connection, length: Int) {
            guard connection.credit.receive(UInt32(length)) else {
                device.counters.errorCount.add(1, ordering: .relaxed) // more than the credit it was given
                return reset(device, connection)
            }
            guard length > 0 else { return }
            device.counters.addBytes(length)
            payloadVectors(chain.readable, length: length)
            var written = 0
            if connection.pendingCount == 0 {
                let count = vectors.withUnsafeBufferPointer { writev(connection.socket.rawValue, $0.baseAddress, Int32($0.count)) }
                if count < 0 && errno != EAGAIN && errno != EINTR {
                    return reset(device, connection) // the host end is gone
                }
                written = max(count, 0)
                connection.credit.didForward(UInt32(written))
            }
            if written < length {
                var skip = written
                for vector in vectors {
                    if skip >= vector.iov_len { skip -= vector.iov_len; continue }
                    let bytes = UnsafeRawBufferPointer(start: vector.iov_base! + skip, count: vector.iov_len - skip)
                    connection.pending.append(contentsOf: bytes)
                    skip = 0
                }
                watchWritable(device, connection, true)
            } else {
                afterForwarding(device, connection)
            }
        }

        // MARK: Host to guest (rx queue)

        /// Fills receive buffers: control packets first (they are few and small), then data from connections in
        /// turn, each packet as large as the buffer, the guest's credit and the socket allow.
        mutating func sendToGuest(_ device: Vsock) -> Outcome {
            var outcome = Outcome()
            guard let queue = receive else { return outcome }
            var completed = false
            while true {
                var ringEmpty = false
                while controlStart < control.count || dataStart < dataReady.count {
                    // Data first checks that it can send, so a chain is popped only for a packet that goes.
                    var dataConnection: Connection?
                    if controlStart == control.count {
                        let id = dataReady[dataStart]
                        guard let connection = connections[id], connection.phase == .connected,
                              connection.hostReadable, !connection.hostEnded, connection.credit.peerFree > 0 else {
                            connections[id]?.queued = false
                            dataStart += 1
                            continue
                        }
                        dataConnection = connection
                    }
                    guard let popped = popChain(device, queue, completed: &completed) else {
                        outcome.fatal = true
                        return outcome
                    }
                    guard popped else { ringEmpty = true; break }
                    // A receive chain is device-writable only and holds at least a header.
                    guard chain.readableCount == 0, chain.writableLength >= UInt64(VsockHeader.size) else {
                        device.counters.errorCount.add(1, ordering: .relaxed)
                        queue.addUsed(head: chain.head, length: 0)
                        completed = true
                        continue
                    }
                    if let connection = dataConnection {
                        guard chain.writableLength > UInt64(VsockHeader.size) else {
                            // A buffer with room for the header only can carry no data: it goes back unused and
                            // counted, and the connection stays readable for the guest's next, proper buffer (it
                            // used to be marked not readable here, and its edge-triggered socket never woke it).
                            device.counters.errorCount.add(1, ordering: .relaxed)
                            queue.addUsed(head: chain.head, length: 0)
                            completed = true
                            continue
                        }
                        if let length = sendData(device, connection) {
                            queue.addUsed(head: chain.head, length: UInt32(VsockHeader.size + length))
                            completed = true
                        } else {
                            queue.rewind(1)
                        }
                    } else {
                        var packet = control[controlStart]
                        controlStart += 1
                        if let id = packet.connection, let connection = connections[id] {
                            packet.header.bufferAllocation = connection.credit.bufferAllocation
                            packet.header.forwardCount = connection.credit.forwarded
                            connection.credit.didAdvertise()
                            if packet.header.op == .creditUpdate { connection.creditUpdateQueued = false }
                        } else if packet.header.op != .reset {
                            queue.rewind(1) // its connection is gone: only an RST still makes sense
                            continue
                        }
                        writeHeader(packet.header)
                        queue.addUsed(head: chain.head, length: UInt32(VsockHeader.size))
                        completed = true
                    }
                }
                compact()
                // Work left and no buffers: ask to be notified when the guest posts some (and look once more).
                if ringEmpty, queue.enableNotification() { continue }
                if !ringEmpty { _ = queue.enableNotification() }
                break
            }
            outcome.interrupt = completed && queue.needsInterrupt()
            return outcome
        }

        /// Reads from the host socket into the chain after a header; the payload length, or nil when nothing was sent
        /// (the chain then goes back).
        mutating func sendData(_ device: Vsock, _ connection: Connection) -> Int? {
            let limit = min(Int(chain.writableLength) - VsockHeader.size, Int(connection.credit.peerFree), Vsock.maximumPayload)
            payloadVectors(chain.writable, length: limit)
            let count = limit == 0 ? 0 : vectors.withUnsafeBufferPointer { readv(connection.socket.rawValue, $0.baseAddress, Int32($0.count)) }
            if count > 0 {
                device.counters.addBytes(count)
                var header = VsockHeader(sourceCID: Vsock.hostCID, destinationCID: device.configuration.guestCID,
                                         sourcePort: connection.ports.local, destinationPort: connection.ports.peer,
                                         operation: .readWrite, length: UInt32(count))
                header.bufferAllocation = connection.credit.bufferAllocation
                header.forwardCount = connection.credit.forwarded
                connection.credit.didAdvertise()
                connection.credit.didSend(UInt32(count))
                writeHeader(header)
                // Round robin: this connection goes to the back of the list.
                dataStart += 1
                dataReady.append(connection.id)
                return count
            }
            dataStart += 1
            connection.queued = false
            if count == 0 && limit > 0 {
                // The host program will send no more: tell the guest (it reads to the end, then closes).
                connection.hostEnded = true
                queueControl(device, connection, .shutdown, flags: VsockHeader.shutdownSend)
            } else if count < 0 && errno != EAGAIN && errno != EINTR {
                reset(device, connection)
            } else {
                connection.hostReadable = false // EAGAIN: the next edge brings it back
            }
            return nil
        }

        /// Writes a header across the chain's first writable buffers.
        mutating func writeHeader(_ header: VsockHeader) {
            headerBytes.withUnsafeMutableBytes { header.encode(into: $0) }
            var copied = 0
            for buffer in chain.writable where copied < VsockHeader.size {
                let count = min(Int(buffer.length), VsockHeader.size - copied)
                headerBytes.withUnsafeBytes { buffer.host.copyMemory(from: $0.baseAddress! + copied, byteCount: count) }
                copied += count
            }
        }

        mutating func compact() {
            if controlStart == control.count {
                control.removeAll(keepingCapacity: true)
                controlStart = 0
            } else if controlStart > 1024 {
                control.removeFirst(controlStart)
                controlStart = 0
            }
            if dataStart == dataReady.count {
                dataReady.removeAll(keepingCapacity: true)
                dataStart = 0
            } else if dataStart > 1024 {
                dataReady.removeFirst(dataStart)
                dataStart = 0
            }
        }
    }
}
