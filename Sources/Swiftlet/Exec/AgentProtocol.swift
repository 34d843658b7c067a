/// The frames of the guest agent's protocol (guest/agent/PROTOCOL.md): an 8-byte header (u32 type, u32 length,
/// little-endian) and a payload of at most 1 MiB. One connection runs one command.
enum AgentFrame {
    static let headerSize = 8
    static let maximumPayload = 1 << 20

    // Host to agent.
    static let exec: UInt32 = 1
    static let stdin: UInt32 = 2
    static let signal: UInt32 = 3
    // Agent to host.
    static let started: UInt32 = 0x81
    static let stdout: UInt32 = 0x82
    static let stderr: UInt32 = 0x83
    static let exit: UInt32 = 0x84
    static let error: UInt32 = 0x85

    static let flagStdin: UInt32 = 1

    static func appendHeader(_ type: UInt32, length: Int, to bytes: inout [UInt8]) {
        appendU32(type, to: &bytes)
        appendU32(UInt32(length), to: &bytes)
    }

    static func appendU32(_ value: UInt32, to bytes: inout [UInt8]) {
        for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    static func appendString(_ string: String, to bytes: inout [UInt8]) {
        let utf8 = Array(string.utf8)
        appendU32(UInt32(utf8.count), to: &bytes)
        bytes += utf8
    }

    /// The EXEC frame, or nil when a string holds a NUL (argv and environment strings cannot) or it is too large.
    static func execFrame(arguments: [String], environment: [String], workingDirectory: String, stdin: Bool) -> [UInt8]? {
        guard !arguments.isEmpty, arguments.count <= 4096, environment.count <= 4096 else { return nil }
        for string in arguments + environment + [workingDirectory] where string.utf8.contains(0) { return nil }
        var payload: [UInt8] = []
        appendU32(UInt32(arguments.count), to: &payload)
        for argument in arguments { appendString(argument, to: &payload) }
        appendU32(UInt32(environment.count), to: &payload)
        for entry in environment { appendString(entry, to: &payload) }
        appendString(workingDirectory, to: &payload)
        appendU32(stdin ? flagStdin : 0, to: &payload)
        guard payload.count <= maximumPayload else { return nil }
        var frame: [UInt8] = []
        appendHeader(exec, length: payload.count, to: &frame)
        return frame + payload
    }

    static func u32(_ bytes: ArraySlice<UInt8>, at offset: Int) -> UInt32 {
        let start = bytes.startIndex + offset
        return UInt32(bytes[start]) | UInt32(bytes[start + 1]) << 8 | UInt32(bytes[start + 2]) << 16 | UInt32(bytes[start + 3]) << 24
    }
}

/// Splits a byte stream from the agent into frames. Hostile input (a length over the limit) is an error, never a
/// large allocation.
struct AgentFrameReader {
    private var buffer: [UInt8] = []
    private var start = 0

    enum Failure: Error, Equatable { case oversizeFrame(UInt32) }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame, or nil when more bytes are needed.
    mutating func next() throws(Failure) -> (type: UInt32, payload: ArraySlice<UInt8>)? {
        let available = buffer.count - start
        guard available >= AgentFrame.headerSize else { return nil }
        let header = buffer[start..<start + AgentFrame.headerSize]
        let length = AgentFrame.u32(header, at: 4)
        guard length <= UInt32(AgentFrame.maximumPayload) else { throw .oversizeFrame(length) }
        guard available >= AgentFrame.headerSize + Int(length) else { return nil }
        let type = AgentFrame.u32(header, at: 0)
        let payloadStart = start + AgentFrame.headerSize
        let payload = buffer[payloadStart..<payloadStart + Int(length)]
        start = payloadStart + Int(length)
        if start > 1 << 20 { // keep the buffer from growing with a long stream
            buffer.removeFirst(start)
            start = 0
            return (type, ArraySlice(Array(payload)))
        }
        return (type, payload)
    }
}
