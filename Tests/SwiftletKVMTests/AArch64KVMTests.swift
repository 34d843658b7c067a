import Glibc
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Testing

/// On an x86_64 host the arm64 ioctls reach a real KVM, which must refuse them: the refusals come back as errors
/// that say the host cannot run an aarch64 guest, instead of crashing or being taken for success.
@Suite(.enabled(if: hostMachineName() == "x86_64" && access("/dev/kvm", R_OK | W_OK) == 0,
                "needs an x86_64 host with a usable /dev/kvm"))
struct AArch64KVMOnX86Tests {
    @Test func preferredTargetIsRefused() throws {
        let vm = try KVM().createVM()
        let error = #expect(throws: SwiftletError.self) { try vm.preferredAArch64Target() }
        #expect(error?.code == .kvmUnsupported)
        #expect(error?.message.contains("cannot run an aarch64 guest") == true)
        #expect(error?.cause != nil)
    }

    @Test func noVGICIsOffered() throws {
        let vm = try KVM().createVM()
        let placement = AArch64VGIC.Placement(distributor: GuestAddress(0x800_0000), redistributors: GuestAddress(0x80a_0000),
                                              cpuInterface: GuestAddress(0x801_0000), interruptCount: 96)
        let error = #expect(throws: SwiftletError.self) { try AArch64VGIC(vm: vm, placement: placement, cpus: 1) }
        #expect(error?.code == .kvmUnsupported)
        #expect(error?.message.contains("no VGIC") == true)
    }

    @Test func oneRegAccessToAnArm64RegisterIsRefused() throws {
        let vcpu = try KVM().createVM().createVcpu(id: 0)
        let error = #expect(throws: SwiftletError.self) { try vcpu.setRegister(AArch64Register.pc, 0x8000_0000) }
        #expect(error?.message.contains("KVM_SET_ONE_REG 0x6030000000100040") == true)
    }
}
