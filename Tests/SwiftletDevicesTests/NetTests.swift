import CSwiftlet
import Glibc
@testable import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import SwiftletTestSupport
import SwiftletVirtio
import Testing

/// A socket pair standing in for a TAP: SOCK_SEQPACKET keeps frame boundaries as a TAP does.
final class SocketEndpoint: PacketEndpoint, @unchecked Sendable {
    // @unchecked: tests use it from one thread.
    let device: Int32, peer: Int32
    var offloads: [UInt32] = []
    let supportedOffloads: UInt32
    init(supportedOffloads: UInt32 = UInt32(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)) throws {
        self.supportedOffloads = supportedOffloads
        var fds: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        device = fds[0]
        peer = fds[1]
    }
    deinit { close(device); close(peer) }
    var rawValue: Int32 { device }
    func setOffloads(_ flags: UInt32) throws(SwiftletError) -> UInt32 {
        offloads.append(flags)
        return flags & supportedOffloads
    }

    func send(_ frame: [UInt8]) { _ = frame.withUnsafeBytes { Glibc.send(peer, $0.baseAddress, $0.count, 0) } }
    func receive() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 70000)
        let count = buffer.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        return count >= 0 ? Array(buffer[0..<count]) : nil
    }
}

@Suite struct NetHeaderTests {
    @Test func headerRoundTrips() {
        var header = VirtioNetHeader()
        header.flags = 1
        header.gsoType = 4
        header.headerLength = 54
        header.gsoSize = 1448
        header.checksumStart = 34
        header.checksumOffset = 16
        header.numBuffers = 3
        #expect(header.bytes.count == 12)
        #expect(header.bytes == [1, 4, 54, 0, 0xa8, 5, 34, 0, 16, 0, 3, 0])
        #expect(VirtioNetHeader(header.bytes) == header)
    }

    @Test func offloadsFollowTheGuestsFeatures() {
        #expect(NetFeature.tapOffloads(negotiated: 0) == 0)
        #expect(NetFeature.tapOffloads(negotiated: NetFeature.guestChecksum) == UInt32(TUN_F_CSUM))
        #expect(NetFeature.tapOffloads(negotiated: NetFeature.guestChecksum | NetFeature.guestTSO4 | NetFeature.guestTSO6 | NetFeature.guestECN)
                == UInt32(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN))
        #expect(NetFeature.tapOffloads(negotiated: NetFeature.guestTSO4) == 0) // TSO needs checksum offload
        #expect(NetFeature.tapOffloads(negotiated: NetFeature.guestChecksum | NetFeature.guestECN) == UInt32(TUN_F_CSUM))
        #expect(NetFeature.tapOffloads(negotiated: NetFeature.guestChecksum | NetFeature.guestUSO4 | NetFeature.guestUSO6)
                == UInt32(TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6))
        #expect(NetFeature.tapOffloads(negotiated: NetFeature.guestChecksum | NetFeature.guestUSO6) == UInt32(TUN_F_CSUM | TUN_F_USO6))
        #expect(NetFeature.tapOffloads(negotiated: NetFeature.guestUSO4 | NetFeature.guestUSO6) == 0) // USO needs it too
        #expect(TUN_F_USO4 == 0x20 && TUN_F_USO6 == 0x40) // include/uapi/linux/if_tun.h
        #expect(NetFeature.guestUSO4 == 1 << 54 && NetFeature.guestUSO6 == 1 << 55 && NetFeature.hostUSO == 1 << 56)
    }

    @Test func udpSegmentationIsOfferedOnlyWhereTheTapTakesIt() throws {
        let base = UInt32(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
        let uso = NetFeature.guestUSO4 | NetFeature.guestUSO6 | NetFeature.hostUSO
        #expect(NetFeature.udpSegmentationFeatures(tapOffloads: base) == 0)
        #expect(NetFeature.udpSegmentationFeatures(tapOffloads: base | UInt32(TUN_F_USO4)) == NetFeature.guestUSO4)
        #expect(NetFeature.udpSegmentationFeatures(tapOffloads: base | UInt32(TUN_F_USO4 | TUN_F_USO6)) == uso)
        let mac: [UInt8] = [0x52, 0x54, 0, 0, 0, 1]
        let old = try Net(NetConfiguration(tap: "t", mac: mac), endpoint: try SocketEndpoint(supportedOffloads: base))
        #expect(old.offeredFeatures & uso == 0)
        #expect(old.offeredFeatures & NetFeature.guestTSO4 != 0)
        let new = try Net(NetConfiguration(tap: "t", mac: mac),
                          endpoint: try SocketEndpoint(supportedOffloads: base | UInt32(TUN_F_USO4 | TUN_F_USO6)))
        #expect(new.offeredFeatures & uso == uso)
    }

    @Test func mergeableBufferAccounting() {
        #expect(receiveChainCount(length: 3000, capacities: [1500, 1500, 1500], mergeable: true) == 2)
        #expect(receiveChainCount(length: 3001, capacities: [1500, 1500, 1500], mergeable: true) == 3)
        #expect(receiveChainCount(length: 5000, capacities: [1500, 1500], mergeable: true) == nil)
        #expect(receiveChainCount(length: 1000, capacities: [4096], mergeable: false) == 1)
        #expect(receiveChainCount(length: 3000, capacities: [1500, 1500], mergeable: false) == nil)
        #expect(receiveChainCount(length: 0, capacities: [1500], mergeable: true) == nil)
    }
}

