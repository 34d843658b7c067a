import CSwiftlet
import Glibc
import SwiftletHost
import SwiftletSnapshot

/// Everything KVM holds of one x86 vCPU that a snapshot must carry, in KVM's own structures (their layouts are KVM's
/// ABI, so the records are those structures' bytes). Taken of a vCPU that is out of KVM_RUN (paused), set back on a
/// fresh vCPU of a fresh VM before its first KVM_RUN.
public struct X86VcpuState: Sendable {
    public var cpuid: [kvm_cpuid_entry2]
    public var mpState: kvm_mp_state
    public var registers: kvm_regs
    public var specialRegisters: kvm_sregs
    /// The FPU, SSE and AVX state (the legacy 4 KiB KVM_GET_XSAVE area: AMX tiles, which need KVM_GET_XSAVE2's larger
    /// one, are not offered to guests).
    public var xsave: kvm_xsave
    public var xcrs: kvm_xcrs
    public var debugRegisters: kvm_debugregs
    public var localAPIC: kvm_lapic_state
    /// Every MSR in KVM's index list that KVM returned for this vCPU, the TSC and kvmclock's among them.
    public var msrs: [kvm_msr_entry]
    public var events: kvm_vcpu_events
    /// The guest's TSC frequency: a restore on a host whose TSC runs at another rate sets it, so guest time keeps its
    /// pace.
    public var tscKHz: UInt32

    /// The most CPUID entries and MSRs a snapshot may hold (KVM's own limits are 256 CPUID entries; its MSR index
    /// list is well under 1024 on every host seen).
    public static let maximumCPUIDEntries = 256
    public static let maximumMSRs = 1024
}

extension X86VcpuState {
    /// Writes the state as records of the vCPU's snapshot record.
    public func save(into encoder: inout SnapshotEncoder) {
        encoder.record("cpid", array: cpuid)
        encoder.record("mpst", mpState)
        encoder.record("regs", registers)
        encoder.record("sreg", specialRegisters)
        encoder.record("xsav", xsave)
        encoder.record("xcrs", xcrs)
        encoder.record("dbgr", debugRegisters)
        encoder.record("lapc", localAPIC)
        encoder.record("msrs", array: msrs)
        encoder.record("evnt", events)
        encoder.record("tsck", integer: UInt64(tscKHz))
    }

    /// Reads what `save(into:)` wrote; every record must be there, at its structure's exact size.
    public init(from decoder: SnapshotDecoder) throws(SnapshotError) {
        cpuid = try decoder.array("cpid", of: kvm_cpuid_entry2.self, maximum: Self.maximumCPUIDEntries)
        mpState = try decoder.value("mpst", as: kvm_mp_state.self)
        registers = try decoder.value("regs", as: kvm_regs.self)
        specialRegisters = try decoder.value("sreg", as: kvm_sregs.self)
        xsave = try decoder.value("xsav", as: kvm_xsave.self)
        xcrs = try decoder.value("xcrs", as: kvm_xcrs.self)
        debugRegisters = try decoder.value("dbgr", as: kvm_debugregs.self)
        localAPIC = try decoder.value("lapc", as: kvm_lapic_state.self)
        msrs = try decoder.array("msrs", of: kvm_msr_entry.self, maximum: Self.maximumMSRs)
        events = try decoder.value("evnt", as: kvm_vcpu_events.self)
        let khz = try decoder.integer("tsck")
        guard khz <= UInt64(UInt32.max) else { throw .malformed("a TSC frequency of \(khz) kHz in \(decoder.context)") }
        tscKHz = UInt32(khz)
    }
}

extension Vcpu {
    private func get<T>(_ name: String, _ request: UInt, _ initial: T) throws(SwiftletError) -> T {
        var value = initial
        do { _ = try SwiftletHost.ioctl(descriptor.rawValue, request, &value) } catch {
            throw SwiftletError(.systemCall, "\(name) on vCPU \(id) failed", cause: error)
        }
        return value
    }

    private func set<T>(_ name: String, _ request: UInt, _ value: T) throws(SwiftletError) {
        var value = value
        do { _ = try SwiftletHost.ioctl(descriptor.rawValue, request, &value) } catch {
            throw SwiftletError(.systemCall, "\(name) on vCPU \(id) failed", cause: error)
        }
    }

