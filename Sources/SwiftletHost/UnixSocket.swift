import CSwiftlet
import Glibc
import SystemPackage

/// An AF_UNIX stream socket: a listener bound to a path (removed again when the listener goes away), a connection
/// accepted from one, or one connected to a path. Non-blocking unless asked otherwise; close-on-exec always.
public final class UnixSocket: Sendable {
    public let descriptor: OwnedFileDescriptor
    /// The path a listener bound and removes at deinit; nil for connections.
    public let boundPath: String?
    public var rawValue: Int32 { descriptor.rawValue }

    private init(descriptor: OwnedFileDescriptor, boundPath: String?) {
        self.descriptor = descriptor
        self.boundPath = boundPath
    }

    deinit {
        if let boundPath { unlink(boundPath) }
    }

    /// The longest path sockaddr_un holds, without its NUL.
    public static let maximumPathLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    private static func address(_ path: String) throws(SwiftletError) -> sockaddr_un {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumPathLength, !bytes.contains(0) else {
            throw SwiftletError(.invalidConfiguration, "socket path \"\(path)\" is empty or longer than \(maximumPathLength) bytes (use a shorter path)")
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    private static func makeSocket(nonBlocking: Bool) throws(Errno) -> OwnedFileDescriptor {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        return OwnedFileDescriptor(taking: try retryingSystemCall { socket(AF_UNIX, type, 0) })
    }

    /// Binds and listens on `path`. A socket file left there by a process that is gone (nobody accepts on it) is
    /// replaced; a live one is an error. The corresponding C functions are `socket`, `bind` and `listen`.
    public static func listen(path: String, backlog: Int32 = 64) throws(SwiftletError) -> UnixSocket {
        var address = try address(path)
        do {
            let fd = try makeSocket(nonBlocking: true)
            var bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if bound != 0 && errno == EADDRINUSE {
                if (try? connect(path: path, nonBlocking: false)) != nil {
                    throw SwiftletError(.invalidConfiguration, "socket \(path) is in use by another process (pick another path or stop that process)")
                }
                unlink(path) // stale: its owner is gone
                bound = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
            }
            if bound != 0 { throw Errno(rawValue: errno) }
            let listener = UnixSocket(descriptor: fd, boundPath: path)
            _ = try retryingSystemCall { Glibc.listen(fd.rawValue, backlog) }
            return listener
        } catch let error as SwiftletError {
            throw error
        } catch {
            throw SwiftletError(.invalidConfiguration, "cannot listen on socket \(path)", cause: error as? Errno)
        }
    }

    /// Connects to the listener at `path`. The corresponding C functions are `socket` and `connect`.
    public static func connect(path: String, nonBlocking: Bool = true) throws(Errno) -> UnixSocket {
        guard var address = try? address(path) else { throw Errno.invalidArgument }
        let fd = try makeSocket(nonBlocking: nonBlocking)
        _ = try retryingSystemCall {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        return UnixSocket(descriptor: fd, boundPath: nil)
    }

    /// Accepts a connection (non-blocking); nil when none is waiting. The corresponding C function is `accept4`.
    public func accept() throws(Errno) -> UnixSocket? {
        let fd = CSwiftlet_accept4(rawValue, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
        if fd < 0 {
            if errno == EAGAIN || errno == EINTR || errno == ECONNABORTED { return nil }
            throw Errno(rawValue: errno)
        }
        return UnixSocket(descriptor: OwnedFileDescriptor(taking: fd), boundPath: nil)
    }

    /// Reads what is there: the count, 0 at end of stream, nil when nothing is ready (EAGAIN).
    /// The corresponding C function is `read`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int? {
        while true {
            let count = Glibc.read(rawValue, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            if errno == EINTR { continue }
            if errno == EAGAIN { return nil }
            throw Errno(rawValue: errno)
        }
    }

    /// Writes what fits: the count, nil when nothing fits now (EAGAIN). MSG_NOSIGNAL: a closed peer is EPIPE, never
    /// SIGPIPE. The corresponding C function is `send`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(Errno) -> Int? {
        while true {
            let count = send(rawValue, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            if count >= 0 { return count }
            if errno == EINTR { continue }
            if errno == EAGAIN { return nil }
            throw Errno(rawValue: errno)
        }
    }

    /// Writes every byte, waiting for room on a non-blocking socket. For small messages (a reply line).
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(Errno) {
        var offset = 0
        while offset < bytes.count {
            if let count = try write(UnsafeRawBufferPointer(rebasing: bytes[offset...])) {
                offset += count
            } else {
                var entry = pollfd(fd: rawValue, events: Int16(POLLOUT), revents: 0)
                _ = Glibc.poll(&entry, 1, -1)
            }
        }
    }

    /// `read(into:)` into the start of an array (at most `bytes.count` bytes).
    public func read(into bytes: inout [UInt8]) throws(Errno) -> Int? {
        while true {
            let count = bytes.withUnsafeMutableBytes { Glibc.read(rawValue, $0.baseAddress, $0.count) }
            if count >= 0 { return count }
            if errno == EINTR { continue }
            if errno == EAGAIN { return nil }
            throw Errno(rawValue: errno)
        }
    }

    /// `write(_:)` of the array's bytes from `offset` on.
    public func write(_ bytes: [UInt8], from offset: Int) throws(Errno) -> Int? {
        while true {
            let count = bytes.withUnsafeBytes { send(rawValue, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if count >= 0 { return count }
            if errno == EINTR { continue }
            if errno == EAGAIN { return nil }
            throw Errno(rawValue: errno)
        }
    }

    /// `writeAll(_:)` of an array.
    public func writeAll(_ bytes: [UInt8]) throws(Errno) {
        var offset = 0
        while offset < bytes.count {
            if let count = try write(bytes, from: offset) {
                offset += count
            } else {
                _ = wait(writable: true, milliseconds: -1)
            }
        }
    }

    /// Ends one or both directions. The corresponding C function is `shutdown`.
    public func shutdown(reading: Bool, writing: Bool) {
        let how: Int32 = reading && writing ? Int32(SHUT_RDWR) : reading ? Int32(SHUT_RD) : Int32(SHUT_WR)
        _ = Glibc.shutdown(rawValue, how)
    }

    /// Waits until the socket is readable (or writable), or `milliseconds` pass (-1: forever). True when ready.
    /// The corresponding C function is `poll`.
    public func wait(writable: Bool = false, milliseconds: Int32) -> Bool {
        var entry = pollfd(fd: rawValue, events: Int16(writable ? POLLOUT : POLLIN), revents: 0)
        while true {
            let result = Glibc.poll(&entry, 1, milliseconds)
            if result >= 0 { return result > 0 }
            if errno != EINTR { return true } // let the following read or write report the error
        }
    }
}
