import SwiftletBoot
import SwiftletHost
import SwiftletMemory
import Testing

enum Boards {
    static let seed = (0..<64).map { UInt8($0) }

    static func machine(cpus: Int, devices: Int, initrd: Bool = false, memory: UInt64 = 512 << 20) throws -> MachineDescription {
        var machine = try MachineDescription.layout(.aarch64, memorySize: memory, cpus: cpus,
                                                    virtioDeviceNames: (0..<devices).map { "dev\($0)" },
                                                    commandLine: "console=ttyS0 earlycon")
        if initrd { machine.initrd = .init(start: GuestAddress(0x9000_0000), size: 0x12_3456) }
        return machine
    }

    static func tree(cpus: Int, devices: Int, initrd: Bool = false, gic: AArch64Board.InterruptController = .gicV3) throws -> [UInt8] {
        try AArch64Board(machine: machine(cpus: cpus, devices: devices, initrd: initrd), interruptController: gic,
                         rngSeed: seed, kaslrSeed: 0x1122_3344_5566_7788).deviceTree()
    }
}

@Suite struct AArch64BoardTests {
    @Test(arguments: [1, 4, 8, 17, 64])
    func cpusAreNamedByTheirMPIDRAndStartedByPSCI(_ cpus: Int) throws {
        let tree = FDTReader(blob: try Boards.tree(cpus: cpus, devices: 0))
        let names = tree.children("/cpus")
        #expect(names.count == cpus)
        for index in 0..<cpus {
            let mpidr = AArch64Layout.mpidr(ofVcpu: index)
            let path = "/cpus/cpu@\(String(mpidr, radix: 16))"
            #expect(tree.cells(path, "reg") == [UInt32(mpidr)])
            #expect(tree.string(path, "enable-method") == "psci")
            #expect(tree.string(path, "device_type") == "cpu")
        }
        #expect(tree.string("/psci", "compatible") == "arm,psci-0.2")
        #expect(tree.string("/psci", "method") == "hvc")
        // The redistributor region holds one 128 KiB frame pair per vCPU.
        #expect(tree.u64s("/interrupt-controller@8000000", "reg") == [0x800_0000, 0x1_0000, 0x80a_0000, 0x2_0000 * UInt64(cpus)])
    }

    @Test func mpidrsFollowKVMsAffinityLayout() {
        #expect(AArch64Layout.mpidr(ofVcpu: 0) == 0)
        #expect(AArch64Layout.mpidr(ofVcpu: 15) == 0xf)
        #expect(AArch64Layout.mpidr(ofVcpu: 16) == 0x100)
        #expect(AArch64Layout.mpidr(ofVcpu: 17) == 0x101)
        #expect(AArch64Layout.mpidr(ofVcpu: 0x1234) == 0x1_2304)
    }

    @Test func everyNodeTheGuestNeeds() throws {
        let tree = FDTReader(blob: try Boards.tree(cpus: 2, devices: 3, initrd: true))
        #expect(tree.children("/") == ["chosen", "memory@80000000", "cpus", "psci", "interrupt-controller@8000000", "timer", "serial@9000000",
                                       "virtio_mmio@a000000", "virtio_mmio@a001000", "virtio_mmio@a002000"])
        #expect(tree.string("/", "compatible") == "linux,dummy-virt")
        #expect(tree.cells("/", "interrupt-parent") == tree.cells("/interrupt-controller@8000000", "phandle"))
        #expect(tree.u64s("/memory@80000000", "reg") == [0x8000_0000, 512 << 20])
        #expect(tree.string("/chosen", "bootargs") == "console=ttyS0 earlycon")
        #expect(tree.string("/chosen", "stdout-path") == "/serial@9000000")
        #expect(tree.u64s("/chosen", "linux,initrd-start") == [0x9000_0000])
        #expect(tree.u64s("/chosen", "linux,initrd-end") == [0x9000_0000 + 0x12_3456])
        #expect(tree.property("/chosen", "rng-seed") == Boards.seed)
        #expect(tree.u64s("/chosen", "kaslr-seed") == [0x1122_3344_5566_7788])
        #expect(tree.string("/interrupt-controller@8000000", "compatible") == "arm,gic-v3")
        #expect(tree.property("/interrupt-controller@8000000", "interrupt-controller") == [])
        #expect(tree.cells("/interrupt-controller@8000000", "#interrupt-cells") == [3])
        #expect(tree.cells("/timer", "interrupts") == [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])
        #expect(tree.cells("/serial@9000000", "interrupts") == [0, 1, 4])
        for (index, address) in [0xa00_0000, 0xa00_1000, 0xa00_2000].enumerated() {
            let path = "/virtio_mmio@\(String(address, radix: 16))"
            #expect(tree.string(path, "compatible") == "virtio,mmio")
            #expect(tree.u64s(path, "reg") == [UInt64(address), 0x1000])
            // SPI, edge rising.
            #expect(tree.cells(path, "interrupts") == [0, 16 + UInt32(index), 1])
            #expect(tree.property(path, "dma-coherent") == [])
        }
    }

    @Test func withoutAnInitrdChosenHasNone() throws {
        let tree = FDTReader(blob: try Boards.tree(cpus: 1, devices: 0))
        #expect(tree.property("/chosen", "linux,initrd-start") == nil)
        #expect(tree.property("/chosen", "linux,initrd-end") == nil)
    }

    @Test func gicV2FallbackHasACpuInterfaceAndPPICpuMasks() throws {
        let tree = FDTReader(blob: try Boards.tree(cpus: 4, devices: 1, gic: .gicV2))
        #expect(tree.string("/interrupt-controller@8000000", "compatible") == "arm,cortex-a15-gic")
        #expect(tree.u64s("/interrupt-controller@8000000", "reg") == [0x800_0000, 0x1000, 0x801_0000, 0x2000])
        #expect(tree.cells("/timer", "interrupts")?.prefix(3) == [1, 13, 0xf04])
        let error = #expect(throws: SwiftletError.self) { try Boards.tree(cpus: 9, devices: 0, gic: .gicV2) }
        #expect(error?.message.contains("GICv2") == true)
    }

    @Test func refusesWhatTheBoardCannotHold() throws {
        #expect(throws: SwiftletError.self) { try Boards.tree(cpus: AArch64Layout.maximumCPUsGICv3 + 1, devices: 0) }
        #expect(throws: SwiftletError.self) { try Boards.machine(cpus: 1, devices: AArch64Layout.virtioMaximumDevices + 1) }
        let x86 = try MachineDescription.layout(.x86_64, memorySize: 256 << 20, cpus: 1, virtioDeviceNames: [], commandLine: "")
        #expect(throws: SwiftletError.self) { try AArch64Board(machine: x86, rngSeed: [], kaslrSeed: 0).deviceTree() }
    }

    @Test func theTreeFitsTheBootProtocol() throws {
        let blob = try Boards.tree(cpus: 64, devices: AArch64Layout.virtioMaximumDevices, initrd: true)
        try FDTWriter.check(blob)
        #expect(blob.count <= FDTWriter.maximumSize)
        #expect(blob.count % 4 == 0)
    }
}
