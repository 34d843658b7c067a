import Glibc
@testable import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import SwiftletTestSupport
import SwiftletVirtio
import Testing

@Suite struct VsockPacketTests {
    @Test func headerRoundTripsAndShortInputIsRefused() {
        var header = VsockHeader(sourceCID: 3, destinationCID: 2, sourcePort: 0x1234_5678, destinationPort: 1024,
                                 operation: .readWrite, flags: 3, length: 4096)
        header.bufferAllocation = 262_144
        header.forwardCount = 0xffff_fff0
        var bytes = [UInt8](repeating: 0xaa, count: VsockHeader.size)
        bytes.withUnsafeMutableBytes { header.encode(into: $0) }
        #expect(bytes[0] == 3 && bytes[8] == 2 && bytes[16] == 0x78 && bytes[28] == 1 && bytes[30] == 5)
        #expect(bytes.withUnsafeBytes { VsockHeader($0) } == header)
        #expect(bytes.withUnsafeBytes { VsockHeader(UnsafeRawBufferPointer(rebasing: $0[0..<43])) } == nil)
        var unknown = header
        unknown.operation = 99
        #expect(unknown.op == nil)
    }

    @Test func connectLines() {
        #expect(parseConnectLine(Array("CONNECT 1024".utf8)) == 1024)
        #expect(parseConnectLine(Array("CONNECT 4294967295".utf8)) == UInt32.max)
        #expect(parseConnectLine(Array("CONNECT 4294967296".utf8)) == nil)
        #expect(parseConnectLine(Array("CONNECT ".utf8)) == nil)
        #expect(parseConnectLine(Array("CONNECT -1".utf8)) == nil)
        #expect(parseConnectLine(Array("CONNECT 12a".utf8)) == nil)
        #expect(parseConnectLine(Array("connect 12".utf8)) == nil)
        #expect(parseConnectLine(Array("CONNECT 000000000001".utf8)) == nil) // longer than any port
    }

    @Test func creditTowardTheGuestWrapsAround() {
        var credit = VsockCredit(bufferAllocation: 1 << 18)
        credit.update(peerBufferAllocation: 1 << 16, peerForwardCount: 0)
        #expect(credit.peerFree == 1 << 16)
        // Send until the 32-bit counter wraps; the guest consumes as it goes.
        var forwarded: UInt32 = 0
        for _ in 0..<70_000 {
            credit.didSend(61_440)
            forwarded &+= 61_440
            credit.update(peerBufferAllocation: 1 << 16, peerForwardCount: forwarded &- 1000)
            #expect(credit.peerFree == (1 << 16) - 1000)
        }
        #expect(credit.sent < 61_440 * 70_000 % (1 << 32) + 1) // it wrapped
        // A guest that shrinks its buffer below what is in flight, or reports consuming more than it was sent, has
        // no room (instead of an underflowed, huge one).
        credit.update(peerBufferAllocation: 500, peerForwardCount: forwarded &- 1000)
        #expect(credit.peerFree == 0)
        credit.update(peerBufferAllocation: 1 << 16, peerForwardCount: forwarded &+ 10)
        #expect(credit.peerFree == 0)
    }