    /// The vCPU's state, for a snapshot. `msrIndices` is the host KVM's MSR list (`KVM.msrIndexList()`); an MSR KVM
    /// will not read for this vCPU is left out. The order is Firecracker's: the LAPIC before the MSRs (the TSC
    /// deadline is one), the events last.
    public func saveX86State(msrIndices: [UInt32]) throws(SwiftletError) -> X86VcpuState {
        let mpState = try get("KVM_GET_MP_STATE", CSwiftlet_KVM_GET_MP_STATE, kvm_mp_state())
        let registers = try get("KVM_GET_REGS", CSwiftlet_KVM_GET_REGS, kvm_regs())
        let specialRegisters = try get("KVM_GET_SREGS", CSwiftlet_KVM_GET_SREGS, kvm_sregs())
        let xsave = try get("KVM_GET_XSAVE", CSwiftlet_KVM_GET_XSAVE, kvm_xsave())
        let xcrs = try get("KVM_GET_XCRS", CSwiftlet_KVM_GET_XCRS, kvm_xcrs())
        let debugRegisters = try get("KVM_GET_DEBUGREGS", CSwiftlet_KVM_GET_DEBUGREGS, kvm_debugregs())
        let localAPIC = try get("KVM_GET_LAPIC", CSwiftlet_KVM_GET_LAPIC, kvm_lapic_state())
        let khz: Int32
        do { khz = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_TSC_KHZ, value: 0) } catch {
            throw SwiftletError(.systemCall, "KVM_GET_TSC_KHZ on vCPU \(id) failed", cause: error)
        }
        let cpuid = try savedCPUID()
        let msrs = try readMSRs(msrIndices)
        let events = try get("KVM_GET_VCPU_EVENTS", CSwiftlet_KVM_GET_VCPU_EVENTS, kvm_vcpu_events())
        return X86VcpuState(cpuid: cpuid, mpState: mpState, registers: registers, specialRegisters: specialRegisters,
                            xsave: xsave, xcrs: xcrs, debugRegisters: debugRegisters, localAPIC: localAPIC, msrs: msrs,
                            events: events, tscKHz: UInt32(khz))
    }

    /// Sets `state` on this vCPU, which must not have run yet. The order is Firecracker's: CPUID first (KVM checks
    /// the other state against it), the TSC frequency where it differs, the events last.
    public func restoreX86State(_ state: X86VcpuState) throws(SwiftletError) {
        try setCPUID(CPUIDTable.with(state.cpuid))
        if state.tscKHz != 0 {
            let current = (try? checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_TSC_KHZ, value: 0)).map { UInt32($0) }
            if current != state.tscKHz {
                do { _ = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_SET_TSC_KHZ, value: UInt(state.tscKHz)) } catch {
                    throw SwiftletError(.kvmUnsupported, "the snapshot's guest TSC runs at \(state.tscKHz) kHz and this host's KVM cannot set vCPU \(id)'s to it (KVM_SET_TSC_KHZ)", cause: error)
                }
            }
        }
        try set("KVM_SET_MP_STATE", CSwiftlet_KVM_SET_MP_STATE, state.mpState)
        try set("KVM_SET_REGS", CSwiftlet_KVM_SET_REGS, state.registers)
        try set("KVM_SET_SREGS", CSwiftlet_KVM_SET_SREGS, state.specialRegisters)
        try set("KVM_SET_XSAVE", CSwiftlet_KVM_SET_XSAVE, state.xsave)
        try set("KVM_SET_XCRS", CSwiftlet_KVM_SET_XCRS, state.xcrs)
        try set("KVM_SET_DEBUGREGS", CSwiftlet_KVM_SET_DEBUGREGS, state.debugRegisters)
        try set("KVM_SET_LAPIC", CSwiftlet_KVM_SET_LAPIC, state.localAPIC)
        try setMSRs(state.msrs.map { (index: $0.index, value: $0.data) })
        try set("KVM_SET_VCPU_EVENTS", CSwiftlet_KVM_SET_VCPU_EVENTS, state.events)
    }

    /// IA32_TSC, the guest's time-stamp counter.
    public static let tscMSR: UInt32 = 0x10

    /// The guest's TSC now (KVM_GET_MSRS of IA32_TSC).
    public func timeStampCounter() throws(SwiftletError) -> UInt64 {
        guard let entry = try readMSRs([Self.tscMSR]).first else {
            throw SwiftletError(.kvmUnsupported, "KVM would not read IA32_TSC of vCPU \(id)")
        }
        return entry.data
    }

    /// The guest TSC's frequency (KVM_GET_TSC_KHZ).
    public func timeStampCounterKilohertz() throws(SwiftletError) -> UInt32 {
        do { return UInt32(try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_TSC_KHZ, value: 0)) } catch {
            throw SwiftletError(.systemCall, "KVM_GET_TSC_KHZ on vCPU \(id) failed", cause: error)
        }
    }

    /// The CPUID table set on this vCPU (KVM_GET_CPUID2).
    public func savedCPUID() throws(SwiftletError) -> [kvm_cpuid_entry2] {
        let table = CPUIDTable(capacity: X86VcpuState.maximumCPUIDEntries)
        do { _ = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_CPUID2, table.raw) } catch {
            throw SwiftletError(.systemCall, "KVM_GET_CPUID2 on vCPU \(id) failed", cause: error)
        }
        return table.entries
    }

    /// The MSRs of `indices` that KVM reads for this vCPU. KVM_GET_MSRS stops at the first it refuses; that one is
    /// left out and the read goes on after it, so this makes at most `indices.count` calls.
    private func readMSRs(_ indices: [UInt32]) throws(SwiftletError) -> [kvm_msr_entry] {
        precondition(indices.count <= X86VcpuState.maximumMSRs)
        let headerSize = MemoryLayout<kvm_msrs>.size
        let entrySize = MemoryLayout<kvm_msr_entry>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: headerSize + max(indices.count, 1) * entrySize, alignment: 8)
        defer { raw.deallocate() }
        var result: [kvm_msr_entry] = []
        var start = 0
        while start < indices.count {
            let batch = indices[start...]
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: headerSize + batch.count * entrySize)
            raw.storeBytes(of: UInt32(batch.count), as: UInt32.self)
            for (offset, index) in batch.enumerated() {
                var entry = kvm_msr_entry()
                entry.index = index
                (raw + headerSize + offset * entrySize).storeBytes(of: entry, as: kvm_msr_entry.self)
            }
            let read: Int
            do { read = Int(try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_MSRS, raw)) } catch {
                throw SwiftletError(.systemCall, "KVM_GET_MSRS on vCPU \(id) failed", cause: error)
            }
            for offset in 0..<read { result.append((raw + headerSize + offset * entrySize).load(as: kvm_msr_entry.self)) }
            start += read + 1 // the entry at `read`, if any, was refused
        }
        return result
    }
}

