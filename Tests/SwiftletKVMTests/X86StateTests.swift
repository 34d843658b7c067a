import CSwiftlet
import Glibc
import SwiftletHost
@testable import SwiftletKVM
import SwiftletSnapshot
import Testing

/// A vCPU's and a VM's state, saved through a state file and set on a fresh VM, read back the same. Runs on the
/// host's KVM (these ioctls work on this project's PVM-style host, which cannot boot Linux).
@Suite(.enabled(if: hostMachineName() == "x86_64" && access("/dev/kvm", R_OK | W_OK) == 0,
                "needs an x86_64 host with a usable /dev/kvm"))
struct X86StateTests {
    private func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    private func machine(_ kvm: KVM) throws -> (VirtualMachine, Vcpu) {
        let vm = try kvm.createVM()
        try vm.createInterruptControllers()
        let vcpu = try vm.createVcpu(id: 0)
        try vcpu.setCPUID(kvm.supportedCPUID())
        return (vm, vcpu)
    }

    /// Through a state file and back, as a snapshot carries it.
    private func throughAFile(_ state: X86VcpuState, _ vmState: X86VMState) throws -> (X86VcpuState, X86VMState) {
        var body = SnapshotEncoder()
        body.record("vcpu") { state.save(into: &$0) }
        body.record("vm  ") { vmState.save(into: &$0) }
        let decoded = try SnapshotFile.body(of: SnapshotFile.bytes(body: body))
        return (try X86VcpuState(from: decoded.all("vcpu", maximum: 1)[0]), try X86VMState(from: decoded.nested("vm  ")))
    }

    /// A vCPU's CPUID, read back from KVM, needs nothing this host lacks; one with a feature KVM does not offer is
    /// refused by name.
    @Test func theCPUIDCheckPassesOnTheSameHostAndNamesWhatIsMissing() throws {
        let kvm = try KVM()
        // A vCPU as a boot sets it up (the hypervisor bit and the TSC deadline timer added), and a fresh one of the
        // same host given the same, as a restore asks it.
        let booted = X86CPUID.adjusted(try kvm.supportedCPUID().entries, vcpu: 0, cpus: 1, tscDeadlineTimer: true)
        let (_, vcpu) = try machine(kvm)
        try vcpu.setCPUID(CPUIDTable.with(booted))
        let saved = try vcpu.saveX86State(msrIndices: []).cpuid
        let (_, fresh) = try machine(kvm)
        try fresh.setCPUID(CPUIDTable.with(booted))
        let supported = X86CPUID.offered(supported: booted, readBack: try fresh.savedCPUID())
        #expect(X86CPUID.missingFeatures(saved: saved, supported: supported) == [])
        var lacking = supported
        let leaf7 = try #require(lacking.firstIndex { $0.function == 7 && $0.index == 0 })
        let free = try #require((0..<32).first { lacking[leaf7].ebx & (1 << $0) == 0 })
        var tampered = saved
        let saved7 = try #require(tampered.firstIndex { $0.function == 7 && $0.index == 0 })
        tampered[saved7].ebx |= 1 << UInt32(free)
        #expect(X86CPUID.missingFeatures(saved: tampered, supported: lacking) == ["7.ebx bit \(free)"])
        lacking[leaf7].ebx = 0
        #expect(X86CPUID.missingFeatures(saved: saved, supported: lacking).count == saved[saved7].ebx.nonzeroBitCount)
    }

    @Test func aVcpuAndItsVMComeBackOnAFreshVM() throws {
        let kvm = try KVM()
        let msrIndices = try kvm.msrIndexList()
        #expect(!msrIndices.isEmpty)
        let (vm, vcpu) = try machine(kvm)
        var registers = try vcpu.registers()
        registers.rip = 0x10_0000
        registers.rax = 0x1234_5678_9ABC
        registers.rsp = 0x8000
        registers.rflags = 0x2
        try vcpu.setRegisters(registers)
        var special = try vcpu.specialRegisters()
        special.cr0 |= 1 // protected mode
        special.cs.selector = 0x10
        try vcpu.setSpecialRegisters(special)
        let sysenterCS: UInt32 = 0x174
        try vcpu.setMSRs([(index: sysenterCS, value: 0x10)])
        let saved = try vcpu.saveX86State(msrIndices: msrIndices)
        let savedVM = try vm.saveX86State()
        #expect(saved.msrs.contains { $0.index == sysenterCS && $0.data == 0x10 })
        #expect(saved.cpuid.count > 10)
        #expect(saved.tscKHz > 0)

        let (state, vmState) = try throughAFile(saved, savedVM)
        let (freshVM, fresh) = try machine(kvm)
        try freshVM.restoreX86State(vmState)
        try fresh.restoreX86State(state)
        let again = try fresh.saveX86State(msrIndices: msrIndices)
        let againVM = try freshVM.saveX86State()

        #expect(bytes(again.registers) == bytes(saved.registers))
        #expect(bytes(again.specialRegisters) == bytes(saved.specialRegisters))
        #expect(bytes(again.xsave) == bytes(saved.xsave))
        #expect(bytes(again.xcrs) == bytes(saved.xcrs))
        #expect(bytes(again.debugRegisters) == bytes(saved.debugRegisters))
        #expect(bytes(again.localAPIC) == bytes(saved.localAPIC))
        #expect(bytes(again.mpState) == bytes(saved.mpState))
        #expect(again.cpuid.count == saved.cpuid.count)
        #expect(again.tscKHz == saved.tscKHz)
        // Every MSR but the time stamp counter (which runs on) reads back as saved.
        let tsc: UInt32 = 0x10
        let before = saved.msrs.filter { $0.index != tsc }.map { [$0.index: $0.data] }
        let after = again.msrs.filter { $0.index != tsc }.map { [$0.index: $0.data] }
        #expect(after == before)
        #expect(bytes(againVM.picMaster) == bytes(savedVM.picMaster))
        #expect(bytes(againVM.picSlave) == bytes(savedVM.picSlave))
        #expect(bytes(againVM.ioapic) == bytes(savedVM.ioapic))
        #expect(againVM.clock.clock >= savedVM.clock.clock, "kvmclock goes on from the saved value")
    }

    @Test func aRecordOfTheWrongSizeIsRefusedNamingIt() throws {
        var body = SnapshotEncoder()
        body.record("vcpu") { $0.record("cpid", array: [kvm_cpuid_entry2]()) }
        let decoded = try SnapshotFile.body(of: SnapshotFile.bytes(body: body))
        #expect(throws: SnapshotError.missingRecord(tag: "mpst", in: "'vcpu' 0 in the snapshot")) {
            _ = try X86VcpuState(from: decoded.all("vcpu", maximum: 1)[0])
        }
        var short = SnapshotEncoder()
        short.record("picm", bytes: [0, 0])
        let shortDecoded = try SnapshotFile.body(of: SnapshotFile.bytes(body: short))
        #expect(throws: SnapshotError.wrongSize(tag: "picm", size: 2, expected: MemoryLayout<kvm_irqchip>.size)) {
            _ = try X86VMState(from: shortDecoded)
        }
    }
}
