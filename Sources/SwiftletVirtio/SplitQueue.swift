import CSwiftlet
import SwiftletHost
import SwiftletMemory

/// The device side of a split virtqueue (virtio 1.2 §2.7). All three areas were validated against guest memory when
/// the queue was built, so ring accesses are in bounds; every descriptor is checked as it is walked.
///
/// @unchecked Sendable: a queue is built by the transport when the driver sets DRIVER_OK, handed to its device
/// under the device's lock, and from then on used only under that lock (by the device's event loop).
public final class SplitQueue: Virtqueue, @unchecked Sendable {
    public let size: UInt16
    public var layout: RingLayout { .split }
    public let memory: GuestMemory
    public let eventIndex: Bool
    public let indirectDescriptors: Bool
    private let descriptors: UnsafeMutableRawPointer
    private let available: UnsafeMutableRawPointer
    private let used: UnsafeMutableRawPointer
    private let usedAddress: GuestAddress
    /// With dirty-page tracking (`GuestMemory.tracksDirtyPages`): the chain `addUsed` walks again to mark the
    /// device-writable buffers it returns, whatever the device wrote into them since it popped it.
    private var usedChain = DescriptorChain(capacity: 8)
    /// The next avail ring slot the device will consume, and the next used slot it will fill.
    public private(set) var lastAvailable: UInt16 = 0
    public private(set) var nextUsed: UInt16 = 0
    /// used->idx when the device last decided whether to interrupt (for VIRTIO_F_EVENT_IDX).
    private var signalledUsed: UInt16 = 0

    static let descriptorNext: UInt16 = 1, descriptorWrite: UInt16 = 2, descriptorIndirect: UInt16 = 4
    static let availableNoInterrupt: UInt16 = 1

    /// The queue the driver configured; `position` is where a restored queue resumes (a snapshot's), the start
    /// (0, 0) otherwise. A position whose available index is more than the queue size ahead of its used index is
    /// refused: no device has more chains out than the ring holds.
    public init(_ configuration: QueueConfiguration, maximumSize: UInt16, memory: GuestMemory, features: UInt64,
                position: QueuePosition = QueuePosition()) throws(SwiftletError) {
        if let problem = configuration.problem(maximumSize: maximumSize, memory: memory, layout: .split) {
            throw SwiftletError(.guestFault, problem)
        }
        guard position.nextAvailable &- position.nextUsed <= configuration.size else {
            throw SwiftletError(.guestFault, "queue position \(position.nextAvailable)/\(position.nextUsed) has more chains out than the queue's \(configuration.size) entries")
        }
        lastAvailable = position.nextAvailable
        nextUsed = position.nextUsed
        signalledUsed = position.nextUsed
        size = configuration.size
        self.memory = memory
        eventIndex = features & VirtioFeature.eventIndex != 0
        indirectDescriptors = features & VirtioFeature.indirectDescriptors != 0
        descriptors = try memory.hostPointer(configuration.descriptorTable, count: QueueConfiguration.descriptorTableSize(size))
        available = try memory.hostPointer(configuration.availableRing, count: QueueConfiguration.availableRingSize(size))
        used = try memory.hostPointer(configuration.usedRing, count: QueueConfiguration.usedRingSize(size))
        usedAddress = configuration.usedRing
    }

    /// Where the device stands in the ring: the next available slot it will consume and the next used slot it will
    /// fill. A device that holds chains it has not used reports `position(holding:)` for a snapshot.
    public var position: QueuePosition { QueuePosition(nextAvailable: lastAvailable, nextUsed: nextUsed) }

    /// The position with the last `held` popped chains given back: where a restored device starts, so that it pops
    /// those chains again (they are still the driver's, unused).
    public func position(holding held: Int) -> QueuePosition {
        precondition(held >= 0 && held <= Int(lastAvailable &- nextUsed), "holding more chains than were popped and not used")
        return QueuePosition(nextAvailable: lastAvailable &- UInt16(held), nextUsed: nextUsed)
    }

