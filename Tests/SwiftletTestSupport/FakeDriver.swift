import SwiftletHost
import SwiftletMemory
import SwiftletVirtio

/// The driver's side of a split virtqueue in fake guest memory: it writes descriptors and publishes them in the
/// available ring, and reads what the device put in the used ring. Hostile layouts are written by hand with
/// `setDescriptor`.
public final class FakeDriver {
    public let memory: GuestMemory
    public let configuration: QueueConfiguration
    public private(set) var availableIndex: UInt16 = 0
    public static let descriptorTable = GuestAddress(0x1000)
    public static let availableRing = GuestAddress(0x3000)
    public static let usedRing = GuestAddress(0x4000)
    /// Where test buffers go.
    public static let dataArea = GuestAddress(0x10000)
    public static let memorySize: UInt64 = 1 << 20

    public static let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4

    public init(size: UInt16 = 8, tracksDirtyPages: Bool = false) throws {
        memory = try GuestMemory(layout: [(GuestAddress(0), Self.memorySize)], tracksDirtyPages: tracksDirtyPages)
        var configuration = QueueConfiguration()
        configuration.size = size
        configuration.descriptorTable = Self.descriptorTable
        configuration.availableRing = Self.availableRing
        configuration.usedRing = Self.usedRing
        configuration.ready = true
        self.configuration = configuration
    }

    public func queue(features: UInt64 = VirtioFeature.version1) throws -> SplitQueue {
        try SplitQueue(configuration, maximumSize: 256, memory: memory, features: features)
    }

    /// Writes descriptor `index` of the table at `table` (the queue's own by default).
    public func setDescriptor(_ index: Int, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0,
                              table: GuestAddress = FakeDriver.descriptorTable) throws {
        let entry = GuestAddress(table.rawValue + UInt64(index) * 16)
        try memory.write(address, at: entry)
        try memory.write(length, at: GuestAddress(entry.rawValue + 8))
        try memory.write(flags, at: GuestAddress(entry.rawValue + 12))
        try memory.write(next, at: GuestAddress(entry.rawValue + 14))
    }

    /// Puts `head` in the next available slot and publishes it.
    public func publish(_ head: UInt16) throws {
        let slot = GuestAddress(Self.availableRing.rawValue + 4 + 2 * UInt64(availableIndex % configuration.size))
        try memory.write(head, at: slot)
        availableIndex &+= 1
        try memory.write(availableIndex, at: GuestAddress(Self.availableRing.rawValue + 2))
    }

    /// Sets avail->idx directly (for corrupt-ring tests).
    public func setAvailableIndex(_ value: UInt16) throws {
        availableIndex = value
        try memory.write(value, at: GuestAddress(Self.availableRing.rawValue + 2))
    }

    public var usedIndex: UInt16 { (try? memory.read(UInt16.self, at: GuestAddress(Self.usedRing.rawValue + 2))) ?? 0 }

    /// Used ring element `slot`: (id, len).
    public func usedElement(_ slot: UInt16) throws -> (id: UInt32, length: UInt32) {
        let base = GuestAddress(Self.usedRing.rawValue + 4 + 8 * UInt64(slot % configuration.size))
        return (try memory.read(UInt32.self, at: base), try memory.read(UInt32.self, at: GuestAddress(base.rawValue + 4)))
    }

    /// used_event (the last slot of the available ring).
    public func setUsedEvent(_ value: UInt16) throws {
        try memory.write(value, at: GuestAddress(Self.availableRing.rawValue + 4 + 2 * UInt64(configuration.size)))
    }

    /// avail_event (the last slot of the used ring).
    public var availableEvent: UInt16 {
        (try? memory.read(UInt16.self, at: GuestAddress(Self.usedRing.rawValue + 4 + 8 * UInt64(configuration.size)))) ?? 0
    }

    public func setAvailableFlags(_ flags: UInt16) throws {
        try memory.write(flags, at: Self.availableRing)
    }
}

/// An interrupt line that counts its edges.
public final class CountingLine: InterruptLine, @unchecked Sendable {
    // @unchecked: tests use it from one thread.
    public private(set) var count = 0
    public init() {}
    public func trigger() { count += 1 }
}

/// The driver's side of a packed virtqueue in fake guest memory (virtio 1.2 §2.8): it writes descriptors into the
/// ring in order with its wrap counter, the first descriptor of a chain last, and reads the used descriptors the
/// device writes, skipping each chain's length as a driver does. Hostile rings are written by hand with
/// `setDescriptor`.
public final class FakePackedDriver {
    public let memory: GuestMemory
    public let configuration: QueueConfiguration
    public static let ring = GuestAddress(0x1000)
    public static let driverEvent = GuestAddress(0x3000)
    public static let deviceEvent = GuestAddress(0x3010)
    public static let dataArea = GuestAddress(0x10000)
    public static let memorySize: UInt64 = 1 << 20
    public static let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4
    public static let available: UInt16 = 1 << 7, used: UInt16 = 1 << 15

    public var size: UInt16 { configuration.size }
    /// The next slot the driver fills, and its wrap counter.
    public private(set) var nextAvailable: UInt16 = 0
    public private(set) var availableWrap = true
    /// The next slot the driver looks at for a used descriptor, and its wrap counter.
    public private(set) var nextUsed: UInt16 = 0
    public private(set) var usedWrap = true
    /// Per buffer ID, the descriptors its chain took.
    private var lengths: [UInt16: UInt16] = [:]

