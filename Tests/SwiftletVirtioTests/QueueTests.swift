import Glibc
import SwiftletHost
import SwiftletMemory
import SwiftletTestSupport
import SwiftletVirtio
import Testing

@Suite struct QueueTests {
    let driver: FakeDriver
    init() throws { driver = try FakeDriver() }

    func pop(_ queue: SplitQueue) throws(QueueError) -> DescriptorChain? {
        var chain = DescriptorChain(capacity: 8)
        return try queue.pop(into: &chain) ? chain : nil
    }

    func expectInvalid(_ queue: SplitQueue, _ reason: ChainError, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try pop(queue)
            Issue.record("the chain was accepted", sourceLocation: sourceLocation)
        } catch .invalidChain(_, let error) {
            #expect(error == reason, sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func popsAChainReadableFirst() throws {
        let queue = try driver.queue()
        #expect(try pop(queue) == nil)
        try driver.setDescriptor(2, address: 0x10000, length: 16, flags: FakeDriver.next, next: 5)
        try driver.setDescriptor(5, address: 0x11000, length: 512, flags: FakeDriver.next | FakeDriver.write, next: 1)
        try driver.setDescriptor(1, address: 0x12000, length: 1, flags: FakeDriver.write)
        try driver.publish(2)
        let chain = try #require(try pop(queue))
        #expect(chain.head == 2)
        #expect(chain.readableCount == 1 && chain.buffers.count == 3)
        #expect(chain.readableLength == 16 && chain.writableLength == 513)
        #expect(chain.buffers[1].host == (try driver.memory.hostPointer(GuestAddress(0x11000), count: 512)))
        #expect(try pop(queue) == nil)
    }

    @Test func rejectsALoop() throws {
        let queue = try driver.queue()
        try driver.setDescriptor(0, address: 0x10000, length: 8, flags: FakeDriver.next, next: 1)
        try driver.setDescriptor(1, address: 0x10000, length: 8, flags: FakeDriver.next, next: 0)
        try driver.publish(0)
        expectInvalid(queue, .tooLong)
    }

    @Test func rejectsAnOutOfRangeNext() throws {
        let queue = try driver.queue()
        try driver.setDescriptor(0, address: 0x10000, length: 8, flags: FakeDriver.next, next: 8)
        try driver.publish(0)
        expectInvalid(queue, .indexOutOfRange(8))
    }

    @Test func rejectsBuffersOutsideMemory() throws {
        let queue = try driver.queue()
        try driver.setDescriptor(0, address: FakeDriver.memorySize - 4, length: 8)
        try driver.publish(0)
        expectInvalid(queue, .outsideMemory(GuestAddress(FakeDriver.memorySize - 4), 8))
        try driver.setDescriptor(1, address: UInt64.max - 3, length: 8)
        try driver.publish(1)
        expectInvalid(queue, .outsideMemory(GuestAddress(UInt64.max - 3), 8))
    }

    @Test func rejectsZeroLength() throws {
        let queue = try driver.queue()
        try driver.setDescriptor(0, address: 0x10000, length: 0)
        try driver.publish(0)
        expectInvalid(queue, .zeroLength)
    }

    @Test func rejectsReadableAfterWritable() throws {
        let queue = try driver.queue()
        try driver.setDescriptor(0, address: 0x10000, length: 16, flags: FakeDriver.next | FakeDriver.write, next: 1)
        try driver.setDescriptor(1, address: 0x11000, length: 16)
        try driver.publish(0)
        expectInvalid(queue, .readableAfterWritable)
    }

    @Test func rejectsATotalLengthOverflow() throws {
        let big = try FakeDriver(size: 8)
        let queue = try big.queue()
        // Two 3 GiB buffers cannot both be in 1 MiB of memory, but the overflow check comes first.
        try big.setDescriptor(0, address: 0x10000, length: 0xc000_0000, flags: FakeDriver.next, next: 1)
        try big.setDescriptor(1, address: 0x10000, length: 0xc000_0000)
        try big.publish(0)
        do { _ = try pop(queue); Issue.record("accepted") } catch .invalidChain(_, let error) {
            #expect(error == .outsideMemory(GuestAddress(0x10000), 0xc000_0000) || error == .lengthOverflow)
        }
    }