@Suite struct NetDeviceTests {
    let driver: FakeDriver
    let endpoint: SocketEndpoint
    let net: Net
    let line = CountingLine()
    // The receive queue's ring lives where FakeDriver puts it; the transmit queue gets a second ring higher up.
    static let transmitTable = GuestAddress(0x5000), transmitAvailable = GuestAddress(0x6000), transmitUsed = GuestAddress(0x7000)

    init() throws {
        driver = try FakeDriver(size: 16)
        endpoint = try SocketEndpoint()
        net = try Net(NetConfiguration(tap: "test", mac: [0x52, 0x54, 0, 0, 0, 1]), endpoint: endpoint)
        net.attach(interrupt: VirtioInterrupt(line: line)) {}
    }

    func activate(features: UInt64) throws -> SplitQueue {
        var transmit = driver.configuration
        transmit.descriptorTable = Self.transmitTable
        transmit.availableRing = Self.transmitAvailable
        transmit.usedRing = Self.transmitUsed
        let transmitQueue = try SplitQueue(transmit, maximumSize: 256, memory: driver.memory, features: features)
        try net.activate(VirtioActivation(queues: [try driver.queue(features: features), transmitQueue],
                                          features: features, memory: driver.memory))
        return transmitQueue
    }

    /// Posts a device-writable receive chain of one buffer.
    func postReceive(_ index: UInt16, at address: UInt64, length: UInt32) throws {
        try driver.setDescriptor(Int(index), address: address, length: length, flags: FakeDriver.write)
        try driver.publish(index)
    }

    @Test func configurationAndOffloads() throws {
        var mac = [UInt8](repeating: 0, count: 6)
        mac.withUnsafeMutableBytes { net.readConfiguration(offset: 0, into: $0) }
        #expect(mac == [0x52, 0x54, 0, 0, 0, 1])
        var status: UInt16 = 0
        withUnsafeMutableBytes(of: &status) { net.readConfiguration(offset: 6, into: $0) }
        #expect(status == 1) // link up
        _ = try activate(features: VirtioFeature.version1 | NetFeature.guestChecksum | NetFeature.guestTSO4)
        #expect(endpoint.offloads == [UInt32(TUN_F_CSUM | TUN_F_TSO4)])
        net.reset()
        #expect(endpoint.offloads.last == 0)
        #expect(throws: SwiftletError.self) { try Net(NetConfiguration(tap: "t", mac: [1, 2, 3]), endpoint: endpoint) }
    }

