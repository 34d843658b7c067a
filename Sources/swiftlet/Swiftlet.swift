import ArgumentParser
import Glibc
import Swiftlet
import SwiftletConfinement
import SwiftletHost

@main
struct SwiftletCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftlet",
        abstract: "A minimal KVM microVM monitor.",
        discussion: "Run `swiftlet run --help` for booting a Linux guest, `swiftlet exec --help` for running one command in a fresh VM.",
        subcommands: [Run.self, Exec.self, Describe.self, BalloonCommand.self, SnapshotCommand.self, Restore.self, SnapshotMerge.self, FirecrackerCommand.self])

    /// A synchronous entry point that runs the async subcommands on the concurrency runtime's threads.
    ///
    /// An `async` main would hand the main thread to libdispatch (`dispatch_main`), which ends it with `pthread_exit`:
    /// that forced unwind is the process's first, and in a static executable libgcc then sorts every FDE of the
    /// binary first, which was over half of the time from exec to the Firecracker API socket accepting. Here the main
    /// thread parses, starts the command in a task and waits for good in a `read` (below; ending the thread instead,
    /// with a raw SYS_exit, was seen to keep the SIGTERM handler from running). The task ends the
    /// process, as `main` returning would (with `exit`, so stdio is flushed); nothing runs on the main actor.
    /// Started as `firecracker` (a symlink to this executable), or as `swiftlet firecracker`: Firecracker's command
    /// line, parsed by `FirecrackerOptions` without swift-argument-parser.
    static func main() {
        let arguments = CommandLine.arguments
        let name = arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? ""
        if name == "firecracker" {
            FirecrackerFrontEnd.main(Array(arguments.dropFirst()), program: "firecracker")
        } else if arguments.count > 1 && arguments[1] == "firecracker" {
            FirecrackerFrontEnd.main(Array(arguments.dropFirst(2)), program: "swiftlet firecracker")
        }
        let parsed: ParsableCommand
        do { parsed = try parseAsRoot() } catch { exit(withError: error) }
        guard let command = parsed as? AsyncParsableCommand else {
            var command = parsed
            do { try command.run() } catch { exit(withError: error) }
            Glibc.exit(0)
        }
        runDetached {
            var command = command
            do { try await command.run() } catch { exit(withError: error) }
        }
    }

    /// Runs `body` in a detached task and ends the process (with `exit`, so stdio is flushed) when it returns.
    /// The main thread meanwhile waits, for good, in a read of a pipe nobody writes: signals' handlers may run on it,
    /// and `read` (unlike `pause`) is a call every seccomp filter of the process allows, also when restarted.
    static func runDetached(_ body: sending @escaping () async -> Void) -> Never {
        var idle: [Int32] = [-1, -1]
        guard pipe(&idle) == 0 else {
            Run.report("error: cannot create the main thread's idle pipe: \(String(cString: strerror(errno)))")
            Glibc.exit(1)
        }
        for fd in idle { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        Task.detached {
            await body()
            Glibc.exit(0)
        }
        // This process holds the write end until it exits, so the read never ends; an interrupted one is waited again.
        var byte: UInt8 = 0
        while Glibc.read(idle[0], &byte, 1) < 0 && errno == EINTR {}
        fatalError("the main thread's idle pipe read ended (errno \(errno)): something closed its descriptors")
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a Linux guest.",
        discussion: """
            Boots KERNEL (a bzImage, or an ELF vmlinux) with its console on the 8250 UART at 0x3f8 (ttyS0). The VMM exits \
            with status 0 when the guest reboots or powers off, and non-zero with a message when something fails.
            With --console stdio and a terminal, the terminal is in raw mode while the guest runs: press Ctrl-A then x to \
            stop the guest.
            """)

    @OptionGroup(title: "Machine")
    var machine: MachineOptions

    @Flag(name: .long, help: "Start the guest agent (adds swiftlet.agent=\(GuestAgent.defaultPort) to the command line; needs --vsock). Then `swiftlet exec --attach SOCKET -- CMD` runs commands in this VM.")
    var agent = false

    @OptionGroup(title: "Jail")
    var jailOptions: JailOptions

    @Option(name: .long, help: ArgumentHelp(
        "A Unix socket for changing the balloon while the VM runs (`swiftlet balloon SOCKET set MIB|get|stats`); removed at exit. Needs --balloon.",
        valueName: "path"))
    var balloonSocket: String?

    @Option(name: .long, help: ArgumentHelp(
        "A Unix socket for controlling the VM while it runs: pause, resume, snapshot (`swiftlet snapshot SOCKET`), and the balloon's commands; removed at exit.",
        valueName: "path"))
    var controlSocket: String?

    @Flag(name: .long, help: "Print, on stderr at exit, per-device counts of notifications, interrupts and requests.")
    var stats = false

    @Flag(name: .long, help: "Print, on stderr, how long the guest took from this process's start to its init (the boot-timer port).")
    var printBootTime = false

    @Flag(name: .long, help: "Print, on stderr, the CLOCK_MONOTONIC time of the first KVM_RUN (for start-up benchmarks).")
    var traceStartup = false

    func run() async throws {
        let start = monotonicNanoseconds()
        var configuration = try machine.configuration(console: "stdio", commandLine: MachineConfiguration.defaultCommandLine)
        if agent {
            guard configuration.vsock != nil else { throw ValidationError("--agent needs --vsock socket=PATH (the socket `swiftlet exec --attach` connects to)") }
            configuration.commandLine += " swiftlet.agent=\(GuestAgent.defaultPort)"
        }
        if balloonSocket != nil && configuration.balloon == nil { fail("--balloon-socket needs --balloon") }
        if balloonSocket != nil && controlSocket != nil { fail("--balloon-socket and --control-socket are the same socket: give one (--control-socket)") }
        if traceStartup {
            configuration.onFirstRun = { now in
                Run.report("first-kvm-run monotonic_ns=\(now) after_main_ns=\(now - start)")
            }
        }
        var balloonSocket = self.balloonSocket ?? self.controlSocket
        let controlOption = self.controlSocket != nil ? "--control-socket " : "--balloon-socket "
        if let jail = try jailOptions.configuration(for: configuration) {
            // Sockets live inside the jail: the VMM binds them at the path the jail gives them.
            var sockets: [(option: String, host: String, inside: String)] = []
            for (option, path) in [("--vsock socket=", configuration.vsock?.socketPath), (controlOption, balloonSocket)] {
                guard let path else { continue }
                guard let inside = jail.pathInside(path) else {
                    fail("\(option)\(path) is outside the jail: with --jail \(jail.directory), sockets go in a directory under it that uid \(jail.uid) may write (such as \(jail.directory)/run)")
                }
                sockets.append((option, path, inside))
            }
            guard Jail.isJailedChild else { superviseJail(jail, sockets: sockets) }
            if let inside = sockets.first(where: { $0.option.hasPrefix("--vsock") })?.inside { configuration.vsock?.socketPath = inside }
            if balloonSocket != nil { balloonSocket = sockets.first(where: { $0.option == controlOption })?.inside }
            configuration.kvmPath = JailConfiguration.kvmPath
            configuration.afterOpeningHostFiles = { () throws(SwiftletError) in try Jail.enter(jail) }
        }
        let vm = MicroVM(configuration)
        let signals = try SignalForwarder { _ in Task { await vm.stop() } }
        defer { signals.cancel() }
        do {
            try await vm.start()
        } catch {
            fail(error.description)
        }
        for warning in vm.setupWarnings { Run.report("warning: \(warning)") }
        var control: UnixLineServer?
        if let balloonSocket {
            do { control = try VMControl.serve(at: balloonSocket, vm: vm) } catch {
                await vm.stop()
                fail(error.description)
            }
        }
        let exit = await vm.wait()
        control?.stop()
        if let error = vm.deviceSchedulingError { Run.report("warning: \(error.description)") }
        if stats { Run.reportStatistics(vm, scheduling: machine.deviceScheduling) }
        if printBootTime { Run.reportBootTime(vm, start: start) }
        Run.end(exit)
    }

    /// `--stats`: per-device counters, the device thread's rounds, the console's bytes, the balloon's sizes.
    static func reportStatistics(_ vm: MicroVM, scheduling: DeviceThreadScheduling) {
        do {
            for device in vm.statistics() {
                Run.report("stats device=\(device.name) notifications=\(device.notifications) interrupts=\(device.interrupts) "
                    + "requests=\(device.requests) guest_errors=\(device.guestErrors)"
                    + (device.engine.map { " engine=\($0.rawValue)" } ?? ""))
            }
            if let loop = vm.deviceThreadStatistics {
                Run.report("stats device-thread scheduling=\(vm.deviceSchedulingError == nil ? scheduling.rawValue : "normal") "
                    + "rounds=\(loop.rounds) batch_rounds=\(loop.batchRounds) batch_switches=\(loop.batchSwitches)")
            }
            if let console = vm.consoleStatistics {
                Run.report("stats console written=\(console.written) dropped=\(console.dropped)")
            }
            if vm.balloonStatus() != nil {
                Run.report("stats device=balloon0 " + VMControl.answer("get", vm: vm).dropFirst(3))
            }
        }
    }

    /// `--print-boot-time` (and `firecracker --boot-timer`): from `start` to the guest's boot-timer write.
    static func reportBootTime(_ vm: MicroVM, start: UInt64) {
        if let reached = vm.userspaceReachedAt {
            report("guest init reached \((reached - start) / 1_000_000) ms after start")
        } else {
            report("the guest never wrote the boot-timer port")
        }
    }

    /// Returns for a clean end of the guest; otherwise ends the process with the status and message for how it
    /// ended (a guest panic, a failure).
    static func end(_ exit: MachineExit) {
        switch exit {
        case .reset, .powerOff, .stopped, .tripleFault:
            return
        case .guestPanic(let event):
            report("error: the guest kernel panicked (pvpanic event 0x\(String(event, radix: 16))); "
                + "its console output says why")
            Glibc.exit(guestPanicStatus)
        case .failed(let message):
            report("error: " + message)
            Glibc.exit(1)
        }
    }

    /// `--jail`, outside: starts the jailed VMM (this command again, in the jail's namespaces), forwards signals to it,
    /// waits, removes what it left, and exits with its status.
    private func superviseJail(_ jail: JailConfiguration, sockets: [(option: String, host: String, inside: String)]) -> Never {
        for socket in sockets {
            Run.report("jail: \(socket.option.trimmingCharacters(in: " "))\(socket.host) is \(socket.inside) inside the jail; clients on the host use \(socket.host)")
        }
        // The jailed VMM puts a terminal in raw mode and restores it; if it is killed, the supervisor restores it.
        var terminal = termios()
        let onTerminal = isatty(STDIN_FILENO) == 1 && tcgetattr(STDIN_FILENO, &terminal) == 0
        let supervisor: JailSupervisor
        do throws(SwiftletError) { supervisor = try JailSupervisor(jail, arguments: CommandLine.arguments) } catch { fail(error.description) }
        let signals: SignalForwarder
        do { signals = try SignalForwarder { supervisor.signal($0) } } catch {
            supervisor.signal(SIGKILL)
            _ = supervisor.wait()
            _ = supervisor.removeLeftovers(sockets: sockets.map(\.host))
            fail("\(error)")
        }
        let status = supervisor.wait()
        signals.cancel()
        if onTerminal { tcsetattr(STDIN_FILENO, TCSANOW, &terminal) }
        for problem in supervisor.removeLeftovers(sockets: sockets.map(\.host)) { Run.report("warning: jail: " + problem) }
        Glibc.exit(status)
    }

    /// The exit status when the guest kernel panicked (MachineExit.guestPanic): distinct from 1, Swiftlet's own
    /// failures.
    static let guestPanicStatus: Int32 = 2

    static func report(_ line: String) {
        var text = "swiftlet: " + line + "\n"
        text.withUTF8 { _ = Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }

    private func fail(_ message: String) -> Never {
        Run.report("error: " + message)
        Glibc.exit(1)
    }
}

/// Turns SIGINT, SIGTERM and SIGHUP into a clean stop (so the terminal is restored and nothing is left behind).
/// Their handler only writes the signal number to a pipe, which is async-signal-safe and works whichever thread the
/// kernel picks (libdispatch's main thread waits in sigsuspend with every signal unblocked, so masks cannot steer
/// them); a dedicated thread reads the pipe and stops the VM.
final class SignalForwarder: Sendable {
    private let thread: HostThread
    private let pipeWrite: Int32
    private static let handled: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    init(_ onSignal: @escaping @Sendable (Int32) -> Void) throws {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw SwiftletError(.systemCall, "cannot create the signal pipe") }
        let readEnd = fds[0]
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        pipeWrite = fds[1]
        signalPipe = fds[1]
        for signal in SignalForwarder.handled {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                var byte = UInt8(truncatingIfNeeded: number)
                _ = Glibc.write(signalPipe, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(signal, &action, nil)
        }
        thread = try HostThread(name: "signals") {
            var byte: UInt8 = 0
            while Glibc.read(readEnd, &byte, 1) == 1 || errno == EINTR {
                if byte == 0 { break } // cancel()
                onSignal(Int32(byte))
            }
            close(readEnd)
        }
    }

    /// Restores the default handlers and ends the thread.
    func cancel() {
        for signal in SignalForwarder.handled { Glibc.signal(signal, SIG_DFL) }
        var zero: UInt8 = 0
        _ = Glibc.write(pipeWrite, &zero, 1)
        thread.join()
        close(pipeWrite)
    }
}

/// The pipe the signal handler writes to; set once before the handlers are installed.
nonisolated(unsafe) private var signalPipe: Int32 = -1
