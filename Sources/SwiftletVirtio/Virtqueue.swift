import CSwiftlet
import SwiftletHost
import SwiftletMemory

/// Feature bits every virtio device may offer (virtio 1.2 §6 "Reserved Feature Bits").
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28 // VIRTIO_F_INDIRECT_DESC
    public static let eventIndex: UInt64 = 1 << 29          // VIRTIO_F_EVENT_IDX
    public static let version1: UInt64 = 1 << 32            // VIRTIO_F_VERSION_1
    public static let ringPacked: UInt64 = 1 << 34          // VIRTIO_F_RING_PACKED
}

/// The two virtqueue layouts (virtio 1.2 §2.6): the split ring (descriptor table, available ring, used ring) and the
/// packed ring (one descriptor ring both sides walk in order, and two event suppression structures). The driver
/// picks one for all of a device's queues by accepting VIRTIO_F_RING_PACKED or not.
public enum RingLayout: Sendable, Equatable {
    case split, packed

    public init(features: UInt64) { self = features & VirtioFeature.ringPacked != 0 ? .packed : .split }
}

/// A virtqueue as the driver configured it through the transport (virtio 1.2 §2.6, §4.2.2). The three addresses are
/// QueueDesc, QueueDriver and QueueDevice: for a split ring the descriptor table, the available ring and the used ring;
/// for a packed ring the descriptor ring, the driver event suppression structure and the device event suppression
/// structure (`availableRing` and `usedRing` then name those two).
public struct QueueConfiguration: Sendable, Equatable {
    public var size: UInt16 = 0
    public var ready = false
    public var descriptorTable = GuestAddress(0)
    public var availableRing = GuestAddress(0)
    public var usedRing = GuestAddress(0)

    public init() {}

    public static func descriptorTableSize(_ size: UInt16) -> UInt64 { 16 * UInt64(size) }
    /// flags, idx, ring[size], used_event.
    public static func availableRingSize(_ size: UInt16) -> UInt64 { 6 + 2 * UInt64(size) }
    /// flags, idx, ring[size] of {id, len}, avail_event.
    public static func usedRingSize(_ size: UInt16) -> UInt64 { 6 + 8 * UInt64(size) }
    /// A packed ring's event suppression structure: off_wrap, flags (§2.8.10).
    public static let eventSuppressionSize: UInt64 = 4

    /// Why this configuration cannot be used, or nil when it can. A split ring's size is a power of two no larger
    /// than `maximumSize` and its three areas are aligned (§2.7: 16, 2, 4); a packed ring's size is any number from 1
    /// to `maximumSize` (§2.8.10.1: it need not be a power of two), its ring 16-aligned and both event structures
    /// 4-aligned. Every area lies wholly inside guest memory.
    public func problem(maximumSize: UInt16, memory: GuestMemory, layout: RingLayout) -> String? {
        let areas: [(String, GuestAddress, UInt64, UInt64)]
        switch layout {
        case .split:
            guard size > 0, size <= maximumSize, size & (size - 1) == 0 else {
                return "queue size \(size) is not a power of two between 1 and \(maximumSize)"
            }
            areas = [("descriptor table", descriptorTable, Self.descriptorTableSize(size), 16),
                     ("available ring", availableRing, Self.availableRingSize(size), 2),
                     ("used ring", usedRing, Self.usedRingSize(size), 4)]
        case .packed:
            guard size > 0, size <= maximumSize, size <= PackedQueue.maximumSize else {
                return "packed queue size \(size) is not between 1 and \(min(maximumSize, PackedQueue.maximumSize))"
            }
            areas = [("descriptor ring", descriptorTable, Self.descriptorTableSize(size), 16),
                     ("driver event suppression", availableRing, Self.eventSuppressionSize, 4),
                     ("device event suppression", usedRing, Self.eventSuppressionSize, 4)]
        }
        for (name, address, length, alignment) in areas {
            guard address.rawValue % alignment == 0 else { return "\(name) at \(address) is not \(alignment)-byte aligned" }
            guard memory.contains(address, count: length) else { return "\(name) at \(address) (\(length) bytes) is outside guest memory" }
        }
        return nil
    }

    /// The device side of this queue, in the layout `features` negotiated; `position` is where a restored queue
    /// resumes (a snapshot's), the ring's start when nil.
    public func makeQueue(maximumSize: UInt16, memory: GuestMemory, features: UInt64,
                          position: QueuePosition? = nil) throws(SwiftletError) -> any Virtqueue {
        switch RingLayout(features: features) {
        case .split:
            try SplitQueue(self, maximumSize: maximumSize, memory: memory, features: features,
                           position: position ?? QueuePosition())
        case .packed:
            try PackedQueue(self, maximumSize: maximumSize, memory: memory, features: features,
                            position: position ?? PackedQueue.startPosition)
        }
    }
}

/// Where a device stands in its ring (a snapshot keeps it): the next available entry it consumes, and the next used
/// entry it fills. In a split ring both are free-running 16-bit indices, as the ring's own are (§2.7.6, §2.7.8); in a
/// packed ring each is a slot in bits 0-14 and the device's wrap counter for it in bit 15, the form the event
/// suppression structures use (§2.8.10).
public struct QueuePosition: Sendable, Equatable {
    public var nextAvailable: UInt16
    public var nextUsed: UInt16
    public init(nextAvailable: UInt16 = 0, nextUsed: UInt16 = 0) {
        self.nextAvailable = nextAvailable
        self.nextUsed = nextUsed
    }
}