    /// avail->idx, read with acquire ordering so the ring entries it covers are seen.
    private var availableIndex: UInt16 { UInt16(littleEndian: CSwiftlet_load_acquire_u16(available + 2)) }

    /// Whether the driver has made buffers available that the device has not consumed.
    public var hasAvailable: Bool { availableIndex != lastAvailable }

    /// Takes the next available chain into `chain`, walking and checking every descriptor. Returns false when the
    /// ring is empty. A malformed chain is consumed and reported as `.invalidChain`.
    public func pop(into chain: inout DescriptorChain) throws(QueueError) -> Bool {
        let availableNow = availableIndex
        guard availableNow != lastAvailable else { return false }
        guard availableNow &- lastAvailable <= size else {
            throw .availableIndexCorrupt(available: availableNow, consumed: lastAvailable)
        }
        let slot = Int(lastAvailable % size)
        let head = UInt16(littleEndian: (available + 4 + 2 * slot).loadUnaligned(as: UInt16.self))
        lastAvailable &+= 1
        guard head < size else { throw .headOutOfRange(head) }
        do {
            try walk(from: head, into: &chain)
        } catch {
            throw .invalidChain(head: head, error)
        }
        return true
    }

    /// Walks the chain at `head`. Bounded by the queue size, whatever the guest wrote: a chain carries at most `size`
    /// buffers, indirect ones included (§2.7.5.3.1: a driver must not make a chain longer than the queue), and an
    /// indirect table is refused before it is read when it has more than `size` entries. So `chain.buffers` never
    /// grows past `size` entries (every queue here is 256, within one readv/writev's IOV_MAX of 1024), and one walk
    /// visits at most 2 * `size` descriptors. `chain` is emptied first (keeping its capacity).
    private func walk(from head: UInt16, into chain: inout DescriptorChain) throws(ChainError) {
        chain.head = head
        chain.buffers.removeAll(keepingCapacity: true)
        chain.readableCount = 0
        var table = descriptors
        var tableCount = UInt32(size)
        var index = UInt32(head)
        // Every descriptor of a chain is visited at most once; more visits than the table has entries is a loop.
        var budget = tableCount
        var buffersLeft = UInt32(size)
        var inIndirect = false
        var total: UInt64 = 0
        var seenWritable = false
        while true {
            guard index < tableCount else { throw .indexOutOfRange(UInt16(truncatingIfNeeded: index)) }
            guard budget > 0 else { throw .tooLong }
            budget -= 1
            let entry = table + Int(index) * 16
            let address = GuestAddress(UInt64(littleEndian: entry.loadUnaligned(as: UInt64.self)))
            let length = UInt32(littleEndian: (entry + 8).loadUnaligned(as: UInt32.self))
            let flags = UInt16(littleEndian: (entry + 12).loadUnaligned(as: UInt16.self))
            let next = UInt16(littleEndian: (entry + 14).loadUnaligned(as: UInt16.self))

            if flags & Self.descriptorIndirect != 0 {
                // §2.7.5.3: an indirect table is one descriptor of a chain; it may not chain on, nest, or be empty.
                guard indirectDescriptors else { throw .indirectNotNegotiated }
                guard !inIndirect else { throw .nestedIndirect }
                guard flags & Self.descriptorNext == 0 else { throw .indirectWithNext }
                guard length > 0, length % 16 == 0 else { throw .invalidIndirectLength(length) }
                guard length / 16 <= UInt32(size) else {
                    throw .indirectTableTooLarge(entries: length / 16, limit: size)
                }
                guard let pointer = try? memory.hostPointer(address, count: UInt64(length)) else {
                    throw .outsideMemory(address, length)
                }
                table = pointer
                tableCount = length / 16
                budget = tableCount
                index = 0
                inIndirect = true
                continue
            }
            guard length > 0 else { throw .zeroLength }
            guard buffersLeft > 0 else { throw .tooLong }
            buffersLeft -= 1
            total += UInt64(length)
            guard total <= UInt64(UInt32.max) else { throw .lengthOverflow }
            let isWritable = flags & Self.descriptorWrite != 0
            if isWritable {
                seenWritable = true
            } else if seenWritable {
                throw .readableAfterWritable // §2.7.4.2: device-writable descriptors come after device-readable ones
            }
            guard let host = try? memory.hostPointer(address, count: UInt64(length)) else {
                throw .outsideMemory(address, length)
            }
            chain.buffers.append(DescriptorBuffer(address: address, length: length, host: host, isWritable: isWritable))
            if !isWritable { chain.readableCount += 1 }
            guard flags & Self.descriptorNext != 0 else { return }
            index = UInt32(next)
        }
    }

