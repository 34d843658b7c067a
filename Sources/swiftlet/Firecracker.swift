import ArgumentParser
import Glibc
import Swiftlet
import SwiftletConfinement
import SwiftletFirecracker
import SwiftletHost
import Synchronization

/// `swiftlet firecracker` as `swiftlet --help` lists it and `swiftlet help firecracker` explains it. `main` runs the
/// front end itself, before swift-argument-parser sees the command line (`FirecrackerOptions` says why); this entry
/// is reached only through `swiftlet help`.
struct FirecrackerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firecracker",
        abstract: "Answer Firecracker's API (and its command line), so that tools made for Firecracker drive Swiftlet.",
        discussion: "Its options are Firecracker's: `swiftlet firecracker --help` lists them. A symlink named `firecracker` to this executable takes the same options.")

    @Argument(parsing: .captureForPassthrough, help: .hidden)
    var arguments: [String] = []

    func run() { FirecrackerFrontEnd.main(arguments, program: "swiftlet firecracker") }
}

/// `swiftlet firecracker`, and this executable started under the name `firecracker`: Firecracker's command line and
/// REST API in front of the same machine `swiftlet run` builds.
///
/// The API socket is bound and listening first, before the concurrency runtime, the VMM's set-up and NIO's event
/// loop start, so that a tool polling for it goes on at once; its first request waits in the backlog meanwhile.
final class FirecrackerFrontEnd: Sendable {
    /// Parses `arguments` (after the program name, or after `swiftlet firecracker`), binds the API socket and runs
    /// the front end; ends the process.
    static func main(_ arguments: [String], program: String) -> Never {
        let start = monotonicNanoseconds()
        let options: FirecrackerOptions
        do throws(FirecrackerOptions.UsageError) { options = try FirecrackerOptions.parse(arguments) } catch {
            Run.report("error: \(error)")
            Run.report("usage: \(program) --help lists the options")
            Glibc.exit(64) // EX_USAGE, as swift-argument-parser's other commands
        }
        if options.help || options.version {
            var text = options.help ? FirecrackerOptions.help(program: program) : FirecrackerOptions.versionLine + "\n"
            text.withUTF8 { _ = Glibc.write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            Glibc.exit(0)
        }
        let frontEnd = FirecrackerFrontEnd(options)
        // Signals from here on remove the socket (before a VM runs) or stop the VM.
        let signals: SignalForwarder
        do { signals = try SignalForwarder { _ in frontEnd.signalled() } } catch { frontEnd.fail("\(error)") }
        if !options.noAPI && !options.describe {
            do throws(SwiftletError) { try frontEnd.bind() } catch { frontEnd.fail(error.description) }
        }
        SwiftletCommand.runDetached {
            await frontEnd.run(start: start)
            signals.cancel()
        }
    }

    private struct State {
        var socket: APISocket?
        var server: APIServer?
        var vm: MicroVM?
        var waiters: [CheckedContinuation<MicroVM, Never>] = []
    }

    private let options: FirecrackerOptions
    private let state = Mutex(State())

    private init(_ options: FirecrackerOptions) { self.options = options }

    private func bind() throws(SwiftletError) {
        let socket = try APISocket.bind(path: options.apiSocket)
        state.withLock { $0.socket = socket }
    }

    private func run(start: UInt64) async {
        let options = self.options
        let seccomp: SeccompMode = options.seccompFilters ? .on : .off
        let vmm = FirecrackerVMM(id: options.id) { configuration async throws(SwiftletError) -> any RunningMachine in
            var configuration = configuration
            configuration.seccomp = seccomp
            configuration.confineProcess = true
            let vm = MicroVM(configuration)
            try await vm.start()
            self.started(vm)
            return vm
        } restorer: { snapshot, resume, configure async throws(SwiftletError) -> any RunningMachine in
            // PUT /snapshot/load: the console is this process's standard output, as for a booted microVM.
            let vm = try await MicroVM.restore(from: snapshot, resume: resume) { configuration in
                configure(&configuration)
                configuration.console = .stdio
                configuration.seccomp = seccomp
                configuration.confineProcess = true
            }
            self.started(vm)
            return vm
        }
        do throws(APIFault) { try await vmm.configure(logLevel: options.level, logPath: options.logPath, metricsPath: options.metricsPath) } catch {
            fail(error.message)
        }
        if options.describe, let configFile = options.configFile {
            let bytes: [UInt8]
            do { bytes = try readFile(configFile) } catch { fail("--config-file \(configFile): \(error)") }
            do throws(APIFault) {
                try await vmm.configure(fromFile: bytes)
                Describe.print(try await vmm.setup.machineConfiguration(), architecture: .x86_64)
            } catch {
                fail("--config-file \(configFile): \(error.message)")
            }
            Glibc.exit(0)
        }
        if let socket = state.withLock({ $0.socket }) {
            do throws(SwiftletError) {
                let server = try APIServer.start(socket: socket, vmm: vmm)
                state.withLock { $0.server = server }
                // A metrics line every 60 s once the guest runs, as Firecracker writes them (on the API's event loop).
                server.flushMetricsPeriodically(vmm)
            } catch {
                fail(error.description)
            }
        }
        let server = state.withLock { $0.server }
        let periodic: PeriodicMetrics? = server == nil ? PeriodicMetrics(vmm) : nil
        if let configFile = options.configFile {
            let bytes: [UInt8]
            do { bytes = try readFile(configFile) } catch { fail("--config-file \(configFile): \(error)") }
            do throws(APIFault) { try await vmm.configure(fromFile: bytes) } catch {
                fail("--config-file \(configFile): \(error.message)")
            }
            let response = await vmm.handle(method: "PUT", path: "/actions", body: Array(#"{"action_type": "InstanceStart"}"#.utf8))
            if response.status != 204 { fail(response.faultMessage ?? "InstanceStart failed") }
        }
        let vm = await waitForStart()
        let exit = await vm.wait()
        server?.close()
        periodic?.stop()
        if options.bootTimer { Run.reportBootTime(vm, start: start) }
        Run.end(exit)
    }

    /// SIGINT, SIGTERM or SIGHUP: a running VM is stopped (and the front end ends as when the guest does); before
    /// one runs, the socket goes and the process ends.
    private func signalled() {
        if let vm = state.withLock({ $0.vm }) {
            Task { await vm.stop() }
        } else {
            removeSocket()
            Glibc.exit(0)
        }
    }

    private func started(_ vm: MicroVM) {
        let waiters = state.withLock { state in
            state.vm = vm
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: vm) }
    }

    private func waitForStart() async -> MicroVM {
        await withCheckedContinuation { continuation in
            let vm = state.withLock { state -> MicroVM? in
                if let vm = state.vm { return vm }
                state.waiters.append(continuation)
                return nil
            }
            if let vm { continuation.resume(returning: vm) }
        }
    }

    private func removeSocket() {
        let (server, socket) = state.withLock { state in
            defer { state.server = nil; state.socket = nil }
            return (state.server, state.socket)
        }
        if let server { server.close() } else { socket?.discard() }
    }

    /// Ends the process with `message`, removing the socket first.
    private func fail(_ message: String) -> Never {
        removeSocket()
        Run.report("error: " + message)
        Glibc.exit(1)
    }
}

/// The whole of a small file (a configuration), at most 1 MiB.
func readFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SwiftletError(.systemCall, "cannot open it: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count >= 0 else { throw SwiftletError(.systemCall, "cannot read it: \(String(cString: strerror(errno)))") }
        if count == 0 { return bytes }
        bytes += chunk[0..<count]
        guard bytes.count <= 1 << 20 else { throw SwiftletError(.invalidConfiguration, "it is larger than 1 MiB: not a configuration file") }
    }
}
