import CSwiftlet

/// KVM_GET_ONE_REG / KVM_SET_ONE_REG register IDs of an arm64 vCPU (Documentation/virt/kvm/api.rst, 4.68, "ARM64
/// registers"): KVM_REG_ARM64 | size | group | index.
public enum AArch64Register {
    /// A core register: `byteOffset` into struct kvm_regs, counted in 32-bit words as the index.
    public static func core(byteOffset: Int, size: UInt64 = CSWIFTLET_KVM_REG_SIZE_U64) -> UInt64 {
        precondition(byteOffset >= 0 && byteOffset % 4 == 0, "core register offsets are whole 32-bit words")
        return CSWIFTLET_KVM_REG_ARM64 | size | CSWIFTLET_KVM_REG_ARM_CORE | UInt64(byteOffset / 4)
    }

    /// General-purpose register Xn (0...30).
    public static func x(_ number: Int) -> UInt64 {
        precondition((0...30).contains(number), "X0 to X30")
        return core(byteOffset: Int(CSWIFTLET_ARM64_KVM_REGS_X0_OFFSET) + 8 * number)
    }

    public static let sp = core(byteOffset: Int(CSWIFTLET_ARM64_KVM_REGS_SP_OFFSET))
    public static let pc = core(byteOffset: Int(CSWIFTLET_ARM64_KVM_REGS_PC_OFFSET))
    public static let pstate = core(byteOffset: Int(CSWIFTLET_ARM64_KVM_REGS_PSTATE_OFFSET))

    /// A system register by its encoding (op0, op1, CRn, CRm, op2), 64 bits wide.
    public static func system(op0: UInt64, op1: UInt64, crn: UInt64, crm: UInt64, op2: UInt64) -> UInt64 {
        precondition(op0 < 4 && op1 < 8 && crn < 16 && crm < 16 && op2 < 8, "system register encoding out of range")
        return CSWIFTLET_KVM_REG_ARM64 | CSWIFTLET_KVM_REG_SIZE_U64 | CSWIFTLET_KVM_REG_ARM64_SYSREG
            | op0 << UInt64(CSWIFTLET_KVM_REG_ARM64_SYSREG_OP0_SHIFT) | op1 << UInt64(CSWIFTLET_KVM_REG_ARM64_SYSREG_OP1_SHIFT)
            | crn << UInt64(CSWIFTLET_KVM_REG_ARM64_SYSREG_CRN_SHIFT) | crm << UInt64(CSWIFTLET_KVM_REG_ARM64_SYSREG_CRM_SHIFT)
            | op2 << UInt64(CSWIFTLET_KVM_REG_ARM64_SYSREG_OP2_SHIFT)
    }

    /// MPIDR_EL1 (op0 3, op1 0, CRn 0, CRm 0, op2 5): the vCPU's affinity, which the device tree's cpu nodes name.
    public static let mpidr = system(op0: 3, op1: 0, crn: 0, crm: 0, op2: 5)

    /// The PSTATE the kernel is entered with (booting.rst): EL1 with SP_EL1 (EL1h), and debug, SError, IRQ and FIQ
    /// masked.
    public static let bootPSTATE = UInt64(CSWIFTLET_PSR_MODE_EL1H | CSWIFTLET_PSR_D_BIT | CSWIFTLET_PSR_A_BIT
                                          | CSWIFTLET_PSR_I_BIT | CSWIFTLET_PSR_F_BIT)
}