    @Test func aWaitingFrameDoesNotWakeTheLoopWhileTheDeviceIsInactive() throws {
        // Before the driver activates the device and after it resets it, frames wait in the TAP: a readable TAP
        // that the device cannot read must not be polled (it would wake the loop over and over).
        let loop = try EventLoop(name: "net-parked")
        try net.register(on: loop)
        try loop.start()
        defer { loop.stop() }
        endpoint.send([UInt8](repeating: 0, count: 12) + [1])
        usleep(50_000)
        #expect(loop.statistics.rounds == 0)
        _ = try activate(features: VirtioFeature.version1) // a transmit kick; the TAP polled, no buffers: parked
        usleep(50_000)
        let activeRounds = loop.statistics.rounds
        #expect(activeRounds >= 1 && activeRounds <= 3)
        net.reset()
        endpoint.send([UInt8](repeating: 0, count: 12) + [2])
        usleep(50_000)
        #expect(loop.statistics.rounds == activeRounds)
    }

    @Test func receivesAFrameIntoOneChain() throws {
        _ = try activate(features: VirtioFeature.version1)
        try postReceive(0, at: 0x10000, length: 2048)
        let frame = [UInt8](repeating: 0, count: 12) + [UInt8](repeating: 0xab, count: 100)
        endpoint.send(frame)
        net.endpointReadable()
        #expect(driver.usedIndex == 1)
        #expect(try driver.usedElement(0) == (0, 112))
        let received = try driver.memory.read(count: 112, at: GuestAddress(0x10000))
        #expect(VirtioNetHeader(Array(received[0..<12])).numBuffers == 1)
        #expect(Array(received[12...]) == [UInt8](repeating: 0xab, count: 100))
        #expect(net.counters.requests == 1 && line.count == 1)
    }

    @Test func mergeableFramesSpanChainsAndGiveBackTheRest() throws {
        _ = try activate(features: VirtioFeature.version1 | NetFeature.mergeableReceiveBuffers)
        for index: UInt16 in 0..<3 { try postReceive(index, at: 0x10000 + UInt64(index) * 0x1000, length: 1500) }
        endpoint.send([UInt8](repeating: 0, count: 12) + [UInt8](repeating: 7, count: 2988)) // 3000 bytes
        net.endpointReadable()
        #expect(driver.usedIndex == 2)
        #expect(try driver.usedElement(0) == (0, 1500))
        #expect(try driver.usedElement(1) == (1, 1500))
        #expect(VirtioNetHeader(try driver.memory.read(count: 12, at: GuestAddress(0x10000))).numBuffers == 2)
        #expect(try driver.memory.read(count: 1488, at: GuestAddress(0x10000 + 12)).allSatisfy { $0 == 7 })
        #expect(try driver.memory.read(count: 1500, at: GuestAddress(0x11000)).allSatisfy { $0 == 7 })
        // The third chain was reserved, then given back: the next frame lands in it.
        endpoint.send([UInt8](repeating: 0, count: 12) + [9, 9])
        net.endpointReadable()
        #expect(driver.usedIndex == 3)
        #expect(try driver.usedElement(2) == (2, 14))
    }

    @Test func numBuffersLandsInAHeaderSplitAcrossBuffers() throws {
        _ = try activate(features: VirtioFeature.version1 | NetFeature.mergeableReceiveBuffers)
        try driver.setDescriptor(0, address: 0x10000, length: 11, flags: FakeDriver.write | FakeDriver.next, next: 1)
        try driver.setDescriptor(1, address: 0x11000, length: 2048, flags: FakeDriver.write)
        try driver.publish(0)
        endpoint.send([UInt8](repeating: 0, count: 12) + [8, 8, 8])
        net.endpointReadable()
        #expect(try driver.usedElement(0) == (0, 15))
        #expect(try driver.memory.read(UInt8.self, at: GuestAddress(0x10000 + 10)) == 1) // num_buffers, low byte
        #expect(try driver.memory.read(UInt8.self, at: GuestAddress(0x11000)) == 0)       // its high byte
        #expect(try driver.memory.read(count: 3, at: GuestAddress(0x11001)) == [8, 8, 8])
    }

    /// Chains smaller than the header (a hostile or careless driver; §5.1.6.3.1 asks for bigger ones) split it over
    /// two chains: num_buffers lands in the second one, and nothing past the header is touched.
    @Test func numBuffersLandsInAHeaderSplitAcrossChains() throws {
        _ = try activate(features: VirtioFeature.version1 | NetFeature.mergeableReceiveBuffers)
        try postReceive(0, at: 0x10000, length: 8)
        try postReceive(1, at: 0x11000, length: 2048)
        try driver.memory.write([UInt8](repeating: 0xee, count: 16), at: GuestAddress(0x11000))
        endpoint.send([UInt8](repeating: 0, count: 12) + [5, 5, 5])
        net.endpointReadable()
        #expect(try driver.usedElement(0) == (0, 8))
        #expect(try driver.usedElement(1) == (1, 7))
        #expect(try driver.memory.read(count: 8, at: GuestAddress(0x11000)) == [0, 0, 2, 0, 5, 5, 5, 0xee])
    }

