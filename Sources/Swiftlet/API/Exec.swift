import Glibc
import Synchronization
import SwiftletHost
import SystemPackage

/// What a command reads on stdin.
public enum ExecInput: Sendable {
    /// /dev/null.
    case none
    /// These bytes, then end of input.
    case bytes([UInt8])
    /// Everything read from this descriptor until its end (it stays open; the caller owns it).
    case fileDescriptor(Int32)
}

/// How a command ended.
public enum ExecTermination: Sendable, Equatable {
    case exited(Int32)
    /// Killed by a signal; `timedOut` when Swiftlet killed it because the timeout passed.
    case signaled(Int32, timedOut: Bool)

    /// The status a shell would report: the exit code, or 128 + the signal.
    public var shellStatus: Int32 {
        switch self {
        case .exited(let code): code
        case .signaled(let signal, _): 128 + signal
        }
    }
}

/// What a running command produced, in order.
public enum ExecEvent: Sendable, Equatable {
    case started(pid: Int32)
    case stdout([UInt8])
    case stderr([UInt8])
    case exit(ExecTermination)
}

public struct ExecResult: Sendable, Equatable {
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    public var termination: ExecTermination
}

public struct ExecOptions: Sendable {
    /// Added to the agent's default environment (PATH, HOME, TERM); a key given here wins.
    public var environment: [String: String] = [:]
    public var workingDirectory = "/"
    public var input: ExecInput = .none
    /// Kill the command (SIGKILL to its process group) when it runs longer; nil: no limit.
    public var timeout: Duration?
    /// How long to keep trying while the agent is not listening yet (a VM that is still booting).
    public var agentWait: Duration = .seconds(30)

    public init(environment: [String: String] = [:], workingDirectory: String = "/", input: ExecInput = .none,
                timeout: Duration? = nil, agentWait: Duration = .seconds(30)) {
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.input = input
        self.timeout = timeout
        self.agentWait = agentWait
    }
}

/// The guest agent of a running VM, reached through its hybrid vsock socket: runs commands in the guest and opens
/// raw streams to guest ports. `MicroVM.agent` gives the one of a VM this process runs; `GuestAgent(socketPath:)`
/// reaches a VM another process runs (`swiftlet run --vsock ...`).
public struct GuestAgent: Sendable {
    /// The port the agent listens on (the guest init starts it with `swiftlet.agent=PORT`).
    public static let defaultPort: UInt32 = 1024

    public let socketPath: String
    public let port: UInt32

    public init(socketPath: String, port: UInt32 = GuestAgent.defaultPort) {
        self.socketPath = socketPath
        self.port = port
    }

    /// Runs `arguments` in the guest and collects its output.
    public func exec(_ arguments: [String], options: ExecOptions = ExecOptions()) async throws(SwiftletError) -> ExecResult {
        let output = Mutex<(stdout: [UInt8], stderr: [UInt8])>(([], []))
        let termination = try await run(arguments, options: options) { event in
            switch event {
            case .stdout(let bytes): output.withLock { $0.stdout += bytes }
            case .stderr(let bytes): output.withLock { $0.stderr += bytes }
            default: break
            }
        }
        return output.withLock { ExecResult(stdout: $0.stdout, stderr: $0.stderr, termination: termination) }
    }

    /// Runs `arguments` in the guest, delivering output as it comes. The stream ends after `.exit`, or with the
    /// error that stopped the command. Ending the iteration early closes the connection, which kills the command.
    public func execStream(_ arguments: [String], options: ExecOptions = ExecOptions()) -> AsyncThrowingStream<ExecEvent, any Error> {
        AsyncThrowingStream { continuation in
            let started = start(arguments, options: options, onEvent: { continuation.yield($0) }) { result in
                switch result {
                case .success: continuation.finish()
                case .failure(let error): continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in started?.shutdown(reading: true, writing: true) }
        }
    }

    /// Runs `arguments`, calling `onEvent` (on a thread of its own) for each event; returns how it ended.
    public func run(_ arguments: [String], options: ExecOptions = ExecOptions(),
                    onEvent: @escaping @Sendable (ExecEvent) -> Void) async throws(SwiftletError) -> ExecTermination {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<ExecTermination, SwiftletError>, Never>) in
            _ = start(arguments, options: options, onEvent: onEvent) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Connects (retrying while the agent is not up yet) and runs the session on a dedicated thread. Returns the
    /// socket once connected, so a caller can cut the session short.
    @discardableResult
    private func start(_ arguments: [String], options: ExecOptions, onEvent: @escaping @Sendable (ExecEvent) -> Void,
                       completion: @escaping @Sendable (Result<ExecTermination, SwiftletError>) -> Void) -> UnixSocket? {
        let socketBox = Mutex<UnixSocket?>(nil)
        let environment = options.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let work: @Sendable () -> Void = { [self] in
            do throws(SwiftletError) {
                let socket = try connectRetrying(wait: options.agentWait)
                socketBox.withLock { $0 = socket }
                let deadline = options.timeout.map { monotonicNanoseconds() + $0.nanoseconds }
                let session = AgentSession(socket: socket, input: options.input, deadline: deadline, onEvent: onEvent)
                completion(.success(try session.run(arguments: arguments, environment: environment,
                                                    workingDirectory: options.workingDirectory)))
            } catch {
                completion(.failure(error))
            }
        }
        do {
            try HostThread(name: "exec", work).detach()
        } catch {
            completion(.failure(SwiftletError(.systemCall, "cannot start a thread for the command", cause: error)))
        }
        return socketBox.withLock { $0 }
    }

    /// Opens a byte stream to `port` in the guest (whatever listens there, not only the agent).
    public func openStream(port: UInt32, wait: Duration = .seconds(5)) async throws(SwiftletError) -> VsockStream {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<UnixSocket, SwiftletError>, Never>) in
            do {
                try HostThread(name: "vsock-connect") { [self] in
                    continuation.resume(returning: Result { () throws(SwiftletError) -> UnixSocket in
                        try GuestAgent(socketPath: socketPath, port: port).connectRetrying(wait: wait)
                    })
                }.detach()
            } catch {
                continuation.resume(returning: .failure(SwiftletError(.systemCall, "cannot start a thread to connect", cause: error as? Errno)))
            }
        }
        return VsockStream(socket: try result.get(), port: port)
    }

    /// Connects to `port`, retrying for `wait` while the guest refuses (its listener is not up yet).
    func connectRetrying(wait: Duration) throws(SwiftletError) -> UnixSocket {
        let deadline = monotonicNanoseconds() + wait.nanoseconds
        while true {
            do {
                return try openGuestStream(socketPath: socketPath, port: port, deadline: deadline)
            } catch where error.code == .connectionRefused && monotonicNanoseconds() < deadline {
                var pause = timespec(tv_sec: 0, tv_nsec: 20_000_000)
                nanosleep(&pause, nil)
            }
        }
    }
}