    /// Gives back the last `count` popped chains, unused, so the next pops return them again (a receive path that
    /// reserved more buffers than a packet needed). Only chains popped since the last `addUsed` may be given back.
    public func rewind(_ count: UInt16) {
        precondition(count <= lastAvailable &- nextUsed, "rewinding chains that were already used")
        lastAvailable &-= count
    }

    /// Returns chain `head` to the driver with `length` bytes written into its device-writable buffers.
    /// The element is written before used->idx is published (release ordering), as §2.7.8.2 requires.
    public func addUsed(head: UInt16, length: UInt32) {
        if memory.tracksDirtyPages { markUsed(head: head) }
        let element = used + 4 + 8 * Int(nextUsed % size)
        element.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        (element + 4).storeBytes(of: length.littleEndian, as: UInt32.self)
        nextUsed &+= 1
        CSwiftlet_store_release_u16(used + 2, nextUsed.littleEndian)
    }

    /// Marks what returning `head` writes in guest RAM: the used ring, and the chain's device-writable buffers (all
    /// of them, not only the `length` the device reports: a diff snapshot may take a page too many, never one too
    /// few). Marking here, not at `pop`, covers writes into chains a device holds across a snapshot (virtio-net's
    /// receive buffers). The walk is the same bounded one `pop` makes; a chain that no longer walks (the guest
    /// rewrote its descriptors while the device held it, against §2.7.13) marks nothing of its own.
    private func markUsed(head: UInt16) {
        memory.markDirty(usedAddress, count: QueueConfiguration.usedRingSize(size))
        guard head < size, (try? walk(from: head, into: &usedChain)) != nil else { return }
        for buffer in usedChain.writable { memory.markDirty(buffer.address, count: UInt64(buffer.length)) }
    }

    /// Whether the driver wants an interrupt for the buffers used since the last call (§2.7.7.2): with EVENT_IDX,
    /// when used->idx passed used_event; otherwise unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT.
    public func needsInterrupt() -> Bool {
        CSwiftlet_fence_seq_cst() // used->idx is visible before used_event / flags are read
        let old = signalledUsed
        signalledUsed = nextUsed
        if eventIndex {
            let usedEvent = UInt16(littleEndian: (available + 4 + 2 * Int(size)).loadUnaligned(as: UInt16.self))
            return Self.needsEvent(eventIndex: usedEvent, new: nextUsed, old: old)
        }
        let flags = UInt16(littleEndian: available.loadUnaligned(as: UInt16.self))
        return flags & Self.availableNoInterrupt == 0
    }

    /// vring_need_event (§2.7.10 / include/uapi/linux/virtio_ring.h): did the index move past `eventIndex`
    /// going from `old` to `new`, modulo 2^16?
    public static func needsEvent(eventIndex: UInt16, new: UInt16, old: UInt16) -> Bool {
        new &- eventIndex &- 1 < new &- old
    }

    /// With EVENT_IDX, asks the driver to notify once it makes the next buffer available (avail_event), then
    /// re-checks the ring: returns true when buffers arrived meanwhile and the caller must drain again.
    /// Without EVENT_IDX the driver always notifies, and this returns `hasAvailable`.
    public func enableNotification() -> Bool {
        if eventIndex {
            (used + 4 + 8 * Int(size)).storeBytes(of: lastAvailable.littleEndian, as: UInt16.self)
            memory.markDirty(GuestAddress(usedAddress.rawValue + 4 + 8 * UInt64(size)), count: 2)
            CSwiftlet_fence_seq_cst() // avail_event is visible before avail->idx is read again
        }
        return hasAvailable
    }
}
