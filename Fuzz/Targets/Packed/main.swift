import FuzzSupport
import SwiftletMemory
import SwiftletVirtio

// The packed virtqueue (SwiftletVirtio.PackedQueue and the shared drain) over a fuzzed descriptor ring and indirect
// tables, written by a driver that mostly follows the ring's rules (its own slot and wrap counter, correct AVAIL/USED
// bits, IDs below the queue size) and sometimes does not (any slot, any bits, any ID), driven by a fuzzed sequence
// of pops, uses (in order and out of order), rewinds, drains and notification calls. Every chain the queue pops, or
// refuses, is compared with an independent walk of the same memory from where the queue says it stands
// (PackedReference); the queue's positions are compared with a model of where they must be (each pop moves the
// available position by the chain's descriptors, each use moves the used position by the used chain's); every used
// descriptor is read back as a driver would.

nonisolated(unsafe) let guest = FuzzGuest()
/// Heap one input may make the queue hold at once: the queue object and its per-ID tables (two arrays of `size`
/// 16-bit entries, 1 KiB at 256), one chain's buffers (at most the queue size, 256 × 32 bytes) and the drain's
/// bookkeeping.
nonisolated let memoryBound = 64 << 10

let ring = GuestAddress(0)
let driverEvent = GuestAddress(0x1000)
let deviceEvent = GuestAddress(0x2000)

/// A place in the ring, as the model keeps it: slot and wrap counter.
struct Place: Equatable {
    var slot: UInt16
    var wrap: Bool
    var encoded: UInt16 { slot | (wrap ? 0x8000 : 0) }
    mutating func advance(_ count: Int, size: UInt16) {
        for _ in 0..<count {
            slot += 1
            if slot == size { slot = 0; wrap.toggle() }
        }
    }
    func linear(_ size: UInt16) -> Int { Int(slot) + (wrap ? 0 : Int(size)) }
    func distance(to other: Place, size: UInt16) -> Int { (other.linear(size) - linear(size) + 2 * Int(size)) % (2 * Int(size)) }
}

/// An independent walk of the chain at `place`, from the virtio 1.2 packed-ring rules (§2.8) and the bounds
/// docs/SECURITY.md names, not from PackedQueue's code.
enum PackedReference {
    enum Verdict: Equatable {
        case empty
        case corrupt(String)
        case malformed(id: UInt16, count: Int, String)
        case chain(id: UInt16, count: Int, readable: UInt64, writable: UInt64)
    }

    static func entry(_ table: GuestAddress, _ index: Int) -> (address: UInt64, length: UInt32, id: UInt16, flags: UInt16) {
        let base = table.rawValue + 16 * UInt64(index)
        return (try! guest.memory.read(UInt64.self, at: GuestAddress(base)), try! guest.memory.read(UInt32.self, at: GuestAddress(base + 8)),
                try! guest.memory.read(UInt16.self, at: GuestAddress(base + 12)), try! guest.memory.read(UInt16.self, at: GuestAddress(base + 14)))
    }

    static func isAvailable(_ flags: UInt16, _ wrap: Bool) -> Bool {
        ((flags >> 7) & 1 == 1) == wrap && ((flags >> 15) & 1 == 1) != wrap
    }

