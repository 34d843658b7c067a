import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletTestSupport
import SwiftletVirtio
import Testing

/// A device that records what the transport tells it.
final class RecordingDevice: VirtioDevice, @unchecked Sendable {
    // @unchecked: tests drive it from one thread.
    var deviceType: UInt32 { 2 }
    var offeredFeatures: UInt64 { VirtioFeature.version1 | VirtioFeature.eventIndex | VirtioFeature.ringPacked | (1 << 9) }
    var queueMaximumSizes: [UInt16] { [16, 16] }
    let queueEvents: [EventFd]
    var activations: [VirtioActivation] = []
    var resets = 0
    var configuration: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]

    init() throws { queueEvents = [try EventFd(nonBlocking: true), try EventFd(nonBlocking: true)] }

    func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = offset + index < configuration.count ? configuration[offset + index] : 0 }
    }
    func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {}
    func activate(_ activation: VirtioActivation) throws(SwiftletError) { activations.append(activation) }
    func reset() { resets += 1 }
}

@Suite struct TransportTests {
    typealias R = MmioTransport.Register
    typealias S = MmioTransport.Status
    let device: RecordingDevice
    let line = CountingLine()
    let transport: MmioTransport
    let driver: FakeDriver

    init() throws {
        device = try RecordingDevice()
        driver = try FakeDriver(size: 8)
        transport = MmioTransport(device: device, interrupt: VirtioInterrupt(line: line), memory: driver.memory)
    }

    func read(_ register: Int) -> UInt32 {
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { transport.read(offset: UInt64(register), data: $0) }
        return value
    }

    func write(_ register: Int, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { transport.write(offset: UInt64(register), data: $0) }
    }

    func negotiate(features: UInt64 = VirtioFeature.version1) {
        write(R.status, S.acknowledge)
        write(R.status, S.acknowledge | S.driver)
        write(R.driverFeaturesSelect, 0)
        write(R.driverFeatures, UInt32(truncatingIfNeeded: features))
        write(R.driverFeaturesSelect, 1)
        write(R.driverFeatures, UInt32(truncatingIfNeeded: features >> 32))
        write(R.status, S.acknowledge | S.driver | S.featuresOK)
    }

    func setUpQueue(_ index: UInt32, size: UInt32 = 8) {
        write(R.queueSelect, index)
        write(R.queueSize, size)
        write(R.queueDescriptorLow, UInt32(FakeDriver.descriptorTable.rawValue))
        write(R.queueDescriptorHigh, 0)
        write(R.queueDriverLow, UInt32(FakeDriver.availableRing.rawValue))
        write(R.queueDeviceLow, UInt32(FakeDriver.usedRing.rawValue))
        write(R.queueReady, 1)
    }

    @Test func identifiesItself() {
        #expect(read(R.magicValue) == 0x7472_6976)
        #expect(read(R.version) == 2)
        #expect(read(R.deviceID) == 2)
        write(R.deviceFeaturesSelect, 1)
        #expect(read(R.deviceFeatures) == 1 | 1 << 2) // VERSION_1 is bit 32, RING_PACKED bit 34
        write(R.deviceFeaturesSelect, 0)
        #expect(read(R.deviceFeatures) == UInt32(1 << 29 | 1 << 9))
        write(R.deviceFeaturesSelect, 7)
        #expect(read(R.deviceFeatures) == 0)
        write(R.queueSelect, 1)
        #expect(read(R.queueSizeMaximum) == 16)
        write(R.queueSelect, 2)
        #expect(read(R.queueSizeMaximum) == 0) // no such queue
        #expect(read(R.sharedMemoryLengthLow) == UInt32.max)
    }

