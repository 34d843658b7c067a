import Glibc
import SwiftletMemory
import SwiftletVirtio

/// Guest memory for the device targets, with a fixed layout a hostile driver fills from the fuzz input:
///
///     0x00000 + q * 0x4000   queue q's descriptor table (up to 256 entries), available ring (+0x1000), used ring (+0x2000)
///     0x14000 ..< 0x1c000    indirect tables (2048 entries)
///     0x1c000 ..< 0x40000    data buffers
///
/// Descriptors are decoded from the input mostly as plausible ones (in the data area, short, with fuzzed flags and
/// next), some wholly raw (any address, any length, any flags), so the fuzzer reaches both a device's request
/// parsing and the queue's chain checks. Memory is created once per process and cleared for each input.
public final class FuzzGuest {
    public static let memorySize: UInt64 = 0x40000
    public static let queueStride: UInt64 = 0x4000
    public static let maximumQueues = 5
    public static let indirectArea: Range<UInt64> = 0x14000..<0x1c000
    public static let dataArea: Range<UInt64> = 0x1c000..<0x40000
    /// Everything below this is rings and tables: a device writing there means an overlapping layout.
    public static var metadataEnd: UInt64 { dataArea.lowerBound }

    public let memory: GuestMemory

    public init() {
        memory = try! GuestMemory(layout: [(GuestAddress(0), Self.memorySize)])
    }

    /// Zeroes all of guest memory (cheap at 256 KiB, and no input sees the previous one's bytes).
    public func clear() {
        memset(memory.regions[0].host, 0, Int(Self.memorySize))
    }

    public func configuration(queue index: Int, size: UInt16) -> QueueConfiguration {
        var configuration = QueueConfiguration()
        configuration.size = size
        configuration.descriptorTable = GuestAddress(UInt64(index) * Self.queueStride)
        configuration.availableRing = GuestAddress(UInt64(index) * Self.queueStride + 0x1000)
        configuration.usedRing = GuestAddress(UInt64(index) * Self.queueStride + 0x2000)
        configuration.ready = true
        return configuration
    }

    /// The first slots of the data area, where half the plausible descriptors point: a target writes well-formed
    /// headers there (a blk request header, a vsock packet header) with fuzzed fields, so the fuzzer reaches what
    /// lies behind the header checks without having to find their magic values first.
    public static let slotCount = 64
    public static let slotSize: UInt64 = 64

    public func fillSlots(_ input: inout FuzzInput, _ fill: (inout FuzzInput, UnsafeMutableRawBufferPointer) -> Void) {
        for slot in 0..<Int(input.u8()) % (Self.slotCount + 1) {
            fill(&input, try! memory.buffer(GuestAddress(Self.dataArea.lowerBound + UInt64(slot) * Self.slotSize), count: Int(Self.slotSize)))
        }
    }

    /// Copies bytes from the input into the data area at a fuzzed offset (request headers, frames, PFN arrays).
    public func fillData(_ input: inout FuzzInput) {
        let count = Int(input.u16() % 4096)
        let offset = UInt64(input.u32()) % UInt64(Self.dataArea.count)
        let source = input.take(count)
        let room = min(source.count, Int(UInt64(Self.dataArea.count) - offset))
        guard room > 0 else { return }
        try! memory.buffer(GuestAddress(Self.dataArea.lowerBound + offset), count: room)
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<room]))
    }
}

/// The driver's side of one queue in `FuzzGuest`: writes a fuzzed descriptor table, indirect tables and available
/// ring, and afterwards checks what the device put in the used ring against an independent walk of each chain.
public struct FuzzDriverQueue {
    public let guest: FuzzGuest
    public let index: Int
    public let configuration: QueueConfiguration
    public var size: UInt16 { configuration.size }
    /// Heads published in the available ring, in order (what the device will pop, unless avail->idx jumped).
    public private(set) var published: [UInt16] = []
    /// avail->idx jumped: the device may pop any slot, so `published` no longer says which heads come back.
    private var jumped = false
    /// Every verdict the reference walk gave each head, one per `snapshot()`. The harness writes guest memory at
    /// a few points (each queue's tables, then publishing); between them the device pops. A chain it pops saw the
    /// memory of one of those points, so a used length must fit one of its verdicts.
    private var versions: [UInt16: [ReferenceWalk.Result]] = [:]
    private var indirect = false

