/// A small encoder for ACPI Machine Language (ACPI 6.5, chapter 20), enough for a microVM's DSDT: scopes, devices,
/// named objects (integers, strings, EISA IDs, packages), resource templates, and the one kind of method the GED
/// needs (an `If` on an argument's value, and `Notify`). Each value encodes itself; nothing is interpreted.
public indirect enum AML: Equatable, Sendable {
    case integer(UInt64)
    case string(String)
    /// A compressed EISA ID such as PNP0501 (a DWord).
    case eisaID(String)
    case package([AML])
    /// A resource template: a buffer of resource descriptors and the end tag.
    case resources([ResourceDescriptor])
    case name(String, AML)
    case scope(String, [AML])
    case device(String, [AML])
    /// Method (NotSerialized) with `arguments` arguments (0 to 7).
    case method(String, arguments: UInt8, [AML])
    /// ArgN, a method's argument (0 to 6).
    case argument(UInt8)
    /// LEqual(a, b).
    case equal(AML, AML)
    /// If (predicate) { terms }, without an Else.
    case ifThen(AML, [AML])
    /// Notify(object, value): the object is a name (such as `\_SB.VGEN`).
    case notify(String, AML)

    /// A resource descriptor (ACPI 6.5, 6.4).
    public enum ResourceDescriptor: Equatable, Sendable {
        /// Memory32Fixed (read-write).
        case memory32Fixed(base: UInt32, length: UInt32)
        /// Extended Interrupt: a consumer, edge-triggered, active-high, exclusive, one global system interrupt.
        case interrupt(UInt32)
        /// IO (16-bit decode): a fixed range of `length` ports at `base`.
        case io(base: UInt16, length: UInt8)
        /// IRQNoFlags: one ISA interrupt (edge, active high).
        case irq(UInt8)

        var encoded: [UInt8] {
            switch self {
            case .memory32Fixed(let base, let length):
                return [0x86, 0x09, 0x00, 0x01] + base.littleEndianBytes + length.littleEndianBytes
            case .interrupt(let number):
                // flags: bit 0 consumer, bit 1 edge; active high (bit 2 clear), exclusive (bit 3 clear).
                return [0x89, 0x06, 0x00, 0x03, 0x01] + number.littleEndianBytes
            case .io(let base, let length):
                return [0x47, 0x01] + base.littleEndianBytes + base.littleEndianBytes + [0x00, length]
            case .irq(let number):
                return [0x22] + (UInt16(1) << UInt16(number & 15)).littleEndianBytes
            }
        }
    }

    public var encoded: [UInt8] {
        switch self {
        case .integer(let value):
            switch value {
            case 0: return [0x00]                                    // ZeroOp
            case 1: return [0x01]                                    // OneOp
            case 0...0xff: return [0x0a, UInt8(value)]               // BytePrefix
            case 0...0xffff: return [0x0b] + UInt16(value).littleEndianBytes
            case 0...0xffff_ffff: return [0x0c] + UInt32(value).littleEndianBytes
            default: return [0x0e] + value.littleEndianBytes
            }
        case .string(let text):
            return [0x0d] + Array(text.utf8) + [0x00]                // StringPrefix ... NullChar
        case .eisaID(let id):
            return [0x0c] + AML.compressedEISAID(id).littleEndianBytes
        case .package(let elements):
            let body = [UInt8(elements.count)] + elements.flatMap(\.encoded)
            return [0x12] + AML.packageLength(body.count) + body      // PackageOp
        case .resources(let descriptors):
            let bytes = descriptors.flatMap(\.encoded) + [0x79, 0x00] // End tag, checksum 0 (not checked)
            let body = AML.integer(UInt64(bytes.count)).encoded + bytes
            return [0x11] + AML.packageLength(body.count) + body      // BufferOp
        case .name(let name, let value):
            return [0x08] + AML.nameString(name) + value.encoded     // NameOp
        case .scope(let name, let terms):
            let body = AML.nameString(name) + terms.flatMap(\.encoded)
            return [0x10] + AML.packageLength(body.count) + body      // ScopeOp
        case .device(let name, let terms):
            let body = AML.nameString(name) + terms.flatMap(\.encoded)
            return [0x5b, 0x82] + AML.packageLength(body.count) + body // DeviceOp
        case .method(let name, let arguments, let terms):
            precondition(arguments <= 7, "an AML method of \(arguments) arguments")
            let body = AML.nameString(name) + [arguments] + terms.flatMap(\.encoded) // MethodFlags: NotSerialized, SyncLevel 0
            return [0x14] + AML.packageLength(body.count) + body      // MethodOp
        case .argument(let index):
            precondition(index <= 6, "AML Arg\(index)")
            return [0x68 + index]                                    // Arg0Op ... Arg6Op
        case .equal(let left, let right):
            return [0x93] + left.encoded + right.encoded             // LEqualOp
        case .ifThen(let predicate, let terms):
            let body = predicate.encoded + terms.flatMap(\.encoded)
            return [0xa0] + AML.packageLength(body.count) + body      // IfOp
        case .notify(let object, let value):
            return [0x86] + AML.nameString(object) + value.encoded   // NotifyOp
        }
    }

    /// PkgLength (20.2.4): the length of what follows it plus its own bytes, in one to four bytes.
    static func packageLength(_ contentLength: Int) -> [UInt8] {
        precondition(contentLength >= 0 && contentLength < (1 << 28) - 4, "an AML package of \(contentLength) bytes")
        if contentLength + 1 < 0x40 { return [UInt8(contentLength + 1)] }
        for extra in 1...3 {
            let total = contentLength + 1 + extra
            guard total < 1 << (4 + 8 * extra) else { continue }
            var bytes = [UInt8(extra << 6) | UInt8(total & 0x0f)]
            for index in 0..<extra { bytes.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * index))) }
            return bytes
        }
        preconditionFailure("unreachable: \(contentLength) fits 28 bits")
    }

    /// A NameString (20.2.2): an optional root prefix (`\`) and dot-separated segments, each padded to four
    /// characters with `_`. Names come from this code, never from the guest: a bad one is a programming error.
    static func nameString(_ name: String) -> [UInt8] {
        var text = Substring(name)
        var bytes: [UInt8] = []
        if text.hasPrefix("\\") {
            bytes.append(0x5c)
            text = text.dropFirst()
        }
        let segments = text.split(separator: ".").map { segment -> [UInt8] in
            let characters = Array(segment.utf8)
            precondition(!characters.isEmpty && characters.count <= 4, "AML name segment '\(segment)'")
            precondition(characters.allSatisfy { ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5f }
                && !(characters[0] >= 0x30 && characters[0] <= 0x39), "AML name segment '\(segment)'")
            return characters + [UInt8](repeating: 0x5f, count: 4 - characters.count)
        }
        switch segments.count {
        case 0: bytes.append(0x00)                                      // NullName
        case 1: bytes += segments[0]
        case 2: bytes += [0x2e] + segments[0] + segments[1]           // DualNamePrefix
        default: bytes += [0x2f, UInt8(segments.count)] + segments.flatMap { $0 } // MultiNamePrefix
        }
        return bytes
    }

    /// EISAID("PNP0501"): three letters of five bits and four hex digits, stored big-endian (0x0105D041 as a DWord).
    static func compressedEISAID(_ id: String) -> UInt32 {
        let characters = Array(id.utf8)
        precondition(characters.count == 7 && characters[0..<3].allSatisfy { $0 >= 0x41 && $0 <= 0x5a }, "EISA ID '\(id)'")
        let letters = characters[0..<3].reduce(UInt32(0)) { ($0 << 5) | UInt32($1 - 0x40) }
        guard let product = UInt32(String(decoding: characters[3...], as: UTF8.self), radix: 16) else {
            preconditionFailure("EISA ID '\(id)'")
        }
        return (letters << 16 | product).byteSwapped
    }
}

extension FixedWidthInteger {
    /// The value's bytes, least significant first.
    var littleEndianBytes: [UInt8] { (0..<Self.bitWidth / 8).map { UInt8(truncatingIfNeeded: self >> ($0 * 8)) } }
}
