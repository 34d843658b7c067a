import SwiftletMemory

/// Where Swiftlet puts things in an aarch64 guest's physical address space, in the shape of QEMU's and kvmtool's
/// "virt" boards that Linux's arm64 guests expect: devices below 2 GiB, RAM from 2 GiB. Every fixed address lives here.
public enum AArch64Layout {
    /// GIC distributor: 64 KiB on a GICv3 (KVM_VGIC_V3_DIST_SIZE), 4 KiB on a GICv2 (KVM_VGIC_V2_DIST_SIZE).
    public static let gicDistributor = GuestAddress(0x0800_0000)
    public static let gicDistributorSize: UInt64 = 0x1_0000
    public static let gicV2DistributorSize: UInt64 = 0x1000
    /// GICv2 CPU interface (KVM_VGIC_V2_CPU_SIZE).
    public static let gicCpuInterface = GuestAddress(0x0801_0000)
    public static let gicCpuInterfaceSize: UInt64 = 0x2000
    /// GICv3 redistributors: one 128 KiB pair of frames (RD_base, SGI_base) per vCPU (KVM_VGIC_V3_REDIST_SIZE),
    /// from here up to the UART.
    public static let gicRedistributorBase = GuestAddress(0x080a_0000)
    public static let gicRedistributorSize: UInt64 = 0x2_0000
    /// The ns16550a UART (one 4 KiB page, byte registers).
    public static let uart = GuestAddress(0x0900_0000)
    public static let uartSize: UInt64 = 0x1000
    /// The UART's SPI.
    public static let uartSPI: UInt32 = 1
    /// The 16550's input clock as every PC UART has it (1.8432 MHz, 115200 baud with divisor 1).
    public static let uartClock: UInt32 = 1_843_200
    /// virtio-mmio devices: 4 KiB windows from here, SPIs from 16 up.
    public static let virtioMmioBase = GuestAddress(0x0a00_0000)
    public static let virtioMmioSlotSize: UInt64 = 0x1000
    public static let virtioFirstSPI: UInt32 = 16
    public static let virtioMaximumDevices = 32
    /// Interrupt IDs the VGIC is sized for (KVM_DEV_ARM_VGIC_GRP_NR_IRQS): 32 private ones (SGIs and PPIs) and
    /// every SPI up to the last virtio device's, rounded up to a multiple of 32 as the GIC requires.
    public static let interruptCount: UInt32 = 32 + ((virtioFirstSPI + UInt32(virtioMaximumDevices) + 31) / 32) * 32
    /// Guest RAM, one region from 2 GiB, up to the 40-bit IPA space every arm64 KVM offers by default.
    public static let ramStart = GuestAddress(0x8000_0000)
    public static let maximumMemory: UInt64 = (1 << 40) - ramStart.rawValue
    /// How many vCPUs the redistributor region holds, and how many a GICv2 can address.
    public static let maximumCPUsGICv3 = Int((uart.rawValue - gicRedistributorBase.rawValue) / gicRedistributorSize)
    public static let maximumCPUsGICv2 = 8

    /// Architected timer PPIs, as the device tree numbers PPIs (INTID - 16): secure and non-secure physical,
    /// virtual, hypervisor (Documentation/devicetree/bindings/timer/arm,arch_timer.yaml, in that order).
    public static let timerPPIs: [UInt32] = [13, 14, 11, 10]
    /// The GIC maintenance interrupt (PPI 9, INTID 25), as QEMU's virt board wires it.
    public static let gicMaintenancePPI: UInt32 = 9

    /// The MPIDR_EL1 affinity KVM gives vCPU `index` (arch/arm64/kvm/sys_regs.c, reset_mpidr): 16 vCPUs per
    /// Aff0 cluster, so that a GICv3 SGI's 16-bit target list reaches every one of them.
    public static func mpidr(ofVcpu index: Int) -> UInt64 {
        let id = UInt64(index)
        return ((id >> 12) & 0xff) << 16 | ((id >> 4) & 0xff) << 8 | (id & 0xf)
    }
}
