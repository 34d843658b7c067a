/// A snapshot's state file: a header, a body of records, and a checksum (docs/SNAPSHOT.md has the layout).
///
///     offset 0   magic "SWLTSNAP" (8 bytes)
///            8   format version, u32 little-endian
///           12   flags, u32 (none defined: must be 0)
///           16   body length, u64
///           24   body: records (SnapshotEncoder / SnapshotDecoder)
///     24 + body  CRC-32C of every byte before it, u32
///
/// Guest memory is not in this file (a snapshot keeps it in a file of its own, mapped at restore). The reader checks
/// everything before it hands out a record: the magic, the version, the flags, that the length matches the file, and
/// the checksum, so a truncated or corrupted file is refused whole, never half-read.
public enum SnapshotFile {
    public static let magic: [UInt8] = Array("SWLTSNAP".utf8)
    /// The format this build writes.
    public static let formatVersion: UInt32 = 1
    /// The formats this build reads. A format change that an older build cannot read raises `formatVersion`; this
    /// range says which older ones are still read.
    public static let readableVersions: ClosedRange<UInt32> = 1...1
    /// A state file larger than this is refused before it is read (the state of 32 vCPUs and every device is well
    /// under 1 MiB; guest memory is elsewhere).
    public static let maximumSize = 64 << 20
    static let headerSize = 24
    static let trailerSize = 4

    /// The bytes of a state file whose body is `body` (an encoder's output).
    public static func bytes(body: SnapshotEncoder) -> [UInt8] {
        var header = SnapshotEncoder.Bytes()
        header.append(contentsOf: magic)
        header.appendLittleEndian(formatVersion)
        header.appendLittleEndian(UInt32(0))
        header.appendLittleEndian(UInt64(body.bytes.count))
        var file = header.storage + body.bytes
        let checksum = CRC32C.checksum(file)
        withUnsafeBytes(of: checksum.littleEndian) { file.append(contentsOf: $0) }
        return file
    }

    /// The body of the state file `file`, once its header and checksum are checked.
    public static func body(of file: [UInt8]) throws(SnapshotError) -> SnapshotDecoder {
        guard file.count <= maximumSize else { throw .tooLarge(size: file.count, maximum: maximumSize) }
        guard file.count >= magic.count, Array(file[0..<magic.count]) == magic else { throw .notASnapshot }
        guard file.count >= headerSize + trailerSize else {
            throw .truncated(size: file.count, expected: headerSize + trailerSize)
        }
        var header = SnapshotDecoder.Cursor(file[magic.count..<headerSize])
        let version = header.littleEndian(UInt32.self)!
        let flags = header.littleEndian(UInt32.self)!
        let bodyLength = header.littleEndian(UInt64.self)!
        guard readableVersions.contains(version) else { throw .unsupportedVersion(found: version, readable: readableVersions) }
        guard flags == 0 else { throw .malformed("the header's flags are 0x\(String(flags, radix: 16)); format \(version) defines none") }
        let expected = UInt64(headerSize + trailerSize) + bodyLength
        guard UInt64(file.count) >= expected else { throw .truncated(size: file.count, expected: Int(clamping: expected)) }
        guard UInt64(file.count) == expected else {
            throw .malformed("the file is \(file.count) bytes, but its header says \(expected): something was appended to it")
        }
        let stored = file[(file.count - trailerSize)...].enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * $1.offset) }
        guard CRC32C.checksum(file[..<(file.count - trailerSize)]) == stored else { throw .checksumMismatch }
        return try SnapshotDecoder(Array(file[headerSize..<(file.count - trailerSize)]))
    }
}

/// Why a snapshot could not be read. Each says what is wrong with the file, and what to do.
public enum SnapshotError: Error, Equatable, Sendable, CustomStringConvertible {
    case notASnapshot
    case tooLarge(size: Int, maximum: Int)
    case truncated(size: Int, expected: Int)
    case unsupportedVersion(found: UInt32, readable: ClosedRange<UInt32>)
    case checksumMismatch
    /// A record the reader needs is not there.
    case missingRecord(tag: String, in: String)
    /// A record whose size is not its type's.
    case wrongSize(tag: String, size: Int, expected: Int)
    /// An array record with more elements than the reader takes.
    case tooMany(tag: String, count: Int, maximum: Int)
    case malformed(String)

    public var description: String {
        switch self {
        case .notASnapshot:
            "not a Swiftlet snapshot (it does not start with \"SWLTSNAP\"): give the state file `swiftlet snapshot` wrote, not the memory file"
        case .tooLarge(let size, let maximum):
            "the state file is \(size) bytes, more than a snapshot's state can be (\(maximum)): is it the memory file?"
        case .truncated(let size, let expected):
            "the state file is truncated: \(size) bytes, where its header needs \(expected); it was not written whole (a full disk, or a copy that stopped): take the snapshot again"
        case .unsupportedVersion(let found, let readable):
            found > readable.upperBound
                ? "the snapshot is format \(found), written by a newer Swiftlet; this build reads formats \(readable.lowerBound) to \(readable.upperBound): restore it with the build that took it, or a newer one"
                : "the snapshot is format \(found), which this build no longer reads (it reads \(readable.lowerBound) to \(readable.upperBound)): restore it with an older build, or take it again"
        case .checksumMismatch:
            "the state file's checksum does not match its contents: the file is corrupted (or was edited); take the snapshot again"
        case .missingRecord(let tag, let context):
            "the snapshot lacks its '\(tag)' record in \(context): it is incomplete or was written by a different build"
        case .wrongSize(let tag, let size, let expected):
            "the snapshot's '\(tag)' record is \(size) bytes where this build's is \(expected): it was written for a different KVM or build"
        case .tooMany(let tag, let count, let maximum):
            "the snapshot's '\(tag)' record holds \(count) entries, more than the \(maximum) this build takes"
        case .malformed(let what):
            "the snapshot is malformed: \(what)"
        }
    }
}

/// CRC-32C (Castagnoli, reflected, as iSCSI and ext4 use it): the state file's checksum.
enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? (value >> 1) ^ 0x82F6_3B78 : value >> 1 }
        return value
    }

    static func checksum(_ bytes: some Collection<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { table in
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        }
        return ~crc
    }
}