    @Test func indirectTables() throws {
        let queue = try driver.queue(features: VirtioFeature.version1 | VirtioFeature.indirectDescriptors)
        let table = GuestAddress(0x20000)
        try driver.setDescriptor(0, address: 0x10000, length: 16, flags: FakeDriver.next, next: 1, table: table)
        try driver.setDescriptor(1, address: 0x11000, length: 1, flags: FakeDriver.write, table: table)
        try driver.setDescriptor(3, address: table.rawValue, length: 32, flags: FakeDriver.indirect)
        try driver.publish(3)
        let chain = try #require(try pop(queue))
        #expect(chain.head == 3 && chain.buffers.count == 2 && chain.readableCount == 1)

        // Indirect with NEXT, nested indirect, and a table whose length is not a multiple of 16.
        try driver.setDescriptor(4, address: table.rawValue, length: 32, flags: FakeDriver.indirect | FakeDriver.next, next: 0)
        try driver.publish(4)
        expectInvalid(queue, .indirectWithNext)
        try driver.setDescriptor(0, address: table.rawValue, length: 32, flags: FakeDriver.indirect, table: table)
        try driver.setDescriptor(5, address: table.rawValue, length: 32, flags: FakeDriver.indirect)
        try driver.publish(5)
        expectInvalid(queue, .nestedIndirect)
        try driver.setDescriptor(6, address: table.rawValue, length: 20, flags: FakeDriver.indirect)
        try driver.publish(6)
        expectInvalid(queue, .invalidIndirectLength(20))
        try driver.setDescriptor(7, address: FakeDriver.memorySize - 16, length: 32, flags: FakeDriver.indirect)
        try driver.publish(7)
        expectInvalid(queue, .outsideMemory(GuestAddress(FakeDriver.memorySize - 16), 32))
    }

    /// A chain is bounded by the queue size, indirect tables included (the issue's 7M-entry table, scaled down to an
    /// 8-entry queue): a table of more entries than the queue is refused before it is read, a table of exactly as
    /// many is served, and direct buffers plus a table's may not add up past the queue either.
    @Test func chainsAreBoundedByTheQueueSize() throws {
        let queue = try driver.queue(features: VirtioFeature.version1 | VirtioFeature.indirectDescriptors)
        #expect(queue.size == 8)
        let table = GuestAddress(0x20000)
        for entry in 0..<9 {
            try driver.setDescriptor(entry, address: 0x10000, length: 1, flags: FakeDriver.next, next: UInt16(entry + 1),
                                     table: table)
        }
        try driver.setDescriptor(0, address: table.rawValue, length: 9 * 16, flags: FakeDriver.indirect)
        try driver.publish(0)
        expectInvalid(queue, .indirectTableTooLarge(entries: 9, limit: 8))
        // Millions of entries: refused on its length alone, before any of them is looked at.
        try driver.setDescriptor(1, address: table.rawValue, length: 0xFFFF_FFF0, flags: FakeDriver.indirect)
        try driver.publish(1)
        expectInvalid(queue, .indirectTableTooLarge(entries: 0x0FFF_FFFF, limit: 8))

        // Exactly the queue size: served.
        try driver.setDescriptor(7, address: 0x10000, length: 1, flags: 0, table: table)
        try driver.setDescriptor(2, address: table.rawValue, length: 8 * 16, flags: FakeDriver.indirect)
        try driver.publish(2)
        let chain = try #require(try pop(queue))
        #expect(chain.buffers.count == 8)

        // Two direct buffers, then a full table: ten buffers in an eight-entry queue.
        try driver.setDescriptor(3, address: 0x11000, length: 4, flags: FakeDriver.next, next: 4)
        try driver.setDescriptor(4, address: 0x11000, length: 4, flags: FakeDriver.next, next: 5)
        try driver.setDescriptor(5, address: table.rawValue, length: 8 * 16, flags: FakeDriver.indirect)
        try driver.publish(3)
        expectInvalid(queue, .tooLong)
    }

