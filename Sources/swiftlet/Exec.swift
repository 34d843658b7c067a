import ArgumentParser
import Glibc
import Swiftlet
import SwiftletHost
import Synchronization

/// `swiftlet exec [machine options] -- CMD ARGS...`: a one-shot sandbox.
struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one command in a fresh VM (or in a running one with --attach) and exit with its status.",
        discussion: """
            Boots the guest with a vsock device and its agent, runs CMD there through the agent, copies its stdout and \
            stderr to this process's, and tears the VM down. The exit status is the command's (128 + N when signal N \
            killed it); 124 when --timeout killed it; 126 when it could not be executed, 127 when it was not found; 125 \
            when Swiftlet itself failed (the message says why). stdin is passed to the command when it is not a \
            terminal (a pipe or a file) or with --stdin.
            The guest must run Swiftlet's agent on vsock port 1024: the bundled guest's init (guest/) starts it when \
            the command line says swiftlet.agent; tools/build-distro-image.sh installs it in a Debian image as a \
            systemd service, for --attach.
            """)

    @OptionGroup(title: "Machine (ignored with --attach)")
    var machine: MachineOptions

    @Option(name: .long, help: ArgumentHelp("Run in the VM behind this hybrid vsock socket (a `swiftlet run --vsock socket=PATH --agent` VM) instead of booting one.", valueName: "socket"))
    var attach: String?

    @Option(name: .customLong("env"), parsing: .singleValue, help: ArgumentHelp("Set an environment variable for the command; repeatable.", valueName: "name=value"))
    var environment: [String] = []

    @Option(name: .customLong("workdir"), help: ArgumentHelp("The command's working directory in the guest.", valueName: "path"))
    var workingDirectory = "/"

    @Option(name: .long, help: ArgumentHelp("Kill the command (SIGKILL) after this many seconds.", valueName: "seconds"))
    var timeout: Double?

    @Flag(name: .long, inversion: .prefixedNo, help: "Pass this process's stdin to the command (default: when stdin is not a terminal).")
    var stdin: Bool?

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command and its arguments, after --.", valueName: "command"))
    var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("give the command to run after --, e.g. swiftlet exec --kernel K --initrd I -- uname -a") }
    }

    func run() async throws {
        let arguments = command
        var environmentTable: [String: String] = [:]
        for entry in environment {
            let pair = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2, !pair[0].isEmpty else { throw ValidationError("--env takes NAME=VALUE, not \"\(entry)\"") }
            environmentTable[pair[0]] = pair[1]
        }
        let passStdin = stdin ?? (isatty(STDIN_FILENO) == 0)
        var options = ExecOptions(environment: environmentTable, workingDirectory: workingDirectory,
                                  input: passStdin ? .fileDescriptor(STDIN_FILENO) : .none)
        if let timeout {
            guard timeout > 0 else { throw ValidationError("--timeout must be more than 0 seconds") }
            options.timeout = .nanoseconds(Int64(timeout * 1e9))
        }

        if let attach {
            Exec.finish(await Exec.run(arguments, options: options, agent: GuestAgent(socketPath: attach), timeout: timeout))
        }

        // `quiet`: the console goes nowhere by default, and every byte the kernel prints costs a VM exit.
        var configuration = try machine.configuration(console: "none", commandLine: MachineConfiguration.defaultCommandLine + " quiet")
        configuration.enableAgent(socketPath: configuration.vsock?.socketPath, guestCID: configuration.vsock?.guestCID ?? 3)
        let vm = MicroVM(configuration)
        let signals = try SignalForwarder { _ in Task { await vm.stop() } }
        defer { signals.cancel() }
        do { try await vm.start() } catch {
            Run.report("error: " + error.description)
            Glibc.exit(125)
        }
        // The guest ending before the command reported its status is a failure of the sandbox, not of the command.
        let done = Atomic<Bool>(false)
        let watcher = Task {
            let exit = await vm.wait()
            if !done.load(ordering: .acquiring) {
                let how = switch exit {
                case .failed(let message): message
                case .stopped: "it was stopped"
                case .guestPanic: "the guest kernel panicked (pvpanic); boot it with --console to see why"
                default: "\(exit)"
                }
                Run.report("error: the VM ended before the command finished: \(how)")
                Glibc.exit(125)
            }
        }
        let status = await Exec.run(arguments, options: options, agent: try vm.agent, timeout: timeout)
        done.store(true, ordering: .releasing)
        await vm.stop()
        _ = await watcher.value
        Exec.finish(status)
    }

    /// Runs the command, copying its output as it comes; the status this process exits with.
    static func run(_ arguments: [String], options: ExecOptions, agent: GuestAgent, timeout: Double?) async -> Int32 {
        do {
            let termination = try await agent.run(arguments, options: options) { event in
                switch event {
                case .stdout(let bytes): writeAll(STDOUT_FILENO, bytes)
                case .stderr(let bytes): writeAll(STDERR_FILENO, bytes)
                default: break
                }
            }
            if case .signaled(_, timedOut: true) = termination {
                Run.report("the command ran longer than --timeout \(timeout ?? 0) s and was killed")
                return 124
            }
            return termination.shellStatus
        } catch {
            Run.report("error: " + error.description)
            if error.code == .execFailed {
                if error.cause == .noSuchFileOrDirectory { return 127 }
                if error.cause == .permissionDenied { return 126 }
            }
            return 125
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let count = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if count < 0 {
                    if errno == EINTR { continue }
                    return // stdout closed: the output is dropped, the command still runs to its end
                }
                offset += count
            }
        }
    }

    static func finish(_ status: Int32) -> Never {
        Glibc.exit(status)
    }
}
