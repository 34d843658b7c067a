import FuzzSupport
import SwiftletMemory
import SwiftletVirtio

// The split virtqueue (SwiftletVirtio.SplitQueue and its drain) over fuzzed descriptor tables, indirect tables and
// available rings, driven by a fuzzed sequence of pops, drains, rewinds and notification calls. Every chain the
// queue pops, or refuses, is compared with an independent walk of the same memory (ReferenceWalk).

nonisolated(unsafe) let guest = FuzzGuest()
/// Heap one input may make the queue hold at once: the queue object, one chain's buffers (at most the queue size,
/// 256 × 32 bytes) and the drain's bookkeeping. A walk whose memory grew with the indirect table the guest wrote
/// (16 K entries fit in this guest) would exceed it several times over.
nonisolated let memoryBound = 64 << 10

/// The reference walk of the chain the queue will pop next, or nil when the ring is empty or corrupt.
func nextReference(_ queue: SplitQueue, _ driver: FuzzDriverQueue, indirect: Bool) -> (head: UInt16, ReferenceWalk.Result?)? {
    let available = driver.configuration.availableRing
    let index = try! guest.memory.read(UInt16.self, at: GuestAddress(available.rawValue + 2))
    guard index != queue.lastAvailable, index &- queue.lastAvailable <= queue.size else { return nil }
    let slot = GuestAddress(available.rawValue + 4 + 2 * UInt64(queue.lastAvailable % queue.size))
    let head = try! guest.memory.read(UInt16.self, at: slot)
    return (head, ReferenceWalk.walk(head: head, table: driver.configuration.descriptorTable, size: queue.size,
                                     memory: guest.memory, indirect: indirect))
}

func checkAgainstReference(_ chain: DescriptorChain, _ reference: ReferenceWalk.Result?, size: UInt16) {
    Fuzz.check(chain.buffers.count <= Int(size), "a chain of \(chain.buffers.count) buffers in a queue of \(size)")
    Fuzz.check(chain.buffers.capacity <= max(Int(size), 16) * 2, "a chain's buffer array kept capacity \(chain.buffers.capacity)")
    for (position, buffer) in chain.buffers.enumerated() {
        Fuzz.check(guest.memory.contains(buffer.address, count: UInt64(buffer.length)), "buffer \(position) outside guest memory")
        Fuzz.check(buffer.isWritable == (position >= chain.readableCount), "buffer \(position) out of readable/writable order")
    }
    guard case .chain(let readable, let writable, _)? = reference else {
        Fuzz.check(false, "the queue accepted chain \(chain.head), which the reference walk refused: \(String(describing: reference))")
        return
    }
    Fuzz.check(chain.readableLength == readable && chain.writableLength == writable,
               "chain \(chain.head): \(chain.readableLength)/\(chain.writableLength) bytes, the reference walk \(readable)/\(writable)")
}

Fuzz.main { input in
    guest.clear()
    let featureBits = input.u8()
    var features = VirtioFeature.version1
    if featureBits & 1 != 0 { features |= VirtioFeature.indirectDescriptors }
    if featureBits & 2 != 0 { features |= VirtioFeature.eventIndex }
    let indirect = featureBits & 1 != 0
    let size = FuzzDriverQueue.size(&input, maximumSize: 256)
    var driver = FuzzDriverQueue(guest: guest, index: 0, size: size)
    Fuzz.beginMemoryAccounting()
    guard let queue = driver.queue(maximumSize: 256, features: features) else {
        Fuzz.check(size == 0 || size > 256 || size & (size - 1) != 0, "a queue of size \(size) was refused")
        return
    }
    Fuzz.check(size > 0 && size <= 256 && size & (size - 1) == 0, "a queue of size \(size) was accepted")
    driver.post(&input, indirect: indirect, reference: false)

    var chain = DescriptorChain()
    var held: [(head: UInt16, writable: UInt64)] = [] // popped, not yet used, in pop order
    var corrupt = false
    for _ in 0..<4 * Int(size) where !corrupt && !input.isExhausted {
        switch input.u8() % 6 {
        case 0, 1: // pop one chain and hold it
            let reference = nextReference(queue, driver, indirect: indirect)
            do throws(QueueError) {
                guard try queue.pop(into: &chain) else {
                    Fuzz.check(reference == nil, "pop found the ring empty, but it holds a chain")
                    continue
                }
                checkAgainstReference(chain, reference?.1, size: size)
                held.append((chain.head, chain.writableLength))
            } catch .invalidChain(let head, let error) {
                guard case .malformed? = reference?.1 else {
                    Fuzz.check(false, "the queue refused chain \(head) (\(error)), which the reference walk accepted")
                    continue
                }
                queue.addUsed(head: head, length: 0)
            } catch .headOutOfRange(let head) {
                Fuzz.check(head >= size && reference?.1 == nil, "head \(head) refused as out of range")
                corrupt = true
            } catch { // .availableIndexCorrupt
                Fuzz.check(error != .headOutOfRange(0) && reference == nil, "the ring was called corrupt with a chain to pop")
                corrupt = true
            }
        case 2: // use the oldest held chain, writing a fuzzed length up to what it offered
            guard !held.isEmpty else { continue }
            let (head, writable) = held.removeFirst()
            queue.addUsed(head: head, length: UInt32(UInt64(input.u32()) % (writable + 1)))
        case 3: // give the newest held chains back
            let count = min(held.count, Int(input.u8() % 4))
            guard count > 0 else { continue }
            queue.rewind(UInt16(count))
            held.removeLast(count)
        case 4: // drain the rest, with a fuzzed budget; only when nothing is held (a drain uses every chain)
            guard held.isEmpty else { continue }
            var state = chain
            let budget = 1 + Int(input.u8())
            var handled = 0
            let lengthSeed = input.u32()
            let result = queue.drain(&state, chain: \.self, budget: budget, onMalformed: {}) { chain, completion in
                handled += 1
                completion.use(chain.head, length: UInt32(UInt64(lengthSeed) % (chain.writableLength + 1)))
            }
            Fuzz.check(handled <= budget, "a drain with a budget of \(budget) handled \(handled) chains")
            if result.fatal { corrupt = true }
        default: // the driver publishes more, or the device asks about notifications and interrupts
            if input.bool() { driver.publish(&input, indirect: indirect, reference: false) }
            else if input.bool() { _ = queue.enableNotification() } else { _ = queue.needsInterrupt() }
        }
    }
    Fuzz.checkMemory(bound: memoryBound, "the queue")
}
