/// struct virtio_vsock_hdr (virtio 1.2 §5.10.6), 44 bytes, little-endian, packed.
public struct VsockHeader: Equatable, Sendable {
    public static let size = 44

    public enum Operation: UInt16, Sendable {
        case invalid = 0, request = 1, response = 2, reset = 3, shutdown = 4, readWrite = 5
        case creditUpdate = 6, creditRequest = 7
    }
    public static let typeStream: UInt16 = 1
    /// SHUTDOWN flags: the sender will receive no more (RCV) / send no more (SEND).
    public static let shutdownReceive: UInt32 = 1
    public static let shutdownSend: UInt32 = 2

    public var sourceCID: UInt64 = 0
    public var destinationCID: UInt64 = 0
    public var sourcePort: UInt32 = 0
    public var destinationPort: UInt32 = 0
    public var length: UInt32 = 0
    public var type: UInt16 = VsockHeader.typeStream
    public var operation: UInt16 = 0
    public var flags: UInt32 = 0
    public var bufferAllocation: UInt32 = 0
    public var forwardCount: UInt32 = 0

    public init() {}

    public init(sourceCID: UInt64, destinationCID: UInt64, sourcePort: UInt32, destinationPort: UInt32,
                operation: Operation, flags: UInt32 = 0, length: UInt32 = 0) {
        self.sourceCID = sourceCID
        self.destinationCID = destinationCID
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.operation = operation.rawValue
        self.flags = flags
        self.length = length
    }

    /// Decodes the 44 bytes at the start of `bytes`; nil when there are fewer.
    public init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= Self.size else { return nil }
        func field<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        sourceCID = field(0, UInt64.self)
        destinationCID = field(8, UInt64.self)
        sourcePort = field(16, UInt32.self)
        destinationPort = field(20, UInt32.self)
        length = field(24, UInt32.self)
        type = field(28, UInt16.self)
        operation = field(30, UInt16.self)
        flags = field(32, UInt32.self)
        bufferAllocation = field(36, UInt32.self)
        forwardCount = field(40, UInt32.self)
    }

    /// Encodes into the first 44 bytes of `bytes` (which must hold them).
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= Self.size)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        }
        put(sourceCID, 0); put(destinationCID, 8); put(sourcePort, 16); put(destinationPort, 20); put(length, 24)
        put(type, 28); put(operation, 30); put(flags, 32); put(bufferAllocation, 36); put(forwardCount, 40)
    }

    public var op: Operation? { Operation(rawValue: operation) }
}

/// Credit accounting of one stream connection (virtio 1.2 §5.10.6.3), in wrapping 32-bit counters as on the wire.
///
/// Toward the guest: the guest advertises `peerBufferAllocation` and `peerForwardCount` (bytes its socket consumed)
/// in every packet; the device may have at most `peerBufferAllocation` bytes in flight, so it may send
/// `peerBufferAllocation - (sent - peerForwardCount)` more.
/// From the guest: the device advertises `bufferAllocation` and `forwarded` (bytes delivered to the host socket);
/// bytes received and not yet forwarded are buffered by the device and may never exceed `bufferAllocation`: a guest
/// that sends more than its credit is resetting its own connection.
public struct VsockCredit: Equatable, Sendable {
    public let bufferAllocation: UInt32
    public private(set) var peerBufferAllocation: UInt32 = 0
    public private(set) var peerForwardCount: UInt32 = 0
    /// Payload bytes sent to the guest.
    public private(set) var sent: UInt32 = 0
    /// Payload bytes received from the guest, and those of them delivered to the host socket.
    public private(set) var received: UInt32 = 0
    public private(set) var forwarded: UInt32 = 0
    /// `forwarded` as last told to the guest.
    public private(set) var advertisedForwarded: UInt32 = 0

    public init(bufferAllocation: UInt32) { self.bufferAllocation = bufferAllocation }

    /// Takes the guest's buf_alloc and fwd_cnt from a packet it sent.
    public mutating func update(peerBufferAllocation: UInt32, peerForwardCount: UInt32) {
        self.peerBufferAllocation = peerBufferAllocation
        self.peerForwardCount = peerForwardCount
    }

    /// How many payload bytes the guest can take now.
    public var peerFree: UInt32 {
        let inFlight = sent &- peerForwardCount
        // A guest that shrank buf_alloc below what is in flight (or reported a fwd_cnt ahead of what it was sent)
        // has no room.
        guard inFlight <= peerBufferAllocation else { return 0 }
        return peerBufferAllocation - inFlight
    }

    public mutating func didSend(_ count: UInt32) { sent = sent &+ count }

    /// Bytes received from the guest and not yet delivered.
    public var buffered: UInt32 { received &- forwarded }

    /// Accounts for `count` bytes from the guest; false (and nothing counted) when they exceed the credit given.
    public mutating func receive(_ count: UInt32) -> Bool {
        guard count <= bufferAllocation - buffered else { return false }
        received = received &+ count
        return true
    }

    public mutating func didForward(_ count: UInt32) {
        precondition(count <= buffered)
        forwarded = forwarded &+ count
    }

    /// The guest's view of the room left: what it was last told, minus what it sent since.
    public var advertisedFree: UInt32 {
        let used = received &- advertisedForwarded
        return used >= bufferAllocation ? 0 : bufferAllocation - used
    }

    /// Records that a packet carrying `forwarded` went to the guest.
    public mutating func didAdvertise() { advertisedForwarded = forwarded }

    /// A CREDIT_UPDATE is due when the guest believes it has less than `threshold` bytes of room but has more.
    public func creditUpdateDue(threshold: UInt32) -> Bool {
        advertisedFree < threshold && advertisedForwarded != forwarded
    }
}

/// The host side of a hybrid vsock connection starts with `CONNECT <port>\n` (Firecracker's protocol). Returns the
/// port, or nil for anything else. `line` excludes the newline.
public func parseConnectLine(_ line: some Collection<UInt8>) -> UInt32? {
    let prefix = Array("CONNECT ".utf8)
    guard line.count > prefix.count, line.count <= prefix.count + 10, line.starts(with: prefix) else { return nil }
    var value: UInt64 = 0
    for byte in line.dropFirst(prefix.count) {
        guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
        value = value * 10 + UInt64(byte - UInt8(ascii: "0"))
    }
    guard value <= UInt64(UInt32.max) else { return nil }
    return UInt32(value)
}
