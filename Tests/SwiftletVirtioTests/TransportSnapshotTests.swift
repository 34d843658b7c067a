import SwiftletHost
import SwiftletMemory
import SwiftletSnapshot
import SwiftletTestSupport
import SwiftletVirtio
import Testing

/// A transport's state through a snapshot: saved from a running device, set on a new transport over the same guest
/// memory, it activates the new device with its queues where the old one stood; states a device could not have
/// reached are refused by what is wrong with them.
@Suite struct TransportSnapshotTests {
    typealias R = MmioTransport.Register
    typealias S = MmioTransport.Status
    let driver: FakeDriver

    init() throws { driver = try FakeDriver(size: 8) }

    func transport(_ device: RecordingDevice, line: CountingLine = CountingLine()) -> MmioTransport {
        MmioTransport(device: device, interrupt: VirtioInterrupt(line: line), memory: driver.memory)
    }

    func write(_ transport: MmioTransport, _ register: Int, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { transport.write(offset: UInt64(register), data: $0) }
    }

    func read(_ transport: MmioTransport, _ register: Int) -> UInt32 {
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { transport.read(offset: UInt64(register), data: $0) }
        return value
    }

    /// A driver that negotiated VERSION_1 and EVENT_IDX and set up queue 0, then DRIVER_OK.
    func running(_ transport: MmioTransport) {
        write(transport, R.status, S.acknowledge)
        write(transport, R.status, S.acknowledge | S.driver)
        write(transport, R.driverFeaturesSelect, 0)
        write(transport, R.driverFeatures, UInt32(truncatingIfNeeded: VirtioFeature.eventIndex))
        write(transport, R.driverFeaturesSelect, 1)
        write(transport, R.driverFeatures, 1)
        write(transport, R.status, S.acknowledge | S.driver | S.featuresOK)
        write(transport, R.queueSelect, 0)
        write(transport, R.queueSize, 8)
        write(transport, R.queueDescriptorLow, UInt32(FakeDriver.descriptorTable.rawValue))
        write(transport, R.queueDriverLow, UInt32(FakeDriver.availableRing.rawValue))
        write(transport, R.queueDeviceLow, UInt32(FakeDriver.usedRing.rawValue))
        write(transport, R.queueReady, 1)
        write(transport, R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK)
    }

    /// Through the state file's records and back.
    func throughAFile(_ state: TransportState) throws -> TransportState {
        var body = SnapshotEncoder()
        body.record("trsp") { state.save(into: &$0) }
        return try TransportState(from: SnapshotFile.body(of: SnapshotFile.bytes(body: body)).nested("trsp"))
    }

