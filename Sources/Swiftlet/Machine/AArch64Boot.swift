import SwiftletBoot
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Everything an aarch64 guest finds when its boot vCPU first runs, set up on a VM whose vCPUs exist and whose RAM
/// is mapped: the VGIC, every vCPU initialized (PSCI 0.2, secondaries powered off until the guest's CPU_ON), the
/// Image and initrd loaded, the device tree (with the MPIDRs and GIC version KVM actually gave) placed at the top of
/// RAM, and the boot vCPU's PC, X0 and PSTATE set as Documentation/arch/arm64/booting.rst asks.
///
/// Built and unit-tested on x86_64 hosts (the pure parts: layout, device tree, Image header, placement, register
/// IDs), never run on an arm64 KVM here: see the README's limits.
struct AArch64Boot {
    let vgic: AArch64VGIC
    let plan: AArch64BootPlan
    let deviceTree: [UInt8]

    static func prepare(vm: VirtualMachine, vcpus: [Vcpu], memory: GuestMemory, machine: MachineDescription,
                        configuration: MachineConfiguration) throws(SwiftletError) -> AArch64Boot {
        guard machine.architecture == .aarch64, let ram = machine.memory.first, !vcpus.isEmpty else {
            throw SwiftletError(.invalidConfiguration, "the aarch64 boot needs an aarch64 machine description with RAM and vCPUs")
        }
        let vgic = try AArch64VGIC(vm: vm, placement: .init(distributor: AArch64Layout.gicDistributor,
                                                            redistributors: AArch64Layout.gicRedistributorBase,
                                                            cpuInterface: AArch64Layout.gicCpuInterface,
                                                            interruptCount: AArch64Layout.interruptCount),
                                   cpus: vcpus.count)
        let target = try vm.preferredAArch64Target()
        var mpidrs: [UInt64] = []
        for vcpu in vcpus {
            try vcpu.initializeAArch64(target: target, poweredOff: vcpu.id != 0)
            // Aff3 (bits 32-39) and Aff2..Aff0; bit 31 is RES1 and not part of the affinity.
            mpidrs.append(try vcpu.register(AArch64Register.mpidr) & 0xff_00ff_ffff)
        }

        let kernel = try FileBootSource(path: configuration.kernelPath, what: "kernel")
        let initrd = try configuration.initrdPath.map { path throws(SwiftletError) in try FileBootSource(path: path, what: "initrd") }
        let plan = try AArch64BootPlan(header: AArch64ImageLoader.header(of: kernel), ram: ram, initrdSize: initrd.map { UInt64($0.size) })
        try AArch64ImageLoader.load(kernel: kernel, initrd: initrd, plan: plan, into: memory)

        var described = machine
        described.initrd = plan.initrd
        let seeds = try BootDescription.seeds(nil)
        let board = AArch64Board(machine: described, interruptController: vgic.version == .v3 ? .gicV3 : .gicV2,
                                 mpidrs: mpidrs, rngSeed: seeds.rng, kaslrSeed: seeds.kaslr)
        let tree = try board.deviceTree()
        try plan.checkDeviceTree(size: tree.count, ram: ram)
        try memory.write(tree, at: plan.deviceTree)

        try vcpus[0].setAArch64BootState(entry: plan.kernel, deviceTree: plan.deviceTree)
        // KVM requires every vCPU to exist before the VGIC is initialized.
        try vgic.initialize()
        return AArch64Boot(vgic: vgic, plan: plan, deviceTree: tree)
    }
}
