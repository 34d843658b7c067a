import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import SwiftletTestSupport
import SwiftletVirtio
import Synchronization
import Testing

@Suite struct PageRangeTests {
    @Test func framesMergeIntoSortedRunsWithoutDuplicates() {
        var frames: [UInt64] = [5, 3, 4, 10, 11, 4, 20, 12, 3]
        var ranges: [PageRange] = []
        PageRanges.merge(&frames, into: &ranges)
        #expect(ranges == [PageRange(first: 3, count: 3), PageRange(first: 10, count: 3), PageRange(first: 20, count: 1)])
    }

    @Test func descendingRunsMergeToo() {
        var frames: [UInt64] = Array((100..<356).reversed())
        var ranges: [PageRange] = []
        PageRanges.merge(&frames, into: &ranges)
        #expect(ranges == [PageRange(first: 100, count: 256)])
    }

    @Test func onlyWholeHostPagesAreReleasable() {
        // 4 KiB host pages: everything.
        #expect(PageRanges.wholePages(start: 0x3000, length: 0x2000, pageSize: 4096)! == (0x3000, 0x2000))
        // 64 KiB host pages: only the whole 64 KiB pages inside.
        #expect(PageRanges.wholePages(start: 0x1000, length: 0x20000, pageSize: 0x10000)! == (0x10000, 0x10000))
        #expect(PageRanges.wholePages(start: 0x1000, length: 0x1000, pageSize: 0x10000) == nil)
    }
}

@Suite struct BalloonStatisticsTests {
    static func entry(_ tag: UInt16, _ value: UInt64) -> [UInt8] {
        [UInt8(tag & 0xff), UInt8(tag >> 8)] + (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }

    @Test func entriesParseByTag() throws {
        let bytes = Self.entry(4, 100 << 20) + Self.entry(5, 256 << 20) + Self.entry(6, 0x1_0000_0001) + Self.entry(99, 7) + Self.entry(2, 3)
        let statistics = try #require(BalloonStatistics(parsing: bytes))
        #expect(statistics.freeMemory == 100 << 20)
        #expect(statistics.totalMemory == 256 << 20)
        #expect(statistics.availableMemory == 0x1_0000_0001)
        #expect(statistics.majorFaults == 3)
        #expect(statistics.swapIn == nil)
        #expect(statistics.unknownTags == 1)
        #expect(statistics.fields.map(\.name) == ["major_faults", "free_memory", "total_memory", "available_memory"])
    }

    @Test func aPartialEntryIsMalformed() {
        #expect(BalloonStatistics(parsing: Self.entry(4, 1) + [1, 2, 3]) == nil)
        #expect(BalloonStatistics(parsing: [])?.fields.isEmpty == true)
    }
}

@Suite struct BalloonTests {
    let driver: FakeDriver
    let line = CountingLine()
    let request = GuestAddress(0x10000)
    static let pattern: UInt8 = 0xab

    init() throws { driver = try FakeDriver(size: 16) }

    /// A balloon whose queue `index` is the fake driver's queue (the others unused), activated with `features`.
    func device(_ configuration: BalloonConfiguration = BalloonConfiguration(), queue index: Int = 0,
                features: UInt64? = nil) throws -> Balloon {
        let balloon = try Balloon(configuration, guestMemorySize: FakeDriver.memorySize)
        balloon.attach(interrupt: VirtioInterrupt(line: line)) {}
        var queues: [SplitQueue?] = Array(repeating: nil, count: balloon.queueEvents.count)
        queues[index] = try driver.queue()
        try balloon.activate(VirtioActivation(queues: queues, features: features ?? balloon.offeredFeatures, memory: driver.memory))
        for event in balloon.queueEvents { _ = event.consume() }
        return balloon
    }

    func fill(frame: UInt64) throws {
        try driver.memory.write([UInt8](repeating: Self.pattern, count: 4096), at: GuestAddress(frame << 12))
    }

    func firstByte(frame: UInt64) throws -> UInt8 { try driver.memory.read(UInt8.self, at: GuestAddress(frame << 12)) }

