import Glibc
import SwiftletHost
import SystemPackage

/// Opens a stream to a guest vsock port through the hybrid vsock socket: connect, `CONNECT <port>\n`, and wait for
/// `OK <hostport>\n`. The guest refusing (nobody listening on the port) closes the socket instead; that is
/// `connectionRefused`. Blocking; `deadline` is CLOCK_MONOTONIC nanoseconds.
func openGuestStream(socketPath: String, port: UInt32, deadline: UInt64) throws(SwiftletError) -> UnixSocket {
    let socket: UnixSocket
    do { socket = try UnixSocket.connect(path: socketPath, nonBlocking: true) } catch {
        throw SwiftletError(.agentUnavailable, "cannot connect to the VM's vsock socket \(socketPath) (is the VM running?)", cause: error)
    }
    do {
        try socket.writeAll(Array("CONNECT \(port)\n".utf8))
    } catch {
        // The device closes host connections at once while the guest's driver is not ready yet: a refusal.
        throw SwiftletError(.connectionRefused, "the VM's vsock socket \(socketPath) closed the connection (the guest's vsock driver is not ready)", cause: error)
    }
    // The answer comes from the VMM's device within its own connect time-out (2 s), whatever is left of `deadline`.
    let deadline = max(deadline, monotonicNanoseconds() + 3_000_000_000)
    var line: [UInt8] = []
    var byte: [UInt8] = [0]
    while true {
        let now = monotonicNanoseconds()
        guard now < deadline else {
            throw SwiftletError(.timedOut, "the guest did not answer a connection to vsock port \(port) in time")
        }
        guard socket.wait(milliseconds: Int32(min((deadline - now) / 1_000_000 + 1, 60_000))) else { continue }
        let count: Int?
        do { count = try socket.read(into: &byte) } catch {
            throw SwiftletError(.connectionRefused, "the guest refused a connection to vsock port \(port)", cause: error)
        }
        guard let count else { continue }
        guard count == 1 else {
            throw SwiftletError(.connectionRefused, "the guest refused a connection to vsock port \(port) (nothing listens there yet)")
        }
        if byte[0] == UInt8(ascii: "\n") { break }
        line.append(byte[0])
        guard line.count < 32 else { throw SwiftletError(.guestFault, "the vsock socket sent a malformed reply") }
    }
    guard line.starts(with: Array("OK ".utf8)) else {
        throw SwiftletError(.guestFault, "the vsock socket replied \"\(String(decoding: line, as: UTF8.self))\" instead of OK")
    }
    return socket
}

/// One command on the agent: sends EXEC, then moves stdin in and output out until EXIT. Blocking; runs on a thread
/// of its own. The socket is non-blocking so that a command that writes a lot while it reads its input never
/// deadlocks against us.
struct AgentSession {
    let socket: UnixSocket
    let input: ExecInput
    /// CLOCK_MONOTONIC nanoseconds after which the command is killed (SIGKILL to its process group).
    let deadline: UInt64?
    let onEvent: (ExecEvent) -> Void

