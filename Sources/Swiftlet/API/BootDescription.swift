import SwiftletBoot
import SwiftletHost
import SwiftletMemory

public typealias GuestArchitecture = SwiftletBoot.GuestArchitecture
/// The aarch64 board's interrupt controller: a GICv3, or a GICv2 where the host has no GICv3.
public typealias InterruptControllerVersion = AArch64Board.InterruptController

/// What a guest would be handed at boot, without starting it: the aarch64 device tree, or the x86_64 boot
/// structures, and a readable account of both. `swiftlet describe` prints it.
public struct BootDescription: Sendable {
    public let architecture: GuestArchitecture
    /// The flattened device tree (aarch64), checked by libfdt's `fdt_check_full`; nil for x86_64.
    public let deviceTree: [UInt8]?
    /// One fact per line: layout, memory, vCPUs, devices, where the kernel, initrd and device tree go.
    public let report: String

    /// Describes the machine `configuration` makes on `architecture`. The kernel and initrd are read only for their
    /// headers and sizes. `seed` makes the device tree's rng-seed and kaslr-seed reproducible (for tests); without it
    /// they are random, as at boot.
    public init(_ configuration: MachineConfiguration, architecture: GuestArchitecture,
                interruptController: InterruptControllerVersion = .gicV3, seed: UInt64? = nil) throws(SwiftletError) {
        guard configuration.cpus >= 1, configuration.cpus <= MachineConfiguration.maximumCPUs else {
            throw SwiftletError(.invalidConfiguration, "--cpus \(configuration.cpus) is out of range (1 to \(MachineConfiguration.maximumCPUs))")
        }
        guard configuration.memorySize >= MachineConfiguration.minimumMemory, configuration.memorySize % (2 << 20) == 0 else {
            throw SwiftletError(.invalidConfiguration, "--memory must be at least \(MachineConfiguration.minimumMemory >> 20) MiB and a multiple of 2 MiB")
        }
        self.architecture = architecture
        var machine = try configuration.machineDescription(for: architecture)
        var lines = ["architecture \(architecture.rawValue)"] + BootDescription.backendLines(configuration)
        switch architecture {
        case .x86_64:
            deviceTree = nil
            // Without a kernel the initrd's place is unknown (it depends on the kernel's initrd_addr_max).
            let unplacedInitrd = configuration.kernelPath.isEmpty ? configuration.initrdPath : nil
            lines += BootDescription.x86Report(machine, initrdSize: try unplacedInitrd.map { path throws(SwiftletError) in
                try FileBootSource(path: path, what: "initrd").size
            })
            if !configuration.kernelPath.isEmpty {
                // The boot structures as `run` writes them, into guest memory of this process (reserved, not
                // committed: only what the kernel and initrd occupy is touched), then read back.
                let memory = try GuestMemory(layout: machine.memory.map { ($0.start, $0.size) })
                let (kernel, _) = try Machine.loadGuest(configuration, kernel: FileBootSource(path: configuration.kernelPath, what: "kernel"),
                                                         initrd: configuration.initrdPath.map { path throws(SwiftletError) in try FileBootSource(path: path, what: "initrd") },
                                                         description: machine, into: memory)
                lines.append("kernel \(kernel.format.rawValue) \(BootDescription.hex(kernel.start))-\(BootDescription.hex(kernel.end.rawValue - 1)) entry \(BootDescription.hex(kernel.entry))")
                lines += try ZeroPage.describe(in: memory)
            }
        case .aarch64:
            var plan: AArch64BootPlan?
            let ram = machine.memory[0]
            if !configuration.kernelPath.isEmpty {
                let header = try AArch64ImageLoader.header(of: FileBootSource(path: configuration.kernelPath, what: "kernel"))
                let initrdSize = try configuration.initrdPath.map { path throws(SwiftletError) in
                    UInt64(try FileBootSource(path: path, what: "initrd").size)
                }
                plan = try AArch64BootPlan(header: header, ram: ram, initrdSize: initrdSize)
                machine.initrd = plan?.initrd
            } else if configuration.initrdPath != nil {
                throw SwiftletError(.invalidConfiguration, "where the initrd goes depends on the kernel's size: pass --kernel with --initrd")
            }
            let seeds = try BootDescription.seeds(seed)
            let board = AArch64Board(machine: machine, interruptController: interruptController, rngSeed: seeds.rng, kaslrSeed: seeds.kaslr)
            let tree = try board.deviceTree()
            try plan?.checkDeviceTree(size: tree.count, ram: ram)
            deviceTree = tree
            lines += BootDescription.aarch64Report(board, plan: plan, treeSize: tree.count)
        }
        report = lines.joined(separator: "\n") + "\n"
    }