    /// The one drain every device uses: well-formed chains go to the handler, malformed ones back with length 0 and
    /// counted, the budget stops it with `more`, a chain the handler keeps is not returned, a corrupt ring is fatal.
    @Test func drainReturnsMalformedChainsAndStopsAtItsBudget() throws {
        let queue = try driver.queue()
        struct State { var chain = DescriptorChain(capacity: 8); var seen: [UInt16] = [] }
        var state = State()
        for index in 0..<5 { try driver.setDescriptor(index, address: 0x10000, length: 8, flags: FakeDriver.write) }
        try driver.setDescriptor(5, address: 0x10000, length: 0) // zero length: malformed
        for head: UInt16 in [0, 5, 1, 2, 3, 4] { try driver.publish(head) }
        var malformed = 0
        var result = queue.drain(&state, chain: \.chain, budget: 3, onMalformed: { malformed += 1 }) { state, completion in
            state.seen.append(state.chain.head)
            if state.chain.head != 1 { completion.use(state.chain.head, length: 8) } // chain 1 is kept
        }
        #expect(state.seen == [0, 1] && malformed == 1) // the malformed chain counts against the budget
        #expect(result.more && !result.fatal && result.interrupt)
        #expect(driver.usedIndex == 2)
        #expect(try driver.usedElement(0) == (0, 8))
        #expect(try driver.usedElement(1) == (5, 0))
        result = queue.drain(&state, chain: \.chain, onMalformed: { malformed += 1 }) { state, completion in
            state.seen.append(state.chain.head)
            completion.use(state.chain.head, length: 4)
        }
        #expect(state.seen == [0, 1, 2, 3, 4] && !result.more && !result.fatal)
        #expect(driver.usedIndex == 5)

        try driver.setAvailableIndex(driver.availableIndex &+ 20) // far more than the ring holds
        result = queue.drain(&state, chain: \.chain, onMalformed: { malformed += 1 }) { _, _ in Issue.record("no chain expected") }
        #expect(result.fatal && malformed == 2)
    }

    /// The chain cursors read and write across buffer boundaries, give iovecs without copying, and stop at the end.
    @Test func cursorsCrossBufferBoundaries() throws {
        let queue = try driver.queue()
        try driver.memory.write([1, 0, 0], at: GuestAddress(0x10000))                  // a u32 split 3 + 1
        try driver.memory.write([0, 0xaa, 0xbb, 0xcc, 0xdd], at: GuestAddress(0x11000))
        try driver.setDescriptor(0, address: 0x10000, length: 3, flags: FakeDriver.next, next: 1)
        try driver.setDescriptor(1, address: 0x11000, length: 5, flags: FakeDriver.next, next: 2)
        try driver.setDescriptor(2, address: 0x12000, length: 2, flags: FakeDriver.write | FakeDriver.next, next: 3)
        try driver.setDescriptor(3, address: 0x13000, length: 6, flags: FakeDriver.write)
        try driver.publish(0)
        let chain = try #require(try pop(queue))

        var reader = ChainReader(chain)
        #expect(reader.remaining == 8)
        #expect(reader.read(UInt32.self) == 1)
        #expect(reader.read(UInt16.self) == 0xbbaa)
        var vectors: [iovec] = []
        #expect(reader.vectors(10, into: &vectors) == 2 && vectors.count == 1 && vectors[0].iov_len == 2)
        #expect(reader.read(UInt8.self) == nil && reader.remaining == 0)

        var writer = ChainWriter(chain)
        #expect(writer.remaining == 8)
        #expect([UInt8](1...3).withUnsafeBytes { writer.write($0) } == 3) // 2 bytes in one buffer, 1 in the next
        #expect(try driver.memory.read(count: 2, at: GuestAddress(0x12000)) == [1, 2])
        #expect(try driver.memory.read(count: 1, at: GuestAddress(0x13000)) == [3])
        vectors.removeAll()
        #expect(writer.skip(1) == 1)
        #expect(writer.vectors(100, into: &vectors) == 4 && vectors.count == 1)
        #expect(vectors[0].iov_base == (try driver.memory.hostPointer(GuestAddress(0x13002), count: 4)))
        #expect([UInt8](repeating: 9, count: 4).withUnsafeBytes { writer.write($0) } == 0)
    }

