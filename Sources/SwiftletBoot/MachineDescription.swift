import SwiftletHost
import SwiftletMemory

/// The guest architectures Swiftlet describes machines for. The host's architecture picks one at run time.
public enum GuestArchitecture: String, CaseIterable, Sendable {
    case x86_64, aarch64
}

/// One machine, described once: its RAM, vCPUs, virtio-mmio devices (window and interrupt), command line and
/// initrd. Every boot structure is derived from it (the x86_64 command-line `virtio_mmio.device=` entries, MP table,
/// ACPI tables and e820 map; the aarch64 device tree), so they cannot disagree about where a device is.
public struct MachineDescription: Sendable, Equatable {
    public struct MemoryRegion: Sendable, Equatable {
        public var start: GuestAddress
        public var size: UInt64
        public init(start: GuestAddress, size: UInt64) {
            self.start = start
            self.size = size
        }
        public var end: GuestAddress { GuestAddress(start.rawValue + size) }
    }

    /// A virtio-mmio device: its register window and its interrupt line (an IOAPIC pin on x86_64, an SPI number
    /// on aarch64, counted from 0 as the device tree's `interrupts` cell does).
    public struct VirtioDevice: Sendable, Equatable {
        public var name: String
        public var window: MemoryRegion
        public var interrupt: UInt32
        public init(name: String, window: MemoryRegion, interrupt: UInt32) {
            self.name = name
            self.window = window
            self.interrupt = interrupt
        }
    }

    public struct Initrd: Sendable, Equatable {
        public var start: GuestAddress
        public var size: UInt64
        public init(start: GuestAddress, size: UInt64) {
            self.start = start
            self.size = size
        }
    }

    /// How an x86_64 guest learns of its vCPUs and virtio-mmio devices (ACPI tables, the command line and MP table).
    public enum Discovery: String, CaseIterable, Sendable {
        /// Both: ACPI tables (MADT, DSDT) for a kernel with ACPI, and `virtio_mmio.device=` entries and the MP table
        /// for one without. Each of the kernels Swiftlet is tested with reads one of them: the tiny kernel has no
        /// ACPI; Debian's cloud kernel has no VIRTIO_MMIO_CMDLINE_DEVICES (and ignores the MP table when the MADT is
        /// there). A kernel with both ACPI and VIRTIO_MMIO_CMDLINE_DEVICES would find each device twice: use `.acpi`.
        case both
        /// ACPI tables only.
        case acpi
        /// The command line and MP table only, no ACPI tables (what Swiftlet did before it had them).
        case legacy
    }

    public var architecture: GuestArchitecture
    public var memory: [MemoryRegion]
    public var cpus: Int
    public var virtioDevices: [VirtioDevice]
    /// The command line as configured, before anything derived from the devices is added.
    public var commandLine: String
    /// Where the initrd lies in guest memory, once a loader has placed it.
    public var initrd: Initrd?
    /// x86_64: which descriptions of the vCPUs and devices the guest gets.
    public var discovery: Discovery = .both

    public init(architecture: GuestArchitecture, memory: [MemoryRegion], cpus: Int, virtioDevices: [VirtioDevice],
                commandLine: String, initrd: Initrd? = nil) {
        self.architecture = architecture
        self.memory = memory
        self.cpus = cpus
        self.virtioDevices = virtioDevices
        self.commandLine = commandLine
        self.initrd = initrd
    }

    /// Lays out a machine of `memorySize` bytes, `cpus` vCPUs and one virtio-mmio device per name, in order, the
    /// way `architecture`'s layout places them.
    public static func layout(_ architecture: GuestArchitecture, memorySize: UInt64, cpus: Int, virtioDeviceNames: [String],
                              commandLine: String) throws(SwiftletError) -> MachineDescription {
        let memory: [MemoryRegion]
        let maximumDevices: Int
        let slot: (Int) -> VirtioDevice
        switch architecture {
        case .x86_64:
            memory = X86Layout.ramRegions(size: memorySize).map { MemoryRegion(start: $0.start, size: $0.size) }
            maximumDevices = X86Layout.virtioMaximumDevices
            slot = { index in
                VirtioDevice(name: virtioDeviceNames[index],
                             window: MemoryRegion(start: GuestAddress(X86Layout.virtioMmioBase.rawValue + UInt64(index) * X86Layout.virtioMmioSlotSize),
                                                  size: X86Layout.virtioMmioSlotSize),
                             interrupt: X86Layout.virtioFirstIRQ + UInt32(index))
            }
        case .aarch64:
            guard memorySize <= AArch64Layout.maximumMemory else {
                throw SwiftletError(.invalidConfiguration, "--memory \(memorySize >> 20) MiB is more than the aarch64 board's \(AArch64Layout.maximumMemory >> 30) GiB of RAM space")
            }
            memory = [MemoryRegion(start: AArch64Layout.ramStart, size: memorySize)]
            maximumDevices = AArch64Layout.virtioMaximumDevices
            slot = { index in
                VirtioDevice(name: virtioDeviceNames[index],
                             window: MemoryRegion(start: GuestAddress(AArch64Layout.virtioMmioBase.rawValue + UInt64(index) * AArch64Layout.virtioMmioSlotSize),
                                                  size: AArch64Layout.virtioMmioSlotSize),
                             interrupt: AArch64Layout.virtioFirstSPI + UInt32(index))
            }
        }
        guard virtioDeviceNames.count <= maximumDevices else {
            throw SwiftletError(.invalidConfiguration, "\(virtioDeviceNames.count) virtio devices are more than the \(maximumDevices) interrupt lines Swiftlet has for them on \(architecture.rawValue)")
        }
        return MachineDescription(architecture: architecture, memory: memory, cpus: cpus,
                                  virtioDevices: virtioDeviceNames.indices.map(slot), commandLine: commandLine)
    }

    /// The x86_64 kernel command line: the configured one, plus one `virtio_mmio.device=SIZE@ADDRESS:IRQ` per device,
    /// which is how a kernel without ACPI or a device tree finds virtio-mmio devices (drivers/virtio/virtio_mmio.c).
    public var x86CommandLine: String {
        var line = commandLine
        for device in virtioDevices where discovery != .acpi {
            line += " virtio_mmio.device=\(device.window.size >> 10)K@0x\(String(device.window.start.rawValue, radix: 16)):\(device.interrupt)"
        }
        return line
    }

    /// The x86_64 e820 map: low RAM below the EBDA, the EBDA reserved, then every RAM region from 1 MiB up.
    public var e820: [E820Entry] { E820Entry.map(ram: memory.map { ($0.start, $0.end) }, acpi: discovery != .legacy) }

    /// Whether the guest gets an MP table (not with `.acpi`).
    public var hasMPTable: Bool { discovery != .acpi }

    /// The ACPI tables, or nil with `.legacy`.
    public func acpiTables() throws(SwiftletError) -> ACPITables? {
        discovery == .legacy ? nil : try ACPITables(self)
    }
}

extension GuestArchitecture {
    /// The architecture of this host, which is the one its KVM runs guests of; nil on any other host.
    public static var host: GuestArchitecture? { GuestArchitecture(rawValue: hostMachineName()) }
}
