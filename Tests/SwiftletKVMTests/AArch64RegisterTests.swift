import CSwiftlet
import SwiftletKVM
import Testing

/// Register IDs against the values Documentation/virt/kvm/api.rst (4.68, "ARM64 registers") and the arm64 uapi
/// headers give; computed by the shim's encoding, they must agree bit for bit.
@Suite struct AArch64RegisterTests {
    @Test func coreRegistersAreKVMRegArm64U64CoreAndTheirWordOffset() {
        // 0x6030 0000 0010 <index>: index = offsetof(struct kvm_regs, field) / 4.
        #expect(AArch64Register.x(0) == 0x6030_0000_0010_0000)
        #expect(AArch64Register.x(1) == 0x6030_0000_0010_0002)
        #expect(AArch64Register.x(30) == 0x6030_0000_0010_003c)
        #expect(AArch64Register.sp == 0x6030_0000_0010_003e)
        #expect(AArch64Register.pc == 0x6030_0000_0010_0040)
        #expect(AArch64Register.pstate == 0x6030_0000_0010_0042)
        // sp_el1 follows user_pt_regs (34 words of 8 bytes); the fp registers are 128-bit (0x6040...).
        #expect(AArch64Register.core(byteOffset: 34 * 8) == 0x6030_0000_0010_0044)
        #expect(AArch64Register.core(byteOffset: 0x220, size: CSWIFTLET_KVM_REG_SIZE_U128) == 0x6040_0000_0010_0088)
    }

    @Test func systemRegistersPackTheirEncoding() {
        // MPIDR_EL1 is op0=3 op1=0 CRn=0 CRm=0 op2=5: ARM64_SYS_REG(3, 0, 0, 0, 5).
        #expect(AArch64Register.mpidr == 0x6030_0000_0013_c005)
        // KVM_REG_ARM_TIMER_CNT and KVM_REG_ARM_TIMER_CVAL are ARM64_SYS_REG(3, 3, 14, 3, 2) and (3, 3, 14, 0, 2)
        // in the arm64 uapi header.
        #expect(AArch64Register.system(op0: 3, op1: 3, crn: 14, crm: 3, op2: 2) == 0x6030_0000_0013_df1a)
        #expect(AArch64Register.system(op0: 3, op1: 3, crn: 14, crm: 0, op2: 2) == 0x6030_0000_0013_df02)
        // CNTV_CTL_EL0 (3, 3, 14, 3, 1): KVM_REG_ARM_TIMER_CTL.
        #expect(AArch64Register.system(op0: 3, op1: 3, crn: 14, crm: 3, op2: 1) == 0x6030_0000_0013_df19)
    }

    @Test func bootPSTATEIsEL1hWithDAIFMasked() {
        #expect(AArch64Register.bootPSTATE == 0x3c5)
    }

    @Test func ioctlNumbersMatchTheArm64Headers() {
        // _IOW(KVMIO, 0xae, struct kvm_vcpu_init) and _IOR(KVMIO, 0xaf, ...), struct kvm_vcpu_init being 32 bytes.
        #expect(MemoryLayout<CSwiftlet_kvm_vcpu_init>.size == 32)
        #expect(CSwiftlet_KVM_ARM_VCPU_INIT == 0x4020_aeae)
        #expect(CSwiftlet_KVM_ARM_PREFERRED_TARGET == 0x8020_aeaf)
        #expect(CSwiftlet_KVM_SET_ONE_REG == 0x4010_aeac)
        #expect(CSwiftlet_KVM_GET_ONE_REG == 0x4010_aeab)
        #expect(CSwiftlet_KVM_CREATE_DEVICE == 0xc00c_aee0)
        #expect(CSwiftlet_KVM_SET_DEVICE_ATTR == 0x4018_aee1)
    }
}