/// The x86 VM-wide state KVM holds: the two PICs, the IOAPIC, the PIT and kvmclock.
public struct X86VMState: Sendable {
    public var picMaster: kvm_irqchip
    public var picSlave: kvm_irqchip
    public var ioapic: kvm_irqchip
    public var pit: kvm_pit_state2
    public var clock: kvm_clock_data

    public func save(into encoder: inout SnapshotEncoder) {
        encoder.record("picm", picMaster)
        encoder.record("pics", picSlave)
        encoder.record("ioap", ioapic)
        encoder.record("pit2", pit)
        encoder.record("clck", clock)
    }

    public init(from decoder: SnapshotDecoder) throws(SnapshotError) {
        picMaster = try decoder.value("picm", as: kvm_irqchip.self)
        picSlave = try decoder.value("pics", as: kvm_irqchip.self)
        ioapic = try decoder.value("ioap", as: kvm_irqchip.self)
        pit = try decoder.value("pit2", as: kvm_pit_state2.self)
        clock = try decoder.value("clck", as: kvm_clock_data.self)
        let chips = [(picMaster, KVM_IRQCHIP_PIC_MASTER, "picm"), (picSlave, KVM_IRQCHIP_PIC_SLAVE, "pics"), (ioapic, KVM_IRQCHIP_IOAPIC, "ioap")]
        for (chip, id, tag) in chips where chip.chip_id != UInt32(id) {
            throw .malformed("record '\(tag)' in \(decoder.context) holds irqchip \(chip.chip_id), not \(id)")
        }
    }