    public init(size: UInt16 = 8, tracksDirtyPages: Bool = false) throws {
        memory = try GuestMemory(layout: [(GuestAddress(0), Self.memorySize)], tracksDirtyPages: tracksDirtyPages)
        var configuration = QueueConfiguration()
        configuration.size = size
        configuration.descriptorTable = Self.ring
        configuration.availableRing = Self.driverEvent
        configuration.usedRing = Self.deviceEvent
        configuration.ready = true
        self.configuration = configuration
    }

    public func queue(features: UInt64 = VirtioFeature.version1, position: QueuePosition = PackedQueue.startPosition) throws -> PackedQueue {
        try PackedQueue(configuration, maximumSize: 256, memory: memory, features: features | VirtioFeature.ringPacked,
                        position: position)
    }

    /// The AVAIL and USED bits that make a descriptor available in the lap `wrap` names.
    public static func availableFlags(wrap: Bool) -> UInt16 { wrap ? available : used }

    public func setDescriptor(_ slot: UInt16, address: UInt64, length: UInt32, id: UInt16, flags: UInt16,
                              table: GuestAddress = FakePackedDriver.ring) throws {
        let entry = GuestAddress(table.rawValue + 16 * UInt64(slot))
        try memory.write(address, at: entry)
        try memory.write(length, at: GuestAddress(entry.rawValue + 8))
        try memory.write(id, at: GuestAddress(entry.rawValue + 12))
        try memory.write(flags, at: GuestAddress(entry.rawValue + 14))
    }

    public func flags(at slot: UInt16) throws -> UInt16 {
        try memory.read(UInt16.self, at: GuestAddress(Self.ring.rawValue + 16 * UInt64(slot) + 14))
    }

    /// Makes one chain available: `buffers` (address, length, device-writable) in consecutive slots, the buffer ID
    /// in every descriptor (as Linux writes it; the device reads the last one's), the first descriptor's flags last.
    /// `extraFlags` go into every descriptor (INDIRECT for a table). Returns the first slot.
    @discardableResult
    public func post(_ buffers: [(address: UInt64, length: UInt32, writable: Bool)], id: UInt16,
                     extraFlags: UInt16 = 0) throws -> UInt16 {
        let first = nextAvailable
        var headFlags: UInt16 = 0
        for (index, buffer) in buffers.enumerated() {
            var flags = Self.availableFlags(wrap: availableWrap) | extraFlags
            if buffer.writable { flags |= Self.write }
            if index < buffers.count - 1 { flags |= Self.next }
            if index == 0 {
                headFlags = flags
                try setDescriptor(nextAvailable, address: buffer.address, length: buffer.length, id: id, flags: 0)
            } else {
                try setDescriptor(nextAvailable, address: buffer.address, length: buffer.length, id: id, flags: flags)
            }
            nextAvailable += 1
            if nextAvailable == size {
                nextAvailable = 0
                availableWrap.toggle()
            }
        }
        // The head's flags last: they hand over the whole chain.
        try memory.write(headFlags, at: GuestAddress(Self.ring.rawValue + 16 * UInt64(first) + 14))
        lengths[id] = UInt16(buffers.count)
        return first
    }

    /// Writes an indirect table of `buffers` at `table` and makes available one descriptor that points at it.
    public func postIndirect(_ buffers: [(address: UInt64, length: UInt32, writable: Bool)], id: UInt16,
                             table: GuestAddress, tableFlags: UInt16 = 0) throws {
        for (index, buffer) in buffers.enumerated() {
            try setDescriptor(UInt16(index), address: buffer.address, length: buffer.length, id: 0xffff,
                              flags: (buffer.writable ? Self.write : 0) | tableFlags, table: table)
        }
        try post([(table.rawValue, UInt32(16 * buffers.count), false)], id: id, extraFlags: Self.indirect)
    }

    /// The next used descriptor, if the device wrote one: its buffer ID, length and WRITE flag. Moves past its chain.
    public func takeUsed() throws -> (id: UInt16, length: UInt32, wrote: Bool)? {
        let entry = GuestAddress(Self.ring.rawValue + 16 * UInt64(nextUsed))
        let flags = try memory.read(UInt16.self, at: GuestAddress(entry.rawValue + 14))
        let usedBit = flags & Self.used != 0, availableBit = flags & Self.available != 0
        guard usedBit == usedWrap, availableBit == usedWrap else { return nil }
        let id = try memory.read(UInt16.self, at: GuestAddress(entry.rawValue + 12))
        let length = try memory.read(UInt32.self, at: GuestAddress(entry.rawValue + 8))
        nextUsed += lengths[id] ?? 1
        if nextUsed >= size {
            nextUsed -= size
            usedWrap.toggle()
        }
        return (id, length, flags & Self.write != 0)
    }

    /// The driver event suppression structure: `flags` (0 enable, 1 disable, 2 descriptor) and the descriptor.
    public func setDriverEvent(flags: UInt16, slot: UInt16 = 0, wrap: Bool = true) throws {
        try memory.write(slot | (wrap ? 0x8000 : 0), at: Self.driverEvent)
        try memory.write(flags, at: GuestAddress(Self.driverEvent.rawValue + 2))
    }

    /// The device event suppression structure: (slot, wrap, flags).
    public func deviceEvent() throws -> (slot: UInt16, wrap: Bool, flags: UInt16) {
        let offWrap = try memory.read(UInt16.self, at: Self.deviceEvent)
        return (offWrap & 0x7fff, offWrap & 0x8000 != 0, try memory.read(UInt16.self, at: GuestAddress(Self.deviceEvent.rawValue + 2)))
    }
}
