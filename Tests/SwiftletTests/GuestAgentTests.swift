import Glibc
import Swiftlet
import SwiftletHost
import Synchronization
import Testing

/// The embedding API (`GuestAgent`) against the real guest agent, run on this host over a Unix socket
/// (`swiftlet-agent --listen unix:PATH`, built by `make guest`), behind a stand-in for the VMM's hybrid vsock socket:
/// a listener that takes `CONNECT <port>\n`, answers `OK` for port 1024 and relays bytes to the agent, and closes the
/// connection (a refusal) for any other port.
final class AgentFixture: @unchecked Sendable {
    static let agentBinary: String? = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) } // Tests/SwiftletTests/X.swift -> root
        let binary = path + "/.build/guest/swiftlet-agent"
        return access(binary, X_OK) == 0 ? binary : nil
    }()

    let directory: String
    let hybridPath: String
    let agentPath: String
    private var agentPID: pid_t = 0
    private let listener: UnixSocket
    private let relays = Mutex<[HostThread]>([])
    private let stopped = Atomic<Bool>(false)
    private var acceptThread: HostThread?

    init() throws {
        var template = Array("/tmp/swiftlet-agent-test.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        directory = String(cString: template)
        hybridPath = directory + "/hybrid.sock"
        agentPath = directory + "/agent.sock"
        let binary = try #require(AgentFixture.agentBinary)
        var pid: pid_t = 0
        let arguments = [binary, "--listen", "unix:" + agentPath]
        var argv = arguments.map { strdup($0) } + [nil]
        // The agent's "listening" line goes to /dev/null; wait for its socket instead.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        // Its own process group, so that close() ends it and its connection handlers together.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        // Every signal blocked, as a thread of Swift's pool has it: the agent must unblock what it needs (SIGCHLD)
        // itself. Before it did, a command's exit went unnoticed whenever a test ran on such a thread.
        var blocked = sigset_t()
        sigfillset(&blocked)
        posix_spawnattr_setsigmask(&attributes, &blocked)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK))
        posix_spawnattr_setpgroup(&attributes, 0)
        let result = posix_spawn(&pid, binary, &actions, &attributes, &argv, environ)
        posix_spawnattr_destroy(&attributes)
        posix_spawn_file_actions_destroy(&actions)
        for pointer in argv { free(pointer) }
        try #require(result == 0)
        agentPID = pid
        for _ in 0..<200 where access(agentPath, F_OK) != 0 { usleep(10_000) }
        listener = try UnixSocket.listen(path: hybridPath)
        acceptThread = try HostThread(name: "hybrid") { [self] in acceptLoop() }
    }

    /// Stops the relay threads and the agent (the threads hold the fixture, so this cannot wait for deinit).
    func close() {
        stopped.store(true, ordering: .releasing)
        listener.shutdown(reading: true, writing: true)
        _ = try? UnixSocket.connect(path: hybridPath) // wakes the accept loop
        acceptThread?.join()
        // The agent goes first: its end of a relay closing is what ends that relay's threads, and a connection it
        // still serves (a command that outlived its test, an output pipe a child holds open) would keep one
        // reading for ever.
        kill(-agentPID, SIGKILL) // the agent and its handlers
        kill(agentPID, SIGKILL)
        var status: Int32 = 0
        waitpid(agentPID, &status, 0)
        for thread in relays.withLock({ $0 }) { thread.join() }
        unlink(hybridPath)
        unlink(agentPath)
        rmdir(directory)
    }

    private func acceptLoop() {
        while !stopped.load(ordering: .acquiring) {
            guard listener.wait(milliseconds: 100) else { continue }
            guard let client = try? listener.accept() else { continue }
            if stopped.load(ordering: .acquiring) { return }
            if let thread = try? HostThread(name: "relay", { [self] in relay(client) }) {
                relays.withLock { $0.append(thread) }
            }
        }
    }

    private func relay(_ client: UnixSocket) {
        var line: [UInt8] = []
        var byte: [UInt8] = [0]
        while line.count < 32 {
            guard client.wait(milliseconds: 2000), let count = try? client.read(into: &byte), count == 1 else { return }
            if byte[0] == UInt8(ascii: "\n") { break }
            line.append(byte[0])
        }
        guard line == Array("CONNECT 1024".utf8), let agent = try? UnixSocket.connect(path: agentPath, nonBlocking: true) else {
            return // refused: the connection closes without OK
        }
        try? client.writeAll(Array("OK 77\n".utf8))
        // One thread a direction. The agent reads the host's end of stream as "host gone", so the client's end is
        // not passed on; the agent closing ends the relay (and wakes the other direction).
        let upstream = try? HostThread(name: "relay-up") { AgentFixture.copy(from: client, to: agent) }
        AgentFixture.copy(from: agent, to: client)
        client.shutdown(reading: true, writing: true)
        upstream?.join()
    }

    private static func copy(from source: UnixSocket, to destination: UnixSocket) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count: Int?
            do { count = try source.read(into: &buffer) } catch { return }
            guard let count else { _ = source.wait(milliseconds: 1000); continue }
            if count == 0 { return }
            do { try destination.writeAll(Array(buffer[0..<count])) } catch { return }
        }
    }
}

