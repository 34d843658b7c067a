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

extension X86CPUID {
    enum Register: Sendable {
        case eax, ebx, ecx, edx
        func value(_ entry: kvm_cpuid_entry2) -> UInt32 {
            switch self {
            case .eax: entry.eax
            case .ebx: entry.ebx
            case .ecx: entry.ecx
            case .edx: entry.edx
            }
        }
    }
    /// The CPUID feature words a restore checks: (leaf, subleaf, register, name).
    static let featureWords: [(leaf: UInt32, index: UInt32, register: Register, name: String)] = [
        (1, 0, .ecx, "1.ecx"), (1, 0, .edx, "1.edx"),
        (7, 0, .ebx, "7.ebx"), (7, 0, .ecx, "7.ecx"), (7, 0, .edx, "7.edx"),
        (0xd, 1, .eax, "0xd.1.eax"),
        (0x8000_0001, 0, .ecx, "0x80000001.ecx"), (0x8000_0001, 0, .edx, "0x80000001.edx"),
    ]
    /// Bits KVM changes as the guest runs: OSXSAVE (1.ecx 27, follows CR4), the APIC (1.edx 9, follows the APIC base
    /// MSR), OSPKE (7.ecx 4). (What Swiftlet sets beyond KVM_GET_SUPPORTED_CPUID, the hypervisor bit and the TSC
    /// deadline timer, is in what a restore compares against: `adjusted` of the host's.)
    static let runtimeBits: [String: UInt32] = ["1.ecx": 1 << 27, "1.edx": 1 << 9, "7.ecx": 1 << 4]

    /// What this host offers a vCPU: `supported` (KVM_GET_SUPPORTED_CPUID) with the bits of `readBack` (KVM_GET_CPUID2
    /// of a vCPU given `supported`) added. A KVM that reports the CPU's own features back (this project's PVM host
    /// does: its vCPUs see more than KVM_GET_SUPPORTED_CPUID lists) offers those too; on other hosts the read-back is
    /// what was set.
    public static func offered(supported: [kvm_cpuid_entry2], readBack: [kvm_cpuid_entry2]) -> [kvm_cpuid_entry2] {
        var result = supported
        for entry in readBack {
            guard let index = result.firstIndex(where: { $0.function == entry.function && $0.index == entry.index }) else { continue }
            result[index].eax |= entry.eax
            result[index].ebx |= entry.ebx
            result[index].ecx |= entry.ecx
            result[index].edx |= entry.edx
        }
        return result
    }

    /// The features a snapshot's vCPU had (`saved`, its CPUID) that this host's KVM does not offer (`offered(...)`), as
    /// "leaf.register bit N"; empty when the snapshot can run here. A guest that used a missing feature would
    /// fault on its next use of it, so a restore refuses.
    public static func missingFeatures(saved: [kvm_cpuid_entry2], supported: [kvm_cpuid_entry2]) -> [String] {
        var missing: [String] = []
        for word in featureWords {
            guard let entry = saved.first(where: { $0.function == word.leaf && $0.index == word.index }) else { continue }
            let host = supported.first(where: { $0.function == word.leaf && $0.index == word.index }).map(word.register.value) ?? 0
            let runtime: UInt32 = runtimeBits[word.name] ?? 0
            let lacking = word.register.value(entry) & ~host & ~runtime
            for bit in 0..<32 where lacking & (1 << bit) != 0 { missing.append("\(word.name) bit \(bit)") }
        }
        return missing
    }
}
