/// A record's name: four ASCII bytes ("regs", "vcpu"), so that a hex dump of a state file reads.
public struct SnapshotTag: Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
    public let bytes: (UInt8, UInt8, UInt8, UInt8)

    public init(stringLiteral value: String) {
        let utf8 = Array(value.utf8)
        precondition(utf8.count == 4 && utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F }, "a snapshot tag is four printable ASCII bytes, not '\(value)'")
        bytes = (utf8[0], utf8[1], utf8[2], utf8[3])
    }

    init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) { bytes = (a, b, c, d) }

    public var description: String {
        String(decoding: [bytes.0, bytes.1, bytes.2, bytes.3].map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
    }

    public static func == (a: SnapshotTag, b: SnapshotTag) -> Bool { a.bytes == b.bytes }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(bytes.0)
        hasher.combine(bytes.1)
        hasher.combine(bytes.2)
        hasher.combine(bytes.3)
    }
}

/// Writes records: a tag, a u32 little-endian length, and that many bytes of payload, which is a value's bytes, an
/// array's, or records again (a nested record). Each component writes its own state with it (`save(into:)`), as
/// Firecracker's components persist theirs.
public struct SnapshotEncoder: Sendable {
    /// A little-endian byte buffer.
    struct Bytes: Sendable {
        var storage: [UInt8] = []
        mutating func append(contentsOf bytes: some Sequence<UInt8>) { storage.append(contentsOf: bytes) }
        mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
            withUnsafeBytes(of: value.littleEndian) { storage.append(contentsOf: $0) }
        }
    }

    private var buffer = Bytes()
    public var bytes: [UInt8] { buffer.storage }

    public init() {}

    /// A record of raw bytes.
    public mutating func record(_ tag: SnapshotTag, bytes: some Collection<UInt8>) {
        precondition(bytes.count <= Int(UInt32.max), "a snapshot record is at most 4 GiB")
        buffer.append(contentsOf: [tag.bytes.0, tag.bytes.1, tag.bytes.2, tag.bytes.3])
        buffer.appendLittleEndian(UInt32(bytes.count))
        buffer.append(contentsOf: bytes)
    }

    /// A record holding `value`'s bytes as they are in memory (a KVM structure: its layout is KVM's ABI). `T` must
    /// be plain data (checked): C structures with unions or flexible arrays are, though Swift does not call them
    /// BitwiseCopyable.
    public mutating func record<T>(_ tag: SnapshotTag, _ value: T) {
        precondition(_isPOD(T.self), "\(T.self) is not plain data")
        withUnsafeBytes(of: value) { record(tag, bytes: $0) }
    }

    /// A record holding the elements of `array`, one after another (plain data, as above).
    public mutating func record<T>(_ tag: SnapshotTag, array: [T]) {
        precondition(_isPOD(T.self), "\(T.self) is not plain data")
        array.withUnsafeBytes { record(tag, bytes: $0) }
    }

    /// A record holding an integer, little-endian.
    public mutating func record(_ tag: SnapshotTag, integer: UInt64) {
        withUnsafeBytes(of: integer.littleEndian) { record(tag, bytes: $0) }
    }

    /// A record holding a string, UTF-8.
    public mutating func record(_ tag: SnapshotTag, string: String) {
        record(tag, bytes: Array(string.utf8))
    }

    /// A record holding the records `body` writes.
    public mutating func record(_ tag: SnapshotTag, _ body: (inout SnapshotEncoder) -> Void) {
        var nested = SnapshotEncoder()
        body(&nested)
        record(tag, bytes: nested.bytes)
    }
}

/// Reads the records an encoder wrote. Every record's bounds are checked when the decoder is made, so a lookup
/// never reads outside the buffer; a value's record must be exactly its type's size, and an array's a whole number of
/// elements, at most the maximum its reader names. Nesting goes only as deep as the reader's code asks.
public struct SnapshotDecoder: Sendable {
    private let storage: [UInt8]
    private let records: [(tag: SnapshotTag, range: Range<Int>)]
    /// Where these records are, for messages ("the snapshot", "vcpu 1").
    public let context: String

