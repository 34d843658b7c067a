import ArgumentParser
import Glibc
import Swiftlet
import SwiftletConfinement
import SwiftletFirecracker
import SwiftletHost
import Synchronization

/// `swiftlet firecracker`, and this executable started under the name `firecracker`: Firecracker's command line and
/// REST API in front of the same machine `swiftlet run` builds.
struct FirecrackerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firecracker",
        abstract: "Answer Firecracker's API (and its command line), so that tools made for Firecracker drive Swiftlet.",
        discussion: """
            Serves Firecracker's REST API (v\(FirecrackerVMM.apiVersion): HTTP/1.1 on the Unix socket --api-sock) and \
            boots the microVM it describes on InstanceStart; or boots --config-file's machine at once. The guest's \
            serial console is on standard output. The process ends when the guest does: status 0 for a reboot or a \
            power-off, 2 for a guest kernel panic, 1 with a message for a failure. A symlink named `firecracker` to \
            this executable takes the same options. Endpoints Swiftlet does not implement answer 400 with the reason \
            (README, "Firecracker's API").
            """)

    @Option(name: .customLong("api-sock"), help: ArgumentHelp("The API's Unix socket; it must not exist, and is removed at exit.", valueName: "path"))
    var apiSocket = "/run/firecracker.socket"

    @Option(name: .customLong("config-file"), help: ArgumentHelp("Firecracker's JSON machine configuration: boot it without waiting for the API.", valueName: "path"))
    var configFile: String?

    @Flag(name: .customLong("no-api"), help: "Serve no API (needs --config-file).")
    var noAPI = false

    @Option(name: .long, help: "The instance ID (GET / reports it).")
    var id = "anonymous-instance"

    @Flag(name: .customLong("boot-timer"), help: "Print, on stderr, how long the guest took from this process's start to its init (the boot-timer port).")
    var bootTimer = false

    @Option(name: .long, help: ArgumentHelp("The log level, as PUT /logger's (Error, Warning, Info, Debug, Trace, Off).", valueName: "level"))
    var level: String?

    @Option(name: .customLong("log-path"), help: ArgumentHelp("Where log lines go (a file or FIFO that exists); default standard error.", valueName: "path"))
    var logPath: String?

    @Option(name: .customLong("metrics-path"), help: ArgumentHelp("Where metrics lines go (a file or FIFO that exists), as PUT /metrics.", valueName: "path"))
    var metricsPath: String?

    @Option(name: .customLong("seccomp-level"), help: ArgumentHelp("Firecracker's seccomp levels: 0 no filters, 1 or 2 Swiftlet's per-thread filters (swiftlet run --seccomp on).", valueName: "0|1|2"))
    var seccompLevel: Int?

    @Flag(name: .customLong("no-seccomp"), help: "No seccomp filters (as --seccomp-level 0).")
    var noSeccomp = false

    @Flag(name: .long, help: "Print what the guest of --config-file would see, as `swiftlet describe` prints it for the same machine given as run's options, and exit: nothing is opened or booted.")
    var describe = false

    func validate() throws {
        if noAPI && configFile == nil { throw ValidationError("--no-api needs --config-file: without the API, the configuration file is the only way to describe the microVM") }
        if describe && configFile == nil { throw ValidationError("--describe needs --config-file: the machine to describe") }
        if let seccompLevel, !(0...2).contains(seccompLevel) { throw ValidationError("--seccomp-level \(seccompLevel) is not 0, 1 or 2") }
    }

    func run() async throws {
        let start = monotonicNanoseconds()
        let seccomp: SeccompMode = (noSeccomp || seccompLevel == 0) ? .off : .on
        let exits = ExitBox()
        let vmm = FirecrackerVMM(id: id) { configuration async throws(SwiftletError) -> any RunningMachine in
            var configuration = configuration
            configuration.seccomp = seccomp
            configuration.confineProcess = true
            let vm = MicroVM(configuration)
            try await vm.start()
            exits.started(vm)
            return vm
        }
        do throws(APIFault) { try await vmm.configure(logLevel: level, logPath: logPath, metricsPath: metricsPath) } catch {
            fail(error.message)
        }
        if describe, let configFile {
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
        var started: APIServer?
        if !noAPI {
            do throws(SwiftletError) { started = try APIServer.start(path: apiSocket, vmm: vmm) } catch { fail(error.description) }
        }
        let server = started
        // A metrics line every 60 s once the guest runs, as Firecracker writes them (on the API's event loop).
        let periodic: PeriodicMetrics? = server == nil ? PeriodicMetrics(vmm) : nil
        server?.flushMetricsPeriodically(vmm)
        let signals = try SignalForwarder { _ in
            Task {
                if let vm = exits.vm { await vm.stop() } else { server?.close(); Glibc.exit(0) }
            }
        }
        if let configFile {
            let bytes: [UInt8]
            do { bytes = try readFile(configFile) } catch {
                server?.close()
                fail("--config-file \(configFile): \(error)")
            }
            do throws(APIFault) {
                try await vmm.configure(fromFile: bytes)
            } catch {
                server?.close()
                fail("--config-file \(configFile): \(error.message)")
            }
            let response = await vmm.handle(method: "PUT", path: "/actions", body: Array(#"{"action_type": "InstanceStart"}"#.utf8))
            if response.status != 204 {
                server?.close()
                fail(response.faultMessage ?? "InstanceStart failed")
            }
        }
        let vm = await exits.waitForStart()
        let exit = await vm.wait()
        signals.cancel()
        server?.close()
        periodic?.stop()
        if bootTimer { Run.reportBootTime(vm, start: start) }
        Run.end(exit)
    }

    private func fail(_ message: String) -> Never {
        Run.report("error: " + message)
        Glibc.exit(1)
    }
}

/// The started VM, for the main task (which waits for it) and the signal handler (which stops it).
final class ExitBox: Sendable {
    private let state = Mutex<(vm: MicroVM?, waiters: [CheckedContinuation<MicroVM, Never>])>((nil, []))

    var vm: MicroVM? { state.withLock { $0.vm } }

    func started(_ vm: MicroVM) {
        let waiters = state.withLock { state in
            state.vm = vm
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: vm) }
    }

    func waitForStart() async -> MicroVM {
        await withCheckedContinuation { continuation in
            let vm = state.withLock { state -> MicroVM? in
                if let vm = state.vm { return vm }
                state.waiters.append(continuation)
                return nil
            }
            if let vm { continuation.resume(returning: vm) }
        }
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