    /// 64 bytes for rng-seed and a kaslr-seed: random, or a fixed function of `seed` (splitmix64).
    static func seeds(_ seed: UInt64?) throws(SwiftletError) -> (rng: [UInt8], kaslr: UInt64) {
        var words = [UInt64](repeating: 0, count: 9)
        if var state = seed {
            for index in words.indices {
                state &+= 0x9e37_79b9_7f4a_7c15
                var mixed = state
                mixed = (mixed ^ (mixed >> 30)) &* 0xbf58_476d_1ce4_e5b9
                mixed = (mixed ^ (mixed >> 27)) &* 0x94d0_49bb_1331_11eb
                words[index] = mixed ^ (mixed >> 31)
            }
        } else {
            let outcome = words.withUnsafeMutableBytes { buffer in Result { () throws(SwiftletError) in try fillRandom(buffer) } }
            try outcome.get()
        }
        let rng = words.prefix(8).flatMap { word in (0..<8).map { UInt8(truncatingIfNeeded: word >> (8 * $0)) } }
        return (rng, words[8])
    }

    static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
    static func hex(_ address: GuestAddress) -> String { hex(address.rawValue) }

    /// What each virtio device is attached to on the host, in device order (the names of `deviceLines`).
    static func backendLines(_ configuration: MachineConfiguration) -> [String] {
        func onOff(_ flag: Bool) -> String { flag ? "on" : "off" }
        var lines = configuration.disks.enumerated().map { index, disk in
            "backend blk\(index) \(disk.path) readonly=\(onOff(disk.readOnly)) serial=\(disk.serial ?? "-") event-idx=\(onOff(disk.eventIndex)) engine=\(disk.engine.rawValue) packed=\(onOff(disk.packedRing))"
        }
        lines += configuration.networks.enumerated().map { index, network in
            let mac = network.mac.map { byte in (byte < 16 ? "0" : "") + String(byte, radix: 16) }.joined(separator: ":")
            return "backend net\(index) tap=\(network.tap) mac=\(mac) mtu=\(network.mtu.map(String.init) ?? "default") packed=\(onOff(network.packedRing))"
        }
        if let vsock = configuration.vsock { lines.append("backend vsock0 cid=\(vsock.guestCID) socket=\(vsock.socketPath) packed=\(onOff(vsock.packedRing))") }
        if let balloon = configuration.balloon {
            lines.append("backend balloon0 target=\(balloon.targetSize >> 20)MiB deflate-on-oom=\(onOff(balloon.deflateOnOOM)) "
                + "free-page-reporting=\(onOff(balloon.freePageReporting)) statistics=\(balloon.statisticsInterval)s packed=\(onOff(balloon.packedRing))")
        }
        if let entropy = configuration.entropy {
            lines.append("backend rng0 rate=\(entropy.bytesPerSecond.map { "\($0)B/s" } ?? "unlimited") packed=\(onOff(entropy.packedRing))")
        }
        return lines
    }

    static func deviceLines(_ machine: MachineDescription, interrupt: String) -> [String] {
        machine.virtioDevices.map { device in
            "virtio-mmio \(device.name) \(hex(device.window.start))-\(hex(device.window.end.rawValue - 1)) \(interrupt) \(device.interrupt)"
        }
    }

