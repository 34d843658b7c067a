import SwiftletMemory

/// Where Swiftlet puts things in an x86_64 guest's physical address space. Every fixed address lives here.
public enum X86Layout {
    /// The boot GDT (four 8-byte entries) and an empty IDT right after it.
    public static let gdt = GuestAddress(0x500)
    public static let idt = GuestAddress(0x520)
    /// The zero page (struct boot_params), handed to the kernel in RSI.
    public static let zeroPage = GuestAddress(0x7000)
    /// The boot stack grows down from here.
    public static let bootStack = GuestAddress(0x8ff0)
    /// PML4, PDPT and PD of the boot identity map (the first GiB, 2 MiB pages).
    public static let pml4 = GuestAddress(0x9000)
    public static let pdpt = GuestAddress(0xa000)
    public static let pageDirectory = GuestAddress(0xb000)
    /// The kernel command line.
    public static let commandLine = GuestAddress(0x20000)
    /// The command line may not reach past the end of its slot below the EBDA.
    public static let commandLineLimit: UInt64 = 0x10000
    /// The Extended BIOS Data Area, reserved in the e820 map: it holds the MP configuration table at its start and
    /// the MP floating pointer in its last KiB, where Linux's smp_scan_config looks (639-640 KiB). Linux reserves
    /// 0x9f000-1 MiB itself when the BIOS data area says nothing (reserve_bios_regions).
    public static let ebda = GuestAddress(0x9f000)
    public static let mpConfigurationTable = GuestAddress(0x9f000)
    public static let mpFloatingPointer = GuestAddress(0x9fc00)
    public static let ebdaEnd = GuestAddress(0xa0000)
    /// The ACPI tables: the RSDP first, where a kernel's scan of the BIOS area (0xE0000-0xFFFFF) finds it, and the
    /// others after it, up to the VM generation ID's page (ACPI data in the e820 map when they are written).
    public static let acpiTables = GuestAddress(0xe0000)
    public static let acpiTablesEnd = vmGenerationID
    /// The VM generation ID (16 bytes, Linux's vmgenid driver reads it where the DSDT's VGEN.ADDR points): a new
    /// random one at boot and after every restore. Its page, up to 1 MiB, is reserved in the e820 map with ACPI.
    public static let vmGenerationID = GuestAddress(0xff000)
    public static let vmGenerationIDSize = 16
    /// The reset vector, F000:FFF0 in real mode: where a CPU starts after a reset, and where Linux jumps to reboot
    /// "through the BIOS" (`reboot=b`, and its last resort: on a hardware-reduced ACPI machine without EFI its
    /// default, BOOT_EFI, falls through to it). `ResetVector` puts a reset request there; reserved in the e820 map.
    public static let resetVector = GuestAddress(0xffff0)
    /// The FADT's hardware-reduced registers, in port I/O: sleep control (a write of SLP_TYP << 2 | SLP_EN), sleep
    /// status, and reset (a write of `acpiResetValue`).
    public static let acpiSleepControlPort: UInt16 = 0x3c0
    public static let acpiSleepStatusPort: UInt16 = 0x3c1
    public static let acpiResetPort: UInt16 = 0x3c2
    public static let acpiResetValue: UInt8 = 0x1
    /// QEMU's pvpanic port (its default), described in the DSDT as QEMU0001: a guest kernel's panic ends the VMM.
    public static let pvpanicPort: UInt16 = 0x505
    /// The 16550A UART (COM1) and its ISA interrupt.
    public static let serialPort: UInt16 = 0x3f8
    public static let serialIRQ: UInt32 = 4
    /// Guest RAM above the legacy hole starts at 1 MiB.
    public static let highMemory = GuestAddress(0x100000)
    /// The 32-bit MMIO hole: devices live here, RAM beyond its start continues at 4 GiB.
    public static let mmioHoleStart = GuestAddress(0xc000_0000)
    public static let mmioHoleEnd = GuestAddress(0x1_0000_0000)
    public static let ioapic = GuestAddress(0xfec0_0000)
    public static let localApic = GuestAddress(0xfee0_0000)
    /// KVM's TSS and identity-map page must sit in guest-physical space that is not RAM (KVM_SET_TSS_ADDR).
    public static let kvmIdentityMap = GuestAddress(0xfffb_c000)
    public static let kvmTss = GuestAddress(0xfffb_d000)
    /// Legacy ISA interrupt lines go up to the IOAPIC's 24 pins.
    public static let ioapicPins = 24
    /// virtio-mmio devices: 4 KiB slots from here, in the MMIO hole, with interrupt lines from 5 up (4 is the UART's)
    /// to the one below `acpiEventIRQ`.
    public static let virtioMmioBase = GuestAddress(0xd000_0000)
    public static let virtioMmioSlotSize: UInt64 = 0x1000
    public static let virtioFirstIRQ: UInt32 = 5
    public static let virtioMaximumDevices = Int(acpiEventIRQ - virtioFirstIRQ)
    /// The ACPI Generic Event Device's interrupt (the IOAPIC's last pin): raised after a restore, it makes the guest
    /// run the DSDT's GED._EVT, which notifies the VM generation ID device.
    public static let acpiEventIRQ: UInt32 = UInt32(ioapicPins) - 1

    /// The RAM regions for `size` bytes of guest memory: below the MMIO hole, and the rest from 4 GiB up.
    public static func ramRegions(size: UInt64) -> [(start: GuestAddress, size: UInt64)] {
        let low = min(size, mmioHoleStart.rawValue)
        var regions: [(start: GuestAddress, size: UInt64)] = [(GuestAddress(0), low)]
        if size > low { regions.append((mmioHoleEnd, size - low)) }
        return regions
    }
}
