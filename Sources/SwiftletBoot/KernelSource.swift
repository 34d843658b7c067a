import SwiftletHost

/// Where a loader reads a kernel or initrd from: a file (read straight into guest memory), or bytes in tests.
public protocol BootSource {
    var size: Int { get }
    /// Fills `buffer` with the bytes at `offset`; throws when the source is shorter.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(SwiftletError)
}

extension BootSource {
    func bytes(at offset: Int, count: Int) throws(SwiftletError) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        let outcome = result.withUnsafeMutableBytes { buffer in
            Result { () throws(SwiftletError) in try read(into: buffer, at: offset) }
        }
        try outcome.get()
        return result
    }
}

/// A boot file opened read-only.
public struct FileBootSource: BootSource, Sendable {
    public let path: String
    public let descriptor: OwnedFileDescriptor
    public let size: Int

    public init(path: String, what: String) throws(SwiftletError) {
        self.path = path
        let code: SwiftletError.Code = what == "initrd" ? .invalidInitrd : .invalidKernel
        do {
            descriptor = try OwnedFileDescriptor(opening: path, flags: 0 /* O_RDONLY */)
            size = try descriptor.fileSize()
        } catch {
            throw SwiftletError(code, "cannot open \(what) \(path)", cause: error)
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(SwiftletError) {
        guard offset >= 0, offset <= size, buffer.count <= size - offset else {
            throw SwiftletError(.invalidKernel, "\(path) is truncated: needs \(buffer.count) bytes at offset \(offset), file has \(size)")
        }
        do { try descriptor.read(into: buffer, at: offset) } catch {
            throw SwiftletError(.io, "cannot read \(path)", cause: error)
        }
    }
}

/// Bytes in memory, for tests and for images built on the fly.
public struct BytesBootSource: BootSource {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var size: Int { bytes.count }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(SwiftletError) {
        guard offset >= 0, offset <= bytes.count, buffer.count <= bytes.count - offset else {
            throw SwiftletError(.invalidKernel, "image is truncated: needs \(buffer.count) bytes at offset \(offset), has \(bytes.count)")
        }
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + buffer.count])) }
    }
}

/// Little-endian field access in a byte array, for headers already bounds-checked by their length.
extension Array where Element == UInt8 {
    func le<T: FixedWidthInteger>(_: T.Type, _ offset: Int) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size { value |= T(self[offset + index]) << (8 * index) }
        return value
    }

    mutating func setLE<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
        for index in 0..<MemoryLayout<T>.size { self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }
}