    @Test func creditFromTheGuestIsEnforced() {
        var credit = VsockCredit(bufferAllocation: 1000)
        do { let accepted = credit.receive(600); #expect(accepted) }
        #expect(credit.buffered == 600)
        do { let accepted = credit.receive(401); #expect(!accepted) } // beyond what was advertised
        do { let accepted = credit.receive(400); #expect(accepted) }
        #expect(credit.advertisedFree == 0)
        credit.didForward(1000)
        #expect(credit.creditUpdateDue(threshold: 100))
        credit.didAdvertise()
        #expect(!credit.creditUpdateDue(threshold: 100))
        #expect(credit.advertisedFree == 1000)
        // Counters near the wrap.
        var wrapping = VsockCredit(bufferAllocation: 1000)
        for _ in 0..<4_295 { do { let accepted = wrapping.receive(1_000_000 % 1001); #expect(accepted) }; wrapping.didForward(1_000_000 % 1001) }
        for _ in 0..<5_000_000 where wrapping.received < UInt32.max - 2000 {
            _ = wrapping.receive(1000)
            wrapping.didForward(1000)
        }
        do { let accepted = wrapping.receive(1000); #expect(accepted) }
        wrapping.didForward(1000)
        do { let accepted = wrapping.receive(1000); #expect(accepted) } // crosses 2^32
        #expect(wrapping.buffered == 1000)
        do { let accepted = wrapping.receive(1); #expect(!accepted) }
    }
}

/// The device against a fake driver (rx ring where FakeDriver puts it, tx ring above it) and real Unix sockets.
@Suite(.serialized) final class VsockDeviceTests {
    let driver: FakeDriver
    let vsock: Vsock
    let path: String
    let line = CountingLine()
    var transmitQueue: SplitQueue!
    var receiveUsedSeen: UInt16 = 0
    var receiveSlot: UInt16 = 0
    static let transmitTable = GuestAddress(0x5000), transmitAvailable = GuestAddress(0x6000), transmitUsed = GuestAddress(0x7000)
    static let receiveBuffers: UInt64 = 0x20000, transmitBuffers: UInt64 = 0x60000
    static let guestCID: UInt64 = 7

    init() throws {
        driver = try FakeDriver(size: 16)
        path = "/tmp/swiftlet-vsock-test-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        vsock = try Vsock(VsockConfiguration(guestCID: Self.guestCID, socketPath: path), clock: monotonicNanoseconds)
        vsock.attach(interrupt: VirtioInterrupt(line: line)) {}
        var transmit = driver.configuration
        transmit.descriptorTable = Self.transmitTable
        transmit.availableRing = Self.transmitAvailable
        transmit.usedRing = Self.transmitUsed
        let features = VirtioFeature.version1
        transmitQueue = try SplitQueue(transmit, maximumSize: 256, memory: driver.memory, features: features)
        try vsock.activate(VirtioActivation(queues: [try driver.queue(features: features), transmitQueue, nil],
                                            features: features, memory: driver.memory))
    }

    deinit { vsock.shutDown() }

    /// Posts `count` receive chains: a 44-byte header descriptor and a 4 KiB data descriptor each, as Linux 6.1 does.
    func postReceive(_ count: Int) throws {
        for _ in 0..<count {
            let slot = receiveSlot % 8
            let address = Self.receiveBuffers + UInt64(slot) * 0x2000
            try driver.setDescriptor(Int(slot) * 2, address: address, length: 44, flags: FakeDriver.write | FakeDriver.next, next: slot * 2 + 1)
            try driver.setDescriptor(Int(slot) * 2 + 1, address: address + 0x100, length: 4096, flags: FakeDriver.write)
            try driver.publish(slot * 2)
            receiveSlot += 1
        }
        vsock.queueEvents[0].signal()
        vsock.receiveQueueNotified()
    }

    /// The packets the device put in the receive ring since the last call.
    func received() throws -> [(header: VsockHeader, payload: [UInt8])] {
        var packets: [(VsockHeader, [UInt8])] = []
        while receiveUsedSeen != driver.usedIndex {
            let element = try driver.usedElement(receiveUsedSeen)
            receiveUsedSeen &+= 1
            let address = Self.receiveBuffers + UInt64(element.id / 2) * 0x2000
            let bytes = try driver.memory.read(count: 44, at: GuestAddress(address))
            let header = try #require(bytes.withUnsafeBytes { VsockHeader($0) })
            #expect(element.length == 44 + header.length)
            let payload = try driver.memory.read(count: Int(header.length), at: GuestAddress(address + 0x100))
            packets.append((header, payload))
        }
        return packets
    }

    var transmitSlot: UInt16 = 0

    /// The guest sends a packet: header and payload in two readable descriptors.
    func send(_ operation: VsockHeader.Operation, from guestPort: UInt32, to hostPort: UInt32, payload: [UInt8] = [],
              length: UInt32? = nil, flags: UInt32 = 0, bufferAllocation: UInt32 = 1 << 18, forwardCount: UInt32 = 0,
              sourceCID: UInt64 = VsockDeviceTests.guestCID) throws {
        var header = VsockHeader(sourceCID: sourceCID, destinationCID: 2, sourcePort: guestPort, destinationPort: hostPort,
                                 operation: operation, flags: flags, length: length ?? UInt32(payload.count))
        header.bufferAllocation = bufferAllocation
        header.forwardCount = forwardCount
        let slot = transmitSlot % 8
        transmitSlot += 1
        let address = Self.transmitBuffers + UInt64(slot) * 0x10000 / 2
        var bytes = [UInt8](repeating: 0, count: 44)
        bytes.withUnsafeMutableBytes { header.encode(into: $0) }
        try bytes.withUnsafeBytes { try driver.memory.write($0, at: GuestAddress(address)) }
        try payload.withUnsafeBytes { try driver.memory.write($0, at: GuestAddress(address + 0x100)) }
        try driver.setDescriptor(Int(slot) * 2, address: address, length: 44, flags: payload.isEmpty ? 0 : FakeDriver.next,
                                 next: slot * 2 + 1, table: Self.transmitTable)
        if !payload.isEmpty {
            try driver.setDescriptor(Int(slot) * 2 + 1, address: address + 0x100, length: UInt32(payload.count), table: Self.transmitTable)
        }
        let available = Self.transmitAvailable
        let index = try driver.memory.read(UInt16.self, at: GuestAddress(available.rawValue + 2))
        try driver.memory.write(slot * 2, at: GuestAddress(available.rawValue + 4 + 2 * UInt64(index % 16)))
        try driver.memory.write(index &+ 1, at: GuestAddress(available.rawValue + 2))
        vsock.queueEvents[1].signal()
        vsock.transmitQueueNotified()
    }

    func readAll(_ socket: UnixSocket, expecting count: Int) -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while result.count < count {
            guard socket.wait(milliseconds: 2000), case let read = (try? socket.read(into: &buffer)) ?? 0, read > 0 else { break }
            result += buffer[0..<read]
        }
        return result
    }

    @Test func configurationHoldsTheGuestCID() {
        var cid: UInt64 = 0
        withUnsafeMutableBytes(of: &cid) { vsock.readConfiguration(offset: 0, into: $0) }
        #expect(cid == Self.guestCID)
        #expect(vsock.deviceType == 19)
        #expect(throws: SwiftletError.self) { try Vsock(VsockConfiguration(guestCID: 2, socketPath: path + "x"), clock: monotonicNanoseconds) }
    }

    @Test func aGuestConnectionToAPortNobodyListensOnIsReset() throws {
        try postReceive(2)
        try send(.request, from: 40000, to: 5555)
        let packets = try received()
        #expect(packets.count == 1)
        #expect(packets[0].header.op == .reset)
        #expect(packets[0].header.sourcePort == 5555 && packets[0].header.destinationPort == 40000)
        #expect(packets[0].header.destinationCID == Self.guestCID && packets[0].header.sourceCID == 2)
        // Data for a connection that does not exist: RST too. An RST for one: nothing.
        try send(.readWrite, from: 40001, to: 5555, payload: [1, 2, 3])
        try send(.reset, from: 40002, to: 5555)
        #expect(try received().map { $0.header.op } == [.reset])
        #expect(vsock.connectionCount == 0)
    }

    @Test func guestConnectsToAHostListenerAndBothDirectionsFlow() throws {
        let listener = try UnixSocket.listen(path: "\(path)_5000")
        try postReceive(4)
        try send(.request, from: 40000, to: 5000)
        #expect(try received().map { $0.header.op } == [.response])
        let host = try #require(try listener.accept())
        let guestBytes = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try send(.readWrite, from: 40000, to: 5000, payload: guestBytes)
        #expect(readAll(host, expecting: 3000) == guestBytes)
        // Host to guest: the payload lands in the guest's buffer after the header.
        try host.writeAll(Array("hello from the host".utf8))
        _ = host.wait(milliseconds: 100)
        vsock.pollerReady()
        let data = try received()
        #expect(data.count == 1)
        #expect(data.first?.header.op == .readWrite)
        #expect(data.first?.payload == Array("hello from the host".utf8))
        #expect(data.first?.header.forwardCount == 3000) // the credit the guest used is back
        // The host closes: the guest hears SHUTDOWN(SEND); its own close completes with RST.
        host.shutdown(reading: true, writing: true)
        vsock.pollerReady()
        let shutdown = try received()
        #expect(shutdown.map { $0.header.op } == [.shutdown])
        #expect(shutdown.first?.header.flags == VsockHeader.shutdownSend)
        try send(.shutdown, from: 40000, to: 5000, flags: 3)
        #expect(try received().map { $0.header.op } == [.reset])
        #expect(vsock.connectionCount == 0)
    }

    /// A receive buffer with room for the header only (44 bytes) cannot carry data: it comes back with length 0 and
    /// counted, and the data goes into the next proper buffer the guest posts. (It used to mark the connection not
    /// readable, and the data came only when the host wrote again.)
    @Test func aHeaderOnlyReceiveBufferDoesNotStallTheConnection() throws {
        let listener = try UnixSocket.listen(path: "\(path)_5000")
        try postReceive(1)
        try send(.request, from: 40000, to: 5000)
        #expect(try received().map { $0.header.op } == [.response])
        let host = try #require(try listener.accept())
        try driver.setDescriptor(15, address: Self.receiveBuffers + 7 * 0x2000, length: 44, flags: FakeDriver.write)
        try driver.publish(15)
        try host.writeAll(Array("after the tiny buffer".utf8))
        _ = host.wait(milliseconds: 100)
        vsock.pollerReady()
        #expect(driver.usedIndex == 2)
        #expect(try driver.usedElement(1) == (15, 0))
        #expect(vsock.counters.guestErrors == 1)
        receiveUsedSeen = 2
        try postReceive(1) // a proper buffer, and its notification: nothing more from the host
        let data = try received()
        #expect(data.map { $0.header.op } == [.readWrite])
        #expect(data.first?.payload == Array("after the tiny buffer".utf8))
    }

    @Test func hostConnectsThroughTheHybridSocket() throws {
        try postReceive(4)
        let client = try UnixSocket.connect(path: path, nonBlocking: true)
        try client.writeAll(Array("CONNECT 1024\n".utf8))
        _ = client.wait(writable: true, milliseconds: 100)
        vsock.pollerReady() // accept
        vsock.pollerReady() // the line
        let request = try received()
        #expect(request.map { $0.header.op } == [.request])
        let hostPort = try #require(request.first?.header.sourcePort)
        #expect(request.first?.header.destinationPort == 1024)
        try send(.response, from: 1024, to: hostPort)
        #expect(readAll(client, expecting: "OK \(hostPort)\n".utf8.count) == Array("OK \(hostPort)\n".utf8))
        try send(.readWrite, from: 1024, to: hostPort, payload: Array("pong".utf8))
        #expect(readAll(client, expecting: 4) == Array("pong".utf8))
        // The guest resets: the host socket reaches end of stream.
        try send(.reset, from: 1024, to: hostPort)
        #expect(client.wait(milliseconds: 1000))
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(try client.read(into: &buffer) == 0)
    }

    @Test func aRefusedHostConnectionIsClosedWithoutOK() throws {
        try postReceive(2)
        let client = try UnixSocket.connect(path: path, nonBlocking: true)
        try client.writeAll(Array("CONNECT 77\n".utf8))
        _ = client.wait(writable: true, milliseconds: 100)
        vsock.pollerReady()
        vsock.pollerReady()
        let hostPort = try #require(try received().first?.header.sourcePort)
        try send(.reset, from: 77, to: hostPort)
        #expect(client.wait(milliseconds: 1000))
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(try client.read(into: &buffer) == 0)
        // Not a CONNECT line: closed at once.
        let other = try UnixSocket.connect(path: path, nonBlocking: true)
        try other.writeAll(Array("HELLO\n".utf8))
        vsock.pollerReady()
        vsock.pollerReady()
        #expect(other.wait(milliseconds: 1000))
        #expect(try other.read(into: &buffer) == 0)
    }

    @Test func aGuestThatIgnoresItsCreditIsReset() throws {
        let listener = try UnixSocket.listen(path: "\(path)_6000")
        try postReceive(4)
        try send(.request, from: 41000, to: 6000)
        #expect(try received().map { $0.header.op } == [.response])
        let host = try #require(try listener.accept()) // never reads
        let chunk = [UInt8](repeating: 0x5a, count: 32 << 10)
        var sent = 0
        var reset = false
        for _ in 0..<64 where !reset {
            try send(.readWrite, from: 41000, to: 6000, payload: chunk)
            sent += chunk.count
            reset = try received().contains { $0.header.op == .reset }
        }
        #expect(reset)
        // What the device accepted is the socket's buffer plus at most the 256 KiB of credit it gave.
        let delivered = readAll(host, expecting: sent)
        #expect(delivered.count < sent)
        #expect(vsock.connectionCount == 0)
    }

    @Test func hostileTransmitChainsAreCountedAndDropped() throws {
        try postReceive(4)
        let before = vsock.counters.guestErrors
        // A length beyond the payload that follows.
        try send(.readWrite, from: 1, to: 2, payload: [1, 2], length: 4000)
        // A spoofed source CID: dropped without a reply.
        try send(.request, from: 1, to: 2, sourceCID: 9)
        // A header cut short: one 20-byte descriptor.
        try driver.setDescriptor(14, address: Self.transmitBuffers, length: 20, table: Self.transmitTable)
        let available = Self.transmitAvailable
        let index = try driver.memory.read(UInt16.self, at: GuestAddress(available.rawValue + 2))
        try driver.memory.write(UInt16(14), at: GuestAddress(available.rawValue + 4 + 2 * UInt64(index % 16)))
        try driver.memory.write(index &+ 1, at: GuestAddress(available.rawValue + 2))
        vsock.transmitQueueNotified()
        #expect(vsock.counters.guestErrors == before + 3)
        #expect(try received().map { $0.header.op } == [.reset]) // only the first gets an RST
        #expect(vsock.connectionCount == 0)
    }

    /// A malformed packet on a connection's ports (here: a length past its buffer, and an unknown type) gets RST,
    /// and the connection ends on the host side too: its socket closes, and no later data of the guest reaches it.
    @Test func aMalformedPacketEndsItsConnection() throws {
        let listener = try UnixSocket.listen(path: "\(path)_5000")
        try postReceive(4)
        try send(.request, from: 40000, to: 5000)
        #expect(try received().map { $0.header.op } == [.response])
        let host = try #require(try listener.accept())
        #expect(vsock.connectionCount == 1)
        let before = vsock.counters.guestErrors
        try send(.readWrite, from: 40000, to: 5000, payload: [1, 2, 3], length: 4096) // length past the buffer
        #expect(vsock.counters.guestErrors == before + 1)
        #expect(try received().map { $0.header.op } == [.reset])
        #expect(vsock.connectionCount == 0)
        #expect(host.wait(milliseconds: 1000))
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(try host.read(into: &buffer) == 0) // closed, nothing delivered
        // The guest goes on as if the connection existed: its data gets RST, as for any unknown connection.
        try send(.readWrite, from: 40000, to: 5000, payload: [4, 5, 6])
        #expect(try received().map { $0.header.op } == [.reset])
    }

    @Test func resetClosesEveryConnection() throws {
        let listener = try UnixSocket.listen(path: "\(path)_7000")
        try postReceive(2)
        try send(.request, from: 42000, to: 7000)
        let host = try #require(try listener.accept())
        #expect(vsock.connectionCount == 1)
        vsock.reset()
        #expect(vsock.connectionCount == 0)
        #expect(host.wait(milliseconds: 1000))
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(try host.read(into: &buffer) == 0)
    }
}

/// The receive budget: one round fills at most `Vsock.receiveBudget` chains, and comes back for the rest.
@Suite struct VsockReceiveBudgetTests {
    @Test func oneRoundFillsAtMostTheReceiveBudget() throws {
        let size: UInt16 = 128
        let driver = try FakeDriver(size: size)
        let path = "/tmp/swiftlet-vsock-budget-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        let vsock = try Vsock(VsockConfiguration(guestCID: 3, socketPath: path), clock: monotonicNanoseconds)
        defer { vsock.shutDown() }
        vsock.attach(interrupt: VirtioInterrupt(line: CountingLine())) {}
        var transmit = driver.configuration
        transmit.descriptorTable = GuestAddress(0x5000)
        transmit.availableRing = GuestAddress(0x6000)
        transmit.usedRing = GuestAddress(0x7000)
        let features = VirtioFeature.version1
        try vsock.activate(VirtioActivation(queues: [try driver.queue(features: features),
                                                     try SplitQueue(transmit, maximumSize: 256, memory: driver.memory, features: features), nil],
                                            features: features, memory: driver.memory))
        // 100 connection requests to a port nobody listens on: 100 RSTs wait, with no receive buffer yet.
        let requests = 100
        for index in 0..<requests {
            var header = VsockHeader(sourceCID: 3, destinationCID: 2, sourcePort: 40000 + UInt32(index), destinationPort: 5555,
                                     operation: .request, length: 0)
            header.bufferAllocation = 1 << 18
            let address = GuestAddress(0x40000 + UInt64(index) * 64)
            var bytes = [UInt8](repeating: 0, count: VsockHeader.size)
            bytes.withUnsafeMutableBytes { header.encode(into: $0) }
            try bytes.withUnsafeBytes { try driver.memory.write($0, at: address) }
            try driver.setDescriptor(index, address: address.rawValue, length: 44, table: transmit.descriptorTable)
            try driver.memory.write(UInt16(index), at: GuestAddress(0x6000 + 4 + 2 * UInt64(index)))
        }
        try driver.memory.write(UInt16(requests), at: GuestAddress(0x6002))
        _ = vsock.queueEvents[1].consume()
        vsock.queueEvents[1].signal()
        vsock.transmitQueueNotified()
        #expect(driver.usedIndex == 0)
        // The guest posts 100 receive buffers: one round fills the budget's worth and signals itself to go on.
        for index in 0..<requests {
            try driver.setDescriptor(index, address: 0x60000 + UInt64(index) * 64, length: 64, flags: FakeDriver.write)
            try driver.publish(UInt16(index))
        }
        _ = vsock.queueEvents[0].consume()
        vsock.queueEvents[0].signal()
        vsock.receiveQueueNotified()
        #expect(driver.usedIndex == UInt16(Vsock.receiveBudget))
        vsock.receiveQueueNotified() // on the device's own resume signal: without it, this would do nothing
        #expect(driver.usedIndex == UInt16(requests))
        #expect(vsock.counters.notifications == 2) // one per queue from the guest; the resume is not counted
    }
}