    /// A queue of a fuzzed size: mostly a power of two up to `maximumSize`, sometimes any value (the transport
    /// refuses those, so the device never sees them; the queue target checks that SplitQueue refuses them too).
    public static func size(_ input: inout FuzzInput, maximumSize: UInt16) -> UInt16 {
        let choice = input.u8()
        if choice & 0xf0 == 0xf0 { return input.u16() }
        var size: UInt16 = 1 << UInt16(choice % 9)
        while size > maximumSize { size >>= 1 }
        return size
    }

    public init(guest: FuzzGuest, index: Int, size: UInt16) {
        self.guest = guest
        self.index = index
        configuration = guest.configuration(queue: index, size: size)
    }

    private var memory: GuestMemory { guest.memory }

    /// Decodes one descriptor. `table` is where `next` must point into (the queue's table, or an indirect one).
    static func descriptor(_ input: inout FuzzInput, tableEntries: UInt16) -> (address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        let mode = input.u8()
        if mode & 7 == 0 { // wholly raw: outside memory, huge, wrapping, any flag
            return (input.u64(), input.u32(), input.u16(), input.u16())
        }
        var flags = UInt16(input.u8() & 7)
        let next = mode & 7 == 6 ? input.u16() : UInt16(input.u8()) % max(tableEntries, 1)
        if flags & 4 != 0, mode & 7 != 5 { // an indirect table in the indirect area, of up to 64 entries
            let entries = UInt64(FuzzGuest.indirectArea.count / 16)
            let first = UInt64(input.u16()) % entries
            let count = 1 + UInt64(input.u8() % 64)
            let length = mode & 7 == 4 ? input.u32() : UInt32(16 * min(count, entries - first))
            if mode & 0x80 == 0 { flags &= ~1 } // mostly without NEXT
            return (FuzzGuest.indirectArea.lowerBound + 16 * first, length, flags, next)
        }
        // Half the buffers start at one of the template slots (FuzzGuest.fillSlots), where a device's header lies.
        let offset = mode & 0x20 == 0 ? UInt64(input.u8() % UInt8(FuzzGuest.slotCount)) * FuzzGuest.slotSize
                                      : UInt64(input.u32()) % UInt64(FuzzGuest.dataArea.count)
        var length = mode & 7 == 7 ? input.u32() % 0x10000 : 1 + UInt32(input.u16() % 2048)
        length = UInt32(min(UInt64(length), UInt64(FuzzGuest.dataArea.count) - offset + (mode & 0x40 != 0 ? 16 : 0)))
        return (FuzzGuest.dataArea.lowerBound + offset, length, flags, next)
    }

    static func write(_ descriptor: (address: UInt64, length: UInt32, flags: UInt16, next: UInt16), at entry: GuestAddress, in memory: GuestMemory) {
        try! memory.write(descriptor.address, at: entry)
        try! memory.write(descriptor.length, at: GuestAddress(entry.rawValue + 8))
        try! memory.write(descriptor.flags, at: GuestAddress(entry.rawValue + 12))
        try! memory.write(descriptor.next, at: GuestAddress(entry.rawValue + 14))
    }

    /// Writes a fuzzed descriptor table (and some indirect table entries), then publishes a fuzzed run of heads.
    /// With `reference`, each head is walked independently first
    /// (`ReferenceWalk`), for `checkUsed`.
    /// A byte at the end of the used ring's page, past the ring: when a balloon released that page (the guest may
    /// inflate its own rings), it reads 0, and what the used ring says can no longer be checked.
    static let canary: UInt8 = 0xa5
    var canaryAddress: GuestAddress { GuestAddress(configuration.usedRing.rawValue + 0xfff) }
    public var usedRingIntact: Bool { (try? memory.read(UInt8.self, at: canaryAddress)) == Self.canary }

    static let debug = getenv("SWIFTLET_FUZZ_DEBUG") != nil

    /// Whether the transport would accept this queue's size (the device never sees any other).
    public var isValid: Bool { size > 0 && size <= 256 && size & (size - 1) == 0 }

    public mutating func post(_ input: inout FuzzInput, indirect: Bool, reference: Bool = true) {
        guard isValid else { return }
        self.indirect = indirect
        let descriptors = Int(input.u8()) % (Int(size) + 1)
        for slot in 0..<descriptors {
            let entry = GuestAddress(configuration.descriptorTable.rawValue + 16 * UInt64(slot))
            Self.write(Self.descriptor(&input, tableEntries: size), at: entry, in: memory)
        }
        let indirectEntries = Int(input.u8() % 64)
        for _ in 0..<indirectEntries {
            let entries = UInt64(FuzzGuest.indirectArea.count / 16)
            let slot = UInt64(input.u16()) % entries
            Self.write(Self.descriptor(&input, tableEntries: 64), at: GuestAddress(FuzzGuest.indirectArea.lowerBound + 16 * slot), in: memory)
        }
        for _ in 0..<Int(input.u8() % 4) { guest.fillData(&input) }
        try! memory.write(Self.canary, at: canaryAddress)
        publish(&input, indirect: indirect, reference: reference)
    }

