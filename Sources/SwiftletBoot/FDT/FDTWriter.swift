import CLibFDT

/// A libfdt call that failed: which call, and libfdt's error code (FDT_ERR_*, positive) with its name.
public struct FDTError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The FDT_ERR_* value, positive (libfdt returns it negated).
    public let code: Int32
    /// The libfdt call and its argument, e.g. `fdt_begin_node("cpus")`.
    public let operation: String

    public init(code: Int32, operation: String) {
        self.code = code
        self.operation = operation
    }

    /// The libfdt name of `code`, e.g. `FDT_ERR_NOSPACE` (libfdt.h).
    public var name: String {
        switch code {
        case FDT_ERR_NOTFOUND: "FDT_ERR_NOTFOUND"
        case FDT_ERR_EXISTS: "FDT_ERR_EXISTS"
        case FDT_ERR_NOSPACE: "FDT_ERR_NOSPACE"
        case FDT_ERR_BADOFFSET: "FDT_ERR_BADOFFSET"
        case FDT_ERR_BADPATH: "FDT_ERR_BADPATH"
        case FDT_ERR_BADPHANDLE: "FDT_ERR_BADPHANDLE"
        case FDT_ERR_BADSTATE: "FDT_ERR_BADSTATE"
        case FDT_ERR_TRUNCATED: "FDT_ERR_TRUNCATED"
        case FDT_ERR_BADMAGIC: "FDT_ERR_BADMAGIC"
        case FDT_ERR_BADVERSION: "FDT_ERR_BADVERSION"
        case FDT_ERR_BADSTRUCTURE: "FDT_ERR_BADSTRUCTURE"
        case FDT_ERR_BADLAYOUT: "FDT_ERR_BADLAYOUT"
        case FDT_ERR_INTERNAL: "FDT_ERR_INTERNAL"
        case FDT_ERR_BADNCELLS: "FDT_ERR_BADNCELLS"
        case FDT_ERR_BADVALUE: "FDT_ERR_BADVALUE"
        case FDT_ERR_BADOVERLAY: "FDT_ERR_BADOVERLAY"
        case FDT_ERR_NOPHANDLES: "FDT_ERR_NOPHANDLES"
        case FDT_ERR_BADFLAGS: "FDT_ERR_BADFLAGS"
        default: "FDT_ERR_\(code)"
        }
    }

    public var description: String {
        "libfdt \(operation) failed: \(name)"
    }
}

/// Builds a flattened device tree with libfdt's sequential-write API: nodes are opened and closed in order,
/// properties go into the node open last, and `finish()` returns the blob, checked by `fdt_check_full`.
///
/// The buffer starts small and doubles (`fdt_resize`) whenever libfdt reports FDT_ERR_NOSPACE, up to
/// `maximumSize`. libfdt's sequential-write calls take back what they grabbed before they report NOSPACE, so a call is
/// simply repeated after the resize.
public struct FDTWriter {
    /// The arm64 boot protocol allows a device tree of at most 2 MiB (Documentation/arch/arm64/booting.rst).
    public static let maximumSize = 2 << 20

    private var buffer: [UInt8]
    private var openNodes: [String] = []
    private var finished = false

    public init(initialCapacity: Int = 4096) throws(FDTError) {
        buffer = [UInt8](repeating: 0, count: max(initialCapacity, 256))
        try call("fdt_create") { fdt, size in fdt_create(fdt, size) }
        // No memory reservations: what the guest must not touch is simply not described as memory.
        try call("fdt_finish_reservemap") { fdt, _ in fdt_finish_reservemap(fdt) }
    }

    /// Runs one libfdt call on the buffer, growing it and repeating the call on FDT_ERR_NOSPACE.
    private mutating func call(_ operation: @autoclosure () -> String,
                               _ body: (UnsafeMutableRawPointer, Int32) -> Int32) throws(FDTError) {
        while true {
            let result = buffer.withUnsafeMutableBytes { body($0.baseAddress!, Int32($0.count)) }
            if result >= 0 { return }
            guard -result == FDT_ERR_NOSPACE, buffer.count < FDTWriter.maximumSize else {
                throw FDTError(code: -result, operation: operation())
            }
            try grow(operation())
        }
    }

    private mutating func grow(_ operation: String) throws(FDTError) {
        var larger = [UInt8](repeating: 0, count: min(buffer.count * 2, FDTWriter.maximumSize))
        let result = buffer.withUnsafeMutableBytes { old in
            larger.withUnsafeMutableBytes { new in fdt_resize(old.baseAddress!, new.baseAddress!, Int32(new.count)) }
        }
        guard result == 0 else { throw FDTError(code: -result, operation: "fdt_resize during \(operation)") }
        buffer = larger
    }

    private func requireOpen(_ operation: String) throws(FDTError) {
        // libfdt does not track nesting itself; a property outside every node, or an end without a begin, would
        // produce a tree that fdt_finish accepts but no reader can parse.
        guard !finished, !openNodes.isEmpty else { throw FDTError(code: FDT_ERR_BADSTATE, operation: operation) }
    }

    /// Opens a node (`""` for the root, then `name@unit-address` for children). The corresponding C function is
    /// `fdt_begin_node`.
    public mutating func beginNode(_ name: String) throws(FDTError) {
        guard !finished, openNodes.isEmpty == name.isEmpty else {
            throw FDTError(code: FDT_ERR_BADSTATE, operation: "fdt_begin_node(\"\(name)\")")
        }
        try call("fdt_begin_node(\"\(name)\")") { fdt, _ in fdt_begin_node(fdt, name) }
        openNodes.append(name)
    }

