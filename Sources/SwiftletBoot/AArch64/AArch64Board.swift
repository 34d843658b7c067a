import SwiftletHost
import SwiftletMemory

/// The aarch64 board: the device tree a Linux arm64 guest boots with, derived from the machine description.
///
/// The tree has the shape of QEMU's "virt" board (compatible `linux,dummy-virt`): `/memory`, `/cpus` started by
/// PSCI 0.2 over HVC (KVM implements it), a GICv3 (or GICv2) as the interrupt parent, the architected timer, an
/// ns16550a UART as `stdout-path`, one `virtio,mmio` node per device and `/chosen` with the command line, the initrd
/// and seeds for the guest's RNG and KASLR.
public struct AArch64Board: Sendable {
    public enum InterruptController: String, Sendable, CaseIterable {
        case gicV3 = "gicv3", gicV2 = "gicv2"
    }

    public var machine: MachineDescription
    public var interruptController: InterruptController
    /// MPIDR_EL1 of each vCPU; by default what KVM assigns (`AArch64Layout.mpidr`), on a real host read back from it.
    public var mpidrs: [UInt64]
    /// Bytes for `/chosen/rng-seed` (the guest credits them to its RNG) and the `kaslr-seed` value. Fresh for each
    /// boot (getrandom); tests pass fixed ones.
    public var rngSeed: [UInt8]
    public var kaslrSeed: UInt64

    static let gicPhandle: UInt32 = 1
    // Interrupt specifier cells of arm,gic and arm,gic-v3: type, number, flags
    // (include/dt-bindings/interrupt-controller/arm-gic.h and irq.h).
    static let gicSPI: UInt32 = 0
    static let gicPPI: UInt32 = 1
    static let irqEdgeRising: UInt32 = 1
    static let irqLevelHigh: UInt32 = 4

    public init(machine: MachineDescription, interruptController: InterruptController = .gicV3, mpidrs: [UInt64]? = nil,
                rngSeed: [UInt8], kaslrSeed: UInt64) {
        self.machine = machine
        self.interruptController = interruptController
        self.mpidrs = mpidrs ?? (0..<machine.cpus).map(AArch64Layout.mpidr(ofVcpu:))
        self.rngSeed = rngSeed
        self.kaslrSeed = kaslrSeed
    }

    /// The node path of the UART, which `/chosen/stdout-path` names.
    public static var uartPath: String { "/serial@\(hex(AArch64Layout.uart.rawValue))" }

    /// Checks what the tree describes against what the board can hold.
    public func validate() throws(SwiftletError) {
        guard machine.architecture == .aarch64 else {
            throw SwiftletError(.invalidConfiguration, "the aarch64 board cannot describe a \(machine.architecture.rawValue) machine")
        }
        let limit = interruptController == .gicV3 ? AArch64Layout.maximumCPUsGICv3 : AArch64Layout.maximumCPUsGICv2
        guard machine.cpus >= 1, machine.cpus <= limit else {
            throw SwiftletError(.invalidConfiguration, "--cpus \(machine.cpus) is out of range for a \(interruptController == .gicV3 ? "GICv3" : "GICv2") (1 to \(limit))")
        }
        guard mpidrs.count == machine.cpus else {
            throw SwiftletError(.invalidConfiguration, "\(mpidrs.count) MPIDRs for \(machine.cpus) vCPUs")
        }
        guard !machine.memory.isEmpty else { throw SwiftletError(.invalidConfiguration, "the machine has no RAM") }
        for device in machine.virtioDevices {
            guard device.interrupt >= AArch64Layout.virtioFirstSPI, device.interrupt + 32 < AArch64Layout.interruptCount else {
                throw SwiftletError(.invalidConfiguration, "virtio device \(device.name)'s SPI \(device.interrupt) is outside the VGIC's \(AArch64Layout.interruptCount) interrupts")
            }
        }
    }

    /// The device tree blob, checked by `fdt_check_full` and at most 2 MiB.
    public func deviceTree() throws(SwiftletError) -> [UInt8] {
        try validate()
        do {
            return try build()
        } catch {
            throw SwiftletError(.invalidConfiguration, "cannot build the aarch64 device tree: \(error)")
        }
    }

