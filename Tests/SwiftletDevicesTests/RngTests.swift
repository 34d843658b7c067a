import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import SwiftletTestSupport
import SwiftletVirtio
import Synchronization
import Testing

@Suite struct RngTests {
    let driver: FakeDriver
    let line = CountingLine()
    static let buffer = GuestAddress(0x10000)

    init() throws { driver = try FakeDriver(size: 16) }

    func device(_ configuration: RngConfiguration = RngConfiguration(), clock: @escaping @Sendable () -> UInt64 = monotonicNanoseconds) throws -> Rng {
        let rng = try Rng(configuration, clock: clock)
        rng.attach(interrupt: VirtioInterrupt(line: line)) {}
        try rng.activate(VirtioActivation(queues: [try driver.queue(features: rng.offeredFeatures)],
                                          features: rng.offeredFeatures, memory: driver.memory))
        _ = rng.queueEvents[0].consume()
        return rng
    }

    /// Posts one device-writable buffer of `length` bytes (zeroed) as chain `index`, and notifies.
    func post(_ rng: Rng, index: UInt16 = 0, length: UInt32, flags: UInt16 = FakeDriver.write) throws {
        let address = GuestAddress(Self.buffer.rawValue + UInt64(index) * 0x10000)
        try driver.memory.write([UInt8](repeating: 0, count: Int(length)), at: address)
        try driver.setDescriptor(Int(index), address: address.rawValue, length: length, flags: flags)
        try driver.publish(index)
    }

    func bytes(index: UInt16, count: Int) throws -> [UInt8] {
        try driver.memory.read(count: count, at: GuestAddress(Self.buffer.rawValue + UInt64(index) * 0x10000))
    }

    @Test func fillsWritableBuffersWithRandomBytes() throws {
        let rng = try device()
        try post(rng, length: 4096)
        rng.queueEvents[0].signal()
        rng.handleQueueEvent(notified: true)
        let used = try driver.usedElement(0)
        #expect(used.id == 0 && used.length == 4096)
        let filled = try bytes(index: 0, count: 4096)
        // 4096 random bytes: all 256 values nearly surely appear, and no run of zeros is left.
        #expect(Set(filled).count > 200)
        #expect(filled.filter { $0 == 0 }.count < 64)
        #expect(line.count == 1)
        #expect(rng.counters.requests == 1 && rng.counters.guestErrors == 0)
    }

    @Test func aChainGetsAtMostTheRequestMaximum() throws {
        let rng = try device()
        try post(rng, length: UInt32(Rng.requestMaximum) + 4096)
        rng.queueEvents[0].signal()
        rng.handleQueueEvent(notified: true)
        #expect(try driver.usedElement(0).length == UInt32(Rng.requestMaximum))
    }

    @Test func aReadOnlyBufferGetsNothingAndCountsAsTheGuestsError() throws {
        let rng = try device()
        try post(rng, length: 64, flags: 0)
        rng.queueEvents[0].signal()
        rng.handleQueueEvent(notified: true)
        #expect(try driver.usedElement(0).length == 0)
        #expect(try bytes(index: 0, count: 64) == [UInt8](repeating: 0, count: 64))
        #expect(rng.counters.guestErrors == 1)
    }

    @Test func theRateLimitHoldsBackWhatTheBucketLacks() throws {
        let now = Mutex<UInt64>(1_000_000_000)
        let rng = try device(RngConfiguration(bytesPerSecond: 1000), clock: { now.withLock { $0 } })
        // The bucket starts full (one second: 1000 bytes): the first 4 KiB buffer gets 1000, the second nothing yet.
        try post(rng, index: 0, length: 4096)
        try post(rng, index: 1, length: 4096)
        rng.queueEvents[0].signal()
        rng.handleQueueEvent(notified: true)
        #expect(driver.usedIndex == 1)
        #expect(try driver.usedElement(0).length == 1000)
        // Half a second later: 500 more bytes, for the waiting chain.
        now.withLock { $0 += 500_000_000 }
        rng.handleQueueEvent(notified: false)
        #expect(driver.usedIndex == 2)
        #expect(try driver.usedElement(1).length == 500)
    }

    @Test func aZeroRateIsRefused() {
        #expect {
            _ = try Rng(RngConfiguration(bytesPerSecond: 0), clock: monotonicNanoseconds)
        } throws: { error in
            (error as? SwiftletError)?.description.contains("--rng rate=0 would give the guest no entropy") == true
        }
    }
}