    /// virtio-net holds receive chains as one readv's iovecs and writes num_buffers through them: a writer over
    /// iovecs covers only the bytes it was limited to, skipping empty vectors and crossing vector boundaries.
    @Test func writerOverIovecsStaysWithinItsLimit() {
        var storage = [UInt8](repeating: 0, count: 115)
        storage.withUnsafeMutableBytes { bytes in
            let base = bytes.baseAddress!
            let vectors = [iovec(iov_base: base, iov_len: 3), iovec(iov_base: base + 3, iov_len: 0),
                           iovec(iov_base: base + 3, iov_len: 5), iovec(iov_base: base + 8, iov_len: 100),
                           iovec(iov_base: base + 108, iov_len: 7)]
            var writer = ChainWriter(vectors: vectors[...], limit: 12)
            #expect(writer.remaining == 12)
            #expect(writer.skip(10) == 10)
            #expect([UInt8]([0xAA, 0xBB, 0xCC]).withUnsafeBytes { writer.write($0) } == 2) // the limit stops the third
            #expect(writer.remaining == 0)
            var short = ChainWriter(vectors: vectors[2..<3], limit: 12)
            #expect(short.remaining == 5)
            #expect([UInt8](repeating: 7, count: 9).withUnsafeBytes { short.write($0) } == 5)
            #expect(ChainWriter(vectors: vectors[...], limit: -1).remaining == 0)
        }
        #expect(storage[10] == 0xAA && storage[11] == 0xBB && storage[12] == 0)
        #expect(storage[3..<8] == [7, 7, 7, 7, 7][...] && storage[8] == 0)
    }

    @Test func indirectNeedsTheFeature() throws {
        let queue = try driver.queue()
        try driver.setDescriptor(0, address: 0x20000, length: 32, flags: FakeDriver.indirect)
        try driver.publish(0)
        expectInvalid(queue, .indirectNotNegotiated)
    }

    @Test func corruptRingsAreFatal() throws {
        let queue = try driver.queue()
        try driver.setAvailableIndex(9) // nine new entries in an eight-entry ring
        #expect(throws: QueueError.availableIndexCorrupt(available: 9, consumed: 0)) { _ = try pop(queue) }

        let other = try FakeDriver()
        let fresh = try other.queue()
        try other.publish(8) // head beyond the table
        #expect(throws: QueueError.headOutOfRange(8)) { _ = try pop(fresh) }
    }

