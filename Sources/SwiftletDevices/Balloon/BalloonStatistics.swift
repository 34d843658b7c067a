/// The memory statistics a balloon driver reports (virtio 1.2 §5.5.6.3), in bytes or event counts as the guest
/// counts them. A tag the guest did not send stays nil.
public struct BalloonStatistics: Sendable, Equatable {
    /// Tags (VIRTIO_BALLOON_S_*).
    public enum Tag {
        public static let swapIn: UInt16 = 0, swapOut: UInt16 = 1, majorFaults: UInt16 = 2, minorFaults: UInt16 = 3
        public static let freeMemory: UInt16 = 4, totalMemory: UInt16 = 5, availableMemory: UInt16 = 6
        public static let diskCaches: UInt16 = 7, hugetlbAllocations: UInt16 = 8, hugetlbFailures: UInt16 = 9
    }
    /// One entry is le16 tag then le64 value, packed.
    public static let entrySize = 10

    public var swapIn: UInt64?
    public var swapOut: UInt64?
    public var majorFaults: UInt64?
    public var minorFaults: UInt64?
    public var freeMemory: UInt64?
    public var totalMemory: UInt64?
    public var availableMemory: UInt64?
    public var diskCaches: UInt64?
    public var hugetlbAllocations: UInt64?
    public var hugetlbFailures: UInt64?
    /// Entries with tags this device does not know (newer drivers send more); they are skipped.
    public var unknownTags = 0
    /// CLOCK_MONOTONIC nanoseconds when the device received them.
    public var receivedAt: UInt64 = 0

    public init() {}

    /// Parses the entries in `bytes`; nil when the length is not a whole number of entries (a malformed buffer).
    public init?(parsing bytes: [UInt8]) {
        guard bytes.count % Self.entrySize == 0 else { return nil }
        for base in stride(from: 0, to: bytes.count, by: Self.entrySize) {
            let tag = UInt16(bytes[base]) | UInt16(bytes[base + 1]) << 8
            var value: UInt64 = 0
            for index in 0..<8 { value |= UInt64(bytes[base + 2 + index]) << (8 * index) }
            set(tag, value)
        }
    }

    /// The entries present, in the driver's wire format (`init(parsing:)` reads them back): what a snapshot keeps.
    public var entries: [UInt8] {
        let all: [(UInt16, UInt64?)] = [
            (Tag.swapIn, swapIn), (Tag.swapOut, swapOut), (Tag.majorFaults, majorFaults), (Tag.minorFaults, minorFaults),
            (Tag.freeMemory, freeMemory), (Tag.totalMemory, totalMemory), (Tag.availableMemory, availableMemory),
            (Tag.diskCaches, diskCaches), (Tag.hugetlbAllocations, hugetlbAllocations), (Tag.hugetlbFailures, hugetlbFailures),
        ]
        var bytes: [UInt8] = []
        for (tag, value) in all {
            guard let value else { continue }
            bytes += [UInt8(truncatingIfNeeded: tag), UInt8(truncatingIfNeeded: tag >> 8)]
            for index in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(index)))) }
        }
        return bytes
    }

    private mutating func set(_ tag: UInt16, _ value: UInt64) {
        switch tag {
        case Tag.swapIn: swapIn = value
        case Tag.swapOut: swapOut = value
        case Tag.majorFaults: majorFaults = value
        case Tag.minorFaults: minorFaults = value
        case Tag.freeMemory: freeMemory = value
        case Tag.totalMemory: totalMemory = value
        case Tag.availableMemory: availableMemory = value
        case Tag.diskCaches: diskCaches = value
        case Tag.hugetlbAllocations: hugetlbAllocations = value
        case Tag.hugetlbFailures: hugetlbFailures = value
        default: unknownTags += 1
        }
    }

    /// `name=value` pairs of the tags present, names as in Linux's virtio_balloon stats and in the control protocol.
    public var fields: [(name: String, value: UInt64)] {
        let all: [(String, UInt64?)] = [
            ("swap_in", swapIn), ("swap_out", swapOut), ("major_faults", majorFaults), ("minor_faults", minorFaults),
            ("free_memory", freeMemory), ("total_memory", totalMemory), ("available_memory", availableMemory),
            ("disk_caches", diskCaches), ("hugetlb_allocations", hugetlbAllocations), ("hugetlb_failures", hugetlbFailures),
        ]
        return all.compactMap { name, value in value.map { (name, $0) } }
    }
}