@Suite(.serialized, .enabled(if: AgentFixture.agentBinary != nil, "needs .build/guest/swiftlet-agent (make guest)"))
struct GuestAgentTests {
    @Test func execCollectsOutputAndStatus() async throws {
        let fixture = try AgentFixture()
        defer { fixture.close() }
        let agent = GuestAgent(socketPath: fixture.hybridPath)
        let result = try await agent.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
        #expect(result.stdout == Array("out\n".utf8))
        #expect(result.stderr == Array("err\n".utf8))
        #expect(result.termination == .exited(3))
        let environment = try await agent.exec(["sh", "-c", "echo $GREETING; pwd"],
                                               options: ExecOptions(environment: ["GREETING": "hi"], workingDirectory: "/tmp"))
        #expect(String(decoding: environment.stdout, as: UTF8.self) == "hi\n/tmp\n")
    }

    @Test func stdinBytesReachTheCommand() async throws {
        let fixture = try AgentFixture()
        defer { fixture.close() }
        let input = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let result = try await GuestAgent(socketPath: fixture.hybridPath).exec(["wc", "-c"], options: ExecOptions(input: .bytes(input)))
        #expect(String(decoding: result.stdout, as: UTF8.self).trimmingSpaces == "300000")
    }

    @Test func aTimeoutKillsTheCommand() async throws {
        let fixture = try AgentFixture()
        defer { fixture.close() }
        let started = monotonicNanoseconds()
        let result = try await GuestAgent(socketPath: fixture.hybridPath).exec(["sleep", "30"], options: ExecOptions(timeout: .milliseconds(300)))
        #expect(result.termination == .signaled(9, timedOut: true))
        #expect(monotonicNanoseconds() - started < 10_000_000_000)
    }

    @Test func streamingDeliversEventsInOrder() async throws {
        let fixture = try AgentFixture()
        defer { fixture.close() }
        var events: [ExecEvent] = []
        for try await event in GuestAgent(socketPath: fixture.hybridPath).execStream(["sh", "-c", "echo one; sleep 0.2; echo two"]) {
            events.append(event)
        }
        guard case .started = events.first else { Issue.record("no STARTED first: \(events)"); return }
        let output = events.compactMap { event -> String? in
            if case .stdout(let bytes) = event { return String(decoding: bytes, as: UTF8.self) }
            return nil
        }.joined()
        #expect(output == "one\ntwo\n")
        #expect(events.last == .exit(.exited(0)))
    }

    @Test func failuresSayWhat() async throws {
        let fixture = try AgentFixture()
        defer { fixture.close() }
        let agent = GuestAgent(socketPath: fixture.hybridPath)
        await #expect { try await agent.exec(["/no/such/program"]) } throws: { error in
            (error as? SwiftletError)?.code == .execFailed && (error as? SwiftletError)?.cause == .noSuchFileOrDirectory
        }
        // A port nobody listens on: refused once the wait runs out.
        await #expect { _ = try await agent.openStream(port: 5, wait: .milliseconds(200)) } throws: { error in
            (error as? SwiftletError)?.code == .connectionRefused
        }
        // No VM behind the path at all.
        await #expect { try await GuestAgent(socketPath: fixture.directory + "/none.sock").exec(["true"]) } throws: { error in
            (error as? SwiftletError)?.code == .agentUnavailable
        }
    }

    @Test func aRawStreamCarriesBytesBothWays() async throws {
        let fixture = try AgentFixture()
        defer { fixture.close() }
        // The agent's port, spoken to by hand: an EXEC frame for `true`, then frames back until EXIT.
        let stream = try await GuestAgent(socketPath: fixture.hybridPath).openStream(port: 1024)
        var frame: [UInt8] = [1, 0, 0, 0, 0, 0, 0, 0]
        let payload: [UInt8] = [1, 0, 0, 0, 4, 0, 0, 0] + Array("true".utf8) + [0, 0, 0, 0] + [0, 0, 0, 0] + [0, 0, 0, 0]
        frame[4] = UInt8(payload.count)
        frame += payload
        try frame.withUnsafeBytes { try stream.write($0) }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = try buffer.withUnsafeMutableBytes { try stream.read(into: $0) }
            if count == 0 { break }
            received += buffer[0..<count]
        }
        // STARTED (8 + 4 bytes), then EXIT (8 + 8): kind 0, status 0.
        #expect(received.count == 28)
        #expect(received[12] == 0x84 && Array(received[20..<28]) == [0, 0, 0, 0, 0, 0, 0, 0])
    }
}

extension String {
    var trimmingSpaces: String {
        var result = Substring(self)
        while let first = result.first, first == " " || first == "\n" { result = result.dropFirst() }
        while let last = result.last, last == " " || last == "\n" { result = result.dropLast() }
        return String(result)
    }
}
