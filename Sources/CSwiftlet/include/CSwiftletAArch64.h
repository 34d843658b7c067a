// arm64 KVM definitions that an x86_64 host's headers lack (they live in arch/arm64/include/uapi/asm/kvm.h), so that
// the aarch64 vCPU and VGIC code compiles, and is unit-tested, on every host. Each value is the kernel's, from its
// uapi header and Documentation/virt/kvm/api.rst ("KVM_SET_ONE_REG", "KVM_ARM_VCPU_INIT") and
// Documentation/virt/kvm/devices/arm-vgic-v3.rst. Where <asm/kvm.h> is the arm64 one, the values agree with it.
#ifndef CSWIFTLET_AARCH64_H
#define CSWIFTLET_AARCH64_H

#include <linux/kvm.h>
#include <stdint.h>

// struct kvm_vcpu_init: the target CPU type and the feature bitmap for KVM_ARM_VCPU_INIT.
struct CSwiftlet_kvm_vcpu_init {
    uint32_t target;
    uint32_t features[7];
};

// vCPU ioctls (api.rst 4.77 KVM_ARM_VCPU_INIT, 4.80 KVM_ARM_PREFERRED_TARGET), with the same numbers the arm64
// headers produce.
extern const unsigned long CSwiftlet_KVM_ARM_VCPU_INIT;
extern const unsigned long CSwiftlet_KVM_ARM_PREFERRED_TARGET;
// Generic, but declared here with the rest of what the aarch64 path uses.
extern const unsigned long CSwiftlet_KVM_GET_ONE_REG;
extern const unsigned long CSwiftlet_KVM_SET_ONE_REG;
extern const unsigned long CSwiftlet_KVM_CREATE_DEVICE;
extern const unsigned long CSwiftlet_KVM_SET_DEVICE_ATTR;
extern const unsigned long CSwiftlet_KVM_HAS_DEVICE_ATTR;

// KVM_ARM_VCPU_INIT feature bits.
#define CSWIFTLET_KVM_ARM_VCPU_POWER_OFF 0   // the vCPU starts powered off (secondaries; PSCI CPU_ON starts them)
#define CSWIFTLET_KVM_ARM_VCPU_EL1_32BIT 1
#define CSWIFTLET_KVM_ARM_VCPU_PSCI_0_2 2    // PSCI 0.2 (or later) instead of the KVM-specific 0.1 calls

// One-register IDs: KVM_REG_ARM64 | size | coprocessor group | index (api.rst 4.68, "ARM64 registers").
#define CSWIFTLET_KVM_REG_ARM64 0x6000000000000000ULL
#define CSWIFTLET_KVM_REG_SIZE_U32 0x0020000000000000ULL
#define CSWIFTLET_KVM_REG_SIZE_U64 0x0030000000000000ULL
#define CSWIFTLET_KVM_REG_SIZE_U128 0x0040000000000000ULL
#define CSWIFTLET_KVM_REG_ARM_COPROC_SHIFT 16
// Core registers: index = offset of the field in struct kvm_regs, in 32-bit words.
#define CSWIFTLET_KVM_REG_ARM_CORE (0x0010ULL << CSWIFTLET_KVM_REG_ARM_COPROC_SHIFT)
// System registers: op0, op1, CRn, CRm, op2 packed into the index.
#define CSWIFTLET_KVM_REG_ARM64_SYSREG (0x0013ULL << CSWIFTLET_KVM_REG_ARM_COPROC_SHIFT)
#define CSWIFTLET_KVM_REG_ARM64_SYSREG_OP0_SHIFT 14
#define CSWIFTLET_KVM_REG_ARM64_SYSREG_OP1_SHIFT 11
#define CSWIFTLET_KVM_REG_ARM64_SYSREG_CRN_SHIFT 7
#define CSWIFTLET_KVM_REG_ARM64_SYSREG_CRM_SHIFT 3
#define CSWIFTLET_KVM_REG_ARM64_SYSREG_OP2_SHIFT 0

// struct kvm_regs (arm64) starts with struct user_pt_regs { __u64 regs[31]; __u64 sp; __u64 pc; __u64 pstate; }:
// byte offsets of the fields the boot code sets.
#define CSWIFTLET_ARM64_KVM_REGS_X0_OFFSET 0
#define CSWIFTLET_ARM64_KVM_REGS_SP_OFFSET (31 * 8)
#define CSWIFTLET_ARM64_KVM_REGS_PC_OFFSET (32 * 8)
#define CSWIFTLET_ARM64_KVM_REGS_PSTATE_OFFSET (33 * 8)

// PSTATE bits (arch/arm64/include/uapi/asm/ptrace.h).
#define CSWIFTLET_PSR_MODE_EL1H 0x00000005
#define CSWIFTLET_PSR_F_BIT 0x00000040
#define CSWIFTLET_PSR_I_BIT 0x00000080
#define CSWIFTLET_PSR_A_BIT 0x00000100
#define CSWIFTLET_PSR_D_BIT 0x00000200

// VGIC device attributes (Documentation/virt/kvm/devices/arm-vgic.rst and arm-vgic-v3.rst).
#define CSWIFTLET_KVM_DEV_ARM_VGIC_GRP_ADDR 0
#define CSWIFTLET_KVM_DEV_ARM_VGIC_GRP_NR_IRQS 3
#define CSWIFTLET_KVM_DEV_ARM_VGIC_GRP_CTRL 4
#define CSWIFTLET_KVM_DEV_ARM_VGIC_CTRL_INIT 0
#define CSWIFTLET_KVM_VGIC_V2_ADDR_TYPE_DIST 0
#define CSWIFTLET_KVM_VGIC_V2_ADDR_TYPE_CPU 1
#define CSWIFTLET_KVM_VGIC_V3_ADDR_TYPE_DIST 2
#define CSWIFTLET_KVM_VGIC_V3_ADDR_TYPE_REDIST 3

// KVM_IRQ_LINE on arm64: irq = type << 24 | vcpu_index << 16 | number (api.rst 4.25).
#define CSWIFTLET_KVM_ARM_IRQ_TYPE_SHIFT 24
#define CSWIFTLET_KVM_ARM_IRQ_TYPE_SPI 1

#endif