    /// Publishes a fuzzed run of heads; avail->idx sometimes jumps anywhere (a corrupt ring, or slots the driver
    /// never wrote). What the device will pop is read back from the ring, so `published` is what the device sees.
    public mutating func publish(_ input: inout FuzzInput, indirect: Bool, reference: Bool = true) {
        guard isValid else { return }
        self.indirect = indirect
        let available = configuration.availableRing
        let start = try! memory.read(UInt16.self, at: GuestAddress(available.rawValue + 2))
        var index = start
        for _ in 0..<Int(input.u8()) % (Int(size) + 1) {
            let choice = input.u8()
            let head = choice & 0xc0 == 0xc0 ? input.u16() : UInt16(input.u8()) % size
            try! memory.write(head, at: GuestAddress(available.rawValue + 4 + 2 * UInt64(index % size)))
            index &+= 1
        }
        let flags = input.u8()
        if flags & 0x10 != 0 { index = input.u16() } // avail->idx jumps: past the queue size, the device must stop
        try! memory.write(UInt16(flags & 1), at: available) // VIRTQ_AVAIL_F_NO_INTERRUPT
        try! memory.write(input.u16(), at: GuestAddress(available.rawValue + 4 + 2 * UInt64(size))) // used_event
        try! memory.write(index, at: GuestAddress(available.rawValue + 2))
        if flags & 0x10 != 0 {
            jumped = true // where the device's next pop is, the harness no longer knows
        } else {
            var slot = start
            while slot != index {
                published.append(try! memory.read(UInt16.self, at: GuestAddress(available.rawValue + 4 + 2 * UInt64(slot % size))))
                slot &+= 1
            }
        }
        if reference { snapshot() }
    }

    /// Walks every head the device may pop now, recording each verdict. `publish` does it; a target calls it for
    /// every queue once all queues are written, before activating the device (a later queue's tables may have
    /// changed what an earlier queue's chains read).
    public mutating func snapshot() {
        guard isValid else { return }
        let heads = jumped ? Array(0..<size) : Array(Set(published.filter { $0 < size }))
        for head in heads {
            guard let walk = ReferenceWalk.walk(head: head, table: configuration.descriptorTable, size: size,
                                                memory: memory, indirect: indirect) else { continue }
            if versions[head]?.contains(walk) != true { versions[head, default: []].append(walk) }
        }
        if Self.debug { Fuzz.debug("fuzz: queue \(index) published \(published), jumped \(jumped), verdicts \(versions)") }
    }

    /// A SplitQueue over this layout, as the transport builds one at DRIVER_OK.
    public func queue(maximumSize: UInt16, features: UInt64) -> SplitQueue? {
        try? SplitQueue(configuration, maximumSize: maximumSize, memory: memory, features: features)
    }

    /// Checks every used element the device added:
    /// - its id is below the queue size, and a head the driver published and the device had not yet returned;
    /// - a used length is 0, or fits a verdict of the reference walk: a chain it found well-formed, with at least
    ///   that many writable bytes (so a malformed chain comes back with length 0, and no used length exceeds the
    ///   writable bytes the chain offered).
    /// When a well-formed chain's writable buffers overlap rings or tables, the device may have rewritten what the
    /// reference walked (and the used ring itself), and nothing is checked; nor when the used ring's page was
    /// released (`usedRingIntact`).
    public func checkUsed(_ what: String) {
        guard isValid, usedRingIntact, !versions.values.joined().contains(where: \.writesMetadata) else { return }
        let used = configuration.usedRing
        let usedIndex = try! memory.read(UInt16.self, at: GuestAddress(used.rawValue + 2))
        // The ring holds the last `size` elements; older ones were overwritten, and with them which heads came back
        // (then ids and lengths are checked, not that each head came back once).
        let wrapped = usedIndex > size
        var outstanding: [UInt16: Int] = [:]
        for head in published { outstanding[head, default: 0] += 1 }
        if !jumped {
            Fuzz.check(Int(usedIndex) <= published.count, "\(what): \(usedIndex) used elements for \(published.count) published chains")
        }
        for slot in (wrapped ? usedIndex - size : 0)..<usedIndex {
            let element = GuestAddress(used.rawValue + 4 + 8 * UInt64(slot % size))
            let id = try! memory.read(UInt32.self, at: element)
            let length = try! memory.read(UInt32.self, at: GuestAddress(element.rawValue + 4))
            if Self.debug { Fuzz.debug("fuzz: queue \(index) used[\(slot)] = (\(id), \(length))") }
            Fuzz.check(id < UInt32(size), "\(what): used id \(id) is beyond the queue of \(size)")
            let head = UInt16(id)
            if !jumped && !wrapped {
                Fuzz.check(outstanding[head, default: 0] > 0, "\(what): used id \(id) (used slot \(slot) of \(usedIndex)) was not published, or was returned twice; published \(published)")
                outstanding[head, default: 0] -= 1
            }
            guard length > 0 else { continue }
            let verdicts = versions[head] ?? []
            let fits = verdicts.contains { if case .chain(_, let writable, _) = $0 { return UInt64(length) <= writable } else { return false } }
            Fuzz.check(fits, "\(what): chain \(head) came back with length \(length); the reference walk said \(verdicts)")
        }
    }
}