    static func walk(at start: Place, outstanding: Int, size: UInt16, indirect: Bool) -> Verdict {
        guard isAvailable(entry(ring, Int(start.slot)).flags, start.wrap) else { return .empty }
        var place = start, count = 0, id: UInt16 = 0
        var problem: String?
        var buffers = 0, readable: UInt64 = 0, writable: UInt64 = 0, sawWritable = false
        func buffer(_ address: UInt64, _ length: UInt32, writes: Bool) -> String? {
            guard length > 0 else { return "zero length" }
            buffers += 1
            guard buffers <= Int(size) else { return "more buffers than the queue" }
            if writes { sawWritable = true; writable += UInt64(length) } else {
                guard !sawWritable else { return "readable after writable" }
                readable += UInt64(length)
            }
            guard readable + writable <= UInt64(UInt32.max) else { return "over 4 GiB" }
            guard guest.memory.contains(GuestAddress(address), count: UInt64(length)) else { return "outside memory" }
            return nil
        }
        while true {
            let descriptor = entry(ring, Int(place.slot))
            if count > 0, !isAvailable(descriptor.flags, place.wrap) { return .corrupt("a chained descriptor not available") }
            count += 1
            guard outstanding + count <= Int(size) else { return .corrupt("more descriptors out than the ring holds") }
            id = descriptor.id
            let next = descriptor.flags & 1 != 0
            if problem == nil {
                if descriptor.flags & 4 != 0 {
                    if !indirect { problem = "indirect not negotiated" }
                    else if count != 1 || next { problem = "indirect in a list" }
                    else if descriptor.length == 0 || descriptor.length % 16 != 0 { problem = "indirect length" }
                    else if descriptor.length / 16 > UInt32(size) { problem = "indirect table longer than the queue" }
                    else if !guest.memory.contains(GuestAddress(descriptor.address), count: UInt64(descriptor.length)) { problem = "table outside memory" }
                    else {
                        for index in 0..<Int(descriptor.length / 16) where problem == nil {
                            let inner = entry(GuestAddress(descriptor.address), index)
                            problem = buffer(inner.address, inner.length, writes: inner.flags & 2 != 0)
                        }
                    }
                } else {
                    problem = buffer(descriptor.address, descriptor.length, writes: descriptor.flags & 2 != 0)
                }
            }
            place.advance(1, size: size)
            if !next { break }
        }
        guard id < size else { return .corrupt("id beyond the queue") }
        if let problem { return .malformed(id: id, count: count, problem) }
        return .chain(id: id, count: count, readable: readable, writable: writable)
    }
}

/// The driver: writes descriptors at its own place in the ring (or, sometimes, anywhere) and reads used ones back.
struct Driver {
    let size: UInt16
    var place = Place(slot: 0, wrap: true)

    static func write(_ table: GuestAddress, _ index: Int, address: UInt64, length: UInt32, id: UInt16, flags: UInt16) {
        let base = table.rawValue + 16 * UInt64(index)
        try! guest.memory.write(address, at: GuestAddress(base))
        try! guest.memory.write(length, at: GuestAddress(base + 8))
        try! guest.memory.write(id, at: GuestAddress(base + 12))
        try! guest.memory.write(flags, at: GuestAddress(base + 14))
    }

    /// A plausible buffer (in the data area, short) most of the time, a wholly raw one sometimes.
    static func buffer(_ input: inout FuzzInput) -> (UInt64, UInt32) {
        if input.u8() & 7 == 0 { return (input.u64(), input.u32()) }
        let offset = UInt64(input.u32()) % UInt64(FuzzGuest.dataArea.count)
        let length = min(1 + UInt32(input.u16() % 4096), UInt32(UInt64(FuzzGuest.dataArea.count) - offset))
        return (FuzzGuest.dataArea.lowerBound + offset, input.u8() & 0x1f == 0 ? 0 : length)
    }

    /// Makes a fuzzed list of descriptors available: mostly as the rules say, sometimes with wrong bits or IDs.
    mutating func post(_ input: inout FuzzInput) {
        let count = 1 + Int(input.u8()) % Int(min(size, 8))
        let id = input.u8() & 0xf0 == 0xf0 ? input.u16() : UInt16(input.u8()) % size
        let lawless = input.u8() & 0x0f == 0
        var at = lawless ? Place(slot: input.u16() % size, wrap: input.bool()) : place
        for index in 0..<count {
            var flags = UInt16(input.u8() & 6) // WRITE, INDIRECT
            if index < count - 1 { flags |= 1 }
            if lawless && input.bool() { flags = input.u16() } else { flags |= at.wrap ? 0x80 : 0x8000 }
            var (address, length) = Self.buffer(&input)
            if flags & 4 != 0 && input.u8() & 3 != 0 { // an indirect table in the indirect area, up to 16 entries
                let first = UInt64(input.u16()) % UInt64(FuzzGuest.indirectArea.count / 16 - 16)
                let entries = 1 + Int(input.u8() % 16)
                address = FuzzGuest.indirectArea.lowerBound + 16 * first
                length = input.u8() & 7 == 0 ? input.u32() : UInt32(16 * entries)
                for entry in 0..<entries {
                    let (inner, innerLength) = Self.buffer(&input)
                    Self.write(GuestAddress(address), entry, address: inner, length: innerLength, id: input.u16(), flags: UInt16(input.u8()))
                }
            }
            Self.write(ring, Int(at.slot), address: address, length: length, id: id, flags: flags)
            at.advance(1, size: size)
        }
        if !lawless { place = at }
    }
}

