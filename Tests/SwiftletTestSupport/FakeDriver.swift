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
