import CSwiftlet
import SwiftletBoot
import SwiftletHost
import SwiftletKVM

/// Brings a vCPU to the state the 64-bit boot protocol expects: CPUID, boot MSRs, FPU, local APIC wiring, and the
/// long-mode registers from the boot loader.
enum X86Vcpu {
    // MSR numbers: Intel SDM vol. 4.
    static let bootMSRs: [(index: UInt32, value: UInt64)] = [
        (0x174, 0), (0x175, 0), (0x176, 0),                         // IA32_SYSENTER_CS/ESP/EIP
        (0xc000_0081, 0), (0xc000_0082, 0), (0xc000_0083, 0), (0xc000_0084, 0), // STAR, LSTAR, CSTAR, SYSCALL_MASK
        (0xc000_0102, 0),                                           // KERNEL_GS_BASE
        (0x10, 0),                                                  // TSC
        (0x1a0, 1),                                                 // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6),                                     // MTRRdefType: MTRRs on, default write-back
    ]
    static let localApicLint0: Int = 0x350, localApicLint1: Int = 0x360
    static let deliveryModeExtINT: UInt32 = 7, deliveryModeNMI: UInt32 = 4

    static func configure(_ vcpu: Vcpu, cpus: Int, cpuid: CPUIDTable, tscDeadlineTimer: Bool, boot: X86BootState) throws(SwiftletError) {
        try vcpu.setCPUID(CPUIDTable.with(X86CPUID.adjusted(cpuid.entries, vcpu: vcpu.id, cpus: cpus,
                                                            tscDeadlineTimer: tscDeadlineTimer)))
        try vcpu.setMSRs(bootMSRs)

        var fpu = kvm_fpu()
        fpu.fcw = 0x37f
        fpu.mxcsr = 0x1f80
        try vcpu.setFPU(fpu)

        // LINT0 receives the PIC's ExtINT and LINT1 the NMI, as on a PC (and as the MP table says).
        try vcpu.updateLocalAPIC { registers in
            func setDeliveryMode(_ offset: Int, _ mode: UInt32) {
                let value = registers.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
                registers.storeBytes(of: (value & ~0x700) | (mode << 8), toByteOffset: offset, as: UInt32.self)
            }
            setDeliveryMode(localApicLint0, deliveryModeExtINT)
            setDeliveryMode(localApicLint1, deliveryModeNMI)
        }

        var sregs = try vcpu.specialRegisters()
        sregs.cs = segment(boot.code)
        sregs.ds = segment(boot.data)
        sregs.es = sregs.ds
        sregs.fs = sregs.ds
        sregs.gs = sregs.ds
        sregs.ss = sregs.ds
        sregs.tr = segment(boot.tss)
        sregs.gdt.base = boot.gdt.base
        sregs.gdt.limit = boot.gdt.limit
        sregs.idt.base = boot.idt.base
        sregs.idt.limit = boot.idt.limit
        sregs.cr0 = boot.cr0
        sregs.cr3 = boot.cr3
        sregs.cr4 = boot.cr4
        sregs.efer = boot.efer
        try vcpu.setSpecialRegisters(sregs)

        var regs = kvm_regs()
        regs.rip = boot.rip
        regs.rsp = boot.rsp
        regs.rbp = boot.rsp
        regs.rsi = boot.rsi
        regs.rflags = boot.rflags
        try vcpu.setRegisters(regs)
    }

    static func segment(_ segment: X86Segment) -> kvm_segment {
        var result = kvm_segment()
        result.base = segment.base
        result.limit = segment.limit
        result.selector = segment.selector
        result.type = segment.type
        result.present = segment.present ? 1 : 0
        result.dpl = segment.dpl
        result.db = segment.defaultSize ? 1 : 0
        result.s = segment.system ? 1 : 0
        result.l = segment.long ? 1 : 0
        result.g = segment.granularity ? 1 : 0
        return result
    }
}