Fuzz.main { input in
    guest.clear()
    let featureBits = input.u8()
    var features = VirtioFeature.version1 | VirtioFeature.ringPacked
    if featureBits & 1 != 0 { features |= VirtioFeature.indirectDescriptors }
    if featureBits & 2 != 0 { features |= VirtioFeature.eventIndex }
    let indirect = featureBits & 1 != 0
    // Any size: packed rings need not be powers of two; above the device's 256 the queue must refuse.
    let size = input.u8() & 0x80 != 0 ? input.u16() % 300 : UInt16(1 + input.u8() % 16)
    var configuration = QueueConfiguration()
    configuration.size = size
    configuration.descriptorTable = ring
    configuration.availableRing = driverEvent
    configuration.usedRing = deviceEvent
    configuration.ready = true
    Fuzz.beginMemoryAccounting()
    let made = try? PackedQueue(configuration, maximumSize: 256, memory: guest.memory, features: features)
    guard let queue = made else {
        Fuzz.check(size == 0 || size > 256, "a packed queue of size \(size) was refused")
        return
    }
    Fuzz.check(size > 0 && size <= 256, "a packed queue of size \(size) was accepted")
    var driver = Driver(size: size)
    var available = Place(slot: 0, wrap: true), used = Place(slot: 0, wrap: true)
    var lengths: [UInt16: Int] = [:] // per ID, the model's chain length (what a driver keeps)
    var held: [(id: UInt16, writable: UInt64, start: Place)] = [] // popped, not used, in pop order
    var chain = DescriptorChain()
    var driverUsed = Place(slot: 0, wrap: true) // where the driver looks for the next used descriptor
    var corrupt = false
    var poppedSinceUse = 0 // chains that may be given back: popped since the last use (the queue's contract)

    func checkPositions(_ what: String) {
        Fuzz.check(queue.position == QueuePosition(nextAvailable: available.encoded, nextUsed: used.encoded),
                   "\(what): the queue stands at \(queue.position), the model at \(available.encoded)/\(used.encoded)")
    }
    /// Reads the used descriptor the device just wrote at the driver's place, as a driver would.
    func readUsed(_ id: UInt16, _ length: UInt32) {
        let descriptor = PackedReference.entry(ring, Int(driverUsed.slot))
        let usedBits = ((descriptor.flags >> 7) & 1 == 1, (descriptor.flags >> 15) & 1 == 1)
        Fuzz.check(usedBits == (driverUsed.wrap, driverUsed.wrap), "the used descriptor at \(driverUsed.slot) has flags \(descriptor.flags)")
        Fuzz.check(descriptor.id == id && descriptor.length == length, "used descriptor (\(descriptor.id), \(descriptor.length)), expected (\(id), \(length))")
        Fuzz.check((descriptor.flags & 2 != 0) == (length > 0), "WRITE in a used descriptor must say whether data was written")
        driverUsed.advance(lengths[id] ?? 1, size: size)
    }
    func use(_ id: UInt16, _ length: UInt32) {
        poppedSinceUse = 0
        queue.addUsed(head: id, length: length)
        readUsed(id, length)
        used.advance(lengths[id] ?? 1, size: size)
        checkPositions("use \(id)")
    }

    for _ in 0..<4 * Int(size) + 8 where !corrupt && !input.isExhausted {
        switch input.u8() % 7 {
        case 0, 1: // pop one chain and hold it
            let outstanding = used.distance(to: available, size: size)
            let reference = PackedReference.walk(at: available, outstanding: outstanding, size: size, indirect: indirect)
            do throws(QueueError) {
                guard try queue.pop(into: &chain) else {
                    Fuzz.check(reference == .empty, "pop found the ring empty; the reference walk says \(reference)")
                    continue
                }
                guard case .chain(let id, let count, let readable, let writable) = reference else {
                    Fuzz.check(false, "the queue accepted chain \(chain.head); the reference walk says \(reference)")
                    continue
                }
                Fuzz.check(chain.head == id && chain.readableLength == readable && chain.writableLength == writable,
                           "chain \(chain.head): \(chain.readableLength)/\(chain.writableLength), reference \(id): \(readable)/\(writable)")
                Fuzz.check(chain.buffers.count <= Int(size), "a chain of \(chain.buffers.count) buffers in a queue of \(size)")
                for (position, buffer) in chain.buffers.enumerated() {
                    Fuzz.check(guest.memory.contains(buffer.address, count: UInt64(buffer.length)), "buffer \(position) outside guest memory")
                    Fuzz.check(buffer.isWritable == (position >= chain.readableCount), "buffer \(position) out of order")
                }
                held.append((id, writable, available))
                poppedSinceUse += 1
                lengths[id] = count
                available.advance(count, size: size)
                checkPositions("pop")
            } catch .invalidChain(let id, let error) {
                guard case .malformed(let refID, let count, _) = reference, refID == id else {
                    Fuzz.check(false, "the queue refused chain \(id) (\(error)); the reference walk says \(reference)")
                    continue
                }
                lengths[id] = count
                available.advance(count, size: size)
                checkPositions("malformed pop")
                use(id, 0)
            } catch {
                guard case .corrupt = reference else {
                    Fuzz.check(false, "the queue called the ring corrupt (\(error)); the reference walk says \(reference)")
                    continue
                }
                corrupt = true
            }
        case 2: // use the oldest held chain, or (out of order) the newest
            guard !held.isEmpty else { continue }
            let (id, writable, _) = input.bool() ? held.removeFirst() : held.removeLast()
            use(id, UInt32(UInt64(input.u32()) % (writable + 1)))
        case 3: // give the newest held chains back
            let count = min(poppedSinceUse, Int(input.u8() % 4))
            guard count > 0 else { continue }
            // A restored device would start here: where the oldest of them started.
            let back = held[held.count - count].start
            Fuzz.check(queue.position(holding: count).nextAvailable == back.encoded, "holding \(count) chains: \(queue.position(holding: count)), expected \(back.encoded)")
            queue.rewind(UInt16(count))
            held.removeLast(count)
            poppedSinceUse -= count
            available = back
            checkPositions("rewind \(count)")
        case 4: // drain the rest, with a fuzzed budget; only when nothing is held (a drain uses every chain)
            guard held.isEmpty else { continue }
            var state = chain
            let budget = 1 + Int(input.u8())
            var handled = 0
            let lengthSeed = input.u32()
            let out = used.distance(to: available, size: size)
            let result = queue.drain(&state, chain: \.self, budget: budget, onMalformed: {}) { chain, completion in
                handled += 1
                completion.use(chain.head, length: UInt32(UInt64(lengthSeed) % (chain.writableLength + 1)))
            }
            Fuzz.check(handled <= budget, "a drain with a budget of \(budget) handled \(handled) chains")
            if result.fatal { corrupt = true; continue }
            // A drain uses every chain it pops, each at once: it leaves as many descriptors out as there were (none,
            // unless the driver gave two chains out at once the same ID, which costs its ring those descriptors).
            let position = queue.position
            available = Place(slot: position.nextAvailable & 0x7fff, wrap: position.nextAvailable & 0x8000 != 0)
            used = Place(slot: position.nextUsed & 0x7fff, wrap: position.nextUsed & 0x8000 != 0)
            Fuzz.check(used.distance(to: available, size: size) == out, "a drain changed the descriptors out from \(out) to \(position)")
            driverUsed = used // the drain's used descriptors were checked by the positions; the driver skips them
        case 5: // the driver makes more available
            driver.post(&input)
        default: // the driver sets its event suppression; the device asks about notifications and interrupts
            try! guest.memory.write(input.u32(), at: driverEvent)
            if input.bool() { _ = queue.enableNotification() } else { _ = queue.needsInterrupt() }
            let event = try! guest.memory.read(UInt32.self, at: deviceEvent)
            let flags = UInt16(truncatingIfNeeded: event >> 16)
            if features & VirtioFeature.eventIndex != 0 {
                Fuzz.check(flags == 2, "with EVENT_IDX the device's event flags are \(flags), not DESC")
            } else {
                Fuzz.check(flags == 0, "without EVENT_IDX the device's event flags are \(flags), not ENABLE")
            }
        }
    }
    Fuzz.checkMemory(bound: memoryBound, "the packed queue")
}