    @Test func aRestoredDeviceGoesOnWhereTheSavedOneStood() throws {
        let old = try RecordingDevice()
        let first = transport(old)
        running(first)
        let queue = try #require(old.activations.last?.queues[0])
        // The device serves two chains (wrapping nothing yet), and pops a third it has not used.
        var chain = DescriptorChain()
        for head in 0..<3 as Range<UInt16> {
            try driver.setDescriptor(Int(head), address: FakeDriver.dataArea.rawValue, length: 16)
            try driver.publish(head)
        }
        for _ in 0..<3 { #expect(try queue.pop(into: &chain)) }
        queue.addUsed(head: 0, length: 0)
        queue.addUsed(head: 1, length: 0)
        write(first, R.queueSelect, 1) // a selector the driver left elsewhere comes back too
        let saved = try throughAFile(first.saveState(positions: [queue.position(holding: 1), nil]))
        #expect(saved.positions == [QueuePosition(nextAvailable: 2, nextUsed: 2), nil])
        #expect(saved.driverFeatures == VirtioFeature.version1 | VirtioFeature.eventIndex)

        let new = try RecordingDevice()
        let second = transport(new)
        try second.restore(saved)
        #expect(read(second, R.status) == S.acknowledge | S.driver | S.featuresOK | S.driverOK)
        write(second, R.queueSelect, 0)
        #expect(read(second, R.queueReady) == 1)
        let restored = try #require(new.activations.last)
        #expect(restored.features == saved.driverFeatures)
        #expect(restored.queues[1] == nil)
        let resumed = try #require(restored.queues[0])
        #expect(resumed.position == QueuePosition(nextAvailable: 2, nextUsed: 2))
        // The chain the old device held is popped again, and its use lands in the next used slot.
        #expect(try resumed.pop(into: &chain))
        #expect(chain.head == 2)
        resumed.addUsed(head: 2, length: 5)
        #expect(driver.usedIndex == 3)
        #expect(try driver.usedElement(2) == (id: 2, length: 5))
    }

    @Test func aPendingInterruptIsRaisedAgain() throws {
        let old = try RecordingDevice()
        let first = transport(old)
        running(first)
        first.notifyConfigurationChange()
        let saved = first.saveState(positions: [nil, nil])
        #expect(saved.interruptStatus == VirtioInterrupt.configChange)
        let line = CountingLine()
        let second = transport(try RecordingDevice(), line: line)
        try second.restore(saved)
        #expect(line.count == 1)
        #expect(read(second, R.interruptStatus) == VirtioInterrupt.configChange)
    }

    @Test func aDeviceTheDriverHadNotStartedIsNotActivated() throws {
        let first = transport(try RecordingDevice())
        write(first, R.status, S.acknowledge)
        write(first, R.status, S.acknowledge | S.driver)
        let new = try RecordingDevice()
        let second = transport(new)
        try second.restore(first.saveState(positions: []))
        #expect(new.activations.isEmpty)
        #expect(read(second, R.status) == S.acknowledge | S.driver)
    }

    @Test func statesNoDriverCouldReachAreRefused() throws {
        let first = transport(try RecordingDevice())
        running(first)
        let good = first.saveState(positions: [QueuePosition(), nil])
        func refusal(_ change: (inout TransportState) -> Void) throws -> String {
            var state = good
            change(&state)
            let device = try RecordingDevice()
            do {
                try transport(device).restore(state)
            } catch {
                #expect(device.activations.isEmpty)
                return error.message
            }
            Issue.record("restored a bad state")
            return ""
        }
        #expect(try refusal { $0.queues.removeLast(); $0.positions.removeLast() }.contains("the snapshot has 1 queues, the device 2"))
        #expect(try refusal { $0.driverFeatures |= 1 << 40 }.contains("features 0x10000000000 that this device does not offer"))
        #expect(try refusal { $0.status = S.driverOK }.contains("status 0x4 is not one the driver can reach"))
        #expect(try refusal { $0.driverFeatures = VirtioFeature.eventIndex }.contains("FEATURES_OK without VERSION_1"))
        #expect(try refusal { $0.queues[0].size = 12 }.contains("queue 0: queue size 12 is not a power of two"))
        #expect(try refusal { $0.queues[0].usedRing = GuestAddress(FakeDriver.memorySize) }.contains("outside guest memory"))
        #expect(try refusal { $0.positions[0] = QueuePosition(nextAvailable: 9, nextUsed: 0) }.contains("more chains out than the queue's 8 entries"))
        // A device the driver had failed stays failed, without its queues.
        var failed = good
        failed.status |= S.deviceNeedsReset
        let device = try RecordingDevice()
        try transport(device).restore(failed)
        #expect(device.activations.isEmpty)
    }

    @Test func aQueuePositionGivesBackHeldChainsAndNoMore() throws {
        let queue = try driver.queue()
        var chain = DescriptorChain()
        for head in 0..<2 as Range<UInt16> {
            try driver.setDescriptor(Int(head), address: FakeDriver.dataArea.rawValue, length: 16)
            try driver.publish(head)
        }
        #expect(try queue.pop(into: &chain))
        #expect(try queue.pop(into: &chain))
        #expect(queue.position(holding: 2) == QueuePosition(nextAvailable: 0, nextUsed: 0))
        queue.addUsed(head: 0, length: 0)
        #expect(queue.position(holding: 1) == QueuePosition(nextAvailable: 1, nextUsed: 1))
        // Free-running indices wrap: a restored queue starts anywhere in the 16-bit range.
        let wrapped = try SplitQueue(driver.configuration, maximumSize: 256, memory: driver.memory, features: VirtioFeature.version1,
                                     position: QueuePosition(nextAvailable: 0xffff, nextUsed: 0xfffe))
        #expect(wrapped.position == QueuePosition(nextAvailable: 0xffff, nextUsed: 0xfffe))
        #expect(throws: SwiftletError.self) {
            try SplitQueue(driver.configuration, maximumSize: 256, memory: driver.memory, features: VirtioFeature.version1,
                           position: QueuePosition(nextAvailable: 8, nextUsed: 0xffff))
        }
    }