    static func x86Report(_ machine: MachineDescription, initrdSize: Int?) -> [String] {
        var lines = machine.memory.map { "ram \(hex($0.start))-\(hex($0.end.rawValue - 1)) (\($0.size >> 20) MiB)" }
        lines.append("vcpus \(machine.cpus) (APIC IDs 0-\(machine.cpus - 1), vCPU 0 the bootstrap processor)")
        lines += deviceLines(machine, interrupt: "ioapic-pin")
        lines.append("command-line \(machine.x86CommandLine)")
        lines.append("zero-page \(hex(X86Layout.zeroPage)) command-line-at \(hex(X86Layout.commandLine)) gdt \(hex(X86Layout.gdt)) page-tables \(hex(X86Layout.pml4))")
        for entry in machine.e820 {
            let kind = switch entry.kind { case .ram: "ram"; case .reserved: "reserved"; case .acpi: "acpi" }
            lines.append("e820 \(hex(entry.start))-\(hex(entry.start.rawValue + entry.size - 1)) \(kind)")
        }
        if machine.hasMPTable {
            lines.append("mptable floating-pointer \(hex(X86Layout.mpFloatingPointer)) table \(hex(X86Layout.mpConfigurationTable))")
            if let (_, table) = try? MPTable.build(cpus: machine.cpus, tableAddress: X86Layout.mpConfigurationTable) {
                lines += MPTable.describe(table)
            }
        }
        if let tables = try? machine.acpiTables() {
            lines.append("acpi " + tables.tables.map { "\($0.signature.lowercased()) \(hex($0.address)) (\($0.bytes.count) bytes)" }.joined(separator: ", "))
            let devices = ["COM1", "PS2K(i8042 keyboard, irq 1)", "PEVT(pvpanic port \(hex(UInt64(X86Layout.pvpanicPort))))"]
                + machine.virtioDevices.indices.map { ACPITables.virtioDeviceName($0) }
            lines.append("acpi dsdt " + devices.joined(separator: " ")
                + "; fadt hardware-reduced, sleep control port \(hex(UInt64(X86Layout.acpiSleepControlPort))), reset port \(hex(UInt64(X86Layout.acpiResetPort)))")
        }
        if let initrdSize {
            lines.append("initrd \(initrdSize) bytes, at the top of RAM below 3 GiB and the kernel's initrd_addr_max (placed when the kernel is loaded)")
        }
        return lines
    }

    static func aarch64Report(_ board: AArch64Board, plan: AArch64BootPlan?, treeSize: Int) -> [String] {
        let machine = board.machine
        var lines = machine.memory.map { "ram \(hex($0.start))-\(hex($0.end.rawValue - 1)) (\($0.size >> 20) MiB)" }
        lines.append("vcpus \(machine.cpus) psci-0.2 hvc, mpidr " + board.mpidrs.map { hex($0) }.joined(separator: " "))
        switch board.interruptController {
        case .gicV3:
            lines.append("gic v3 distributor \(hex(AArch64Layout.gicDistributor)) redistributors \(hex(AArch64Layout.gicRedistributorBase)) (\(machine.cpus) x 128 KiB) interrupts \(AArch64Layout.interruptCount)")
        case .gicV2:
            lines.append("gic v2 distributor \(hex(AArch64Layout.gicDistributor)) cpu-interface \(hex(AArch64Layout.gicCpuInterface)) interrupts \(AArch64Layout.interruptCount)")
        }
        lines.append("uart ns16550a \(hex(AArch64Layout.uart)) spi \(AArch64Layout.uartSPI)")
        lines += deviceLines(machine, interrupt: "spi")
        lines.append("bootargs \(machine.commandLine)")
        if let plan {
            lines.append("kernel \(hex(plan.kernel))-\(hex(plan.kernelEnd.rawValue - 1))")
            if let initrd = plan.initrd {
                lines.append("initrd \(hex(initrd.start))-\(hex(initrd.start.rawValue + initrd.size - 1))")
            }
            lines.append("device-tree \(hex(plan.deviceTree)) (\(treeSize) bytes)")
            lines.append("entry pc=\(hex(plan.kernel)) x0=\(hex(plan.deviceTree)) pstate=0x3c5")
        } else {
            lines.append("device-tree \(treeSize) bytes (no --kernel: kernel, initrd and device-tree addresses not placed)")
        }
        return lines
    }
}

extension MachineConfiguration {
    /// The virtio devices in the order they take MMIO slots: disks, NICs, vsock, the balloon, then the entropy device.
    var virtioDeviceNames: [String] {
        disks.indices.map { "blk\($0)" } + networks.indices.map { "net\($0)" } + (vsock == nil ? [] : ["vsock0"])
            + (balloon == nil ? [] : ["balloon0"]) + (entropy == nil ? [] : ["rng0"])
    }

    /// The machine this configuration makes on `architecture`, every boot structure's single source.
    func machineDescription(for architecture: GuestArchitecture) throws(SwiftletError) -> MachineDescription {
        var machine = try MachineDescription.layout(architecture, memorySize: memorySize, cpus: cpus, virtioDeviceNames: virtioDeviceNames,
                                                    commandLine: commandLine)
        machine.discovery = discovery
        return machine
    }
}