    @Test func theGoodPathActivatesTheDevice() {
        negotiate(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        #expect(read(R.status) == S.acknowledge | S.driver | S.featuresOK)
        setUpQueue(0)
        #expect(read(R.queueReady) == 1)
        write(R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK)
        #expect(read(R.status) & S.driverOK != 0)
        #expect(device.activations.count == 1)
        let activation = device.activations[0]
        #expect(activation.features == VirtioFeature.version1 | VirtioFeature.eventIndex)
        #expect(activation.queues.count == 2)
        #expect(activation.queues[0]?.size == 8 && activation.queues[0]?.eventIndex == true)
        #expect(activation.queues[1] == nil)
        #expect(transport.ignoredWrites == 0)
    }

    /// With VIRTIO_F_RING_PACKED the driver's three addresses are a descriptor ring and two event suppression
    /// structures, and the size need not be a power of two; the device gets packed queues.
    @Test func aPackedRingActivatesPackedQueues() {
        negotiate(features: VirtioFeature.version1 | VirtioFeature.ringPacked)
        setUpQueue(0, size: 5)
        #expect(read(R.queueReady) == 1)
        write(R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK)
        let activation = device.activations[0]
        #expect(activation.queues[0]?.layout == .packed && activation.queues[0]?.size == 5)
        #expect(activation.queues[0] is PackedQueue)
        #expect(transport.ignoredWrites == 0)
    }

    @Test func aSplitRingStillNeedsAPowerOfTwo() {
        negotiate()
        setUpQueue(0, size: 5)
        #expect(read(R.queueReady) == 0)
        #expect(transport.ignoredWrites == 1)
    }

    @Test func featuresOKNeedsVersion1() {
        negotiate(features: 1 << 9)
        #expect(read(R.status) & S.featuresOK == 0)
        #expect(transport.ignoredWrites == 1)
    }

    @Test func featuresOKRefusesUnofferedFeatures() {
        negotiate(features: VirtioFeature.version1 | (1 << 3))
        #expect(read(R.status) & S.featuresOK == 0)
    }

    @Test func statusStepsCannotBeSkippedOrUndone() {
        write(R.status, S.driver) // DRIVER before ACKNOWLEDGE
        #expect(read(R.status) == 0)
        write(R.status, S.acknowledge)
        write(R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK) // three steps at once
        #expect(read(R.status) == S.acknowledge)
        write(R.status, S.acknowledge | S.driver)
        write(R.status, S.acknowledge | S.driver | S.driverOK) // DRIVER_OK before FEATURES_OK
        #expect(read(R.status) == S.acknowledge | S.driver)
        negotiate()
        write(R.status, S.acknowledge) // clearing bits without a reset
        #expect(read(R.status) == S.acknowledge | S.driver | S.featuresOK)
        #expect(device.activations.isEmpty)
        write(R.status, read(R.status) | S.failed) // FAILED at any time
        #expect(read(R.status) & S.failed != 0)
    }

    @Test func featuresCannotChangeAfterFeaturesOK() {
        negotiate()
        write(R.driverFeaturesSelect, 0)
        write(R.driverFeatures, 1 << 9)
        #expect(transport.ignoredWrites == 1)
        setUpQueue(0)
        write(R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK)
        #expect(device.activations[0].features == VirtioFeature.version1)
    }

    @Test(arguments: [3 as UInt32, 0, 32, 65536])
    func invalidQueueSizesNeverBecomeReady(size: UInt32) {
        negotiate()
        setUpQueue(0, size: size)
        #expect(read(R.queueReady) == 0)
    }

    @Test func misplacedRingsNeverBecomeReady() {
        negotiate()
        write(R.queueSelect, 0)
        write(R.queueSize, 8)
        write(R.queueDescriptorLow, 0x1004) // not 16-byte aligned
        write(R.queueDriverLow, UInt32(FakeDriver.availableRing.rawValue))
        write(R.queueDeviceLow, UInt32(FakeDriver.usedRing.rawValue))
        write(R.queueReady, 1)
        #expect(read(R.queueReady) == 0)
        write(R.queueDescriptorLow, UInt32(FakeDriver.descriptorTable.rawValue))
        write(R.queueDeviceHigh, 1) // used ring at 4 GiB + 0x4000: outside memory
        write(R.queueReady, 1)
        #expect(read(R.queueReady) == 0)
        write(R.queueDeviceHigh, 0)
        write(R.queueReady, 1)
        #expect(read(R.queueReady) == 1)
        write(R.queueSize, 4) // a ready queue's registers are frozen
        write(R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK)
        #expect(device.activations[0].queues[0]?.size == 8)
    }

    @Test func queueRegistersNeedFeaturesOK() {
        write(R.status, S.acknowledge)
        write(R.status, S.acknowledge | S.driver)
        setUpQueue(0)
        #expect(read(R.queueReady) == 0)
    }

    @Test func resetForgetsEverything() {
        negotiate()
        setUpQueue(0)
        write(R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK)
        let generation = read(R.configurationGeneration)
        transport.interrupt.signal(VirtioInterrupt.usedBuffer)
        write(R.status, 0)
        #expect(device.resets == 1)
        #expect(read(R.status) == 0)
        #expect(read(R.interruptStatus) == 0)
        write(R.queueSelect, 0)
        #expect(read(R.queueReady) == 0)
        #expect(read(R.configurationGeneration) == generation &+ 1)
    }

    @Test func interruptStatusAndAcknowledge() {
        transport.interrupt.signal(VirtioInterrupt.usedBuffer)
        transport.interrupt.signal(VirtioInterrupt.configChange)
        #expect(line.count == 2 && transport.interrupt.count == 2)
        #expect(read(R.interruptStatus) == 3)
        write(R.interruptAcknowledge, 1)
        #expect(read(R.interruptStatus) == 2)
        write(R.interruptAcknowledge, 2)
        #expect(read(R.interruptStatus) == 0)
    }

    @Test func noSecondInterruptWhileOneIsPending() {
        transport.interrupt.signal(VirtioInterrupt.usedBuffer)
        transport.interrupt.signal(VirtioInterrupt.usedBuffer) // not acknowledged yet: the driver will look anyway
        #expect(line.count == 1 && transport.interrupt.count == 1)
        transport.interrupt.signal(VirtioInterrupt.configChange) // a new reason does raise the line
        #expect(line.count == 2)
        write(R.interruptAcknowledge, 3)
        transport.interrupt.signal(VirtioInterrupt.usedBuffer)
        #expect(line.count == 3 && read(R.interruptStatus) == 1)
    }

    @Test func notifyThroughAnExitSignalsTheQueueEvent() {
        write(R.queueNotify, 1)
        #expect(device.queueEvents[1].consume() == 1)
        #expect(device.queueEvents[0].consume() == nil)
        write(R.queueNotify, 9) // no such queue: ignored
    }

    @Test func oddAccessesAreHarmless() {
        var wide: UInt64 = 0
        withUnsafeMutableBytes(of: &wide) { transport.read(offset: UInt64(R.magicValue), data: $0) }
        #expect(wide == 0) // registers are 32-bit
        var byte: UInt8 = 0xff
        withUnsafeMutableBytes(of: &byte) { transport.read(offset: 0x101, data: $0) }
        #expect(byte == 2) // configuration space takes any width
        write(R.magicValue, 1) // read-only
        #expect(read(R.magicValue) == 0x7472_6976)
    }
}