    init(_ bytes: [UInt8], context: String = "the snapshot") throws(SnapshotError) {
        storage = bytes
        self.context = context
        var found: [(tag: SnapshotTag, range: Range<Int>)] = []
        var offset = 0
        // Each record takes at least its 8-byte head, so this loop runs at most bytes.count / 8 times.
        while offset < bytes.count {
            guard bytes.count - offset >= 8 else {
                throw .malformed("\(bytes.count - offset) stray bytes at the end of \(context), too few for a record")
            }
            let tag = SnapshotTag(bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3])
            var cursor = Cursor(bytes[(offset + 4)..<(offset + 8)])
            let length = Int(cursor.littleEndian(UInt32.self)!)
            let start = offset + 8
            guard length <= bytes.count - start else {
                throw .malformed("record '\(tag)' in \(context) claims \(length) bytes, but only \(bytes.count - start) follow")
            }
            found.append((tag, start..<(start + length)))
            offset = start + length
        }
        records = found
    }

    /// Whether a record `tag` is here.
    public func contains(_ tag: SnapshotTag) -> Bool { records.contains { $0.tag == tag } }

    /// The payload of the first record `tag`.
    public func bytes(_ tag: SnapshotTag) throws(SnapshotError) -> ArraySlice<UInt8> {
        guard let record = records.first(where: { $0.tag == tag }) else { throw .missingRecord(tag: tag.description, in: context) }
        return storage[record.range]
    }

    /// The value of type `T` (plain data) in record `tag`, which must be exactly `T`'s size.
    public func value<T>(_ tag: SnapshotTag, as type: T.Type) throws(SnapshotError) -> T {
        precondition(_isPOD(T.self), "\(T.self) is not plain data")
        let payload = try bytes(tag)
        guard payload.count == MemoryLayout<T>.size else {
            throw .wrongSize(tag: tag.description, size: payload.count, expected: MemoryLayout<T>.size)
        }
        return payload.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    /// The elements of type `T` in record `tag`: a whole number of them, at most `maximum`.
    public func array<T>(_ tag: SnapshotTag, of type: T.Type, maximum: Int) throws(SnapshotError) -> [T] {
        precondition(_isPOD(T.self), "\(T.self) is not plain data")
        let payload = try bytes(tag)
        let stride = MemoryLayout<T>.stride
        guard payload.count % stride == 0 else {
            throw .malformed("record '\(tag)' in \(context) is \(payload.count) bytes, not a whole number of \(stride)-byte entries")
        }
        let count = payload.count / stride
        guard count <= maximum else { throw .tooMany(tag: tag.description, count: count, maximum: maximum) }
        return payload.withUnsafeBytes { raw in (0..<count).map { raw.loadUnaligned(fromByteOffset: $0 * stride, as: T.self) } }
    }

    /// The integer in record `tag`.
    public func integer(_ tag: SnapshotTag) throws(SnapshotError) -> UInt64 {
        UInt64(littleEndian: try value(tag, as: UInt64.self))
    }

    /// The string in record `tag`, at most `maximumBytes` of UTF-8.
    public func string(_ tag: SnapshotTag, maximumBytes: Int = 4096) throws(SnapshotError) -> String {
        let payload = try bytes(tag)
        guard payload.count <= maximumBytes else { throw .tooMany(tag: tag.description, count: payload.count, maximum: maximumBytes) }
        guard let text = String(validating: payload, as: UTF8.self) else { throw .malformed("record '\(tag)' in \(context) is not UTF-8") }
        return text
    }

    /// The records inside the first record `tag`.
    public func nested(_ tag: SnapshotTag, context: String? = nil) throws(SnapshotError) -> SnapshotDecoder {
        try SnapshotDecoder(Array(bytes(tag)), context: context ?? "'\(tag)' in \(self.context)")
    }

    /// The records inside every record `tag`, in order (the vCPUs, the devices), at most `maximum` of them.
    public func all(_ tag: SnapshotTag, maximum: Int) throws(SnapshotError) -> [SnapshotDecoder] {
        let matching = records.filter { $0.tag == tag }
        guard matching.count <= maximum else { throw .tooMany(tag: tag.description, count: matching.count, maximum: maximum) }
        var decoders: [SnapshotDecoder] = []
        for (index, record) in matching.enumerated() {
            decoders.append(try SnapshotDecoder(Array(storage[record.range]), context: "'\(tag)' \(index) in \(context)"))
        }
        return decoders
    }

    /// Reads little-endian integers off a slice whose length the caller has checked.
    struct Cursor {
        private var slice: ArraySlice<UInt8>
        init(_ slice: ArraySlice<UInt8>) { self.slice = slice }

        mutating func littleEndian<T: FixedWidthInteger>(_ type: T.Type) -> T? {
            let size = MemoryLayout<T>.size
            guard slice.count >= size else { return nil }
            var value: T = 0
            for (shift, byte) in slice.prefix(size).enumerated() { value |= T(byte) << (8 * shift) }
            slice = slice.dropFirst(size)
            return value
        }
    }
}
