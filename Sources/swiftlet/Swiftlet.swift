import ArgumentParser
import Glibc
import Swiftlet
import SwiftletHost

@main
struct SwiftletCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftlet",
        abstract: "A minimal KVM microVM monitor.",
        discussion: "Run `swiftlet run --help` for booting a Linux guest.",
        subcommands: [Run.self])
}

/// Parses sizes such as 256M, 3.5G, 512MiB, 1GiB; a bare number is MiB.
struct MemorySize: ExpressibleByArgument, CustomStringConvertible {
    var bytes: UInt64

    var description: String { bytes % (1 << 30) == 0 ? "\(bytes >> 30)G" : "\(bytes >> 20)M" }

    init?(argument: String) {
        let text = argument.trimmingCharacters(in: " ").lowercased()
        let units: [(String, Double)] = [("tib", 1_099_511_627_776), ("t", 1_099_511_627_776), ("gib", 1_073_741_824), ("mib", 1_048_576), ("kib", 1024), ("g", 1_073_741_824), ("m", 1_048_576), ("k", 1024)]
        var scale: Double = 1_048_576
        var number = Substring(text)
        for (suffix, value) in units where text.hasSuffix(suffix) {
            scale = value
            number = text.dropLast(suffix.count)
            break
        }
        guard let value = Double(number), value > 0, value * scale < Double(UInt64.max) else { return nil }
        bytes = UInt64(value * scale)
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// `--net tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,mtu=N]`.
struct NetOption: ExpressibleByArgument {
    var configuration = NetworkConfiguration(tap: "", mac: [])

    init?(argument: String) {
        for option in argument.split(separator: ",") {
            let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2 else { return nil }
            switch pair[0] {
            case "tap": configuration.tap = pair[1]
            case "mac":
                let bytes = pair[1].split(separator: ":").compactMap { UInt8($0, radix: 16) }
                guard bytes.count == 6, pair[1].split(separator: ":").count == 6 else { return nil }
                configuration.mac = bytes
            case "mtu":
                guard let mtu = UInt16(pair[1]) else { return nil }
                configuration.mtu = mtu
            default: return nil
            }
        }
        guard !configuration.tap.isEmpty else { return nil }
    }
}

/// `--disk PATH[,readonly=on|off][,id=SERIAL][,event-idx=on|off]`.
struct DiskOption: ExpressibleByArgument {
    var configuration: DiskConfiguration

    init?(argument: String) {
        let parts = argument.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let path = parts.first, !path.isEmpty else { return nil }
        configuration = DiskConfiguration(path: path)
        for option in parts.dropFirst() {
            let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2 else { return nil }
            switch (pair[0], pair[1]) {
            case ("readonly", "on"): configuration.readOnly = true
            case ("readonly", "off"): configuration.readOnly = false
            case ("id", let serial) where serial.utf8.count <= 20: configuration.serial = serial
            case ("event-idx", "on"): configuration.eventIndex = true
            case ("event-idx", "off"): configuration.eventIndex = false
            default: return nil
            }
        }
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var result = Substring(self)
        while result.first == set { result = result.dropFirst() }
        while result.last == set { result = result.dropLast() }
        return String(result)
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

    @Option(name: .long, help: ArgumentHelp("The guest kernel: a bzImage (boot protocol 2.10+) or an ELF vmlinux.", valueName: "path"))
    var kernel: String

    @Option(name: .long, help: ArgumentHelp("An initramfs (cpio archive, optionally compressed) for the guest.", valueName: "path"))
    var initrd: String?

    @Option(name: .long, help: ArgumentHelp("The kernel command line.", valueName: "string"))
    var cmdline: String = MachineConfiguration.defaultCommandLine

    @Option(name: .long, help: "Number of vCPUs (1 to \(MachineConfiguration.maximumCPUs)).")
    var cpus: Int = 1

    @Option(name: .long, help: ArgumentHelp("Guest memory: a size such as 256M, 3.5G or 512MiB; a bare number is MiB. At least 64M.", valueName: "size"))
    var memory: MemorySize = MemorySize(argument: "256M")!

    @Option(name: .long, help: ArgumentHelp("Where the guest console goes: stdio, none, or a file path.", valueName: "stdio|none|file"))
    var console: String = "stdio"

    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp(
        "A virtio-blk disk: a raw image file; repeat for more disks (the guest sees /dev/vda, /dev/vdb, ...). Options after commas: readonly=on, id=SERIAL (up to 20 bytes, what the guest reads as the serial), event-idx=off.",
        valueName: "path[,readonly=on][,id=serial]"))
    var disk: [DiskOption] = []

    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp(
        "A virtio-net NIC on a TAP; repeat for more (eth0, eth1, ... in the guest). Attaches to the TAP if it exists, otherwise creates it and removes it at exit. mac= defaults to 52:54:00:00:00:NN, mtu= to 1500.",
        valueName: "tap=name[,mac=xx:xx:xx:xx:xx:xx][,mtu=n]"))
    var net: [NetOption] = []

    @Flag(name: .long, help: "Print, on stderr at exit, per-device counts of notifications, interrupts and requests.")
    var stats = false

    @Option(name: .long, help: ArgumentHelp("The KVM device.", valueName: "path"))
    var kvm: String = "/dev/kvm"

    @Flag(name: .long, help: "Print, on stderr, how long the guest took from this process's start to its init (the boot-timer port).")
    var printBootTime = false

    @Flag(name: .long, help: "Print, on stderr, the CLOCK_MONOTONIC time of the first KVM_RUN (for start-up benchmarks).")
    var traceStartup = false

    func run() async throws {
        let start = monotonicNanoseconds()
        let consoleSetting: MachineConfiguration.Console = switch console {
        case "stdio": .stdio
        case "none": .none
        default: .file(console)
        }
        var configuration = MachineConfiguration(kernelPath: kernel, initrdPath: initrd, commandLine: cmdline, cpus: cpus,
                                                 memorySize: memory.bytes, console: consoleSetting, kvmPath: kvm)
        configuration.disks = disk.map(\.configuration)
        configuration.networks = net.enumerated().map { index, option in
            var network = option.configuration
            if network.mac.isEmpty { network.mac = [0x52, 0x54, 0, 0, 0, UInt8(truncatingIfNeeded: index + 1)] }
            return network
        }
        if traceStartup {
            configuration.onFirstRun = { now in
                Run.report("first-kvm-run monotonic_ns=\(now) after_main_ns=\(now - start)")
            }
        }
        let vm = MicroVM(configuration)
        let signals = try SignalForwarder { Task { await vm.stop() } }
        defer { signals.cancel() }
        do {
            try await vm.start()
        } catch {
            fail(error.description)
        }
        let exit = await vm.wait()
        if stats {
            for device in vm.statistics() {
                Run.report("stats device=\(device.name) notifications=\(device.notifications) interrupts=\(device.interrupts) "
                    + "requests=\(device.requests) guest_errors=\(device.guestErrors)")
            }
        }
        if printBootTime {
            if let reached = vm.userspaceReachedAt {
                Run.report("guest init reached \((reached - start) / 1_000_000) ms after start")
            } else {
                Run.report("the guest never wrote the boot-timer port")
            }
        }
        switch exit {
        case .reset, .powerOff, .stopped, .tripleFault:
            return
        case .failed(let message):
            fail(message)
        }
    }

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

    init(_ onSignal: @escaping @Sendable () -> Void) throws {
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
                onSignal()
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
