import Glibc
import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import SwiftletTestSupport
import SwiftletVirtio
import Testing

/// Whether this kernel lets a process set up a restricted io_uring (a disk asking for the engine gets it).
let ioUringAvailable: Bool = {
    guard let image = try? TemporaryImage(bytes: 4096),
          let block = try? Block(BlockConfiguration(path: image.path, engine: .ioUring)) else { return false }
    return block.engine == .ioUring
}()

/// The io_uring engine (`BlockEngine.ioUring`, BlockRing.swift) against fake guest memory and a real image file:
/// requests stay in flight until their completions are handled, the table bounds them, a reset and a pause leave
/// none behind.
@Suite(.enabled(if: ioUringAvailable, "io_uring is refused on this host (the disk falls back to the synchronous engine)"))
struct BlockRingTests {
    let driver: FakeDriver
    let line = CountingLine()
    static let tables: UInt64 = 0x20000, headers: UInt64 = 0x30000, buffers: UInt64 = 0x40000

    init() throws { driver = try FakeDriver(size: 256) }

    func device(_ image: TemporaryImage, readOnly: Bool = false) throws -> Block {
        let block = try Block(BlockConfiguration(path: image.path, readOnly: readOnly, engine: .ioUring))
        #expect(block.engine == .ioUring && block.engineProblem == nil && block.completionEvent != nil)
        block.attach(interrupt: VirtioInterrupt(line: line)) {}
        try block.activate(VirtioActivation(queues: [try driver.queue(features: block.offeredFeatures)],
                                            features: block.offeredFeatures, memory: driver.memory))
        _ = block.queueEvents[0].consume()
        return block
    }

    /// Chain `index`: one indirect descriptor whose table holds the 16-byte header and one 512-byte sector with the
    /// status byte after it (device-writable for a read, readable data then a writable status for a write).
    func post(_ index: Int, type: UInt32, sector: UInt64) throws {
        let table = GuestAddress(Self.tables + UInt64(index) * 48)
        let header = GuestAddress(Self.headers + UInt64(index) * 16)
        let buffer = Self.buffers + UInt64(index) * 0x400
        try driver.memory.write(type, at: header)
        try driver.memory.write(UInt32(0), at: GuestAddress(header.rawValue + 4))
        try driver.memory.write(sector, at: GuestAddress(header.rawValue + 8))
        try driver.memory.write(UInt8(0xee), at: GuestAddress(buffer + 512))
        try driver.setDescriptor(0, address: header.rawValue, length: 16, flags: FakeDriver.next, next: 1, table: table)
        if type == 1 {
            try driver.setDescriptor(1, address: buffer, length: 512, flags: FakeDriver.next, next: 2, table: table)
            try driver.setDescriptor(2, address: buffer + 512, length: 1, flags: FakeDriver.write, table: table)
        } else {
            let length: UInt32 = type == 0 ? 513 : 1
            try driver.setDescriptor(1, address: type == 0 ? buffer : buffer + 512, length: length, flags: FakeDriver.write, table: table)
        }
        let count: UInt32 = type == 1 ? 3 : 2
        try driver.setDescriptor(index, address: table.rawValue, length: 16 * count, flags: FakeDriver.indirect)
        try driver.publish(UInt16(index))
    }

    func status(_ index: Int) throws -> UInt8 { try driver.memory.read(UInt8.self, at: GuestAddress(Self.buffers + UInt64(index) * 0x400 + 512)) }

    /// Waits (up to 5 s) for the engine's completion eventfd, then handles the completions.
    func awaitCompletions(_ block: Block) throws {
        var descriptor = pollfd(fd: block.completionEvent!.rawValue, events: Int16(POLLIN), revents: 0)
        try #require(poll(&descriptor, 1, 5000) == 1)
        block.handleCompletions()
    }

    @Test func readsAndWritesAreUsedWhenTheirCompletionsArrive() throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let block = try device(image)
        try driver.memory.write([UInt8](repeating: 0x5a, count: 512), at: GuestAddress(Self.buffers))
        try post(0, type: 1, sector: 9)
        block.queueEvents[0].signal()
        block.handleQueueEvent()
        #expect(driver.usedIndex == 0 && block.requestsInFlight == 1) // submitted, not used until its completion
        try awaitCompletions(block)
        #expect(driver.usedIndex == 1 && block.requestsInFlight == 0)
        #expect(try status(0) == 0 && driver.usedElement(0).length == 1)
        #expect(image.read(at: 9 * 512, count: 512) == [UInt8](repeating: 0x5a, count: 512))