/// One guest buffer of a descriptor chain, already translated to a host pointer and bounds-checked.
public struct DescriptorBuffer: Sendable {
    public var address: GuestAddress
    public var length: UInt32
    public nonisolated(unsafe) var host: UnsafeMutableRawPointer
    public var isWritable: Bool
}

/// A popped descriptor chain: its head index (what goes back in the used ring) and its buffers, device-readable
/// ones first. The buffer array is reused from chain to chain, so popping allocates nothing once warm.
public struct DescriptorChain: Sendable {
    public internal(set) var head: UInt16 = 0
    public internal(set) var buffers: [DescriptorBuffer] = []
    public internal(set) var readableCount = 0

    public init(capacity: Int = 0) { buffers.reserveCapacity(capacity) }

    public var readable: ArraySlice<DescriptorBuffer> { buffers[0..<readableCount] }
    public var writable: ArraySlice<DescriptorBuffer> { buffers[readableCount...] }
    public var readableLength: UInt64 { readable.reduce(0) { $0 + UInt64($1.length) } }
    public var writableLength: UInt64 { writable.reduce(0) { $0 + UInt64($1.length) } }
}

/// What is wrong with a descriptor chain the guest made available. Each is the guest's error, never the VMM's.
public enum ChainError: Error, Equatable, Sendable {
    case indexOutOfRange(UInt16)
    case tooLong
    case zeroLength
    case lengthOverflow
    case outsideMemory(GuestAddress, UInt32)
    case readableAfterWritable
    case indirectNotNegotiated
    case indirectWithNext
    case nestedIndirect
    case invalidIndirectLength(UInt32)
    /// An indirect table with more entries than the queue has: no chain may be longer than the queue (§2.7.5.3.1).
    case indirectTableTooLarge(entries: UInt32, limit: UInt16)
}

public enum QueueError: Error, Equatable, Sendable {
    /// avail->idx moved more than the queue size past what the device consumed: the ring is corrupt, and the
    /// device must be reset (DEVICE_NEEDS_RESET).
    case availableIndexCorrupt(available: UInt16, consumed: UInt16)
    /// The ring names a head descriptor beyond the table (split), or a chain carries a buffer ID beyond the queue
    /// size (packed): nothing can be returned for it; the device must be reset.
    case headOutOfRange(UInt16)
    /// Packed ring: a descriptor that continues a chain is not marked available in this lap of the ring (its AVAIL
    /// and USED bits), so where the chain ends cannot be known; the device must be reset.
    case descriptorNotAvailable(slot: UInt16)
    /// Packed ring: the driver made more descriptors available than the ring holds beside those the device has not
    /// returned yet (no honest driver can, §2.8.21); the device must be reset.
    case ringOverrun(outstanding: Int, size: UInt16)
    /// The chain at `head` is malformed; it has been consumed and should be returned with length 0.
    case invalidChain(head: UInt16, ChainError)
}


/// The device side of a virtqueue, in either layout: what every device and the drain (Drain.swift) use, so that a
/// device does not know which layout it serves. Both layouts check every descriptor the same way and bound every walk
/// by the queue size; `SplitQueue` and `PackedQueue` say how.
///
/// A queue is used only under its device's lock, by the device's event loop (see `SplitQueue`).
public protocol Virtqueue: AnyObject, Sendable {
    var size: UInt16 { get }
    var memory: GuestMemory { get }
    var layout: RingLayout { get }
    /// Whether VIRTIO_F_EVENT_IDX was negotiated (notifications at a given index in both directions).
    var eventIndex: Bool { get }
    var indirectDescriptors: Bool { get }
    /// Whether the driver has made buffers available that the device has not consumed.
    var hasAvailable: Bool { get }
    /// Takes the next available chain into `chain`, walking and checking every descriptor (`chain` is emptied
    /// first, keeping its capacity). Returns false when nothing is available. A malformed chain is consumed and
    /// reported as `.invalidChain`; the other errors mean the ring is corrupt and the device must be reset.
    func pop(into chain: inout DescriptorChain) throws(QueueError) -> Bool
    /// Gives back the last `count` popped chains, unused, so the next pops return them again. Only chains popped
    /// and not used may be given back.
    func rewind(_ count: UInt16)
    /// Returns chain `head` (the head index of a split ring, the buffer ID of a packed one) to the driver with
    /// `length` bytes written into its device-writable buffers.
    func addUsed(head: UInt16, length: UInt32)
    /// Whether the driver wants an interrupt for the buffers used since the last call.
    func needsInterrupt() -> Bool
    /// Asks the driver to notify when it makes the next buffer available, then looks at the ring again: true when
    /// buffers arrived meanwhile and the caller must drain again.
    func enableNotification() -> Bool
    /// Where the device stands in the ring, for a snapshot.
    var position: QueuePosition { get }
    /// The position with the last `held` popped chains given back: where a restored device starts, so that it pops
    /// those chains again. `held` is at most the chains popped and not used.
    func position(holding held: Int) -> QueuePosition
}