    /// Closes the node opened last. The corresponding C function is `fdt_end_node`.
    public mutating func endNode() throws(FDTError) {
        try requireOpen("fdt_end_node")
        let name = openNodes.last!
        try call("fdt_end_node(\"\(name)\")") { fdt, _ in fdt_end_node(fdt) }
        openNodes.removeLast()
    }

    /// A property holding `bytes` as they are. The corresponding C function is `fdt_property`.
    public mutating func property(_ name: String, bytes: [UInt8]) throws(FDTError) {
        try requireOpen("fdt_property(\"\(name)\")")
        if bytes.isEmpty { return try empty(name) }
        try call("fdt_property(\"\(name)\")") { fdt, _ in
            bytes.withUnsafeBytes { fdt_property(fdt, name, $0.baseAddress, Int32($0.count)) }
        }
    }

    /// An empty property, whose presence is its meaning (`interrupt-controller`, `dma-coherent`).
    public mutating func empty(_ name: String) throws(FDTError) {
        try requireOpen("fdt_property(\"\(name)\")")
        try call("fdt_property(\"\(name)\", empty)") { fdt, _ in CLibFDT_property_empty(fdt, name) }
    }

    /// One 32-bit cell, big-endian. The corresponding C function is `fdt_property_u32`.
    public mutating func property(_ name: String, u32 value: UInt32) throws(FDTError) {
        try requireOpen("fdt_property_u32(\"\(name)\")")
        try call("fdt_property_u32(\"\(name)\")") { fdt, _ in fdt_property_u32(fdt, name, value) }
    }

    /// One 64-bit value as two cells, big-endian. The corresponding C function is `fdt_property_u64`.
    public mutating func property(_ name: String, u64 value: UInt64) throws(FDTError) {
        try requireOpen("fdt_property_u64(\"\(name)\")")
        try call("fdt_property_u64(\"\(name)\")") { fdt, _ in fdt_property_u64(fdt, name, value) }
    }

    /// A list of 32-bit cells (`interrupts`, `reg` with one cell per number).
    public mutating func property(_ name: String, cells: [UInt32]) throws(FDTError) {
        try property(name, bytes: cells.flatMap { FDTWriter.bigEndianBytes($0) })
    }

    /// A list of 64-bit values, each as two cells (`reg` where #address-cells and #size-cells are 2).
    public mutating func property(_ name: String, u64Cells: [UInt64]) throws(FDTError) {
        try property(name, bytes: u64Cells.flatMap { FDTWriter.bigEndianBytes($0) })
    }

    /// A NUL-terminated string. The corresponding C macro is `fdt_property_string`.
    public mutating func property(_ name: String, string: String) throws(FDTError) {
        try requireOpen("fdt_property_string(\"\(name)\")")
        guard !string.utf8.contains(0) else { throw FDTError(code: FDT_ERR_BADVALUE, operation: "fdt_property_string(\"\(name)\")") }
        try call("fdt_property_string(\"\(name)\")") { fdt, _ in CLibFDT_property_string(fdt, name, string) }
    }

    /// A string list (`compatible`): each string NUL-terminated, one after the other.
    public mutating func property(_ name: String, strings: [String]) throws(FDTError) {
        guard !strings.isEmpty, !strings.contains(where: { $0.utf8.contains(0) }) else {
            throw FDTError(code: FDT_ERR_BADVALUE, operation: "fdt_property(\"\(name)\", string list)")
        }
        try property(name, bytes: strings.flatMap { Array($0.utf8) + [0] })
    }

    /// This node's `phandle`: the number other nodes use to point at it (`interrupt-parent = <phandle>`).
    public mutating func phandle(_ value: UInt32) throws(FDTError) {
        // 0 and 0xffffffff are not valid phandles (devicetree specification 2.3.3).
        guard value != 0, value != UInt32.max else { throw FDTError(code: FDT_ERR_BADPHANDLE, operation: "phandle \(value)") }
        try property("phandle", u32: value)
    }

    /// Completes the tree and returns the blob, trimmed to its size and accepted by `fdt_check_full`. The
    /// corresponding C function is `fdt_finish`.
    public mutating func finish() throws(FDTError) -> [UInt8] {
        guard !finished, openNodes.isEmpty else {
            throw FDTError(code: FDT_ERR_BADSTATE, operation: "fdt_finish with \(openNodes.count) open node(s)")
        }
        try call("fdt_finish") { fdt, _ in fdt_finish(fdt) }
        finished = true
        let size = buffer.withUnsafeBytes { Int(CLibFDT_totalsize($0.baseAddress!)) }
        let blob = Array(buffer[0..<min(size, buffer.count)])
        try FDTWriter.check(blob)
        return blob
    }

    /// Throws unless libfdt's full check accepts `blob` (header, structure block, strings, nesting).
    /// The corresponding C function is `fdt_check_full`.
    public static func check(_ blob: [UInt8]) throws(FDTError) {
        guard blob.count >= 40 else { throw FDTError(code: FDT_ERR_TRUNCATED, operation: "fdt_check_full") }
        let result = blob.withUnsafeBytes { fdt_check_full($0.baseAddress!, $0.count) }
        if result != 0 { throw FDTError(code: -result, operation: "fdt_check_full") }
    }

    static func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        (0..<MemoryLayout<T>.size).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }
}
