import Glibc

/// A cursor over one side of a chain, the device-readable buffers (`ChainReader`) or the device-writable ones
/// (`ChainWriter`), across buffer boundaries: headers split over descriptors, payload after a header. The one way
/// devices gather and scatter what they parse (rust-vmm's `descriptor_utils` Reader and Writer are the model). It
/// never allocates: copies go to and from the caller's memory, and `vectors` appends iovecs into guest memory for one
/// readv/writev. Everything is bounded by the chain, whose buffers were all checked against guest memory.
public struct ChainCursor {
    /// The pieces the cursor walks: a chain's buffers, or iovecs already made from chains (virtio-net holds its
    /// receive chains as the iovecs of one readv).
    private enum Pieces {
        case buffers(ArraySlice<DescriptorBuffer>)
        case vectors(ArraySlice<iovec>)
    }
    private let pieces: Pieces
    private var index: Int
    private var offset = 0
    /// Bytes left from the cursor to the end of this side of the chain.
    public private(set) var remaining: Int

    init(_ buffers: ArraySlice<DescriptorBuffer>) {
        pieces = .buffers(buffers)
        index = buffers.startIndex
        remaining = buffers.reduce(0) { $0 + Int($1.length) }
    }

    /// Over the first `limit` bytes of `vectors` (fewer if they hold fewer); only the vectors within them are
    /// looked at, so the cost is bounded by `limit`'s span, not by how many vectors follow.
    init(_ vectors: ArraySlice<iovec>, limit: Int) {
        pieces = .vectors(vectors)
        index = vectors.startIndex
        var total = 0
        for vector in vectors {
            if total >= limit { break }
            total += vector.iov_len
        }
        remaining = min(total, max(limit, 0))
    }

    private var endIndex: Int {
        switch pieces {
        case .buffers(let buffers): buffers.endIndex
        case .vectors(let vectors): vectors.endIndex
        }
    }

    private func piece(_ index: Int) -> (host: UnsafeMutableRawPointer?, length: Int) {
        switch pieces {
        case .buffers(let buffers): (buffers[index].host, Int(buffers[index].length))
        case .vectors(let vectors): (vectors[index].iov_base, vectors[index].iov_len)
        }
    }

    /// Calls `body` with each piece of the next `count` bytes (fewer at the end) and moves past them.
    private mutating func advance(_ count: Int, _ body: (UnsafeMutableRawPointer, Int) -> Void) -> Int {
        var left = min(count, remaining)
        let total = left
        while left > 0, index < endIndex {
            let (host, length) = piece(index)
            let take = min(length - offset, left)
            if take > 0, let host { body(host + offset, take) }
            left -= take
            offset += take
            if offset == length {
                index += 1
                offset = 0
            }
        }
        remaining -= total
        return total
    }

    /// Moves past `count` bytes; returns how many there were.
    @discardableResult
    public mutating func skip(_ count: Int) -> Int { advance(count) { _, _ in } }

    /// Appends iovecs for the next `count` bytes (fewer at the end) to `vectors` and moves past them; returns the
    /// bytes they cover. At most one iovec per buffer: a chain's count (at most the queue size) bounds them.
    @discardableResult
    public mutating func vectors(_ count: Int, into vectors: inout [iovec]) -> Int {
        advance(count) { pointer, length in vectors.append(iovec(iov_base: pointer, iov_len: length)) }
    }

    mutating func copyOut(into destination: UnsafeMutableRawBufferPointer) -> Int {
        var done = 0
        return advance(destination.count) { pointer, length in
            (destination.baseAddress! + done).copyMemory(from: pointer, byteCount: length)
            done += length
        }
    }

    mutating func copyIn(from source: UnsafeRawBufferPointer) -> Int {
        var done = 0
        return advance(source.count) { pointer, length in
            pointer.copyMemory(from: source.baseAddress! + done, byteCount: length)
            done += length
        }
    }
}

/// Reads a chain's device-readable bytes in order.
public struct ChainReader {
    public private(set) var cursor: ChainCursor
    public init(_ chain: DescriptorChain) { cursor = ChainCursor(chain.readable) }
    public var remaining: Int { cursor.remaining }

    /// Copies up to `destination.count` bytes; returns how many were copied (fewer at the end of the chain).
    public mutating func read(into destination: UnsafeMutableRawBufferPointer) -> Int { cursor.copyOut(into: destination) }

    /// The next little-endian integer, or nil when fewer bytes than its size are left (they are then consumed).
    public mutating func read<T: FixedWidthInteger>(_: T.Type) -> T? {
        var value = T.zero
        let count = withUnsafeMutableBytes(of: &value) { cursor.copyOut(into: $0) }
        return count == MemoryLayout<T>.size ? T(littleEndian: value) : nil
    }

    @discardableResult
    public mutating func skip(_ count: Int) -> Int { cursor.skip(count) }

    @discardableResult
    public mutating func vectors(_ count: Int, into vectors: inout [iovec]) -> Int { cursor.vectors(count, into: &vectors) }
}

/// Writes into a chain's device-writable buffers in order.
public struct ChainWriter {
    public private(set) var cursor: ChainCursor
    public init(_ chain: DescriptorChain) { cursor = ChainCursor(chain.writable) }
    /// Over the first `limit` bytes of iovecs made from device-writable buffers (virtio-net's held receive chains).
    public init(vectors: ArraySlice<iovec>, limit: Int) { cursor = ChainCursor(vectors, limit: limit) }
    public var remaining: Int { cursor.remaining }

    /// Copies up to `source.count` bytes; returns how many were written (fewer at the end of the chain).
    @discardableResult
    public mutating func write(_ source: UnsafeRawBufferPointer) -> Int { cursor.copyIn(from: source) }

    @discardableResult
    public mutating func skip(_ count: Int) -> Int { cursor.skip(count) }

    @discardableResult
    public mutating func vectors(_ count: Int, into vectors: inout [iovec]) -> Int { cursor.vectors(count, into: &vectors) }
}
