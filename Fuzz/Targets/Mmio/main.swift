import FuzzSupport
import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import SwiftletVirtio

// The virtio-mmio transport, driven as a sequence of register reads and writes of any offset and width (feature
// negotiation, queue set-up, status, notifies, configuration space), in front of a virtio-blk and a virtio-balloon.
// A checking wrapper between transport and device asserts what the transport promises the device.

/// Forwards to a real device and checks every activation: features the device offered, VERSION_1 among them, one
/// queue per queue the device has, each within its maximum size, aligned and inside guest memory.
final class CheckedDevice: VirtioDevice, @unchecked Sendable {
    let inner: any VirtioDevice
    var activations = 0
    init(_ inner: any VirtioDevice) { self.inner = inner }
    var deviceType: UInt32 { inner.deviceType }
    var offeredFeatures: UInt64 { inner.offeredFeatures }
    var queueMaximumSizes: [UInt16] { inner.queueMaximumSizes }
    var queueEvents: [EventFd] { inner.queueEvents }
    func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        Fuzz.check(offset >= 0, "a configuration read at offset \(offset)")
        inner.readConfiguration(offset: offset, into: data)
    }
    func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {
        Fuzz.check(offset >= 0, "a configuration write at offset \(offset)")
        inner.writeConfiguration(offset: offset, from: data)
    }
    func activate(_ activation: VirtioActivation) throws(SwiftletError) {
        activations += 1
        Fuzz.check(activation.features & VirtioFeature.version1 != 0, "activated without VERSION_1")
        Fuzz.check(activation.features & ~inner.offeredFeatures == 0, "activated with features the device did not offer")
        Fuzz.check(activation.queues.count == inner.queueMaximumSizes.count, "activated with \(activation.queues.count) queues")
        for (index, queue) in activation.queues.enumerated() {
            guard let queue else { continue }
            Fuzz.check(queue.size > 0 && queue.size <= inner.queueMaximumSizes[index] && queue.size & (queue.size - 1) == 0,
                       "queue \(index) activated with size \(queue.size)")
        }
        try inner.activate(activation)
    }
    func reset() { inner.reset() }
}

nonisolated(unsafe) let guest = FuzzGuest()
nonisolated(unsafe) let image = FuzzFile(name: "mmio", size: 64 << 10)
nonisolated(unsafe) let block = try! Block(BlockConfiguration(path: image.path))
nonisolated(unsafe) let balloon = try! Balloon(BalloonConfiguration(targetSize: 64 << 10, freePageReporting: true, statisticsInterval: 1),
                                               guestMemorySize: FuzzGuest.memorySize)
let line = CountingLine()
let interrupts = [VirtioInterrupt(line: line), VirtioInterrupt(line: line)]
nonisolated(unsafe) let devices = [CheckedDevice(block), CheckedDevice(balloon)]
nonisolated(unsafe) let transports = (0..<2).map { MmioTransport(device: devices[$0], interrupt: interrupts[$0], memory: guest.memory) }
block.attach(interrupt: interrupts[0]) { transports[0].markNeedsReset() }
balloon.attach(interrupt: interrupts[1]) { transports[1].markNeedsReset() }
/// The transport's state is fixed-size; the device behind it holds one activation's queues and chains.
nonisolated let memoryBound = 512 << 10

let registers = [0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050, 0x060, 0x064,
                 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0fc, 0x100, 0x104, 0x108, 0x10c]

Fuzz.main { input in
    guest.clear()
    guest.fillData(&input)
    let which = Int(input.u8() & 1)
    let transport = transports[which], device = devices[which]
    var four = [UInt8](repeating: 0, count: 8)
    four.withUnsafeMutableBytes { transport.write(offset: UInt64(MmioTransport.Register.status), data: UnsafeRawBufferPointer(rebasing: $0[0..<4])) }
    Fuzz.beginMemoryAccounting()
    var buffer = [UInt8](repeating: 0, count: 8)
    for _ in 0..<256 where !input.isExhausted {
        let choice = input.u8()
        let offset = choice & 0x80 == 0 ? UInt64(registers[Int(input.u8()) % registers.count]) : UInt64(input.u16() % 0x200)
        let width = choice & 0x40 == 0 ? 4 : [1, 2, 4, 8][Int(input.u8() % 4)]
        let isWrite = choice & 0x20 != 0
        var value: UInt64
        switch choice & 0x18 {
        case 0x00: value = UInt64(input.u8() % 16)                      // small: statuses, selectors, queue sizes
        case 0x08: value = UInt64(input.u8()) * 0x1000 % FuzzGuest.memorySize // a guest address for a ring
        default: value = input.u64()
        }
        if isWrite {
            withUnsafeBytes(of: &value) { transport.write(offset: offset, data: UnsafeRawBufferPointer(rebasing: $0[0..<width])) }
            if offset == UInt64(MmioTransport.Register.queueNotify), which == 0 { block.handleQueueEvent() }
            if offset == UInt64(MmioTransport.Register.queueNotify), which == 1 { balloon.handleQueueEvent(Int(value % 4)) }
        } else {
            buffer.withUnsafeMutableBytes { transport.read(offset: offset, data: UnsafeMutableRawBufferPointer(rebasing: $0[0..<width])) }
            let read = buffer.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } & (width == 8 ? ~0 : (1 << (8 * UInt64(width))) - 1)
            if offset < 0x100 && (width != 4 || offset % 4 != 0) {
                Fuzz.check(read == 0, "a \(width)-byte register read at \(offset) gave \(read)")
            }
            if offset == 0 && width == 4 { Fuzz.check(read == UInt64(MmioTransport.magic), "magic read as \(read)") }
        }
        let status = transport.status
        let driverOK = MmioTransport.Status.driverOK, featuresOK = MmioTransport.Status.featuresOK
        if status & driverOK != 0 && status & MmioTransport.Status.failed == 0 {
            Fuzz.check(status & featuresOK != 0, "DRIVER_OK without FEATURES_OK (status \(status))")
        }
    }
    Fuzz.checkMemory(bound: memoryBound, "the virtio-mmio transport")
    four.withUnsafeMutableBytes { transport.write(offset: UInt64(MmioTransport.Register.status), data: UnsafeRawBufferPointer(rebasing: $0[0..<4])) }
    _ = device.activations
}
