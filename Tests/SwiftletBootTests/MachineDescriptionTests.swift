import SwiftletBoot
import SwiftletHost
import SwiftletMemory
import Testing

@Suite struct MachineDescriptionTests {
    @Test func x86CommandLineNamesEveryDeviceWhereTheDescriptionPutsIt() throws {
        let machine = try MachineDescription.layout(.x86_64, memorySize: 512 << 20, cpus: 2,
                                                    virtioDeviceNames: ["blk0", "net0", "vsock0"], commandLine: "console=ttyS0")
        #expect(machine.x86CommandLine == "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7")
        #expect(machine.virtioDevices.map(\.name) == ["blk0", "net0", "vsock0"])
    }

    @Test(arguments: [64 << 20, 3 << 30, 3584 << 20, 6 << 30] as [UInt64])
    func x86MemoryAndE820MatchTheLayout(_ size: UInt64) throws {
        let machine = try MachineDescription.layout(.x86_64, memorySize: size, cpus: 1, virtioDeviceNames: [], commandLine: "")
        #expect(machine.memory.map { [$0.start.rawValue, $0.size] } == X86Layout.ramRegions(size: size).map { [$0.start.rawValue, $0.size] })
        #expect(machine.memory.reduce(0) { $0 + $1.size } == size)
        let memory = try GuestMemory(layout: machine.memory.map { ($0.start, $0.size) })
        // By default the ACPI tables' area is in the map too, as ACPI data between the EBDA and the VM generation ID's
        // page, which is reserved up to 1 MiB (the reset vector included).
        var expected = E820Entry.map(for: memory)
        expected[2] = E820Entry(start: GuestAddress(0xff000), size: 0x1000, kind: .reserved)
        expected.insert(E820Entry(start: X86Layout.acpiTables, size: 0x1f000, kind: .acpi), at: 2)
        #expect(machine.e820 == expected)
        var legacy = machine
        legacy.discovery = .legacy
        #expect(legacy.e820 == E820Entry.map(for: memory))
    }

    /// Each way of finding the devices gives the guest one set of descriptions, or both.
    @Test func discoveryPicksTheDescriptions() throws {
        var machine = try MachineDescription.layout(.x86_64, memorySize: 256 << 20, cpus: 2,
                                                    virtioDeviceNames: ["blk0", "net0"], commandLine: "console=ttyS0")
        #expect(machine.discovery == .both)
        #expect(machine.x86CommandLine.contains("virtio_mmio.device=4K@0xd0000000:5"))
        #expect(machine.hasMPTable)
        #expect(try machine.acpiTables()?.tables.map(\.signature) == ["RSDP", "XSDT", "FACP", "APIC", "DSDT"])
        machine.discovery = .acpi
        #expect(machine.x86CommandLine == "console=ttyS0")
        #expect(!machine.hasMPTable)
        #expect(try machine.acpiTables() != nil)
        #expect(machine.e820.contains { $0.kind == .acpi })
        machine.discovery = .legacy
        #expect(machine.x86CommandLine.contains("virtio_mmio.device=4K@0xd0001000:6"))
        #expect(machine.hasMPTable)
        #expect(try machine.acpiTables() == nil)
        #expect(!machine.e820.contains { $0.kind == .acpi })
    }

    @Test func theDeviceTreeAndTheDescriptionAgreeOnEveryDevice() throws {
        let machine = try MachineDescription.layout(.aarch64, memorySize: 256 << 20, cpus: 2,
                                                    virtioDeviceNames: ["blk0", "blk1", "net0", "vsock0"], commandLine: "")
        let tree = FDTReader(blob: try AArch64Board(machine: machine, rngSeed: [1], kaslrSeed: 2).deviceTree())
        for device in machine.virtioDevices {
            let path = "/virtio_mmio@\(String(device.window.start.rawValue, radix: 16))"
            #expect(tree.u64s(path, "reg") == [device.window.start.rawValue, device.window.size])
            #expect(tree.cells(path, "interrupts") == [0, device.interrupt, 1])
        }
        #expect(tree.u64s("/memory@80000000", "reg") == [machine.memory[0].start.rawValue, machine.memory[0].size])
    }

    @Test func tooManyDevicesOrTooMuchMemoryAreRefused() {
        #expect(throws: SwiftletError.self) {
            try MachineDescription.layout(.x86_64, memorySize: 256 << 20, cpus: 1,
                                          virtioDeviceNames: (0...X86Layout.virtioMaximumDevices).map { "d\($0)" }, commandLine: "")
        }
        #expect(throws: SwiftletError.self) {
            try MachineDescription.layout(.aarch64, memorySize: 1 << 40, cpus: 1, virtioDeviceNames: [], commandLine: "")
        }
    }

    @Test func describesTheMPTableItWrites() throws {
        let (_, table) = try MPTable.build(cpus: 3, tableAddress: X86Layout.mpConfigurationTable)
        let lines = MPTable.describe(table)
        #expect(lines.first?.contains("checksum-ok true") == true)
        #expect(lines.filter { $0.hasPrefix("mptable cpu ") } == ["mptable cpu apic-id 0 enabled bootstrap",
                                                                 "mptable cpu apic-id 1 enabled", "mptable cpu apic-id 2 enabled"])
        #expect(lines.contains("mptable ioapic id 3 at 0xfec00000"))
        #expect(lines.last?.hasPrefix("mptable isa-irq->ioapic-pin 0->0 1->1") == true)
    }
}