    func run(arguments: [String], environment: [String], workingDirectory: String) throws(SwiftletError) -> ExecTermination {
        var hasStdin = false
        var pendingStdin: [UInt8]? // bytes given up front
        var stdinFd: Int32 = -1
        switch input {
        case .none: break
        case .bytes(let bytes): hasStdin = true; pendingStdin = bytes
        case .fileDescriptor(let fd): hasStdin = true; stdinFd = fd
        }
        guard var outgoing = AgentFrame.execFrame(arguments: arguments, environment: environment,
                                                  workingDirectory: workingDirectory, stdin: hasStdin) else {
            throw SwiftletError(.invalidConfiguration, "the command cannot be sent: no arguments, a NUL in a string, or more than 1 MiB of arguments and environment")
        }
        var outgoingStart = 0
        if var bytes = pendingStdin {
            while !bytes.isEmpty {
                let chunk = bytes.prefix(64 << 10)
                AgentFrame.appendHeader(AgentFrame.stdin, length: chunk.count, to: &outgoing)
                outgoing += chunk
                bytes.removeFirst(chunk.count)
            }
            AgentFrame.appendHeader(AgentFrame.stdin, length: 0, to: &outgoing)
        }
        var reader = AgentFrameReader()
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var killed = false
        var stdinOpen = stdinFd >= 0
        while true {
            // Keep no more than 256 KiB of stdin queued: the command reads it at its own pace.
            let wantStdin = stdinOpen && outgoing.count - outgoingStart < 256 << 10
            var fds = [pollfd(fd: socket.rawValue, events: Int16(POLLIN) | (outgoingStart < outgoing.count ? Int16(POLLOUT) : 0), revents: 0)]
            if wantStdin { fds.append(pollfd(fd: stdinFd, events: Int16(POLLIN), revents: 0)) }
            var timeout: Int32 = -1
            if let deadline, !killed {
                let now = monotonicNanoseconds()
                if now >= deadline {
                    killed = true
                    AgentFrame.appendHeader(AgentFrame.signal, length: 4, to: &outgoing)
                    AgentFrame.appendU32(UInt32(SIGKILL), to: &outgoing)
                    continue
                }
                timeout = Int32(min((deadline - now) / 1_000_000 + 1, 60_000))
            }
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            if ready < 0 {
                if errno == EINTR { continue }
                throw SwiftletError(.systemCall, "poll failed while running the command", cause: Errno(rawValue: errno))
            }
            if fds[0].revents & Int16(POLLOUT) != 0, outgoingStart < outgoing.count {
                do {
                    let written = try socket.write(outgoing, from: outgoingStart)
                    outgoingStart += written ?? 0
                    if outgoingStart == outgoing.count {
                        outgoing.removeAll(keepingCapacity: true)
                        outgoingStart = 0
                    }
                } catch {
                    // The agent closed its end; what it sent before is still read below.
                    outgoing.removeAll()
                    outgoingStart = 0
                    stdinOpen = false
                }
            }
            if wantStdin, fds.count > 1, fds[1].revents != 0 {
                let count = buffer.withUnsafeMutableBytes { read(stdinFd, $0.baseAddress, $0.count) }
                if count > 0 {
                    AgentFrame.appendHeader(AgentFrame.stdin, length: count, to: &outgoing)
                    outgoing += buffer[0..<count]
                } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                    stdinOpen = false
                    AgentFrame.appendHeader(AgentFrame.stdin, length: 0, to: &outgoing)
                }
            }
            if fds[0].revents & (Int16(POLLIN) | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
                let count: Int?
                do { count = try socket.read(into: &buffer) } catch {
                    throw SwiftletError(.agentUnavailable, "the connection to the guest agent failed", cause: error)
                }
                if count == 0 {
                    throw SwiftletError(.agentUnavailable, "the guest agent closed the connection before the command's exit status arrived (the guest stopped, or the agent died)")
                }
                if let count, count > 0 {
                    buffer.withUnsafeBytes { reader.append(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
                    while true {
                        let frame: (type: UInt32, payload: ArraySlice<UInt8>)?
                        do { frame = try reader.next() } catch {
                            throw SwiftletError(.guestFault, "the guest agent sent a malformed frame (\(error))")
                        }
                        guard let frame else { break }
                        if let termination = try handle(frame.type, frame.payload, killed: killed) { return termination }
                    }
                }
            }
        }
    }

    /// Acts on one frame; the termination once EXIT arrives.
    private func handle(_ type: UInt32, _ payload: ArraySlice<UInt8>, killed: Bool) throws(SwiftletError) -> ExecTermination? {
        switch type {
        case AgentFrame.started:
            guard payload.count == 4 else { throw SwiftletError(.guestFault, "the guest agent sent a malformed STARTED frame") }
            onEvent(.started(pid: Int32(bitPattern: AgentFrame.u32(payload, at: 0))))
        case AgentFrame.stdout:
            onEvent(.stdout(Array(payload)))
        case AgentFrame.stderr:
            onEvent(.stderr(Array(payload)))
        case AgentFrame.exit:
            guard payload.count == 8 else { throw SwiftletError(.guestFault, "the guest agent sent a malformed EXIT frame") }
            let kind = AgentFrame.u32(payload, at: 0)
            let value = Int32(bitPattern: AgentFrame.u32(payload, at: 4))
            let termination: ExecTermination = kind == 0 ? .exited(value) : .signaled(value, timedOut: killed)
            onEvent(.exit(termination))
            return termination
        case AgentFrame.error:
            guard payload.count >= 4 else { throw SwiftletError(.guestFault, "the guest agent sent a malformed ERROR frame") }
            let number = Int32(bitPattern: AgentFrame.u32(payload, at: 0))
            let message = String(decoding: payload.dropFirst(4), as: UTF8.self)
            throw SwiftletError(.execFailed, "the guest agent could not run the command: \(message)", cause: Errno(rawValue: number))
        default:
            throw SwiftletError(.guestFault, "the guest agent sent an unknown frame type 0x\(String(type, radix: 16))")
        }
        return nil
    }
}
