import SwiftletMemory

/// One entry of the BIOS e820 memory map the zero page carries (arch/x86/include/uapi/asm/e820.h... bootparam.h).
public struct E820Entry: Equatable, Sendable {
    public enum Kind: UInt32, Sendable { case ram = 1, reserved = 2, acpi = 3 }
    public var start: GuestAddress
    public var size: UInt64
    public var kind: Kind

    public init(start: GuestAddress, size: UInt64, kind: Kind) {
        self.start = start
        self.size = size
        self.kind = kind
    }

    /// The e820 map for guest RAM laid out by `X86Layout.ramRegions`: low RAM below the EBDA, the EBDA reserved,
    /// RAM from 1 MiB to the MMIO hole, and RAM above 4 GiB.
    public static func map(for memory: GuestMemory) -> [E820Entry] {
        map(ram: memory.regions.map { ($0.start, $0.end) })
    }

    /// The e820 map for RAM regions given as [start, end) ranges (`MachineDescription.e820` describes its RAM so);
    /// with `acpi`, the ACPI tables' area below 1 MiB (`X86Layout.acpiTables`) as ACPI data and the VM generation
    /// ID's page up to 1 MiB reserved (the reset vector is in it); without, the reset vector's 16 bytes reserved.
    public static func map(ram: [(start: GuestAddress, end: GuestAddress)], acpi: Bool = false) -> [E820Entry] {
        var entries: [E820Entry] = [
            E820Entry(start: GuestAddress(0), size: X86Layout.ebda.rawValue, kind: .ram),
            E820Entry(start: X86Layout.ebda, size: X86Layout.ebdaEnd.rawValue - X86Layout.ebda.rawValue, kind: .reserved),
        ]
        if acpi {
            entries.append(E820Entry(start: X86Layout.acpiTables, size: X86Layout.acpiTablesEnd.rawValue - X86Layout.acpiTables.rawValue, kind: .acpi))
            entries.append(E820Entry(start: X86Layout.vmGenerationID, size: X86Layout.highMemory.rawValue - X86Layout.vmGenerationID.rawValue, kind: .reserved))
        } else {
            entries.append(E820Entry(start: X86Layout.resetVector, size: X86Layout.highMemory.rawValue - X86Layout.resetVector.rawValue, kind: .reserved))
        }
        for region in ram {
            let start = max(region.start, X86Layout.highMemory)
            guard region.end > start else { continue }
            entries.append(E820Entry(start: start, size: region.end.rawValue - start.rawValue, kind: .ram))
        }
        return entries
    }
}
