import SwiftletHost
import SwiftletMemory

/// A segment register as the CPU caches it, independent of KVM's struct layout.
public struct X86Segment: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt32
    public var selector: UInt16
    public var type: UInt8
    public var present: Bool
    public var dpl: UInt8
    public var defaultSize: Bool // D/B
    public var system: Bool      // S: code or data, not a system segment
    public var long: Bool        // L
    public var granularity: Bool // G

    /// Decodes a GDT entry, as the CPU does when a selector is loaded.
    public init(gdtEntry entry: UInt64, selector: UInt16) {
        base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24)
        let rawLimit = UInt32((entry & 0xffff) | (((entry >> 48) & 0xf) << 16))
        granularity = (entry >> 55) & 1 == 1
        limit = granularity ? (rawLimit << 12) | 0xfff : rawLimit
        self.selector = selector
        type = UInt8((entry >> 40) & 0xf)
        system = (entry >> 44) & 1 == 1
        dpl = UInt8((entry >> 45) & 3)
        present = (entry >> 47) & 1 == 1
        long = (entry >> 53) & 1 == 1
        defaultSize = (entry >> 54) & 1 == 1
    }
}

/// The vCPU state in which the 64-bit boot protocol enters the kernel: long mode, paging on with an identity map
/// of the first GiB, flat code and data segments, RSI pointing at the zero page.
public struct X86BootState: Sendable {
    public var rip: UInt64
    public var rsp: UInt64
    public var rsi: UInt64
    public var rflags: UInt64 = 0x2 // bit 1 is reserved and always set
    public var cr0: UInt64
    public var cr3: UInt64
    public var cr4: UInt64
    public var efer: UInt64
    public var code: X86Segment
    public var data: X86Segment
    public var tss: X86Segment
    public var gdt: (base: UInt64, limit: UInt16)
    public var idt: (base: UInt64, limit: UInt16)
}

public enum LongMode {
    /// The boot GDT: null, 64-bit code (selector 0x08), data (0x10), TSS (0x18).
    public static let gdtEntries: [UInt64] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x008f_8b00_0000_ffff]
    static let present: UInt64 = 1 << 0, writable: UInt64 = 1 << 1, largePage: UInt64 = 1 << 7

    static let cr0ProtectionEnable: UInt64 = 1 << 0, cr0ExtensionType: UInt64 = 1 << 4, cr0Paging: UInt64 = 1 << 31
    static let cr4PhysicalAddressExtension: UInt64 = 1 << 5
    static let eferLongModeEnable: UInt64 = 1 << 8, eferLongModeActive: UInt64 = 1 << 10

    /// Writes the identity map: PML4[0] -> PDPT[0] -> a page directory of 512 2-MiB pages covering 0..1 GiB.
    public static func writePageTables(into memory: GuestMemory) throws(SwiftletError) {
        try memory.zero(X86Layout.pml4, count: 0x3000)
        try memory.write(X86Layout.pdpt.rawValue | present | writable, at: X86Layout.pml4)
        try memory.write(X86Layout.pageDirectory.rawValue | present | writable, at: X86Layout.pdpt)
        for index in 0..<UInt64(512) {
            try memory.write((index << 21) | present | writable | largePage,
                             at: GuestAddress(X86Layout.pageDirectory.rawValue + index * 8))
        }
    }

    /// Writes the GDT and an empty IDT.
    public static func writeDescriptorTables(into memory: GuestMemory) throws(SwiftletError) {
        for (index, entry) in gdtEntries.enumerated() {
            try memory.write(entry, at: GuestAddress(X86Layout.gdt.rawValue + UInt64(index * 8)))
        }
        try memory.write(UInt64(0), at: X86Layout.idt)
    }

    /// Writes page tables and descriptor tables, and returns the state for the boot vCPU.
    public static func prepare(memory: GuestMemory, entry: GuestAddress) throws(SwiftletError) -> X86BootState {
        try writePageTables(into: memory)
        try writeDescriptorTables(into: memory)
        return X86BootState(
            rip: entry.rawValue, rsp: X86Layout.bootStack.rawValue, rsi: X86Layout.zeroPage.rawValue,
            cr0: cr0ProtectionEnable | cr0ExtensionType | cr0Paging, cr3: X86Layout.pml4.rawValue,
            cr4: cr4PhysicalAddressExtension, efer: eferLongModeEnable | eferLongModeActive,
            code: X86Segment(gdtEntry: gdtEntries[1], selector: 0x08),
            data: X86Segment(gdtEntry: gdtEntries[2], selector: 0x10),
            tss: X86Segment(gdtEntry: gdtEntries[3], selector: 0x18),
            gdt: (X86Layout.gdt.rawValue, UInt16(gdtEntries.count * 8 - 1)),
            idt: (X86Layout.idt.rawValue, 7))
    }
}
