import ArgumentParser
import Glibc
import Swiftlet
import SwiftletConfinement

/// The options that describe a machine, shared by `run` and `exec`.
struct MachineOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The guest kernel: a bzImage (boot protocol 2.10+) or an ELF vmlinux.", valueName: "path"))
    var kernel: String?

    @Option(name: .long, help: ArgumentHelp("An initramfs (cpio archive, optionally compressed) for the guest.", valueName: "path"))
    var initrd: String?

    @Option(name: .long, help: ArgumentHelp("The kernel command line.", valueName: "string"))
    var cmdline: String?

    @Option(name: .long, help: "Number of vCPUs (1 to \(MachineConfiguration.maximumCPUs)).")
    var cpus: Int = 1

    @Option(name: .long, help: ArgumentHelp("Guest memory: a size such as 256M, 3.5G or 512MiB; a bare number is MiB. At least 64M.", valueName: "size"))
    var memory: MemorySize = MemorySize(argument: "256M")!

    @Option(name: .long, help: ArgumentHelp(
        "Where the guest console goes: stdio, none, or a file: PATH or file=PATH[,max-size=SIZE] (default: stdio for "
            + "run, none for exec). A console file stops at max-size (default 64M; a bare number is MiB): the guest's "
            + "further output is dropped and counted (--stats).",
        valueName: "stdio|none|file=PATH[,max-size=SIZE]"))
    var console: String?

    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp(
        "A virtio-blk disk: a raw image file or a block device; repeat for more disks (the guest sees /dev/vda, /dev/vdb, ...). Options after commas: readonly=on, id=SERIAL (up to 20 bytes, what the guest reads as the serial), event-idx=off, packed=off (offer only the split virtqueue layout; by default the packed one is offered too and the guest's driver picks), engine=io_uring (keep up to 128 requests in flight through io_uring instead of doing one at a time; where the kernel refuses io_uring the disk says so and stays synchronous) or engine=sync (the default).",
        valueName: "path[,readonly=on][,id=serial][,event-idx=off][,packed=off][,engine=sync|io_uring]"))
    var disk: [DiskOption] = []

    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp(
        "A virtio-net NIC on a TAP; repeat for more (eth0, eth1, ... in the guest). Attaches to the TAP if it exists, otherwise creates it and removes it at exit. mac= defaults to 52:54:00:00:00:NN, mtu= to 1500. packed=off offers only the split virtqueue layout.",
        valueName: "tap=name[,mac=xx:xx:xx:xx:xx:xx][,mtu=n][,packed=off]"))
    var net: [NetOption] = []

    @Option(name: .long, help: ArgumentHelp(
        "A virtio-vsock device. The host end is a Unix socket (Firecracker's hybrid vsock): connect to it and send `CONNECT <port>\\n` to reach a guest port; a guest connection to host port P reaches a listener at SOCKET_P. cid= defaults to 3. packed=off offers only the split virtqueue layout.",
        valueName: "socket=path[,cid=n][,packed=off]"))
    var vsock: VsockOption?

    @Option(name: .long, help: ArgumentHelp(
        "A virtio-balloon device. size= is the balloon at boot in MiB (default 0); deflate-on-oom=on lets the guest take memory back under pressure; free-page-reporting=on gives the guest's free memory back to the host; stats=SECONDS polls the guest's memory statistics; packed=off offers only the split virtqueue layout. `--balloon on` for the defaults.",
        valueName: "[size=MiB][,deflate-on-oom=on][,free-page-reporting=on][,stats=SECONDS][,packed=off]"))
    var balloon: BalloonOption?

    @Option(name: .long, help: ArgumentHelp(
        "A virtio-rng entropy device (the guest's /dev/hwrng), filled from the host's getrandom. rate= limits it to that many bytes a second (a size such as 64K; a bare number is bytes); packed=off offers only the split virtqueue layout. `--rng on` for no limit.",
        valueName: "on|rate=BYTES[,packed=off]"))
    var rng: RngOption?

    @Option(name: .long, help: ArgumentHelp(
        "How the device thread is scheduled against vCPUs that share its CPU. batch (SCHED_BATCH): a notification does not preempt a running vCPU; the device takes everything the guest queued once it idles, with far fewer exits and switches under load. normal (SCHED_OTHER): the device thread preempts the vCPU at each notification, which answers a lone small request sooner. adaptive (the default): batch while the devices stream (a round moved 16 KiB or more, in requests of 8 KiB or more on average, in the last 10 ms) and batching pays (batched rounds average 64 KiB or more; else normal for 1 s), normal otherwise. All three behave alike where the device thread finds an idle CPU when it wakes.",
        valueName: "adaptive|batch|normal"))
    var deviceScheduling: DeviceThreadScheduling = .adaptive

    @Option(name: .long, help: ArgumentHelp(
        "How an x86_64 guest finds its vCPUs and virtio-mmio devices. Without the option, both ways: ACPI tables (MADT, DSDT with LNRO0005 devices; `poweroff` and `reboot` through the FADT) for a kernel with ACPI, such as a distribution's, and virtio_mmio.device= entries on the command line and an MP table for one without, such as the tiny test kernel. on: ACPI only, for a kernel that has both ACPI and VIRTIO_MMIO_CMDLINE_DEVICES (which would otherwise find each device twice). off: no ACPI tables.",
        valueName: "on|off"))
    var acpi: ACPIOption?

    @Option(name: .long, help: ArgumentHelp("The KVM device.", valueName: "path"))
    var kvm: String = "/dev/kvm"

    @Flag(name: .long, help: ArgumentHelp(
        "Track the pages the guest and its devices write (KVM's dirty log), so that `swiftlet snapshot --diff` saves only the pages written since the last snapshot. Costs the guest some speed: KVM maps its memory with 4 KiB pages and takes a fault on the first write to each page after every snapshot."))
    var trackDirtyPages = false

    @Option(name: .long, help: ArgumentHelp(
        "Seccomp filters, once set-up is done: every thread may make only the system calls its kind needs (docs/SECURITY.md). on: any other call ends the VMM with a message naming the thread and the call (exit status 159). log: other calls go through and the kernel logs each (dmesg, `audit: type=1326`), to find out what a set-up needs. off: no filters. The default is $SWIFTLET_SECCOMP when set, else on.",
        valueName: "on|log|off"))
    var seccomp: SeccompMode?

    /// The machine these options describe; `console` and `commandLine` are the command's defaults. Only `describe`
    /// goes without a kernel (`requireKernel: false`: an aarch64 tree with nothing placed).
    func configuration(console defaultConsole: String, commandLine defaultCommandLine: String,
                       requireKernel: Bool = true) throws -> MachineConfiguration {
        guard let kernel = kernel ?? (requireKernel ? nil : "") else {
            throw ValidationError("--kernel is required: the guest kernel (bzImage or vmlinux) to boot")
        }
        let (consoleSetting, consoleLimit) = try Self.console(console ?? defaultConsole)
        var configuration = MachineConfiguration(kernelPath: kernel, initrdPath: initrd, commandLine: cmdline ?? defaultCommandLine,
                                                 cpus: cpus, memorySize: memory.bytes, console: consoleSetting, kvmPath: kvm)
        if let consoleLimit { configuration.consoleFileMaximumSize = consoleLimit }
        configuration.disks = disk.map(\.configuration)
        configuration.networks = net.enumerated().map { index, option in
            var network = option.configuration
            if network.mac.isEmpty { network.mac = [0x52, 0x54, 0, 0, 0, UInt8(truncatingIfNeeded: index + 1)] }
            return network
        }
        configuration.vsock = vsock?.configuration
        configuration.balloon = balloon?.configuration
        configuration.entropy = rng?.configuration
        configuration.deviceScheduling = deviceScheduling
        configuration.trackDirtyPages = trackDirtyPages
        if let acpi { configuration.discovery = acpi.discovery }
        if let seccomp { configuration.seccomp = seccomp } else if let value = getenv("SWIFTLET_SECCOMP").map({ String(cString: $0) }) {
            guard let mode = SeccompMode(rawValue: value) else {
                throw ValidationError("SWIFTLET_SECCOMP=\(value) is not one of on, log, off")
            }
            configuration.seccomp = mode
        }
        configuration.confineProcess = true
        return configuration
    }
}

