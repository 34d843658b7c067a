import FuzzSupport
import SwiftletDevices
import SwiftletMemory
import SwiftletVirtio

// virtio-balloon: inflate and deflate PFN arrays, statistics buffers and free page reports, plus config writes of
// `actual`, through the device's own queue handlers. Inflated pages are really released (madvise) from the fuzz
// guest's memory, rings included when the guest names them.

nonisolated(unsafe) let guest = FuzzGuest()
nonisolated(unsafe) let balloon = try! Balloon(BalloonConfiguration(targetSize: 64 << 10, deflateOnOOM: true, freePageReporting: true,
                                                                    statisticsInterval: 1),
                                               guestMemorySize: FuzzGuest.memorySize)
let fatal = FatalFlag()
balloon.attach(interrupt: VirtioInterrupt(line: CountingLine())) { fatal.raise() }
let guestPages = FuzzGuest.memorySize / 4096
/// Heap one input may make the device hold at once: one chain, one batch of frames (Balloon.batchFrames) and its
/// ranges, and the page bitmap of this guest's RAM. None of it grows with the number of PFNs the guest sends.
nonisolated let memoryBound = 256 << 10

Fuzz.main { input in
    guest.clear()
    fatal.clear()
    balloon.reset()
    let features = input.features(offered: balloon.offeredFeatures)
    var queueCount = 2
    if features & Balloon.Feature.statisticsQueue != 0 { queueCount += 1 }
    if features & Balloon.Feature.pageReporting != 0 { queueCount += 1 }
    let before = balloon.status()
    Fuzz.beginMemoryAccounting()
    var drivers: [FuzzDriverQueue] = []
    var queues: [SplitQueue?] = []
    for index in 0..<queueCount {
        // Queues of up to 32 entries here: a chain may still carry Balloon.maximumFramesPerRequest page numbers, and
        // 32 of them per drain keep an input's work near a millisecond (the queue target covers the large rings).
        var driver = FuzzDriverQueue(guest: guest, index: index, size: FuzzDriverQueue.size(&input, maximumSize: 32))
        let queue = driver.queue(maximumSize: Balloon.queueSize, features: features)
        if queue != nil { driver.post(&input, indirect: false) }
        drivers.append(driver)
        queues.append(queue)
    }
    for index in drivers.indices { drivers[index].snapshot() } // later queues' tables may change earlier chains
    do {
        try balloon.activate(VirtioActivation(queues: queues, features: features, memory: guest.memory))
    } catch {
        return // no inflate or deflate queue: the transport reports the activation failure to the guest
    }
    for _ in 0..<Int(input.u8() % 8) {
        switch input.u8() % 4 {
        case 0: balloon.handleQueueEvent(Int(input.u8()) % queueCount)
        case 1: balloon.requestStatistics()
        case 2:
            var value = input.u32()
            withUnsafeBytes(of: &value) { balloon.writeConfiguration(offset: Int(input.u8() % 12), from: UnsafeRawBufferPointer(rebasing: $0[0..<Int(1 + input.u8() % 4)])) }
        default:
            let index = Int(input.u8()) % queueCount
            drivers[index].publish(&input, indirect: false)
            for other in drivers.indices { drivers[other].snapshot() }
            balloon.handleQueueEvent(index)
        }
    }
    for index in 0..<queueCount { balloon.handleQueueEvent(index) }
    for driver in drivers where driver.size > 0 && driver.size <= Balloon.queueSize { driver.checkUsed("virtio-balloon") }
    let after = balloon.status()
    // The balloon started empty at activation: what is in it now is between nothing and all of guest RAM.
    let inflated = after.inflatedPages - before.inflatedPages, deflated = after.deflatedPages - before.deflatedPages
    Fuzz.check(inflated >= deflated && inflated - deflated <= guestPages,
               "\(inflated) pages inflated and \(deflated) deflated in a guest of \(guestPages) pages")
    Fuzz.check(after.actualPages <= UInt32(guestPages), "actual reported as \(after.actualPages) pages in a guest of \(guestPages)")
    Fuzz.checkMemory(bound: memoryBound, "virtio-balloon")
}