    /// With dirty-page tracking, returning a chain marks the used ring's pages and every device-writable buffer of
    /// the chain (those a device writes into, through readv or a cursor, without GuestMemory seeing it); popping
    /// marks nothing yet (a held receive chain is written after the pop, maybe after a snapshot took the marks), and
    /// readable buffers are never marked.
    @Test func returningAChainMarksWhatTheDeviceMayHaveWritten() throws {
        let driver = try FakeDriver(tracksDirtyPages: true)
        let queue = try driver.queue(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        _ = driver.memory.takeHostWrites() // the driver's own set-up writes
        try driver.setDescriptor(0, address: 0x20000, length: 16, flags: FakeDriver.next, next: 1)
        try driver.setDescriptor(1, address: 0x30ff0, length: 0x20, flags: FakeDriver.write | FakeDriver.next, next: 2) // two pages
        try driver.setDescriptor(2, address: 0x40000, length: 1, flags: FakeDriver.write)
        try driver.publish(0)
        _ = driver.memory.takeHostWrites()
        let chain = try #require(try pop(queue))
        #expect(driver.memory.takeHostWrites()[0].allSatisfy { $0 == 0 }, "a pop marks nothing")
        _ = queue.enableNotification()
        let region = try #require(driver.memory.regions[0].hostWrites)
        #expect(region.isMarked(Int(FakeDriver.usedRing.rawValue / hostPageSize)), "avail_event is in the used ring")
        _ = driver.memory.takeHostWrites()
        queue.addUsed(head: chain.head, length: 1)
        let page = { (address: UInt64) in Int(address / hostPageSize) }
        #expect(region.isMarked(page(FakeDriver.usedRing.rawValue)))
        #expect(region.isMarked(page(0x30ff0)) && region.isMarked(page(0x31000)) && region.isMarked(page(0x40000)))
        #expect(!region.isMarked(page(0x20000)), "the readable buffer is not the device's to write")
        let marked = driver.memory.takeHostWrites()[0].reduce(0) { $0 + $1.nonzeroBitCount }
        #expect(marked == 4)
        // The next chain returned marks its own buffers only: the walk starts from an empty chain each time, so
        // neither what it marks nor what it holds grows with the chains returned before it.
        try driver.setDescriptor(3, address: 0x50000, length: 8, flags: FakeDriver.write)
        try driver.publish(3)
        _ = driver.memory.takeHostWrites() // the fake driver's own writes (descriptor table, avail ring)
        let second = try #require(try pop(queue))
        queue.addUsed(head: second.head, length: 8)
        #expect(region.isMarked(page(0x50000)) && region.isMarked(page(FakeDriver.usedRing.rawValue)))
        #expect(!region.isMarked(page(0x30ff0)) && !region.isMarked(page(0x40000)), "the first chain's buffers again")
        #expect(driver.memory.takeHostWrites()[0].reduce(0) { $0 + $1.nonzeroBitCount } == 2)
        // Without tracking nothing is recorded, and nothing is allocated for it.
        let untracked = try FakeDriver()
        #expect(untracked.memory.regions[0].hostWrites == nil && untracked.memory.takeHostWrites() == [[]])
    }

    @Test func usedRingCarriesExactLengths() throws {
        let queue = try driver.queue()
        queue.addUsed(head: 5, length: 513)
        queue.addUsed(head: 2, length: 0)
        #expect(driver.usedIndex == 2)
        #expect(try driver.usedElement(0) == (5, 513))
        #expect(try driver.usedElement(1) == (2, 0))
    }

    @Test func eventIndexArithmeticWrapsAround() {
        #expect(SplitQueue.needsEvent(eventIndex: 0, new: 1, old: 0))
        #expect(!SplitQueue.needsEvent(eventIndex: 1, new: 1, old: 0))
        #expect(SplitQueue.needsEvent(eventIndex: 0xffff, new: 0, old: 0xfffe))
        #expect(SplitQueue.needsEvent(eventIndex: 0xfffe, new: 2, old: 0xfff0))
        #expect(!SplitQueue.needsEvent(eventIndex: 3, new: 2, old: 0xfff0))
        #expect(SplitQueue.needsEvent(eventIndex: 0x7fff, new: 0x8000, old: 0x7fff))
    }

    @Test func interruptSuppression() throws {
        let indexed = try driver.queue(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        try driver.setUsedEvent(1) // "interrupt me when used->idx passes 1"
        indexed.addUsed(head: 0, length: 1)
        #expect(!indexed.needsInterrupt())
        indexed.addUsed(head: 0, length: 1)
        #expect(indexed.needsInterrupt())

        let plain = try FakeDriver()
        let queue = try plain.queue()
        queue.addUsed(head: 0, length: 1)
        #expect(queue.needsInterrupt())
        try plain.setAvailableFlags(1) // VIRTQ_AVAIL_F_NO_INTERRUPT
        queue.addUsed(head: 0, length: 1)
        #expect(!queue.needsInterrupt())
    }

    @Test func notificationReenableRechecksTheRing() throws {
        let queue = try driver.queue(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        try driver.setDescriptor(0, address: 0x10000, length: 8)
        try driver.publish(0)
        _ = try pop(queue)
        #expect(!queue.enableNotification())
        #expect(driver.availableEvent == 1)
        try driver.publish(0)
        #expect(queue.enableNotification()) // a buffer arrived: drain again
    }

    @Test func queueConfigurationValidation() throws {
        var configuration = driver.configuration
        #expect(configuration.problem(maximumSize: 256, memory: driver.memory, layout: .split) == nil)
        configuration.size = 6
        #expect(configuration.problem(maximumSize: 256, memory: driver.memory, layout: .split) != nil)
        configuration.size = 512
        #expect(configuration.problem(maximumSize: 256, memory: driver.memory, layout: .split) != nil)
        configuration.size = 8
        configuration.descriptorTable = GuestAddress(0x1008)
        #expect(configuration.problem(maximumSize: 256, memory: driver.memory, layout: .split) != nil)
        configuration.descriptorTable = GuestAddress(FakeDriver.memorySize - 64)
        #expect(configuration.problem(maximumSize: 256, memory: driver.memory, layout: .split) != nil)
        configuration.descriptorTable = FakeDriver.descriptorTable
        configuration.usedRing = GuestAddress(0x4002)
        #expect(configuration.problem(maximumSize: 256, memory: driver.memory, layout: .split) != nil)
    }
}