/// `--vsock socket=PATH[,cid=N]`.
struct VsockOption: ExpressibleByArgument {
    var configuration = SocketConfiguration(socketPath: "")

    init?(argument: String) {
        for option in argument.split(separator: ",") {
            let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2 else { return nil }
            switch pair[0] {
            case "socket": configuration.socketPath = pair[1]
            case "cid":
                guard let cid = UInt64(pair[1]), cid >= 3, cid < UInt64(UInt32.max) else { return nil }
                configuration.guestCID = cid
            case "packed":
                guard let packed = onOff(pair[1]) else { return nil }
                configuration.packedRing = packed
            default: return nil
            }
        }
        guard !configuration.socketPath.isEmpty else { return nil }
    }
}

extension MachineOptions {
    /// `--console`: stdio, none, a bare path, or file=PATH[,max-size=SIZE] (the path may itself hold commas).
    static func console(_ value: String) throws -> (MachineConfiguration.Console, UInt64?) {
        switch value {
        case "stdio": return (.stdio, nil)
        case "none": return (.none, nil)
        default: break
        }
        guard value.hasPrefix("file=") else { return (.file(value), nil) }
        var path = Substring(value.dropFirst("file=".count))
        var limit: UInt64?
        let marker = ",max-size="
        if let start = path.indices.last(where: { path[$0...].hasPrefix(marker) }) {
            let size = String(path[path.index(start, offsetBy: marker.count)...])
            guard let parsed = MemorySize(argument: size) else {
                throw ValidationError("--console \(value): max-size=\(size) is not a size (such as 64M, 1G, 512K)")
            }
            limit = parsed.bytes
            path = path[..<start]
        }
        guard !path.isEmpty else { throw ValidationError("--console \(value): file= needs a path") }
        return (.file(String(path)), limit)
    }
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
            case "packed":
                guard let packed = onOff(pair[1]) else { return nil }
                configuration.packedRing = packed
            default: return nil
            }
        }
        guard !configuration.tap.isEmpty else { return nil }
    }
}

