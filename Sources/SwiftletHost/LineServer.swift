import CSwiftlet
import Glibc
import Synchronization
import SystemPackage

/// A sockaddr_un for `path`, or nil when the path does not fit (sun_path holds 107 bytes and a NUL).
private func unixAddress(_ path: String) -> sockaddr_un? {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: address.sun_path), !bytes.contains(0) else { return nil }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (index, byte) in bytes.enumerated() { raw[index] = byte }
    }
    return address
}

private func withSocketAddress<R>(_ address: inout sockaddr_un, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

/// A connected stream socket that reads and writes text lines.
public final class LineStream: Sendable {
    public let descriptor: OwnedFileDescriptor

    public init(taking descriptor: OwnedFileDescriptor) { self.descriptor = descriptor }

    /// Connects to the Unix stream socket at `path`. The corresponding C function is `connect`.
    public convenience init(connectingTo path: String) throws(SwiftletError) {
        guard var address = unixAddress(path) else {
            throw SwiftletError(.invalidConfiguration, "socket path \(path) is empty or longer than 107 bytes")
        }
        let fd: Int32
        do { fd = try retryingSystemCall { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) } } catch {
            throw SwiftletError(.systemCall, "cannot create a Unix socket", cause: error)
        }
        let owned = OwnedFileDescriptor(taking: fd)
        do { _ = try retryingSystemCall { withSocketAddress(&address) { connect(fd, $0, $1) } } } catch {
            throw SwiftletError(.io, "cannot connect to \(path) (is the VM running with this control socket?)", cause: error)
        }
        self.init(taking: owned)
    }

    /// Writes `line` and a newline.
    public func send(_ line: String) throws(Errno) {
        let bytes = Array((line + "\n").utf8)
        let failure = bytes.withUnsafeBytes { raw -> Errno? in
            do throws(Errno) { try descriptor.writeAll(raw); return nil } catch { return error }
        }
        if let failure { throw failure }
    }

    /// Reads up to the next newline (dropped); nil at end of stream or on an error. Lines longer than `limit` bytes
    /// are cut there. Reads a byte at a time: control traffic is a few short lines.
    public func receiveLine(limit: Int = 4096) -> String? {
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let count = (try? retryingSystemCall { read(descriptor.rawValue, &byte, 1) }) ?? -1
            if count <= 0 { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            if bytes.count < limit { bytes.append(byte) }
        }
    }
}

/// A Unix stream socket at a path that answers text lines, one client at a time, on its own thread: each line a
/// client sends goes to `handler`, and what it returns goes back as one line. The socket file is created with mode
/// 0600 and removed when the server stops; a path that already exists is refused, never replaced.
public final class UnixLineServer: Sendable {
    public let path: String
    private let listener: OwnedFileDescriptor
    private let stopEvent: EventFd
    private let thread = Mutex<HostThread?>(nil)

    /// `prologue` runs first on the server's thread (its seccomp filter); when it returns false, the thread ends
    /// without serving.
    public init(path: String, prologue: (@Sendable () -> Bool)? = nil,
                handler: @escaping @Sendable (String) -> String) throws(SwiftletError) {
        guard var address = unixAddress(path) else {
            throw SwiftletError(.invalidConfiguration, "control socket path \(path) is empty or longer than 107 bytes")
        }
        self.path = path
        do {
            listener = OwnedFileDescriptor(taking: try retryingSystemCall {
                socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            })
            stopEvent = try EventFd(nonBlocking: true)
        } catch {
            throw SwiftletError(.systemCall, "cannot create the control socket", cause: error)
        }
        let previous = umask(0o077)
        let bound = withSocketAddress(&address) { bind(listener.rawValue, $0, $1) }
        let bindError = Errno(rawValue: errno)
        umask(previous)
        guard bound == 0 else {
            throw SwiftletError(.invalidConfiguration, "cannot create the control socket \(path)"
                + (bindError == .fileExists || bindError == .addressInUse ? " (the path exists: another VM uses it, or an old one was left behind; remove it or choose another path)" : ""),
                cause: bindError)
        }
        guard listen(listener.rawValue, 4) == 0 else {
            let error = Errno(rawValue: errno)
            unlink(path)
            throw SwiftletError(.systemCall, "cannot listen on the control socket \(path)", cause: error)
        }
        let listenerFd = listener.rawValue, stopFd = stopEvent.rawValue
        do {
            let started = try HostThread(name: "control") {
                if let prologue, !prologue() { return }
                UnixLineServer.serve(listener: listenerFd, stop: stopFd, handler: handler)
            }
            thread.withLock { $0 = started }
        } catch {
            unlink(path)
            throw SwiftletError(.systemCall, "cannot start the control socket thread", cause: error)
        }
    }

    /// Waits for `fd` or the stop event; true when `fd` is ready.
    private static func wait(for fd: Int32, stop: Int32) -> Bool {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        while true {
            let count = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, 2, -1) }
            if count < 0 && errno == EINTR { continue }
            return count > 0 && fds[1].revents == 0 && fds[0].revents != 0
        }
    }

    private static func serve(listener: Int32, stop: Int32, handler: @Sendable (String) -> String) {
        while wait(for: listener, stop: stop) {
            guard let client = try? retryingSystemCall({ accept(listener, nil, nil) }) else { continue }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            let stream = LineStream(taking: OwnedFileDescriptor(taking: client))
            while wait(for: client, stop: stop), let line = stream.receiveLine() {
                do { try stream.send(handler(line)) } catch { break }
            }
        }
    }

    /// Stops the thread and removes the socket file. The corresponding C function is `unlink`.
    public func stop() {
        guard let running = thread.withLock({ (current: inout HostThread?) -> HostThread? in
            defer { current = nil }
            return current
        }) else { return }
        stopEvent.signal()
        running.join()
        unlink(path)
    }

    deinit { stop() }
}