    /// A packed ring through a snapshot: the positions carry the wrap counters (bit 15), and the restored device pops
    /// the held chain again from the descriptor ring, then goes on in the same lap.
    @Test func aPackedRingIsRestoredWithItsWrapCounters() throws {
        let packed = try FakePackedDriver(size: 4)
        let old = try RecordingDevice()
        let first = MmioTransport(device: old, interrupt: VirtioInterrupt(line: CountingLine()), memory: packed.memory)
        write(first, R.status, S.acknowledge)
        write(first, R.status, S.acknowledge | S.driver)
        write(first, R.driverFeaturesSelect, 1)
        write(first, R.driverFeatures, UInt32(truncatingIfNeeded: (VirtioFeature.version1 | VirtioFeature.ringPacked) >> 32))
        write(first, R.status, S.acknowledge | S.driver | S.featuresOK)
        write(first, R.queueSelect, 0)
        write(first, R.queueSize, 4)
        write(first, R.queueDescriptorLow, UInt32(FakePackedDriver.ring.rawValue))
        write(first, R.queueDriverLow, UInt32(FakePackedDriver.driverEvent.rawValue))
        write(first, R.queueDeviceLow, UInt32(FakePackedDriver.deviceEvent.rawValue))
        write(first, R.queueReady, 1)
        write(first, R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK)
        let queue = try #require(old.activations.last?.queues[0])
        #expect(queue.layout == .packed)
        var chain = DescriptorChain()
        // Five single-descriptor chains through a ring of four: the device's counters wrap; the fifth is held.
        for id: UInt16 in 0..<5 {
            try packed.post([(FakePackedDriver.dataArea.rawValue, 16, true)], id: id % 4)
            #expect(try queue.pop(into: &chain))
            if id < 4 {
                queue.addUsed(head: id % 4, length: 16)
                #expect(try packed.takeUsed()?.id == id % 4)
            }
        }
        let saved = try throughAFile(first.saveState(positions: [queue.position(holding: 1), nil]))
        #expect(saved.positions[0] == QueuePosition(nextAvailable: 0, nextUsed: 0)) // slot 0, wrap counter 0

        let new = try RecordingDevice()
        let second = MmioTransport(device: new, interrupt: VirtioInterrupt(line: CountingLine()), memory: packed.memory)
        try second.restore(saved)
        let restored = try #require(new.activations.last?.queues[0])
        #expect(restored is PackedQueue && restored.position == saved.positions[0])
        #expect(try restored.pop(into: &chain) && chain.head == 0)
        restored.addUsed(head: 0, length: 8)
        #expect(try packed.takeUsed()?.length == 8)
        // A split position that a packed ring cannot take (a slot beyond the ring) is refused.
        var wrong = saved
        wrong.positions[0] = QueuePosition(nextAvailable: 0x8004, nextUsed: 0x8004)
        #expect(throws: SwiftletError.self) { try MmioTransport(device: try RecordingDevice(), interrupt: VirtioInterrupt(line: CountingLine()), memory: packed.memory).restore(wrong) }
    }
}