/// An independent walk of a descriptor chain, written from the virtio 1.2 split-ring rules (§2.7.5) and the bounds
/// Swiftlet documents (docs/SECURITY.md), not from SplitQueue's code: the fuzz targets compare the two.
public enum ReferenceWalk {
    public enum Result: Equatable {
        case malformed(String)
        /// The bytes the device may read and write, and whether a writable buffer overlaps rings or tables.
        case chain(readable: UInt64, writable: UInt64, writesMetadataFlag: Bool)

        public var writesMetadata: Bool {
            if case .chain(_, _, let flag) = self { return flag }
            return false
        }
    }

    static func entry(_ memory: GuestMemory, _ table: GuestAddress, _ index: UInt16) -> (UInt64, UInt32, UInt16, UInt16) {
        let base = GuestAddress(table.rawValue + 16 * UInt64(index))
        return (try! memory.read(UInt64.self, at: base), try! memory.read(UInt32.self, at: GuestAddress(base.rawValue + 8)),
                try! memory.read(UInt16.self, at: GuestAddress(base.rawValue + 12)), try! memory.read(UInt16.self, at: GuestAddress(base.rawValue + 14)))
    }

    public static func walk(head: UInt16, table: GuestAddress, size: UInt16, memory: GuestMemory, indirect: Bool) -> Result? {
        guard head < size else { return nil } // not a chain at all: the ring is corrupt
        var readable: UInt64 = 0, writable: UInt64 = 0, buffers = 0, overlap = false
        var sawWritable = false
        // Buffers of one table, direct or indirect; returns nil when the chain ended well, or why it is malformed.
        func follow(_ table: GuestAddress, entries: UInt16, from first: UInt16, nested: Bool) -> String? {
            var index = first, visited = 0
            while true {
                guard index < entries else { return "next \(index) beyond a table of \(entries)" }
                visited += 1
                guard visited <= Int(entries) else { return "loop" }
                let (address, length, flags, next) = entry(memory, table, index)
                if flags & 4 != 0 {
                    guard indirect else { return "indirect not negotiated" }
                    guard !nested else { return "nested indirect" }
                    guard flags & 1 == 0 else { return "indirect with NEXT" }
                    guard length > 0, length % 16 == 0 else { return "indirect length \(length)" }
                    guard length / 16 <= UInt32(size) else { return "indirect table longer than the queue" }
                    guard memory.contains(GuestAddress(address), count: UInt64(length)) else { return "indirect table outside memory" }
                    return follow(GuestAddress(address), entries: UInt16(length / 16), from: 0, nested: true)
                }
                guard length > 0 else { return "zero length" }
                buffers += 1
                guard buffers <= Int(size) else { return "more buffers than the queue" }
                guard memory.contains(GuestAddress(address), count: UInt64(length)) else { return "buffer outside memory" }
                if flags & 2 != 0 {
                    sawWritable = true
                    writable += UInt64(length)
                    if address < FuzzGuest.metadataEnd { overlap = true }
                } else {
                    guard !sawWritable else { return "readable after writable" }
                    readable += UInt64(length)
                }
                guard readable + writable <= UInt64(UInt32.max) else { return "total length over 4 GiB" }
                guard flags & 1 != 0 else { return nil }
                index = next
            }
        }
        if let why = follow(table, entries: size, from: head, nested: false) { return .malformed(why) }
        return .chain(readable: readable, writable: writable, writesMetadataFlag: overlap)
    }
}
