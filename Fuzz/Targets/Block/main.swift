import FuzzSupport
import Glibc
import SwiftletDevices
import SwiftletVirtio

// virtio-blk requests (header, data, status in any layout, any type, any sector) over a 64 KiB image, on a writable
// device and a read-only one, through the device's own queue handler.

nonisolated(unsafe) let guest = FuzzGuest()
nonisolated(unsafe) let image = FuzzFile(name: "blk", size: 64 << 10)
nonisolated(unsafe) let writable = try! Block(BlockConfiguration(path: image.path, readOnly: false, serial: "fuzz"))
nonisolated(unsafe) let readOnly = try! Block(BlockConfiguration(path: image.path, readOnly: true))
let fatal = FatalFlag()
let line = CountingLine()
for device in [writable, readOnly] { device.attach(interrupt: VirtioInterrupt(line: line)) { fatal.raise() } }
/// Heap one input may make the device hold at once: the queue, one chain (256 buffers), the iovec array of one
/// request (256 entries) and a discard/write-zeroes segment list, each bounded by the queue size, not by the input.
nonisolated let memoryBound = 256 << 10

Fuzz.main { input in
    guest.clear()
    fatal.clear()
    let device = input.bool() ? readOnly : writable
    let before = device === readOnly ? image.contents() : []
    device.reset()
    let features = input.features(offered: device.offeredFeatures)
    var driver = FuzzDriverQueue(guest: guest, index: 0, size: FuzzDriverQueue.size(&input, maximumSize: Block.queueSize))
    Fuzz.beginMemoryAccounting()
    // Request headers (struct virtio_blk_req: type, reserved, sector) in the template slots: mostly known types and
    // sectors near the image, sometimes anything; discard/write-zeroes segments follow some of them.
    guest.fillSlots(&input) { input, slot in
        let choice = input.u8()
        let types: [UInt32] = [0, 1, 4, 8, 11, 13] // IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES
        slot.storeBytes(of: choice & 1 != 0 ? types[Int(input.u8()) % types.count] : input.u32(), toByteOffset: 0, as: UInt32.self)
        slot.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        slot.storeBytes(of: choice & 2 != 0 ? UInt64(input.u8()) : input.u64(), toByteOffset: 8, as: UInt64.self)
        // A discard segment (sector, num_sectors, flags) right behind the header.
        slot.storeBytes(of: choice & 4 != 0 ? UInt64(input.u8()) : input.u64(), toByteOffset: 16, as: UInt64.self)
        slot.storeBytes(of: choice & 8 != 0 ? UInt32(input.u8()) : input.u32(), toByteOffset: 24, as: UInt32.self)
        slot.storeBytes(of: input.u32() & 3, toByteOffset: 28, as: UInt32.self)
    }
    guard let queue = driver.queue(maximumSize: Block.queueSize, features: features) else { return }
    driver.post(&input, indirect: features & VirtioFeature.indirectDescriptors != 0)
    do {
        try device.activate(VirtioActivation(queues: [queue], features: features, memory: guest.memory))
    } catch {
        Fuzz.check(false, "activation failed: \(error)")
    }
    // The device loop: the queue's eventfd was signalled by activate; a drain that ran out of budget signals it
    // again. Each round handles at most the drain budget, so 2 rounds cover a full ring and a third must find it empty.
    for round in 0..<4 {
        device.handleQueueEvent()
        if round == 1, !input.isExhausted, input.bool() { driver.publish(&input, indirect: features & VirtioFeature.indirectDescriptors != 0) }
    }
    driver.checkUsed("virtio-blk")
    Fuzz.checkMemory(bound: memoryBound, "virtio-blk")
    Fuzz.check(image.size == 64 << 10, "the image grew or shrank to \(image.size) bytes")
    if device === readOnly {
        let after = image.contents()
        let same = before.withUnsafeBytes { old in after.withUnsafeBytes { memcmp(old.baseAddress!, $0.baseAddress!, old.count) == 0 } }
        Fuzz.check(same, "a read-only device changed the image")
    }
}
