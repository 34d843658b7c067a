import CSwiftlet
import SwiftletKVM
import Testing

@Suite struct X86CPUIDTests {
    func entry(_ function: UInt32, index: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) -> kvm_cpuid_entry2 {
        var entry = kvm_cpuid_entry2()
        entry.function = function
        entry.index = index
        entry.eax = eax
        entry.ebx = ebx
        entry.ecx = ecx
        entry.edx = edx
        return entry
    }

    @Test func leafOneCarriesTheAPICIDAndCount() {
        let table = [entry(1, ebx: 0xff00_00aa, edx: 0)]
        let adjusted = X86CPUID.adjusted(table, vcpu: 3, cpus: 4)[0]
        #expect(adjusted.ebx >> 24 == 3)
        #expect((adjusted.ebx >> 16) & 0xff == 4)
        #expect(adjusted.ebx & 0xff == 0xaa)
        #expect(adjusted.ecx & (1 << 31) != 0)
        #expect(adjusted.edx & (1 << 28) != 0)
        #expect(X86CPUID.adjusted(table, vcpu: 0, cpus: 1)[0].edx & (1 << 28) == 0)
        #expect(adjusted.ecx & (1 << 24) == 0)
        #expect(X86CPUID.adjusted(table, vcpu: 0, cpus: 1, tscDeadlineTimer: true)[0].ecx & (1 << 24) != 0)
    }

    @Test func extendedTopologyDescribesOneThreadPerCore() {
        let table = [entry(0xb, index: 0), entry(0xb, index: 1), entry(0xb, index: 2, ecx: 2)]
        let adjusted = X86CPUID.adjusted(table, vcpu: 5, cpus: 6)
        #expect(adjusted.allSatisfy { $0.edx == 5 })
        #expect(adjusted[0].ebx == 1 && adjusted[0].ecx == 0x100)
        #expect(adjusted[1].ebx == 6 && adjusted[1].eax == 3 && adjusted[1].ecx == 0x201)
        #expect(adjusted[2].eax == 0 && adjusted[2].ebx == 0 && adjusted[2].ecx == 2)
    }

    @Test func paravirtSignatureIsKVM() {
        let adjusted = X86CPUID.adjusted([entry(0x4000_0000)], vcpu: 0, cpus: 1)[0]
        let bytes = [adjusted.ebx, adjusted.ecx, adjusted.edx].flatMap { value in (0..<4).map { UInt8((value >> ($0 * 8)) & 0xff) } }
        #expect(String(decoding: bytes.prefix(9), as: UTF8.self) == "KVMKVMKVM")
    }
}
