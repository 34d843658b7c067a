import SwiftletBoot
import SwiftletHost
import SwiftletMemory
import Testing

@Suite struct BootStructureTests {
    func le<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, _: T.Type) -> T {
        (0..<MemoryLayout<T>.size).reduce(T(0)) { $0 | T(bytes[offset + $1]) << (8 * $1) }
    }

    @Test func e820MapForSmallAndLargeGuests() throws {
        let small = E820Entry.map(for: try Images.memory(size: 64 << 20))
        #expect(small == [
            E820Entry(start: GuestAddress(0), size: 0x9f000, kind: .ram),
            E820Entry(start: GuestAddress(0x9f000), size: 0x1000, kind: .reserved),
            E820Entry(start: GuestAddress(0xf_fff0), size: 0x10, kind: .reserved),
            E820Entry(start: GuestAddress(0x10_0000), size: (64 << 20) - 0x10_0000, kind: .ram),
        ])
        let large = E820Entry.map(for: try Images.memory(size: 3584 << 20))
        #expect(large.count == 5)
        #expect(large[3] == E820Entry(start: GuestAddress(0x10_0000), size: 0xc000_0000 - 0x10_0000, kind: .ram))
        #expect(large[4] == E820Entry(start: GuestAddress(0x1_0000_0000), size: 512 << 20, kind: .ram))
    }

    /// The reset vector asks the i8042 for a reset (out 0x64, 0xfe) and then halts in a loop: its jump lands on
    /// its hlt, and it fits the 16 bytes below 1 MiB, after the ACPI tables' area.
    @Test func theResetVectorAsksForAReset() throws {
        let memory = try Images.memory()
        try ResetVector.write(into: memory)
        let code = try memory.read(count: ResetVector.code.count, at: X86Layout.resetVector)
        #expect(code == ResetVector.code)
        #expect(X86Layout.resetVector.rawValue == 0xf_fff0 && code.count <= 16)
        #expect(Array(code[0..<4]) == [0xb0, 0xfe, 0xe6, 0x64]) // mov al, 0xfe (pulse reset); out 0x64 (the i8042 command port), al
        let jump = try #require(code.firstIndex(of: 0xeb))
        let target = jump + 2 + Int(Int8(bitPattern: code[jump + 1]))
        #expect(code[target] == 0xf4) // hlt
        #expect(X86Layout.acpiTablesEnd.rawValue <= X86Layout.resetVector.rawValue)
    }

    @Test func zeroPageCarriesHeaderPointersAndE820() throws {
        let memory = try Images.memory()
        let kernel = try KernelLoader.load(BytesBootSource(Images.bzImage()), into: memory)
        let e820 = E820Entry.map(for: memory)
        try ZeroPage.write(into: memory, kernel: kernel, commandLine: "console=ttyS0", initrd: (GuestAddress(0x300_0000), 1234), e820: e820)
        let page = try memory.read(count: 4096, at: X86Layout.zeroPage)
        #expect(le(page, 0x1fe, UInt16.self) == 0xaa55)
        #expect(le(page, 0x202, UInt32.self) == 0x5372_6448)
        #expect(page[0x1f1] == 1) // the kernel's own setup_sects, copied
        #expect(page[0x210] == 0xff)
        #expect(page[0x211] & 0x81 == 0x81)
        #expect(le(page, 0x228, UInt32.self) == UInt32(X86Layout.commandLine.rawValue))
        #expect(le(page, 0x218, UInt32.self) == 0x300_0000)
        #expect(le(page, 0x21c, UInt32.self) == 1234)
        #expect(page[0x1e8] == 4)
        for (index, entry) in e820.enumerated() {
            let base = 0x2d0 + 20 * index
            #expect(le(page, base, UInt64.self) == entry.start.rawValue)
            #expect(le(page, base + 8, UInt64.self) == entry.size)
            #expect(le(page, base + 16, UInt32.self) == entry.kind.rawValue)
        }
        #expect(try memory.read(count: 14, at: X86Layout.commandLine) == Array("console=ttyS0".utf8) + [0])
    }

    @Test func zeroPageForELFHasAMinimalHeader() throws {
        let memory = try Images.memory()
        let kernel = try KernelLoader.load(BytesBootSource(Images.elf(entry: 0x100_0000, segments: [(0x100_0000, [1], 1)])), into: memory)
        try ZeroPage.write(into: memory, kernel: kernel, commandLine: "", initrd: nil, e820: E820Entry.map(for: memory))
        let page = try memory.read(count: 4096, at: X86Layout.zeroPage)
        #expect(le(page, 0x1fe, UInt16.self) == 0xaa55)
        #expect(le(page, 0x202, UInt32.self) == 0x5372_6448)
        #expect(le(page, 0x218, UInt32.self) == 0)
    }

    @Test func commandLineMustFitTheKernelsLimit() throws {
        let memory = try Images.memory()
        let kernel = try KernelLoader.load(BytesBootSource(Images.bzImage()), into: memory)
        let e820 = E820Entry.map(for: memory)
        try ZeroPage.write(into: memory, kernel: kernel, commandLine: String(repeating: "a", count: 2047), initrd: nil, e820: e820)
        #expect(throws: SwiftletError.self) {
            try ZeroPage.write(into: memory, kernel: kernel, commandLine: String(repeating: "a", count: 2048), initrd: nil, e820: e820)
        }
    }

    @Test(arguments: [1, 2, 4, 64])
    func mpTableChecksumsAndEntries(cpus: Int) throws {
        let (floating, configuration) = try MPTable.build(cpus: cpus, tableAddress: X86Layout.mpConfigurationTable)
        #expect(floating.count == 16)
        #expect(Array(floating[0..<4]) == Array("_MP_".utf8))
        #expect(floating.reduce(0, &+) == 0)
        #expect(le(floating, 4, UInt32.self) == UInt32(X86Layout.mpConfigurationTable.rawValue))
        #expect(Array(configuration[0..<4]) == Array("PCMP".utf8))
        #expect(Int(le(configuration, 4, UInt16.self)) == configuration.count)
        #expect(configuration.reduce(0, &+) == 0)
        #expect(Int(le(configuration, 34, UInt16.self)) == cpus + 1 + 1 + 24 + 2)
        #expect(le(configuration, 36, UInt32.self) == 0xfee0_0000)
        // Processor entries: APIC IDs in order, only the first is the bootstrap processor.
        for cpu in 0..<cpus {
            let entry = Array(configuration[44 + cpu * 20..<44 + (cpu + 1) * 20])
            #expect(entry[0] == 0 && entry[1] == UInt8(cpu))
            #expect(entry[3] == (cpu == 0 ? 3 : 1))
        }
        let ioapic = 44 + cpus * 20 + 8
        #expect(configuration[ioapic] == 2 && configuration[ioapic + 1] == UInt8(cpus))
        #expect(le(configuration, ioapic + 4, UInt32.self) == 0xfec0_0000)
        #expect(configuration.count <= 0xc00)
        // Written where Linux scans for the pointer.
        let memory = try Images.memory()
        try MPTable.write(into: memory, cpus: cpus)
        #expect(try memory.read(count: 16, at: X86Layout.mpFloatingPointer) == floating)
        #expect(try memory.read(count: configuration.count, at: X86Layout.mpConfigurationTable) == configuration)
    }

    @Test func mpTableRejectsImpossibleCPUCounts() {
        #expect(throws: SwiftletError.self) { try MPTable.build(cpus: 0, tableAddress: X86Layout.mpConfigurationTable) }
        #expect(throws: SwiftletError.self) { try MPTable.build(cpus: 255, tableAddress: X86Layout.mpConfigurationTable) }
    }

    @Test func pageTablesIdentityMapTheFirstGiB() throws {
        let memory = try Images.memory()
        let state = try LongMode.prepare(memory: memory, entry: GuestAddress(0x100_0200))
        #expect(try memory.read(UInt64.self, at: X86Layout.pml4) == 0xa003)
        #expect(try memory.read(UInt64.self, at: X86Layout.pdpt) == 0xb003)
        for index: UInt64 in [0, 1, 8, 511] {
            #expect(try memory.read(UInt64.self, at: GuestAddress(0xb000 + index * 8)) == (index << 21) | 0x83)
        }
        #expect(try memory.read(UInt64.self, at: GuestAddress(0xa008)) == 0) // nothing beyond 1 GiB
        #expect(state.cr3 == 0x9000 && state.rip == 0x100_0200 && state.rsi == 0x7000)
        #expect(state.cr0 & 0x8000_0001 == 0x8000_0001)
        #expect(state.efer & 0x500 == 0x500)
        #expect(state.code.long && !state.code.defaultSize && state.code.selector == 0x08 && state.code.type == 0xb)
        #expect(state.data.defaultSize && state.data.limit == 0xffff_ffff && state.data.selector == 0x10)
        #expect(try memory.read(UInt64.self, at: GuestAddress(0x508)) == LongMode.gdtEntries[1])
    }
}
