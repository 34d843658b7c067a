import CSwiftlet
import SwiftletHost
import SwiftletMemory

/// A place in a packed ring: a slot, and the wrap counter that goes with it (virtio 1.2 §2.8.1). Both the device's
/// counters start at slot 0 with the counter at 1, and flip each time they pass the ring's last slot.
struct RingPosition: Equatable {
    var slot: UInt16
    var wrap: Bool

    /// Bits 0-14 the slot, bit 15 the wrap counter: the event suppression structures' off_wrap, and `QueuePosition`'s
    /// form for a packed ring.
    var encoded: UInt16 { slot | (wrap ? 0x8000 : 0) }

    init(slot: UInt16, wrap: Bool) {
        self.slot = slot
        self.wrap = wrap
    }

    init(encoded: UInt16) { self.init(slot: encoded & 0x7fff, wrap: encoded & 0x8000 != 0) }

    /// Moves `count` (at most `size`) slots on.
    mutating func advance(_ count: UInt16, size: UInt16) {
        let next = UInt32(slot) + UInt32(count)
        if next >= UInt32(size) {
            slot = UInt16(next - UInt32(size))
            wrap.toggle()
        } else {
            slot = UInt16(next)
        }
    }

    /// Where the position lies on a line of two laps, 0 ..< 2 * size: the wrap counter says which lap. Differences
    /// of these modulo 2 * size are exact distances for anything less than a lap apart.
    func linear(size: UInt16) -> Int { Int(slot) + (wrap ? 0 : Int(size)) }

    /// Descriptors from `self` on to `other`, modulo two laps.
    func distance(to other: RingPosition, size: UInt16) -> Int {
        let laps = 2 * Int(size)
        return (other.linear(size: size) - linear(size: size) + laps) % laps
    }
}

/// The device side of a packed virtqueue (virtio 1.2 §2.8): one ring of 16-byte descriptors that the driver fills in
/// order and the device overwrites with used descriptors, plus two event suppression structures.
///
/// The same rules as `SplitQueue` hold for what the guest writes. The ring and both structures were validated against
/// guest memory when the queue was built; every descriptor is checked as it is read; a chain carries at most `size`
/// buffers, an indirect table at most `size` entries, and a walk reads at most `size` ring descriptors plus one table,
/// whatever the guest wrote. What only a packed ring can get wrong is corruption of the ring itself, and it resets
/// the device: a chain running into a descriptor that is not marked available (`descriptorNotAvailable`), a buffer
/// ID beyond the queue size (`headOutOfRange`), or more descriptors out than the ring holds (`ringOverrun`).
///
/// State the device keeps per queue, all of it bounded by the queue size and allocated when the queue is built: the
/// number of ring descriptors each buffer ID's chain took (a used descriptor skips that many, §2.8.6), the start of
/// each chain popped and not used (for `rewind` and `position(holding:)`), and with dirty-page tracking the
/// device-writable buffers of each chain out, to mark when it is used (the ring no longer holds them by then:
/// used descriptors written out of order overwrite the descriptors of chains still out).
///
/// @unchecked Sendable: as `SplitQueue`, used only under its device's lock.
public final class PackedQueue: Virtqueue, @unchecked Sendable {
    /// Packed virtqueues have at most 2^15 entries (§2.8): positions keep the wrap counter in bit 15.
    public static let maximumSize: UInt16 = 1 << 15
    /// Where both of the device's counters start: slot 0, wrap counter 1.
    public static let startPosition = QueuePosition(nextAvailable: 0x8000, nextUsed: 0x8000)

    static let descriptorNext: UInt16 = 1, descriptorWrite: UInt16 = 2, descriptorIndirect: UInt16 = 4
    static let descriptorAvailable: UInt16 = 1 << 7, descriptorUsed: UInt16 = 1 << 15
    /// Event suppression flags (§2.8.10).
    static let eventsEnable: UInt16 = 0, eventsDisable: UInt16 = 1, eventsDescriptor: UInt16 = 2

    public let size: UInt16
    public let memory: GuestMemory
    public let eventIndex: Bool
    public let indirectDescriptors: Bool
    public var layout: RingLayout { .packed }
    private let ring: UnsafeMutableRawPointer
    private let ringAddress: GuestAddress
    /// Written by the driver: when it wants used buffer notifications.
    private let driverEvent: UnsafeMutableRawPointer
    /// Written by the device: when it wants available buffer notifications.
    private let deviceEvent: UnsafeMutableRawPointer
    private let deviceEventAddress: GuestAddress