    init(picMaster: kvm_irqchip, picSlave: kvm_irqchip, ioapic: kvm_irqchip, pit: kvm_pit_state2, clock: kvm_clock_data) {
        self.picMaster = picMaster
        self.picSlave = picSlave
        self.ioapic = ioapic
        self.pit = pit
        self.clock = clock
    }
}

extension VirtualMachine {
    private func irqchip(_ id: Int32) throws(SwiftletError) -> kvm_irqchip {
        var chip = kvm_irqchip()
        chip.chip_id = UInt32(id)
        do { _ = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_IRQCHIP, &chip) } catch {
            throw SwiftletError(.systemCall, "KVM_GET_IRQCHIP (chip \(id)) failed", cause: error)
        }
        return chip
    }

    private func set<T>(_ name: String, _ request: UInt, _ value: T) throws(SwiftletError) {
        var value = value
        do { _ = try SwiftletHost.ioctl(descriptor.rawValue, request, &value) } catch {
            throw SwiftletError(.systemCall, "\(name) failed", cause: error)
        }
    }

    /// The interrupt controllers, the PIT and kvmclock (with its flags, so that a restore can tell a stable clock).
    public func saveX86State() throws(SwiftletError) -> X86VMState {
        var pit = kvm_pit_state2()
        do { _ = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_PIT2, &pit) } catch {
            throw SwiftletError(.systemCall, "KVM_GET_PIT2 failed", cause: error)
        }
        var clock = kvm_clock_data()
        do { _ = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_CLOCK, &clock) } catch {
            throw SwiftletError(.systemCall, "KVM_GET_CLOCK failed", cause: error)
        }
        return X86VMState(picMaster: try irqchip(KVM_IRQCHIP_PIC_MASTER), picSlave: try irqchip(KVM_IRQCHIP_PIC_SLAVE),
                          ioapic: try irqchip(KVM_IRQCHIP_IOAPIC), pit: pit, clock: clock)
    }

    /// Sets `state` on this VM, whose interrupt controllers and PIT exist (`createInterruptControllers`). The clock
    /// goes on from the saved value: guest time stands still from the snapshot to the restore, as across a pause.
    public func restoreX86State(_ state: X86VMState) throws(SwiftletError) {
        try set("KVM_SET_IRQCHIP (PIC master)", CSwiftlet_KVM_SET_IRQCHIP, state.picMaster)
        try set("KVM_SET_IRQCHIP (PIC slave)", CSwiftlet_KVM_SET_IRQCHIP, state.picSlave)
        try set("KVM_SET_IRQCHIP (IOAPIC)", CSwiftlet_KVM_SET_IRQCHIP, state.ioapic)
        try set("KVM_SET_PIT2", CSwiftlet_KVM_SET_PIT2, state.pit)
        var clock = kvm_clock_data()
        clock.clock = state.clock.clock
        try set("KVM_SET_CLOCK", CSwiftlet_KVM_SET_CLOCK, clock)
    }
}

extension KVM {
    /// The MSRs this host's KVM saves and restores (KVM_GET_MSR_INDEX_LIST), at most `X86VcpuState.maximumMSRs`.
    public func msrIndexList() throws(SwiftletError) -> [UInt32] {
        let capacity = X86VcpuState.maximumMSRs
        let raw = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<kvm_msr_list>.size + capacity * 4, alignment: 8)
        defer { raw.deallocate() }
        raw.storeBytes(of: UInt32(capacity), as: UInt32.self)
        do { _ = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_MSR_INDEX_LIST, raw) } catch {
            throw SwiftletError(.kvmUnsupported, "KVM_GET_MSR_INDEX_LIST failed (more than \(capacity) MSRs?)", cause: error)
        }
        let count = min(Int(raw.load(as: UInt32.self)), capacity)
        let base = raw + MemoryLayout<kvm_msr_list>.size
        return (0..<count).map { base.load(fromByteOffset: $0 * 4, as: UInt32.self) }
    }
}