    private func build() throws(FDTError) -> [UInt8] {
        var fdt = try FDTWriter()
        try fdt.beginNode("")
        try fdt.property("compatible", string: "linux,dummy-virt")
        try fdt.property("model", string: "Swiftlet microVM")
        try fdt.property("#address-cells", u32: 2)
        try fdt.property("#size-cells", u32: 2)
        try fdt.property("interrupt-parent", u32: AArch64Board.gicPhandle)

        try fdt.beginNode("chosen")
        try fdt.property("bootargs", string: machine.commandLine)
        try fdt.property("stdout-path", string: AArch64Board.uartPath)
        if let initrd = machine.initrd {
            // Start inclusive, end exclusive (dtschema's chosen.yaml); 64-bit values, which Linux reads whatever
            // their cell count.
            try fdt.property("linux,initrd-start", u64: initrd.start.rawValue)
            try fdt.property("linux,initrd-end", u64: initrd.start.rawValue + initrd.size)
        }
        try fdt.property("rng-seed", bytes: rngSeed)
        try fdt.property("kaslr-seed", u64: kaslrSeed)
        try fdt.endNode()

        for region in machine.memory {
            try fdt.beginNode("memory@\(AArch64Board.hex(region.start.rawValue))")
            try fdt.property("device_type", string: "memory")
            try fdt.property("reg", u64Cells: [region.start.rawValue, region.size])
            try fdt.endNode()
        }

        try fdt.beginNode("cpus")
        try fdt.property("#address-cells", u32: 1)
        try fdt.property("#size-cells", u32: 0)
        for mpidr in mpidrs {
            // reg is the MPIDR's affinity fields Aff2..Aff0 (Aff3 is 0 below 2^24 vCPUs, so one cell suffices).
            let affinity = UInt32(truncatingIfNeeded: mpidr & 0xff_ffff)
            try fdt.beginNode("cpu@\(AArch64Board.hex(UInt64(affinity)))")
            try fdt.property("device_type", string: "cpu")
            try fdt.property("compatible", string: "arm,armv8")
            try fdt.property("enable-method", string: "psci")
            try fdt.property("reg", u32: affinity)
            try fdt.endNode()
        }
        try fdt.endNode()

        try fdt.beginNode("psci")
        try fdt.property("compatible", string: "arm,psci-0.2")
        try fdt.property("method", string: "hvc")
        try fdt.endNode()

        try fdt.beginNode("interrupt-controller@\(AArch64Board.hex(AArch64Layout.gicDistributor.rawValue))")
        switch interruptController {
        case .gicV3:
            try fdt.property("compatible", string: "arm,gic-v3")
            try fdt.property("reg", u64Cells: [
                AArch64Layout.gicDistributor.rawValue, AArch64Layout.gicDistributorSize,
                AArch64Layout.gicRedistributorBase.rawValue, AArch64Layout.gicRedistributorSize * UInt64(machine.cpus),
            ])
        case .gicV2:
            try fdt.property("compatible", string: "arm,cortex-a15-gic")
            try fdt.property("reg", u64Cells: [
                AArch64Layout.gicDistributor.rawValue, AArch64Layout.gicV2DistributorSize,
                AArch64Layout.gicCpuInterface.rawValue, AArch64Layout.gicCpuInterfaceSize,
            ])
        }
        try fdt.property("#interrupt-cells", u32: 3)
        // An interrupt-map parent needs #address-cells (dtc's interrupt_provider check); the GIC has no children and
        // takes no address in a specifier.
        try fdt.property("#address-cells", u32: 0)
        try fdt.empty("interrupt-controller")
        try fdt.property("interrupts", cells: [AArch64Board.gicPPI, AArch64Layout.gicMaintenancePPI, ppiFlags])
        try fdt.phandle(AArch64Board.gicPhandle)
        try fdt.endNode()

        try fdt.beginNode("timer")
        try fdt.property("compatible", string: "arm,armv8-timer")
        try fdt.property("interrupts", cells: AArch64Layout.timerPPIs.flatMap { [AArch64Board.gicPPI, $0, ppiFlags] })
        // The counter keeps running in every power state a KVM guest sees.
        try fdt.empty("always-on")
        try fdt.endNode()

        try fdt.beginNode("serial@\(AArch64Board.hex(AArch64Layout.uart.rawValue))")
        try fdt.property("compatible", string: "ns16550a")
        try fdt.property("reg", u64Cells: [AArch64Layout.uart.rawValue, AArch64Layout.uartSize])
        try fdt.property("interrupts", cells: [AArch64Board.gicSPI, AArch64Layout.uartSPI, AArch64Board.irqLevelHigh])
        try fdt.property("clock-frequency", u32: AArch64Layout.uartClock)
        try fdt.endNode()

        for device in machine.virtioDevices {
            try fdt.beginNode("virtio_mmio@\(AArch64Board.hex(device.window.start.rawValue))")
            try fdt.property("compatible", string: "virtio,mmio")
            try fdt.property("reg", u64Cells: [device.window.start.rawValue, device.window.size])
            try fdt.property("interrupts", cells: [AArch64Board.gicSPI, device.interrupt, AArch64Board.irqEdgeRising])
            // Guest RAM is ordinary cacheable memory to the VMM: no cache maintenance is needed around DMA.
            try fdt.empty("dma-coherent")
            try fdt.endNode()
        }

        try fdt.endNode()
        return try fdt.finish()
    }

    /// PPI flags: level-high, and on a GICv2 the mask of CPUs the PPI is wired to (bits 8-15, arm,gic.yaml).
    private var ppiFlags: UInt32 {
        switch interruptController {
        case .gicV3: AArch64Board.irqLevelHigh
        case .gicV2: AArch64Board.irqLevelHigh | (UInt32((1 << min(machine.cpus, 8)) - 1) << 8)
        }
    }

    static func hex(_ value: UInt64) -> String { String(value, radix: 16) }
}