        try post(1, type: 0, sector: 9)
        block.queueEvents[0].signal()
        block.handleQueueEvent()
        try awaitCompletions(block)
        let element = try driver.usedElement(1)
        #expect(try driver.usedIndex == 2 && element.id == 1 && element.length == 513 && status(1) == 0)
        #expect(try driver.memory.read(count: 512, at: GuestAddress(Self.buffers + 0x400)) == [UInt8](repeating: 0x5a, count: 512))
        #expect(block.counters.requests == 2 && block.counters.guestErrors == 0 && line.count >= 1)
    }

    @Test func moreChainsThanSlotsWaitForCompletionsNotForTheLoop() throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        // Sector s holds the byte s.
        let fd = open(image.path, O_WRONLY)
        for sector in 0..<200 {
            let bytes = [UInt8](repeating: UInt8(sector), count: 512)
            _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, 512, off_t(sector * 512)) }
        }
        close(fd)
        let block = try device(image)
        for index in 0..<200 { try post(index, type: 0, sector: UInt64(199 - index)) }
        block.queueEvents[0].signal()
        block.handleQueueEvent()
        // The table holds ringDepth; the other chains stay in the ring, and nothing asks the loop to come back.
        #expect(block.requestsInFlight == Block.ringDepth && driver.usedIndex == 0)
        #expect(block.queueEvents[0].consume() == nil)
        var rounds = 0
        while driver.usedIndex < 200 && rounds < 10 {
            try awaitCompletions(block)
            rounds += 1
        }
        #expect(driver.usedIndex == 200 && block.requestsInFlight == 0)
        var seen = Set<UInt32>()
        for slot in 0..<200 {
            let element = try driver.usedElement(UInt16(slot))
            #expect(element.length == 513)
            seen.insert(element.id)
        }
        #expect(seen.count == 200)
        for index in 0..<200 {
            #expect(try status(index) == 0)
            #expect(try driver.memory.read(UInt8.self, at: GuestAddress(Self.buffers + UInt64(index) * 0x400 + 511)) == UInt8(199 - index))
        }
    }

    @Test func aResetWaitsForRequestsInFlightAndUsesNone() throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let block = try device(image)
        try driver.memory.write([UInt8](repeating: 0x33, count: 512), at: GuestAddress(Self.buffers))
        try post(0, type: 1, sector: 2)
        try post(1, type: 0, sector: 3)
        block.queueEvents[0].signal()
        block.handleQueueEvent()
        #expect(block.requestsInFlight == 2)
        block.reset()
        #expect(block.requestsInFlight == 0 && driver.usedIndex == 0)
        block.handleCompletions() // a late eventfd wake-up after the reset: nothing to use, no queue touched
        #expect(driver.usedIndex == 0)
        #expect(image.read(at: 2 * 512, count: 512) == [UInt8](repeating: 0x33, count: 512)) // it did land
    }

    @Test func aPauseLeavesNothingInFlight() throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let block = try device(image)
        for index in 0..<4 { try post(index, type: 0, sector: UInt64(index)) }
        block.queueEvents[0].signal()
        block.handleQueueEvent()
        let interrupts = line.count
        block.quiesce()
        #expect(block.requestsInFlight == 0 && driver.usedIndex == 4 && line.count == interrupts + 1)
        #expect(block.queuePositions().first??.nextAvailable == 4)
    }

    @Test func flushesAndRefusalsGoTheSameWayAsWithTheSynchronousEngine() throws {
        let image = try TemporaryImage(bytes: 64 * 1024)
        let block = try device(image)
        try post(0, type: 4, sector: 0)      // FLUSH: through the ring (drained)
        try post(1, type: 0, sector: 128)    // past the end: refused at once, no slot
        try post(2, type: 99, sector: 0)     // unknown type
        block.queueEvents[0].signal()
        block.handleQueueEvent()
        #expect(block.requestsInFlight == 1 && driver.usedIndex == 2)
        #expect(try status(1) == 1 && status(2) == 2)
        try awaitCompletions(block)
        #expect(try driver.usedIndex == 3 && status(0) == 0 && block.counters.guestErrors == 2)
    }

    @Test func aReplacedImageTakesTheRequestsAfterIt() throws {
        let first = try TemporaryImage(bytes: 64 * 1024, fill: 1)
        let second = try TemporaryImage(bytes: 64 * 1024, fill: 2)
        let block = try device(first)
        try post(0, type: 0, sector: 0)
        block.queueEvents[0].signal()
        block.handleQueueEvent()
        try block.replaceImage(path: second.path)
        try awaitCompletions(block)
        try post(1, type: 0, sector: 0)
        block.queueEvents[0].signal()
        block.handleQueueEvent()
        try awaitCompletions(block)
        #expect(try driver.memory.read(UInt8.self, at: GuestAddress(Self.buffers)) == 1)
        #expect(try driver.memory.read(UInt8.self, at: GuestAddress(Self.buffers + 0x400)) == 2)
    }
}