    /// Sends `frames` as le32 page frame numbers in one readable buffer on queue `index`.
    func send(_ balloon: Balloon, frames: [UInt32], queue index: Int) throws {
        var bytes: [UInt8] = []
        for frame in frames { for shift in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: frame >> (8 * shift))) } }
        try driver.memory.write(bytes, at: request)
        try driver.setDescriptor(0, address: request.rawValue, length: UInt32(bytes.count))
        try driver.publish(0)
        balloon.queueEvents[index].signal()
        balloon.handleQueueEvent(index)
    }

    @Test func inflatingReleasesThePagesInMergedRanges() throws {
        let balloon = try device()
        for frame: UInt64 in [0x40, 0x41, 0x42, 0x43, 0x50] { try fill(frame: frame) }
        try send(balloon, frames: [0x41, 0x40, 0x42, 0x50, 0x41], queue: 0)
        #expect(try firstByte(frame: 0x40) == 0 && firstByte(frame: 0x41) == 0 && firstByte(frame: 0x42) == 0)
        #expect(try firstByte(frame: 0x50) == 0)
        #expect(try firstByte(frame: 0x43) == Self.pattern) // not in the balloon
        let status = balloon.status()
        #expect(status.inflatedPages == 4)
        #expect(status.releasedBytes == 4 * 4096)
        #expect(status.releaseCalls == 2)
        #expect(driver.usedIndex == 1 && line.count == 1)
    }

    @Test func framesOutsideGuestRAMAreIgnoredAndCounted() throws {
        let balloon = try device()
        try fill(frame: 0xff)
        // 0x100 is the first frame past the fake 1 MiB of RAM; 0xffffffff is far past it.
        try send(balloon, frames: [0x100, 0xffff_ffff, 0xff], queue: 0)
        let status = balloon.status()
        #expect(status.ignoredPages == 2)
        #expect(status.inflatedPages == 1)
        #expect(try firstByte(frame: 0xff) == 0)
        #expect(driver.usedIndex == 1)
    }

    @Test func aTrailingPartialFrameNumberIsAGuestError() throws {
        let balloon = try device()
        try fill(frame: 0x60)
        try driver.memory.write([0x60, 0, 0, 0, 0x61, 0], at: request)
        try driver.setDescriptor(0, address: request.rawValue, length: 6)
        try driver.publish(0)
        balloon.queueEvents[0].signal()
        balloon.handleQueueEvent(0)
        #expect(balloon.counters.guestErrors == 1)
        #expect(balloon.status().inflatedPages == 1)
        #expect(try firstByte(frame: 0x60) == 0)
    }

    @Test func deflatingCountsAndLeavesMemoryAlone() throws {
        let balloon = try device(queue: 1)
        try fill(frame: 0x70)
        try send(balloon, frames: [0x70, 0x71], queue: 1)
        // Neither page was in the balloon: nothing came out of it, and the memory is the guest's as it was.
        #expect(balloon.status().deflatedPages == 0)
        #expect(balloon.status().inflatedPages == 0)
        #expect(try firstByte(frame: 0x70) == Self.pattern)
    }

    /// What the balloon reports follows the pages it holds (issue 14: 1M page numbers covering 4096 pages reported
    /// 4 GiB released): a page inflated again counts once and is released once; deflating counts the pages that
    /// were in it; `actual` is clamped to guest RAM.
    @Test func repeatedPageNumbersCountOnce() throws {
        let balloon = try device()
        let frames = (0..<2000).map { UInt32(0x40 + $0 % 8) } // 8 distinct pages, 250 times each: two batches
        try send(balloon, frames: frames, queue: 0)
        try send(balloon, frames: [0x40, 0x41], queue: 0)     // again, in a later request
        var status = balloon.status()
        #expect(status.inflatedPages == 8)
        #expect(status.releasedBytes == 8 * 4096)
        try balloon.activate(VirtioActivation(queues: [nil, try driver.queue()], features: balloon.offeredFeatures,
                                              memory: driver.memory))
        // A new activation starts with an empty balloon: deflating pages that were never inflated since counts 0.
        try send(balloon, frames: [0x40, 0x41], queue: 1)
        #expect(balloon.status().deflatedPages == 0)
        [UInt8](repeating: 0xff, count: 4).withUnsafeBytes { balloon.writeConfiguration(offset: 4, from: $0) }
        status = balloon.status()
        #expect(status.actualPages == UInt32(FakeDriver.memorySize / 4096))
    }

    /// A request of more page numbers than `maximumFramesPerRequest` is refused whole, without a look at them.
    @Test func anOverlongRequestIsAGuestError() throws {
        let balloon = try device()
        try fill(frame: 0x40)
        try driver.memory.write([0x40, 0, 0, 0], at: request)
        try driver.setDescriptor(0, address: request.rawValue, length: UInt32(4 * Balloon.maximumFramesPerRequest + 4))
        try driver.publish(0)
        balloon.queueEvents[0].signal()
        balloon.handleQueueEvent(0)
        #expect(balloon.counters.guestErrors == 1)
        #expect(balloon.status().inflatedPages == 0)
        #expect(try firstByte(frame: 0x40) == Self.pattern)
        #expect(driver.usedIndex == 1)
    }

    @Test func deflatingCountsOnlyPagesInTheBalloon() throws {
        // Inflate on the fake driver's ring, deflate on a second ring above it in the same memory.
        let balloon = try Balloon(BalloonConfiguration(), guestMemorySize: FakeDriver.memorySize)
        balloon.attach(interrupt: VirtioInterrupt(line: line)) {}
        var deflate = driver.configuration
        deflate.descriptorTable = GuestAddress(0x5000)
        deflate.availableRing = GuestAddress(0x6000)
        deflate.usedRing = GuestAddress(0x7000)
        try balloon.activate(VirtioActivation(
            queues: [try driver.queue(), try SplitQueue(deflate, maximumSize: 256, memory: driver.memory, features: balloon.offeredFeatures)],
            features: balloon.offeredFeatures, memory: driver.memory))
        try send(balloon, frames: [0x40, 0x41, 0x42], queue: 0)
        // Deflate 0x41 (in the balloon), 0x43 (never inflated) and 0x41 again.
        let frames: [UInt8] = [0x41, 0, 0, 0, 0x43, 0, 0, 0, 0x41, 0, 0, 0]
        try driver.memory.write(frames, at: GuestAddress(0x11000))
        try driver.setDescriptor(0, address: 0x11000, length: UInt32(frames.count), table: deflate.descriptorTable)
        try driver.memory.write(UInt16(0), at: GuestAddress(0x6000 + 4))
        try driver.memory.write(UInt16(1), at: GuestAddress(0x6000 + 2))
        balloon.queueEvents[1].signal()
        balloon.handleQueueEvent(1)
        #expect(balloon.status().deflatedPages == 1)
        // 0x41 can go in again: it counts again, and is released again.
        try send(balloon, frames: [0x41, 0x40], queue: 0)
        #expect(balloon.status().inflatedPages == 4)
        #expect(balloon.status().releasedBytes == 4 * 4096)
    }

    @Test func targetAndActualLiveInConfigurationSpace() throws {
        let balloon = try Balloon(BalloonConfiguration(targetSize: 64 << 10), guestMemorySize: 1 << 20)
        let notified = Atomic<Int>(0)
        balloon.attachConfigurationNotifier { notified.add(1, ordering: .relaxed) }
        func word(_ offset: Int) -> UInt32 {
            var value: UInt32 = 0
            withUnsafeMutableBytes(of: &value) { balloon.readConfiguration(offset: offset, into: $0) }
            return value
        }
        #expect(word(0) == 16)
        try balloon.setTarget(bytes: 128 << 10)
        #expect(word(0) == 32)
        #expect(notified.load(ordering: .relaxed) == 0) // not active yet: nobody to tell
        var actual: UInt32 = 0x0102_0304
        withUnsafeBytes(of: &actual) { balloon.writeConfiguration(offset: 4, from: $0) }
        #expect(word(4) == 0x0102_0304)
        var byte: UInt8 = 0xff
        withUnsafeBytes(of: &byte) { balloon.writeConfiguration(offset: 0, from: $0) } // num_pages is read-only
        #expect(word(0) == 32)
        // The register keeps what the guest wrote; the status says no more than guest RAM (1 MiB: 256 pages).
        #expect(balloon.status().actualPages == 256)
        #expect(throws: SwiftletError.self) { try balloon.setTarget(bytes: 2 << 20) }

        try balloon.activate(VirtioActivation(queues: [nil, nil], features: VirtioFeature.version1, memory: driver.memory))
        try balloon.setTarget(bytes: 0)
        #expect(notified.load(ordering: .relaxed) == 1)
        balloon.reset()
        #expect(balloon.status().actualPages == 0)
    }

    @Test func featuresFollowTheConfiguration() throws {
        let plain = try Balloon(BalloonConfiguration(packedRing: false), guestMemorySize: 1 << 20)
        #expect(plain.offeredFeatures == VirtioFeature.version1)
        #expect(try Balloon(BalloonConfiguration(), guestMemorySize: 1 << 20).offeredFeatures == VirtioFeature.version1 | VirtioFeature.ringPacked)
        #expect(plain.queueEvents.count == 2)
        let full = try Balloon(BalloonConfiguration(deflateOnOOM: true, freePageReporting: true, statisticsInterval: 5), guestMemorySize: 1 << 20)
        #expect(full.offeredFeatures == VirtioFeature.version1 | VirtioFeature.ringPacked | Balloon.Feature.statisticsQueue | Balloon.Feature.deflateOnOOM | Balloon.Feature.pageReporting)
        #expect(full.queueEvents.count == 4)
        #expect(throws: SwiftletError.self) { try Balloon(BalloonConfiguration(targetSize: 2 << 20), guestMemorySize: 1 << 20) }
    }

    @Test func theStatisticsIntervalChangesOnlyWhereTheQueueWasOffered() throws {
        let plain = try Balloon(BalloonConfiguration(), guestMemorySize: 1 << 20)
        do {
            try plain.setStatisticsInterval(seconds: 3)
            Issue.record("a balloon without the statistics queue took an interval")
        } catch {
            #expect(error.message.hasPrefix("this balloon was made without statistics"))
        }
        let polled = try Balloon(BalloonConfiguration(statisticsInterval: 5), guestMemorySize: 1 << 20)
        try polled.setStatisticsInterval(seconds: 2)
        #expect(polled.statisticsInterval == 2 && polled.configuration.statisticsInterval == 5)
        do {
            try polled.setStatisticsInterval(seconds: 0)
            Issue.record("the statistics were turned off under a negotiated queue")
        } catch {
            #expect(error.message.hasPrefix("the statistics interval cannot become 0"))
        }
        #expect(polled.statisticsInterval == 2)
    }

    @Test func statisticsAreHeldUntilTheDeviceAsksForMore() throws {
        let balloon = try device(BalloonConfiguration(statisticsInterval: 1), queue: 2)
        let bytes = BalloonStatisticsTests.entry(5, 256 << 20) + BalloonStatisticsTests.entry(4, 10 << 20)
        try driver.memory.write(bytes, at: request)
        try driver.setDescriptor(0, address: request.rawValue, length: UInt32(bytes.count))
        try driver.publish(0)
        balloon.queueEvents[2].signal()
        balloon.handleQueueEvent(2)
        let statistics = try #require(balloon.status().statistics)
        #expect(statistics.totalMemory == 256 << 20 && statistics.freeMemory == 10 << 20)
        #expect(driver.usedIndex == 0) // held
        balloon.requestStatistics()
        #expect(driver.usedIndex == 1 && line.count == 1)
        balloon.requestStatistics() // nothing held: nothing to give back
        #expect(driver.usedIndex == 1)
    }

    @Test func reportedFreeBlocksAreReleasedAndTheQueueFollowsTheFeatures() throws {
        // Without the statistics queue, the reporting queue is the third (index 2).
        let balloon = try device(BalloonConfiguration(freePageReporting: true), queue: 2)
        for frame: UInt64 in 0x80..<0xa0 { try fill(frame: frame) }
        try driver.setDescriptor(0, address: 0x80000, length: 0x10000, flags: FakeDriver.write | FakeDriver.next, next: 1)
        try driver.setDescriptor(1, address: 0x98000, length: 0x8000, flags: FakeDriver.write)
        try driver.publish(0)
        balloon.queueEvents[2].signal()
        balloon.handleQueueEvent(2)
        #expect(try firstByte(frame: 0x80) == 0 && firstByte(frame: 0x8f) == 0 && firstByte(frame: 0x98) == 0)
        #expect(try firstByte(frame: 0x90) == Self.pattern)
        #expect(balloon.status().reportedBytes == 0x18000 && balloon.status().releasedBytes == 0x18000)
        #expect(driver.usedIndex == 1)
    }

    @Test func aReportReachingPastGuestRAMReleasesNothing() throws {
        let balloon = try device(BalloonConfiguration(freePageReporting: true), queue: 2)
        try fill(frame: 0xf0)
        try driver.setDescriptor(0, address: 0xf0000, length: 0x20000, flags: FakeDriver.write)
        try driver.publish(0)
        balloon.queueEvents[2].signal()
        balloon.handleQueueEvent(2)
        #expect(try firstByte(frame: 0xf0) == Self.pattern)
        #expect(balloon.counters.guestErrors == 1)
        #expect(balloon.status().releasedBytes == 0)
        #expect(driver.usedIndex == 1) // returned, with nothing done
    }
}
