import CSwiftlet
import Glibc
import SwiftletHost
import SystemPackage

/// Why KVM_RUN returned. `io` and `mmio` carry the exit's data buffer inside the kvm_run mapping: for reads the
/// handler fills it before the next `run()`.
public enum VcpuExit {
    case io(port: UInt16, isWrite: Bool, size: Int, data: UnsafeMutableRawBufferPointer)
    case mmio(address: UInt64, isWrite: Bool, data: UnsafeMutableRawBufferPointer)
    case halt
    case shutdown
    case systemEvent(type: UInt32)
    case internalError(suberror: UInt32)
    case failedEntry(reason: UInt64)
    /// KVM_RUN was interrupted by a signal (a kick) or `immediate_exit`.
    case interrupted
    case other(reason: UInt32)
}

/// A vCPU handle and its kvm_run mapping.
///
/// @unchecked Sendable: a vCPU is set up by the thread that creates it and then handed to its own thread, the only
/// one that runs it. `requestExit()` touches only `immediate_exit`, a byte KVM documents for exactly this use.
public final class Vcpu: @unchecked Sendable {
    public let id: Int
    public let descriptor: OwnedFileDescriptor
    private let run: UnsafeMutablePointer<kvm_run>
    private let mapSize: Int

    init(id: Int, descriptor: OwnedFileDescriptor, mapSize: Int) throws(SwiftletError) {
        self.id = id
        self.descriptor = descriptor
        self.mapSize = mapSize
        let pointer = mmap(nil, mapSize, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.rawValue, 0)
        guard let pointer, pointer != MAP_FAILED else {
            throw SwiftletError(.systemCall, "mmap of vCPU \(id)'s kvm_run failed", cause: Errno(rawValue: errno))
        }
        run = pointer.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit { munmap(run, mapSize) }

    private func call<T: BitwiseCopyable>(_ name: String, _ request: UInt, _ argument: inout T) throws(SwiftletError) {
        do { _ = try checkedIoctl(descriptor.rawValue, request, &argument) } catch {
            throw SwiftletError(.systemCall, "\(name) on vCPU \(id) failed", cause: error)
        }
    }

    public func registers() throws(SwiftletError) -> kvm_regs {
        var regs = kvm_regs()
        try call("KVM_GET_REGS", CSwiftlet_KVM_GET_REGS, &regs)
        return regs
    }

    public func setRegisters(_ regs: kvm_regs) throws(SwiftletError) {
        var regs = regs
        try call("KVM_SET_REGS", CSwiftlet_KVM_SET_REGS, &regs)
    }

    public func specialRegisters() throws(SwiftletError) -> kvm_sregs {
        var sregs = kvm_sregs()
        try call("KVM_GET_SREGS", CSwiftlet_KVM_GET_SREGS, &sregs)
        return sregs
    }

    public func setSpecialRegisters(_ sregs: kvm_sregs) throws(SwiftletError) {
        var sregs = sregs
        try call("KVM_SET_SREGS", CSwiftlet_KVM_SET_SREGS, &sregs)
    }

    public func setFPU(_ fpu: kvm_fpu) throws(SwiftletError) {
        var fpu = fpu
        try call("KVM_SET_FPU", CSwiftlet_KVM_SET_FPU, &fpu)
    }

    public func setCPUID(_ table: CPUIDTable) throws(SwiftletError) {
        do { _ = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_SET_CPUID2, table.raw) } catch {
            throw SwiftletError(.systemCall, "KVM_SET_CPUID2 on vCPU \(id) failed", cause: error)
        }
    }

    /// Sets model-specific registers (index, value); all must be accepted.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(SwiftletError) {
        let headerSize = MemoryLayout<kvm_msrs>.size
        let entrySize = MemoryLayout<kvm_msr_entry>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: headerSize + msrs.count * entrySize, alignment: 8)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: headerSize + msrs.count * entrySize)
        raw.storeBytes(of: UInt32(msrs.count), as: UInt32.self)
        for (index, msr) in msrs.enumerated() {
            var entry = kvm_msr_entry()
            entry.index = msr.index
            entry.data = msr.value
            (raw + headerSize + index * entrySize).storeBytes(of: entry, as: kvm_msr_entry.self)
        }
        let written: Int32
        do { written = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_SET_MSRS, raw) } catch {
            throw SwiftletError(.systemCall, "KVM_SET_MSRS on vCPU \(id) failed", cause: error)
        }
        guard Int(written) == msrs.count else {
            let rejected = msrs[Int(written)].index
            throw SwiftletError(.kvmUnsupported, "KVM refused MSR 0x\(String(rejected, radix: 16)) on vCPU \(id)")
        }
    }

    /// Reads, changes and writes back the local APIC's register page (KVM_GET_LAPIC / KVM_SET_LAPIC).
    public func updateLocalAPIC(_ body: (UnsafeMutableRawBufferPointer) -> Void) throws(SwiftletError) {
        var state = kvm_lapic_state()
        try call("KVM_GET_LAPIC", CSwiftlet_KVM_GET_LAPIC, &state)
        withUnsafeMutableBytes(of: &state.regs) { body($0) }
        try call("KVM_SET_LAPIC", CSwiftlet_KVM_SET_LAPIC, &state)
    }

    /// Runs the vCPU until the next exit that needs the VMM.
    @inline(__always)
    public func runUntilExit() throws(SwiftletError) -> VcpuExit {
        if CSwiftlet_ioctl_value(descriptor.rawValue, CSwiftlet_KVM_RUN, 0) == -1 {
            let error = Errno(rawValue: errno)
            if error == .interrupted || error == .resourceTemporarilyUnavailable {
                run.pointee.immediate_exit = 0
                return .interrupted
            }
            throw SwiftletError(.systemCall, "KVM_RUN on vCPU \(id) failed", cause: error)
        }
        switch Int32(run.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = run.pointee.io
            let data = UnsafeMutableRawBufferPointer(start: CSwiftlet_kvm_run_io_data(run),
                                                     count: Int(io.size) * Int(io.count))
            return .io(port: io.port, isWrite: io.direction == UInt8(KVM_EXIT_IO_OUT), size: Int(io.size), data: data)
        case KVM_EXIT_MMIO:
            let length = min(Int(run.pointee.mmio.len), 8)
            let data = UnsafeMutableRawBufferPointer(start: CSwiftlet_kvm_run_mmio_data(run), count: length)
            return .mmio(address: run.pointee.mmio.phys_addr, isWrite: run.pointee.mmio.is_write != 0, data: data)
        case KVM_EXIT_HLT: return .halt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_SYSTEM_EVENT: return .systemEvent(type: run.pointee.system_event.type)
        case KVM_EXIT_INTERNAL_ERROR: return .internalError(suberror: run.pointee.internal.suberror)
        case KVM_EXIT_FAIL_ENTRY: return .failedEntry(reason: run.pointee.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTR: return .interrupted
        default: return .other(reason: run.pointee.exit_reason)
        }
    }

    /// Makes the vCPU leave KVM_RUN: sets immediate_exit (for a vCPU about to enter) and the caller sends the
    /// kick signal (for one inside).
    public func requestExit() {
        run.pointee.immediate_exit = 1
    }
}