    private var nextAvailable: RingPosition
    private var nextUsed: RingPosition
    /// nextUsed when the device last decided whether to interrupt (for descriptor-specific events).
    private var signalledUsed: RingPosition
    /// Per buffer ID: the ring descriptors its chain took when it was popped.
    private var chainLengths: [UInt16]
    /// The start of each chain popped and not used, newest last: a circular buffer of `size` encoded positions.
    private var popStarts: [UInt16]
    private var popStartsEnd = 0
    /// Chains popped and not used. No more than `size` can be (each takes a ring descriptor), and `pop` refuses a
    /// ring that claims otherwise, so `popStarts` always holds all of their starts.
    private var outstandingChains = 0
    /// With dirty-page tracking: per buffer ID, the device-writable buffers of its chain (at most `size` each).
    private var writableBuffers: [[(address: GuestAddress, length: UInt32)]]

    /// The queue the driver configured; `position` is where a restored queue resumes (a snapshot's, in the packed
    /// form of `QueuePosition`). A position with a slot beyond the ring, or with more descriptors out than the ring
    /// holds, is refused.
    public init(_ configuration: QueueConfiguration, maximumSize: UInt16, memory: GuestMemory, features: UInt64,
                position: QueuePosition = PackedQueue.startPosition) throws(SwiftletError) {
        if let problem = configuration.problem(maximumSize: maximumSize, memory: memory, layout: .packed) {
            throw SwiftletError(.guestFault, problem)
        }
        size = configuration.size
        let available = RingPosition(encoded: position.nextAvailable), used = RingPosition(encoded: position.nextUsed)
        guard available.slot < size, used.slot < size, used.distance(to: available, size: size) <= Int(size) else {
            throw SwiftletError(.guestFault, "packed queue position 0x\(String(position.nextAvailable, radix: 16))/0x\(String(position.nextUsed, radix: 16)) does not fit a ring of \(size) entries")
        }
        nextAvailable = available
        nextUsed = used
        signalledUsed = used
        self.memory = memory
        eventIndex = features & VirtioFeature.eventIndex != 0
        indirectDescriptors = features & VirtioFeature.indirectDescriptors != 0
        ring = try memory.hostPointer(configuration.descriptorTable, count: QueueConfiguration.descriptorTableSize(size))
        ringAddress = configuration.descriptorTable
        driverEvent = try memory.hostPointer(configuration.availableRing, count: QueueConfiguration.eventSuppressionSize)
        deviceEvent = try memory.hostPointer(configuration.usedRing, count: QueueConfiguration.eventSuppressionSize)
        deviceEventAddress = configuration.usedRing
        chainLengths = Array(repeating: 0, count: Int(size))
        popStarts = Array(repeating: 0, count: Int(size))
        writableBuffers = memory.tracksDirtyPages ? Array(repeating: [], count: Int(size)) : []
        // Notifications on from the start: with EVENT_IDX at the first descriptor the device will look at.
        writeDeviceEvent()
    }

    public var position: QueuePosition { QueuePosition(nextAvailable: nextAvailable.encoded, nextUsed: nextUsed.encoded) }

    public func position(holding held: Int) -> QueuePosition {
        precondition(held >= 0 && held <= outstandingChains, "holding more chains than were popped and not used")
        guard held > 0 else { return position }
        let start = popStarts[(popStartsEnd - held + Int(size)) % Int(size)]
        return QueuePosition(nextAvailable: start, nextUsed: nextUsed.encoded)
    }

    private func descriptor(_ slot: UInt16) -> UnsafeMutableRawPointer { ring + 16 * Int(slot) }

    /// Available in the lap `wrap` names: AVAIL matches the driver's wrap counter, USED does not (§2.8.1).
    private static func isAvailable(_ flags: UInt16, wrap: Bool) -> Bool {
        (flags & descriptorAvailable != 0) == wrap && (flags & descriptorUsed != 0) != wrap
    }

    /// The next descriptor's flags, read with acquire ordering so the rest of it (and of its chain) is seen.
    private var headFlags: UInt16 { UInt16(littleEndian: CSwiftlet_load_acquire_u16(descriptor(nextAvailable.slot) + 14)) }

    public var hasAvailable: Bool { Self.isAvailable(headFlags, wrap: nextAvailable.wrap) }

