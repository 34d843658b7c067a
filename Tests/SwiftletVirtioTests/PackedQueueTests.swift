import SwiftletHost
import SwiftletMemory
import SwiftletTestSupport
import SwiftletVirtio
import Testing

@Suite struct PackedQueueTests {
    typealias D = FakePackedDriver
    let driver: FakePackedDriver
    init() throws { driver = try FakePackedDriver() }

    func pop(_ queue: PackedQueue) throws(QueueError) -> DescriptorChain? {
        var chain = DescriptorChain(capacity: 8)
        return try queue.pop(into: &chain) ? chain : nil
    }

    func expectInvalid(_ queue: PackedQueue, id: UInt16, _ reason: ChainError, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try pop(queue)
            Issue.record("the chain was accepted", sourceLocation: sourceLocation)
        } catch .invalidChain(let head, let error) {
            #expect(head == id, sourceLocation: sourceLocation)
            #expect(error == reason, sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
        }
    }

    func data(_ page: UInt64) -> UInt64 { D.dataArea.rawValue + page * 0x1000 }

    @Test func popsAChainAndWritesOneUsedDescriptor() throws {
        let queue = try driver.queue()
        #expect(queue.layout == .packed)
        #expect(try pop(queue) == nil)
        try driver.post([(data(0), 16, false), (data(1), 512, true), (data(2), 1, true)], id: 5)
        #expect(queue.hasAvailable)
        let chain = try #require(try pop(queue))
        #expect(chain.head == 5)
        #expect(chain.readableCount == 1 && chain.buffers.count == 3)
        #expect(chain.readableLength == 16 && chain.writableLength == 513)
        #expect(chain.buffers[1].host == (try driver.memory.hostPointer(GuestAddress(data(1)), count: 512)))
        #expect(try pop(queue) == nil && !queue.hasAvailable)
        #expect(try driver.takeUsed() == nil)
        queue.addUsed(head: 5, length: 100)
        let used = try #require(try driver.takeUsed())
        #expect(used.id == 5 && used.length == 100 && used.wrote)
        // The used descriptor overwrote the chain's first; the next chain starts after all three.
        #expect(queue.position == QueuePosition(nextAvailable: 3 | 0x8000, nextUsed: 3 | 0x8000))
        try driver.post([(data(3), 8, false)], id: 1)
        #expect(try pop(queue)?.head == 1)
        queue.addUsed(head: 1, length: 0)
        let second = try #require(try driver.takeUsed())
        #expect(second.id == 1 && second.length == 0 && !second.wrote) // WRITE only when data was written (§2.8.4)
    }

    /// Chains of one to three descriptors, two out at a time, through five laps of rings of several sizes (a packed
    /// ring need not be a power of two), so every chain start and every wrap position is crossed, inside and between
    /// chains. The driver's own skipping (by each ID's chain length) must land on every used descriptor.
    @Test(arguments: [UInt16(4), 5, 8, 13])
    func wrapsAroundAtEveryPosition(size: UInt16) throws {
        let driver = try FakePackedDriver(size: size)
        let queue = try driver.queue()
        var chain = DescriptorChain(capacity: 8)
        var out: [(id: UInt16, lengths: Int)] = []
        var nextID: UInt16 = 0
        var completed = 0
        for round in 0..<(5 * Int(size)) {
            let count = min(round % 3 + 1, Int(size) / 2)
            let buffers = (0..<count).map { (address: data(UInt64($0)), length: UInt32(8 + $0), writable: $0 > 0) }
            try driver.post(buffers, id: nextID)
            #expect(try queue.pop(into: &chain))
            #expect(chain.head == nextID && chain.buffers.count == count)
            out.append((nextID, count))
            nextID = (nextID + 1) % size
            if out.count == 2 {
                let done = out.removeFirst()
                queue.addUsed(head: done.id, length: UInt32(done.lengths))
                let used = try #require(try driver.takeUsed())
                #expect(used.id == done.id && used.length == UInt32(done.lengths))
                completed += 1
            }
        }
        for done in out {
            queue.addUsed(head: done.id, length: 1)
            #expect(try driver.takeUsed()?.id == done.id)
        }
        #expect(completed > 2 * Int(size))
        #expect(queue.position.nextAvailable == queue.position.nextUsed)
        #expect(queue.position.nextUsed == driver.nextUsed | (driver.usedWrap ? 0x8000 : 0))
    }

    @Test func completesOutOfOrder() throws {
        let queue = try driver.queue()
        try driver.post([(data(0), 8, false), (data(1), 8, true)], id: 3)
        try driver.post([(data(2), 8, true)], id: 7)
        let first = try #require(try pop(queue)), second = try #require(try pop(queue))
        #expect(first.head == 3 && second.head == 7)
        queue.addUsed(head: 7, length: 8) // written at slot 0, over chain 3's first descriptor
        queue.addUsed(head: 3, length: 4) // slot 1: the driver skips one (chain 7's length) to find it
        #expect(try driver.takeUsed()?.id == 7)
        #expect(try driver.takeUsed()?.id == 3)
        #expect(queue.position.nextUsed == 3 | 0x8000)
    }

    @Test func indirectTables() throws {
        let queue = try driver.queue(features: VirtioFeature.version1 | VirtioFeature.indirectDescriptors)
        let table = GuestAddress(0x8000)
        // In a table only WRITE counts: NEXT and INDIRECT are reserved and ignored (§2.8.8).
        try driver.postIndirect([(data(0), 16, false), (data(1), 32, true), (data(2), 64, true)], id: 2, table: table,
                                tableFlags: D.next | D.indirect)
        let chain = try #require(try pop(queue))
        #expect(chain.head == 2 && chain.buffers.count == 3 && chain.readableCount == 1 && chain.writableLength == 96)
        queue.addUsed(head: 2, length: 96)
        #expect(try driver.takeUsed()?.id == 2)
        #expect(queue.position.nextUsed == 1 | 0x8000) // one ring descriptor
    }

    @Test func refusesMalformedIndirectTables() throws {
        let plain = try driver.queue()
        try driver.postIndirect([(data(0), 16, false)], id: 1, table: GuestAddress(0x8000))
        expectInvalid(plain, id: 1, .indirectNotNegotiated)

        let other = try FakePackedDriver()
        let indirect = try other.queue(features: VirtioFeature.version1 | VirtioFeature.indirectDescriptors)
        // An indirect descriptor in a list linked by NEXT (§2.8.21), as its second descriptor or its first.
        try other.post([(data(0), 16, false), (0x8000, 16, false)], id: 1)
        try other.setDescriptor(1, address: 0x8000, length: 16, id: 1, flags: D.availableFlags(wrap: true) | D.indirect)
        expectInvalid(indirect, id: 1, .indirectWithNext)
        try other.post([(0x8000, 16, false), (data(0), 16, false)], id: 2, extraFlags: D.indirect)
        expectInvalid(indirect, id: 2, .indirectWithNext)
        try other.post([(0x8000, 12, false)], id: 3, extraFlags: D.indirect)
        expectInvalid(indirect, id: 3, .invalidIndirectLength(12))
        try other.post([(0x8000, 16 * 9, false)], id: 4, extraFlags: D.indirect)
        expectInvalid(indirect, id: 4, .indirectTableTooLarge(entries: 9, limit: 8))
        try other.post([(D.memorySize - 16, 32, false)], id: 5, extraFlags: D.indirect)
        expectInvalid(indirect, id: 5, .outsideMemory(GuestAddress(D.memorySize - 16), 32))
        // Each malformed chain was consumed whole (2 + 2 + 1 + 1 + 1 descriptors): the ring is still in step.
        #expect(indirect.position.nextAvailable == 7 | 0x8000)
    }

    @Test func malformedChainsAreConsumedWholeAndReturnable() throws {
        let queue = try driver.queue()
        try driver.post([(data(0), 16, false), (data(1), 0, true), (data(2), 16, true)], id: 4)
        expectInvalid(queue, id: 4, .zeroLength)
        try driver.post([(data(0), 16, true), (data(1), 16, false)], id: 5)
        expectInvalid(queue, id: 5, .readableAfterWritable)
        try driver.post([(D.memorySize - 8, 16, false)], id: 6)
        expectInvalid(queue, id: 6, .outsideMemory(GuestAddress(D.memorySize - 8), 16))
        queue.addUsed(head: 4, length: 0)
        queue.addUsed(head: 5, length: 0)
        queue.addUsed(head: 6, length: 0)
        #expect(try driver.takeUsed()?.id == 4)
        #expect(try driver.takeUsed()?.id == 5)
        #expect(try driver.takeUsed()?.id == 6)
        try driver.post([(data(0), 16, false)], id: 0)
        #expect(try pop(queue)?.head == 0)
    }

    @Test func aHeadWithBadWrapBitsIsNotAvailable() throws {
        let queue = try driver.queue()
        for flags: UInt16 in [0, D.available | D.used, D.used] { // never, used in this lap, available in the last lap
            try driver.setDescriptor(0, address: data(0), length: 8, id: 0, flags: flags)
            #expect(!queue.hasAvailable)
            #expect(try pop(queue) == nil)
        }
    }

    @Test func aDescriptorAvailableOutOfOrderIsNotSeen() throws {
        let queue = try driver.queue()
        try driver.setDescriptor(1, address: data(0), length: 8, id: 1, flags: D.availableFlags(wrap: true))
        #expect(try pop(queue) == nil) // the device looks at slot 0 only
        try driver.setDescriptor(0, address: data(0), length: 8, id: 0, flags: D.availableFlags(wrap: true))
        #expect(try pop(queue)?.head == 0)
        #expect(try pop(queue)?.head == 1)
    }

    @Test func aChainRunningIntoAnUnavailableDescriptorResetsTheDevice() throws {
        let queue = try driver.queue()
        try driver.setDescriptor(1, address: data(1), length: 8, id: 0, flags: 0) // never made available
        try driver.setDescriptor(0, address: data(0), length: 8, id: 0, flags: D.availableFlags(wrap: true) | D.next)
        #expect(throws: QueueError.descriptorNotAvailable(slot: 1)) { _ = try pop(queue) }
        // A chain of NEXT all round the ring runs into its own first descriptor, which is in the last lap's state.
        let other = try FakePackedDriver(size: 4)
        let ring = try other.queue()
        for slot: UInt16 in 0..<4 {
            try other.setDescriptor(slot, address: data(0), length: 8, id: 0, flags: D.availableFlags(wrap: true) | D.next)
        }
        #expect(throws: QueueError.descriptorNotAvailable(slot: 0)) { _ = try pop(ring) }
    }

    @Test func refusesBufferIDsBeyondTheQueue() throws {
        let queue = try driver.queue()
        try driver.post([(data(0), 8, false)], id: 8)
        #expect(throws: QueueError.headOutOfRange(8)) { _ = try pop(queue) }
        let other = try FakePackedDriver()
        let second = try other.queue()
        try other.post([(data(0), 8, false)], id: 0xffff)
        #expect(throws: QueueError.headOutOfRange(0xffff)) { _ = try pop(second) }
    }

    @Test func refusesMoreDescriptorsThanTheRingHolds() throws {
        let queue = try driver.queue()
        for id: UInt16 in 0..<8 { try driver.post([(data(0), 8, false)], id: id) }
        for id: UInt16 in 0..<8 { #expect(try pop(queue)?.head == id) }
        // The ring is full of chains the device holds; a driver that makes slot 0 available again (the next lap)
        // without having it back is lying.
        try driver.post([(data(0), 8, false)], id: 0)
        #expect(throws: QueueError.ringOverrun(outstanding: 9, size: 8)) { _ = try pop(queue) }
    }

    @Test func aChainLongerThanTheQueueIsRefused() throws {
        // 3 out, then a 6-descriptor chain in a ring of 8: more than the ring holds.
        let queue = try driver.queue()
        for id: UInt16 in 0..<3 { try driver.post([(data(0), 8, false)], id: id) }
        for _ in 0..<3 { _ = try pop(queue) }
        try driver.post((0..<6).map { _ in (data(0), 8, false) }, id: 3)
        #expect(throws: QueueError.ringOverrun(outstanding: 9, size: 8)) { _ = try pop(queue) }
    }

    @Test func rewindAndHeldPositions() throws {
        let queue = try driver.queue()
        try driver.post([(data(0), 8, true), (data(1), 8, true)], id: 0)
        try driver.post([(data(2), 8, true)], id: 1)
        try driver.post([(data(3), 8, true), (data(4), 8, true), (data(5), 8, true)], id: 2)
        for id: UInt16 in 0..<3 { #expect(try pop(queue)?.head == id) }
        #expect(queue.position(holding: 0) == QueuePosition(nextAvailable: 6 | 0x8000, nextUsed: 0x8000))
        #expect(queue.position(holding: 1) == QueuePosition(nextAvailable: 3 | 0x8000, nextUsed: 0x8000))
        #expect(queue.position(holding: 3) == QueuePosition(nextAvailable: 0x8000, nextUsed: 0x8000))
        queue.rewind(1)
        #expect(try pop(queue)?.head == 2)
        queue.rewind(2)
        #expect(try pop(queue)?.head == 1)
        #expect(try pop(queue)?.head == 2)
        queue.addUsed(head: 0, length: 16)
        // Chains 1 and 2 held: a restored queue starts at chain 1 and pops both again.
        let held = queue.position(holding: 2)
        #expect(held == QueuePosition(nextAvailable: 2 | 0x8000, nextUsed: 2 | 0x8000))
        let restored = try driver.queue(position: held)
        #expect(try pop(restored)?.head == 1)
        #expect(try pop(restored)?.head == 2)
        restored.addUsed(head: 1, length: 8)
        restored.addUsed(head: 2, length: 8)
        #expect(try driver.takeUsed()?.id == 0)
        #expect(try driver.takeUsed()?.id == 1)
        #expect(try driver.takeUsed()?.id == 2)
    }

    @Test func refusesPositionsOutsideTheRing() throws {
        for position in [QueuePosition(nextAvailable: 8 | 0x8000, nextUsed: 0x8000),
                         QueuePosition(nextAvailable: 0x8000, nextUsed: 9),
                         // used ahead of available: more than a lap out
                         QueuePosition(nextAvailable: 0x8000, nextUsed: 0x8001)] {
            #expect(throws: SwiftletError.self) { _ = try driver.queue(position: position) }
        }
        #expect(try driver.queue(position: QueuePosition(nextAvailable: 3, nextUsed: 0x8005)).position.nextAvailable == 3)
    }

    @Test func driverEventSuppression() throws {
        let queue = try driver.queue(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        func use(_ count: Int) throws {
            for _ in 0..<count {
                try driver.post([(data(0), 8, true)], id: 0)
                _ = try pop(queue)
                queue.addUsed(head: 0, length: 8)
                _ = try driver.takeUsed()
            }
        }
        try driver.setDriverEvent(flags: 0) // enable
        try use(1)
        #expect(queue.needsInterrupt())
        try driver.setDriverEvent(flags: 1) // disable
        try use(1)
        #expect(!queue.needsInterrupt())
        // Descriptor-specific: used slots 2..4 next; an event at slot 4 fires only once it is used.
        try driver.setDriverEvent(flags: 2, slot: 4, wrap: true)
        try use(2) // slots 2, 3
        #expect(!queue.needsInterrupt())
        try use(1) // slot 4
        #expect(queue.needsInterrupt())
        // Across the wrap: from slot 5, an event at slot 1 of the next lap.
        try driver.setDriverEvent(flags: 2, slot: 1, wrap: false)
        try use(3) // 5, 6, 7
        #expect(!queue.needsInterrupt())
        try use(1) // 0 (next lap)
        #expect(!queue.needsInterrupt())
        try use(2) // 1, 2
        #expect(queue.needsInterrupt())
        // An event already passed (slot 1 of this lap, used is at 3 now) does not fire again.
        try use(1)
        #expect(!queue.needsInterrupt())
        // Without EVENT_IDX, DESC is not the driver's to use: interrupts stay on.
        let plain = try FakePackedDriver()
        let unindexed = try plain.queue()
        try plain.setDriverEvent(flags: 2, slot: 7)
        try plain.post([(data(0), 8, true)], id: 0)
        _ = try pop(unindexed)
        unindexed.addUsed(head: 0, length: 8)
        #expect(unindexed.needsInterrupt())
    }

    @Test func deviceEventSuppression() throws {
        let indexed = try driver.queue(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        var event = try driver.deviceEvent()
        #expect(event.flags == 2 && event.slot == 0 && event.wrap)
        for id: UInt16 in 0..<8 { try driver.post([(data(0), 8, false)], id: id) }
        for _ in 0..<8 { _ = try pop(indexed) }
        #expect(!indexed.enableNotification())
        event = try driver.deviceEvent() // the next lap's slot 0
        #expect(event.flags == 2 && event.slot == 0 && !event.wrap)
        for id: UInt16 in 0..<8 { indexed.addUsed(head: id, length: 0); _ = try driver.takeUsed() }
        try driver.post([(data(0), 8, false)], id: 0)
        #expect(indexed.enableNotification()) // posted meanwhile: drain again

        let plain = try FakePackedDriver()
        try plain.setDriverEvent(flags: 0)
        let unindexed = try plain.queue()
        #expect(try plain.deviceEvent().flags == 0)
        #expect(!unindexed.enableNotification())
        #expect(try plain.deviceEvent().flags == 0)
    }

    @Test func drainsThroughTheSharedDrain() throws {
        let queue: any Virtqueue = try driver.queue(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        try driver.post([(data(0), 8, false)], id: 0)
        try driver.post([(data(1), 0, false)], id: 1) // malformed: returned with 0
        try driver.post([(data(2), 8, true)], id: 2)
        struct State { var chain = DescriptorChain(capacity: 4); var seen: [UInt16] = [] }
        var state = State()
        var malformed = 0
        let result = queue.drain(&state, chain: \.chain, onMalformed: { malformed += 1 }) { state, completion in
            state.seen.append(state.chain.head)
            completion.use(state.chain.head, length: UInt32(state.chain.writableLength))
        }
        #expect(state.seen == [0, 2] && malformed == 1 && !result.fatal && !result.more)
        #expect(try driver.takeUsed()?.id == 0)
        #expect(try driver.takeUsed()?.id == 1)
        #expect(try driver.takeUsed()?.id == 2)
        #expect(try driver.deviceEvent().slot == 3) // notifications asked for at the next descriptor
        // A corrupt ring stops the drain as fatal.
        try driver.post([(data(0), 8, false)], id: 9)
        let fatal = queue.drain(&state, chain: \.chain, onMalformed: { malformed += 1 }) { _, _ in }
        #expect(fatal.fatal && malformed == 2)
    }

    @Test func marksUsedDescriptorsAndWrittenBuffersDirty() throws {
        let tracked = try FakePackedDriver(tracksDirtyPages: true)
        let queue = try tracked.queue()
        try tracked.post([(data(0), 8, false), (data(1), 8, true)], id: 0)
        try tracked.post([(data(2), 0x1800, true)], id: 1)
        _ = try pop(queue)
        _ = try pop(queue)
        _ = tracked.memory.takeHostWrites()
        // Chain 1 used first: its used descriptor overwrites chain 0's first descriptor; chain 0's writable buffer
        // is still marked when it is used, from what the queue kept at pop.
        queue.addUsed(head: 1, length: 8)
        queue.addUsed(head: 0, length: 8)
        let region = try #require(tracked.memory.regions[0].hostWrites)
        let page = { (address: UInt64) in Int(address / hostPageSize) }
        #expect(region.isMarked(page(D.ring.rawValue)))
        #expect(region.isMarked(page(data(1))) && region.isMarked(page(data(2))) && region.isMarked(page(data(2) + 0x17ff)))
        #expect(!region.isMarked(page(data(0))), "device-readable: not the device's to write")
        // Popping marks nothing: a held chain is marked when it is returned.
        _ = tracked.memory.takeHostWrites()
        try tracked.post([(data(5), 8, true)], id: 2)
        _ = tracked.memory.takeHostWrites()
        _ = try pop(queue)
        #expect(!region.isMarked(page(data(5))))
    }
}
