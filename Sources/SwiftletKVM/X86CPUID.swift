import CSwiftlet

/// Per-vCPU adjustments of the CPUID table KVM supports: the APIC ID, the topology the MP table describes (one
/// package, `cpus` cores, one thread each), the hypervisor bit and the KVM paravirt signature.
/// Leaf numbers and fields: Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 appendix E.
public enum X86CPUID {
    /// `tscDeadlineTimer`: the in-kernel local APIC emulates TSC-deadline mode (KVM_CAP_TSC_DEADLINE_TIMER), which
    /// KVM_GET_SUPPORTED_CPUID does not report by itself. Without it Linux calibrates the APIC timer against the PIT
    /// at boot, a quarter of a second.
    public static func adjusted(_ entries: [kvm_cpuid_entry2], vcpu: Int, cpus: Int, tscDeadlineTimer: Bool = false) -> [kvm_cpuid_entry2] {
        let apicID = UInt32(vcpu)
        let count = UInt32(cpus)
        // Bits needed to number `cpus` cores in the APIC ID.
        let coreBits = UInt32(cpus <= 1 ? 0 : (Int.bitWidth - (cpus - 1).leadingZeroBitCount))
        return entries.map { original in
            var entry = original
            switch entry.function {
            case 0x1:
                // EBX: [31:24] initial APIC ID, [23:16] logical processors per package, [15:8] CLFLUSH line in qwords.
                entry.ebx = (apicID << 24) | (count << 16) | (8 << 8) | (entry.ebx & 0xff)
                entry.ecx |= 1 << 31 // hypervisor present
                if tscDeadlineTimer { entry.ecx |= 1 << 24 }
                if cpus > 1 { entry.edx |= 1 << 28 } else { entry.edx &= ~(1 << 28) } // HTT: more than one logical CPU
            case 0x4:
                // Deterministic cache parameters: [31:26] cores per package - 1; [25:14] threads sharing this cache - 1
                // (1 for L1/L2, every core for the last level).
                guard entry.eax & 0x1f != 0 else { break }
                let level = (entry.eax >> 5) & 0x7
                let sharing: UInt32 = level >= 3 ? count - 1 : 0
                entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26)
            case 0xb, 0x1f:
                // Extended topology: subleaf 0 is the SMT level (1 thread), subleaf 1 the core level.
                entry.edx = apicID
                switch entry.index {
                case 0: entry.eax = 0; entry.ebx = 1; entry.ecx = 0 | (1 << 8)
                case 1: entry.eax = coreBits; entry.ebx = count; entry.ecx = 1 | (2 << 8)
                default: entry.eax = 0; entry.ebx = 0; entry.ecx = entry.index
                }
            case 0x4000_0000:
                // KVM's paravirt signature leaf: "KVMKVMKVM\0\0\0", highest paravirt leaf 0x40000001.
                entry.eax = 0x4000_0001
                entry.ebx = 0x4b4d_564b
                entry.ecx = 0x564b_4d56
                entry.edx = 0x4d
            case 0x8000_0008:
                // AMD: ECX [15:12] APIC ID size, [7:0] cores per package - 1.
                entry.ecx = (coreBits << 12) | (count - 1)
            default:
                break
            }
            return entry
        }
    }
}