/// `--disk PATH[,readonly=on|off][,id=SERIAL][,event-idx=on|off][,packed=on|off][,engine=sync|io_uring]`.
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
            case ("packed", "on"): configuration.packedRing = true
            case ("packed", "off"): configuration.packedRing = false
            case ("engine", let name):
                guard let engine = DiskEngine(rawValue: name) else { return nil }
                configuration.engine = engine
            default: return nil
            }
        }
    }
}

/// "on" or "off", as device options spell a switch.
func onOff(_ text: String) -> Bool? {
    switch text {
    case "on": true
    case "off": false
    default: nil
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


extension DeviceThreadScheduling: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument) }
}

extension SeccompMode: ExpressibleByArgument {}

/// `--rng on|rate=BYTES`.
struct RngOption: ExpressibleByArgument {
    var configuration = EntropyConfiguration()

    init?(argument: String) {
        for option in argument.split(separator: ",").map(String.init) {
            if option == "on" { continue }
            if option.hasPrefix("packed=") {
                guard let packed = onOff(String(option.dropFirst("packed=".count))) else { return nil }
                configuration.packedRing = packed
                continue
            }
            guard option.hasPrefix("rate=") else { return nil }
            let value = String(option.dropFirst("rate=".count))
            if let bytes = UInt64(value), bytes > 0 {
                configuration.bytesPerSecond = bytes
            } else if let size = MemorySize(argument: value), !value.allSatisfy(\.isNumber) {
                configuration.bytesPerSecond = size.bytes
            } else {
                return nil
            }
        }
    }
}

/// `--acpi on|off` (and `both`, what no option means).
struct ACPIOption: ExpressibleByArgument {
    var discovery: DeviceDiscovery

    init?(argument: String) {
        switch argument {
        case "on": discovery = .acpi
        case "off": discovery = .legacy
        case "both": discovery = .both
        default: return nil
        }
    }
}