    /// A TAP flooded with frames (here runts, each dropped while the buffer stays held) used to keep the device loop
    /// in one call for as long as frames kept coming, starving the loop's other sources. Now one call reads at most
    /// `Net.receiveBudget` frames; the TAP, level-triggered, brings the loop back for the rest next round.
    @Test func oneRoundReadsAtMostTheReceiveBudget() throws {
        _ = try activate(features: VirtioFeature.version1)
        try postReceive(0, at: 0x10000, length: 2048)
        let flood = Net.receiveBudget + 36
        for _ in 0..<flood { endpoint.send([1, 2, 3]) }
        net.endpointReadable()
        #expect(net.counters.guestErrors == UInt64(Net.receiveBudget))
        net.endpointReadable()
        #expect(net.counters.guestErrors == UInt64(flood))
        endpoint.send([UInt8](repeating: 0, count: 12) + [4, 5])
        net.endpointReadable()
        #expect(try driver.usedElement(0) == (0, 14))
    }

    @Test func receiveStallsWithoutBuffersAndLosesNothing() throws {
        _ = try activate(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        endpoint.send([UInt8](repeating: 0, count: 12) + [1, 2, 3])
        net.endpointReadable() // no buffers: the frame stays in the endpoint
        #expect(driver.usedIndex == 0)
        try postReceive(4, at: 0x12000, length: 2048)
        net.queueEvents[0].signal()
        net.receiveQueueNotified()
        #expect(driver.usedIndex == 1)
        #expect(try driver.usedElement(0) == (4, 15))
        #expect(try driver.memory.read(count: 3, at: GuestAddress(0x12000 + 12)) == [1, 2, 3])
    }

    @Test func receiveNotificationsOnlyWhenShortOfBuffers() throws {
        _ = try activate(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        let availableEvent = GuestAddress(FakeDriver.usedRing.rawValue + 4 + 8 * 16)
        try driver.memory.write(UInt16(0xffff), at: availableEvent)
        for index: UInt16 in 0..<3 { try postReceive(index, at: 0x10000 + UInt64(index) * 0x1000, length: 2048) }
        endpoint.send([UInt8](repeating: 0, count: 12) + [1])
        net.endpointReadable()
        // Frame 1 went into chain 0 and chain 1 is held for the next: the ring did not run dry, so the driver was
        // not asked to notify (avail_event untouched).
        #expect(driver.usedIndex == 1)
        #expect(driver.availableEvent == 0xffff)
        endpoint.send([UInt8](repeating: 0, count: 12) + [2])
        endpoint.send([UInt8](repeating: 0, count: 12) + [3])
        net.endpointReadable()
        #expect(driver.usedIndex == 3)
        #expect(try driver.usedElement(2) == (2, 13))
        #expect(driver.availableEvent == 3) // out of chains: notify at the next one
    }

    /// Receive chains of many tiny buffers (each an indirect table of 256 one-byte buffers, the most a chain may
    /// have): the device holds chains only up to IOV_MAX buffers, so the readv that carries them works and the frame
    /// lands (before, 256 such chains went into one readv of 65536 buffers, which failed with EINVAL on every try).
    @Test func heldReceiveBuffersStayWithinIOVMax() throws {
        let big = try FakeDriver(size: 256)
        let features = VirtioFeature.version1 | VirtioFeature.indirectDescriptors | NetFeature.mergeableReceiveBuffers
        var transmit = big.configuration
        transmit.descriptorTable = Self.transmitTable
        transmit.availableRing = Self.transmitAvailable
        transmit.usedRing = Self.transmitUsed
        let device = try Net(NetConfiguration(tap: "test", mac: [0x52, 0x54, 0, 0, 0, 1]), endpoint: endpoint)
        device.attach(interrupt: VirtioInterrupt(line: line)) {}
        try device.activate(VirtioActivation(
            queues: [try big.queue(features: features),
                     try SplitQueue(transmit, maximumSize: 256, memory: big.memory, features: features)],
            features: features, memory: big.memory))
        for chain in 0..<6 {
            let table = GuestAddress(0x20000 + UInt64(chain) * 0x1000)
            for entry in 0..<256 {
                try big.setDescriptor(entry, address: 0x80000 + UInt64(chain * 256 + entry), length: 1,
                                      flags: FakeDriver.write | (entry < 255 ? FakeDriver.next : 0),
                                      next: UInt16(entry + 1), table: table)
            }
            try big.setDescriptor(chain, address: table.rawValue, length: 256 * 16, flags: FakeDriver.indirect)
            try big.publish(UInt16(chain))
        }
        let frame = [UInt8](repeating: 0, count: 12) + [UInt8](repeating: 0x5a, count: 100)
        endpoint.send(frame)
        device.endpointReadable()
        #expect(big.usedIndex == 1)
        #expect(try big.usedElement(0) == (0, 112))
        #expect(try big.memory.read(count: 100, at: GuestAddress(0x80000 + 12)).allSatisfy { $0 == 0x5a })
        #expect(device.counters.guestErrors == 0)
        // The chains given back are popped again once the held ones are used: the next frames land in order.
        for _ in 0..<5 {
            endpoint.send(frame)
            device.endpointReadable()
        }
        #expect(big.usedIndex == 6)
        #expect(try big.usedElement(5) == (5, 112))
    }

    @Test func heldChainsAreNotReturnedTwiceAroundAHostileOne() throws {
        _ = try activate(features: VirtioFeature.version1 | NetFeature.mergeableReceiveBuffers)
        try postReceive(0, at: 0x10000, length: 1500)
        try driver.setDescriptor(1, address: 0x11000, length: 1500) // device-readable: returned at once, unused
        try driver.publish(1)
        try postReceive(2, at: 0x12000, length: 1500)
        endpoint.send([UInt8](repeating: 0, count: 12) + [4])
        net.endpointReadable()
        endpoint.send([UInt8](repeating: 0, count: 12) + [5, 5])
        net.endpointReadable()
        #expect(driver.usedIndex == 3)
        #expect(try driver.usedElement(0) == (1, 0))
        #expect(try driver.usedElement(1) == (0, 13))
        #expect(try driver.usedElement(2) == (2, 14))
        #expect(net.counters.guestErrors == 1)
    }

    @Test func oneInterruptPerLoopRoundForBothQueues() throws {
        let loop = try EventLoop(name: "net-test")
        try net.register(on: loop) // not started: the test plays the loop's part
        _ = try activate(features: VirtioFeature.version1)
        try postReceive(0, at: 0x10000, length: 2048)
        endpoint.send([UInt8](repeating: 0, count: 12) + [6])
        net.endpointReadable()
        try driver.memory.write([UInt8](repeating: 0, count: 20), at: GuestAddress(0x20000))
        try transmit([(0x20000, 20)])
        #expect(driver.usedIndex == 1)
        #expect(try transmitUsedIndex() == 1)
        #expect(line.count == 0) // deferred to the round's end
        net.raisePendingInterrupt()
        #expect(line.count == 1)
        net.raisePendingInterrupt()
        #expect(line.count == 1)
    }

    @Test func receiveChainsMustBeWritable() throws {
        _ = try activate(features: VirtioFeature.version1)
        try driver.setDescriptor(0, address: 0x10000, length: 2048) // device-readable: not a receive buffer
        try driver.publish(0)
        try postReceive(1, at: 0x11000, length: 2048)
        endpoint.send([UInt8](repeating: 0, count: 12) + [5])
        net.endpointReadable()
        #expect(try driver.usedElement(0) == (0, 0))
        #expect(try driver.usedElement(1) == (1, 13))
        #expect(net.counters.guestErrors == 1)
    }

    /// Writes a transmit chain of (address, length) readable descriptors into the transmit ring and publishes it.
    func transmit(_ parts: [(UInt64, UInt32)], writable: Bool = false, slot: UInt16 = 0) throws {
        for (index, part) in parts.enumerated() {
            let last = index == parts.count - 1
            try driver.setDescriptor(index + Int(slot) * 4, address: part.0, length: part.1,
                                     flags: (last ? 0 : FakeDriver.next) | (writable && last ? FakeDriver.write : 0),
                                     next: UInt16(index + 1) + slot * 4, table: Self.transmitTable)
        }
        let available = Self.transmitAvailable
        let index = try driver.memory.read(UInt16.self, at: GuestAddress(available.rawValue + 2))
        try driver.memory.write(slot * 4, at: GuestAddress(available.rawValue + 4 + 2 * UInt64(index % 16)))
        try driver.memory.write(index &+ 1, at: GuestAddress(available.rawValue + 2))
        net.queueEvents[1].signal()
        net.transmitQueueNotified()
    }

    func transmitUsedIndex() throws -> UInt16 { try driver.memory.read(UInt16.self, at: GuestAddress(Self.transmitUsed.rawValue + 2)) }

    @Test func transmitsAFrameSplitAcrossDescriptors() throws {
        _ = try activate(features: VirtioFeature.version1)
        try driver.memory.write([UInt8](repeating: 0, count: 12), at: GuestAddress(0x20000))
        try driver.memory.write([UInt8](repeating: 0x11, count: 5), at: GuestAddress(0x20100)) // the header split: 12 = 7 + 5
        try driver.memory.write([UInt8](repeating: 0x22, count: 60), at: GuestAddress(0x21000))
        try transmit([(0x20000, 7), (0x20100, 5), (0x21000, 60)])
        let frame = try #require(endpoint.receive())
        #expect(frame.count == 72)
        #expect(Array(frame[7..<12]) == [UInt8](repeating: 0x11, count: 5))
        #expect(try transmitUsedIndex() == 1)
        #expect(net.counters.requests == 1)
    }

    @Test func hostileTransmitChainsAreDropped() throws {
        _ = try activate(features: VirtioFeature.version1)
        try transmit([(0x20000, 12)])                                      // the header only
        try transmit([(0x20000, 12), (0x30000, 65551)], slot: 1)           // larger than any frame
        try transmit([(0x20000, 12), (0x21000, 60)], writable: true, slot: 2) // a device-writable buffer in TX
        #expect(endpoint.receive() == nil)
        #expect(try transmitUsedIndex() == 3) // every chain still goes back to the driver
        #expect(net.counters.guestErrors == 3 && net.counters.requests == 0)
    }
}

/// The TAP itself, on this host's kernel: needs root (or CAP_NET_ADMIN) and /dev/net/tun.
@Suite(.enabled(if: geteuid() == 0 && access("/dev/net/tun", R_OK | W_OK) == 0, "needs root and /dev/net/tun"))
struct TapTests {
    /// Linux's major and minor version, from uname.
    static var kernelVersion: (Int, Int) {
        var name = utsname()
        uname(&name)
        let release = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return (parts.first ?? 0, parts.count > 1 ? parts[1] : 0)
    }

    @Test func offloadsProbeAndFallBackWithoutUDPSegmentation() throws {
        let name = "swlt-t\(getpid() % 100000)"
        do {
            let tap = try Tap(name: name)
            #expect(!tap.attached)
            #expect(access("/sys/class/net/\(name)", F_OK) == 0)
            let base = UInt32(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
            let uso = UInt32(TUN_F_USO4 | TUN_F_USO6)
            #expect(tap.supportedOffloads & base == base)
            let (major, minor) = Self.kernelVersion
            let kernelHasUSO = major > 6 || (major == 6 && minor >= 2) // TUN_F_USO4/6 came in Linux 6.2
            #expect((tap.supportedOffloads & uso == uso) == kernelHasUSO)
            // Asking for USO where the kernel lacks it falls back to the rest instead of failing.
            #expect(try tap.setOffloads(UInt32(TUN_F_CSUM) | uso) == UInt32(TUN_F_CSUM) | (kernelHasUSO ? uso : 0))
            #expect(try tap.setOffloads(0) == 0)
        }
        #expect(access("/sys/class/net/\(name)", F_OK) != 0) // created here, gone with its fd
    }
}