    public func pop(into chain: inout DescriptorChain) throws(QueueError) -> Bool {
        var flags = headFlags
        guard Self.isAvailable(flags, wrap: nextAvailable.wrap) else { return false }
        let outstanding = nextUsed.distance(to: nextAvailable, size: size)
        chain.head = 0
        chain.buffers.removeAll(keepingCapacity: true)
        chain.readableCount = 0
        var walk = Walk(limit: size)
        var position = nextAvailable
        var count: UInt16 = 0
        var id: UInt16 = 0
        while true {
            let entry = descriptor(position.slot)
            if count > 0 {
                // §2.8.6: every descriptor of a list is made available, not only the first.
                flags = UInt16(littleEndian: (entry + 14).loadUnaligned(as: UInt16.self))
                guard Self.isAvailable(flags, wrap: position.wrap) else { throw .descriptorNotAvailable(slot: position.slot) }
            }
            count += 1
            guard outstanding + Int(count) <= Int(size) else { throw .ringOverrun(outstanding: outstanding + Int(count), size: size) }
            let address = GuestAddress(UInt64(littleEndian: entry.loadUnaligned(as: UInt64.self)))
            let length = UInt32(littleEndian: (entry + 8).loadUnaligned(as: UInt32.self))
            id = UInt16(littleEndian: (entry + 12).loadUnaligned(as: UInt16.self)) // the last descriptor's counts (§2.8.6)
            let chained = flags & Self.descriptorNext != 0
            if walk.error == nil {
                if flags & Self.descriptorIndirect != 0 {
                    walk.indirect(address: address, length: length, alone: count == 1 && !chained, queue: self, into: &chain)
                } else {
                    walk.buffer(address: address, length: length, writable: flags & Self.descriptorWrite != 0,
                                memory: memory, into: &chain)
                }
            }
            position.advance(1, size: size)
            guard chained else { break }
        }
        guard id < size else { throw .headOutOfRange(id) }
        popStarts[popStartsEnd] = nextAvailable.encoded
        popStartsEnd = (popStartsEnd + 1) % Int(size)
        outstandingChains += 1
        nextAvailable = position
        chainLengths[Int(id)] = count
        chain.head = id
        if let error = walk.error {
            chain.buffers.removeAll(keepingCapacity: true)
            chain.readableCount = 0
            if memory.tracksDirtyPages { writableBuffers[Int(id)].removeAll(keepingCapacity: true) }
            throw .invalidChain(head: id, error)
        }
        if memory.tracksDirtyPages {
            writableBuffers[Int(id)].removeAll(keepingCapacity: true)
            for buffer in chain.writable { writableBuffers[Int(id)].append((buffer.address, buffer.length)) }
        }
        return true
    }

    /// One chain's checks as its descriptors are read, the same as a split ring's: lengths, order, memory, and the
    /// bound on buffers. The first error is kept; the ring walk goes on to the chain's end all the same, so that the
    /// chain can be returned (its buffer ID is in its last descriptor, and its length is needed to skip it).
    private struct Walk {
        var error: ChainError?
        var buffersLeft: UInt32
        var total: UInt64 = 0
        var seenWritable = false

        init(limit: UInt16) { buffersLeft = UInt32(limit) }

        mutating func buffer(address: GuestAddress, length: UInt32, writable: Bool, memory: GuestMemory,
                             into chain: inout DescriptorChain) {
            guard length > 0 else { error = .zeroLength; return }
            guard buffersLeft > 0 else { error = .tooLong; return }
            buffersLeft -= 1
            total += UInt64(length)
            guard total <= UInt64(UInt32.max) else { error = .lengthOverflow; return }
            if writable {
                seenWritable = true
            } else if seenWritable {
                error = .readableAfterWritable // §2.8.21: device-writable elements come after device-readable ones
                return
            }
            guard let host = try? memory.hostPointer(address, count: UInt64(length)) else {
                error = .outsideMemory(address, length)
                return
            }
            chain.buffers.append(DescriptorBuffer(address: address, length: length, host: host, isWritable: writable))
            if !writable { chain.readableCount += 1 }
        }

        /// An indirect table: the only descriptor of its list (§2.8.21: no INDIRECT in a list linked by NEXT), at
        /// most `size` entries, each one buffer. In the table only WRITE counts; the other flags and the buffer ID
        /// are reserved and ignored (§2.8.8), so a table never leads to another.
        mutating func indirect(address: GuestAddress, length: UInt32, alone: Bool, queue: PackedQueue,
                               into chain: inout DescriptorChain) {
            guard queue.indirectDescriptors else { error = .indirectNotNegotiated; return }
            guard alone else { error = .indirectWithNext; return }
            guard length > 0, length % 16 == 0 else { error = .invalidIndirectLength(length); return }
            guard length / 16 <= UInt32(queue.size) else {
                error = .indirectTableTooLarge(entries: length / 16, limit: queue.size)
                return
            }
            guard let table = try? queue.memory.hostPointer(address, count: UInt64(length)) else {
                error = .outsideMemory(address, length)
                return
            }
            for index in 0..<Int(length / 16) where error == nil {
                let entry = table + 16 * index
                let flags = UInt16(littleEndian: (entry + 14).loadUnaligned(as: UInt16.self))
                buffer(address: GuestAddress(UInt64(littleEndian: entry.loadUnaligned(as: UInt64.self))),
                       length: UInt32(littleEndian: (entry + 8).loadUnaligned(as: UInt32.self)),
                       writable: flags & PackedQueue.descriptorWrite != 0, memory: queue.memory, into: &chain)
            }
        }
    }

