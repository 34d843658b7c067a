import SwiftletHost
import SwiftletMemory

/// The Intel MultiProcessor Specification 1.4 table, so that an SMP guest without ACPI finds every vCPU, the
/// IOAPIC and how the ISA interrupts are wired to it. Both parts live in the EBDA: the floating pointer where Linux's
/// smp_scan_config looks, the configuration table (up to 3 KiB, room for every vCPU Swiftlet allows) before it.
public enum MPTable {
    public static let localApicVersion: UInt8 = 0x14
    public static let ioapicVersion: UInt8 = 0x11
    static let floatingPointerSize = 16
    static let headerSize = 44

    /// The floating pointer and configuration table for `cpus` vCPUs (APIC IDs 0..<cpus; vCPU 0 is the bootstrap
    /// processor), the pointer naming `tableAddress` as where the table goes.
    public static func build(cpus: Int, tableAddress: GuestAddress) throws(SwiftletError) -> (floatingPointer: [UInt8], table: [UInt8]) {
        guard cpus >= 1, cpus <= 254 else {
            throw SwiftletError(.invalidConfiguration, "\(cpus) vCPUs do not fit an MP table (1 to 254)")
        }
        let ioapicID = UInt8(cpus)
        var entries: [UInt8] = []
        var entryCount: UInt16 = 0
        func entry(_ bytes: [UInt8]) { entries += bytes; entryCount += 1 }

        for cpu in 0..<cpus {
            var processor = [UInt8](repeating: 0, count: 20)
            processor[0] = 0 // MP_PROCESSOR
            processor[1] = UInt8(cpu)
            processor[2] = localApicVersion
            processor[3] = 0x1 | (cpu == 0 ? 0x2 : 0) // enabled, bootstrap processor
            processor.setLE(UInt32(0x600), 4)          // CPU signature: family 6
            processor.setLE(UInt32(0x201), 8)          // feature flags: FPU, APIC
            entry(processor)
        }
        entry([1, 0] + Array("ISA   ".utf8)) // MP_BUS 0: ISA
        var ioapic = [UInt8](repeating: 0, count: 8)
        ioapic[0] = 2 // MP_IOAPIC
        ioapic[1] = ioapicID
        ioapic[2] = ioapicVersion
        ioapic[3] = 1 // enabled
        ioapic.setLE(UInt32(truncatingIfNeeded: X86Layout.ioapic.rawValue), 4)
        entry(ioapic)
        for pin in 0..<X86Layout.ioapicPins {
            // MP_INTSRC: ISA IRQ n -> IOAPIC pin n, conforming polarity and trigger, type INT.
            entry([3, 0, 0, 0, 0, UInt8(pin), ioapicID, UInt8(pin)])
        }
        // MP_LINTSRC: ExtINT on LINT0 and NMI on LINT1 of every local APIC (0xff).
        entry([4, 3, 0, 0, 0, 0, 0xff, 0])
        entry([4, 1, 0, 0, 0, 0, 0xff, 1])

        var header = [UInt8](repeating: 0, count: headerSize)
        header.replaceSubrange(0..<4, with: Array("PCMP".utf8))
        header.setLE(UInt16(headerSize + entries.count), 4)
        header[6] = 4 // spec revision 1.4
        header.replaceSubrange(8..<16, with: Array("SWIFTLET".utf8))
        header.replaceSubrange(16..<28, with: Array("MICROVM     ".utf8))
        header.setLE(entryCount, 34)
        header.setLE(UInt32(truncatingIfNeeded: X86Layout.localApic.rawValue), 36)
        var configuration = header + entries
        configuration[7] = checksum(configuration)

        var floating = [UInt8](repeating: 0, count: floatingPointerSize)
        floating.replaceSubrange(0..<4, with: Array("_MP_".utf8))
        floating.setLE(UInt32(truncatingIfNeeded: tableAddress.rawValue), 4)
        floating[8] = 1 // length in 16-byte paragraphs
        floating[9] = 4 // spec revision 1.4
        floating[10] = checksum(floating)
        return (floating, configuration)
    }

    /// The byte that makes `bytes` sum to zero modulo 256.
    static func checksum(_ bytes: [UInt8]) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }

    /// Builds the table and writes both parts into the EBDA.
    public static func write(into memory: GuestMemory, cpus: Int) throws(SwiftletError) {
        let (floating, table) = try build(cpus: cpus, tableAddress: X86Layout.mpConfigurationTable)
        guard UInt64(table.count) <= X86Layout.mpFloatingPointer.rawValue - X86Layout.mpConfigurationTable.rawValue else {
            throw SwiftletError(.invalidConfiguration, "the MP table for \(cpus) vCPUs does not fit the EBDA")
        }
        try memory.write(table, at: X86Layout.mpConfigurationTable)
        try memory.write(floating, at: X86Layout.mpFloatingPointer)
    }
}