/// A byte stream to a port in the guest, over the VM's hybrid vsock socket. Blocking reads and writes; use it
/// from a thread of your own, or take `fileDescriptor` into your event loop.
public final class VsockStream: Sendable {
    private let socket: UnixSocket
    public let port: UInt32

    init(socket: UnixSocket, port: UInt32) {
        self.socket = socket
        self.port = port
    }

    /// The connected socket (non-blocking). It stays owned by this object.
    public var fileDescriptor: Int32 { socket.rawValue }

    /// Reads up to `buffer.count` bytes, waiting for some; 0 at the end of the stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SwiftletError) -> Int {
        while true {
            do {
                if let count = try socket.read(into: buffer) { return count }
            } catch {
                throw SwiftletError(.io, "reading from guest vsock port \(port) failed", cause: error)
            }
            _ = socket.wait(milliseconds: -1)
        }
    }

    /// Writes all of `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(SwiftletError) {
        do { try socket.writeAll(bytes) } catch {
            throw SwiftletError(.io, "writing to guest vsock port \(port) failed", cause: error)
        }
    }

    /// Ends the host's side of the stream (the guest reads end of stream); reading still works.
    public func closeWriting() { socket.shutdown(reading: false, writing: true) }
}

extension MicroVM {
    /// The guest agent of this VM. Needs a vsock device (`MachineConfiguration.vsock`) and a guest whose init starts
    /// the agent (`swiftlet.agent=1` on the kernel command line, as `MachineConfiguration.enableAgent()` sets).
    public var agent: GuestAgent {
        get throws(SwiftletError) {
            guard let vsock = configuration.vsock else {
                throw SwiftletError(.invalidConfiguration, "this VM has no vsock device: set MachineConfiguration.vsock (or call enableAgent())")
            }
            return GuestAgent(socketPath: vsock.socketPath)
        }
    }

    /// Runs a command in the guest: see `GuestAgent.exec`.
    public func exec(_ arguments: [String], options: ExecOptions = ExecOptions()) async throws(SwiftletError) -> ExecResult {
        try await agent.exec(arguments, options: options)
    }

    /// Runs a command in the guest with its output as it comes: see `GuestAgent.execStream`.
    public func execStream(_ arguments: [String], options: ExecOptions = ExecOptions()) throws(SwiftletError) -> AsyncThrowingStream<ExecEvent, any Error> {
        try agent.execStream(arguments, options: options)
    }

    /// Opens a byte stream to a guest vsock port.
    public func openStream(port: UInt32, wait: Duration = .seconds(5)) async throws(SwiftletError) -> VsockStream {
        try await agent.openStream(port: port, wait: wait)
    }
}

extension MachineConfiguration {
    /// Adds a vsock device on `socketPath` (a private temporary path when nil, removed when the VM ends) and
    /// asks the guest init to start the agent.
    public mutating func enableAgent(socketPath: String? = nil, guestCID: UInt64 = 3, port: UInt32 = GuestAgent.defaultPort) {
        let path = socketPath ?? MachineConfiguration.temporarySocketPath()
        vsock = SocketConfiguration(guestCID: guestCID, socketPath: path)
        commandLine += " swiftlet.agent=\(port)"
    }

    /// A socket path of this process's own under $XDG_RUNTIME_DIR or /tmp.
    static func temporarySocketPath() -> String {
        let directory = getenv("XDG_RUNTIME_DIR").map { String(cString: $0) } ?? "/tmp"
        return "\(directory)/swiftlet-\(getpid())-\(monotonicNanoseconds() % 1_000_000_000).vsock"
    }
}

extension Duration {
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(max(seconds, 0)) * 1_000_000_000 + UInt64(max(attoseconds, 0) / 1_000_000_000)
    }
}