    public func rewind(_ count: UInt16) {
        precondition(Int(count) <= outstandingChains, "rewinding chains that were already used")
        for _ in 0..<count {
            popStartsEnd = (popStartsEnd - 1 + Int(size)) % Int(size)
            nextAvailable = RingPosition(encoded: popStarts[popStartsEnd])
            outstandingChains -= 1
        }
    }

    /// Writes the used descriptor for buffer `head` at the next used slot: its ID and length first, then its flags
    /// (AVAIL and USED both the device's wrap counter, WRITE when the device wrote data) with release ordering, which
    /// is what hands it to the driver (§2.8.1, §2.8.4). Then skips the rest of that chain's descriptors (§2.8.6).
    public func addUsed(head: UInt16, length: UInt32) {
        let entry = descriptor(nextUsed.slot)
        (entry + 8).storeBytes(of: length.littleEndian, as: UInt32.self)
        (entry + 12).storeBytes(of: head.littleEndian, as: UInt16.self)
        var flags: UInt16 = nextUsed.wrap ? Self.descriptorAvailable | Self.descriptorUsed : 0
        if length > 0 { flags |= Self.descriptorWrite }
        CSwiftlet_store_release_u16(entry + 14, flags.littleEndian)
        if memory.tracksDirtyPages { markUsed(head: head) }
        let skip = head < size ? max(chainLengths[Int(head)], 1) : 1
        nextUsed.advance(skip, size: size)
        outstandingChains = max(outstandingChains - 1, 0)
    }

    /// Marks what returning `head` writes in guest RAM: the used descriptor, and the device-writable buffers of the
    /// chain popped under that ID (all of them: a page too many in a diff, never one too few). A guest that reused an
    /// ID while its first chain was out gets the second chain's buffers marked for both.
    private func markUsed(head: UInt16) {
        memory.markDirty(GuestAddress(ringAddress.rawValue + 16 * UInt64(nextUsed.slot)), count: 16)
        guard head < size else { return }
        for buffer in writableBuffers[Int(head)] { memory.markDirty(buffer.address, count: UInt64(buffer.length)) }
    }

    /// Whether the driver wants a used buffer notification for what was used since the last call (§2.8.10): never
    /// with its flags at DISABLE; with DESC (EVENT_IDX only), when the used position passed the descriptor it names;
    /// otherwise (ENABLE, or a value it may not use) always, as an interrupt too many costs the guest only a look.
    public func needsInterrupt() -> Bool {
        CSwiftlet_fence_seq_cst() // the used descriptors are visible before the driver's structure is read
        let old = signalledUsed
        signalledUsed = nextUsed
        let word = UInt32(littleEndian: driverEvent.loadUnaligned(as: UInt32.self))
        let flags = UInt16(truncatingIfNeeded: word >> 16) & 3
        if flags == Self.eventsDisable { return false }
        guard flags == Self.eventsDescriptor, eventIndex else { return true }
        let event = RingPosition(encoded: UInt16(truncatingIfNeeded: word))
        guard event.slot < size else { return true }
        // vring_need_event on the two-lap line: was the event descriptor among those used, [old, new)?
        return old.distance(to: event, size: size) < old.distance(to: nextUsed, size: size)
    }

    /// The device event suppression structure: with EVENT_IDX, notify when the next descriptor the device will look
    /// at is made available (DESC at nextAvailable); without, notifications always on (ENABLE). One 32-bit store,
    /// as the driver reads it (Linux's virtqueue_kick_prepare_packed reads both fields at once).
    private func writeDeviceEvent() {
        let word = eventIndex ? UInt32(nextAvailable.encoded) | UInt32(Self.eventsDescriptor) << 16 : UInt32(Self.eventsEnable) << 16
        deviceEvent.storeBytes(of: word.littleEndian, as: UInt32.self)
        memory.markDirty(deviceEventAddress, count: QueueConfiguration.eventSuppressionSize)
    }

    public func enableNotification() -> Bool {
        if eventIndex {
            writeDeviceEvent()
            CSwiftlet_fence_seq_cst() // the event is visible before the ring is looked at again
        }
        return hasAvailable
    }
}
