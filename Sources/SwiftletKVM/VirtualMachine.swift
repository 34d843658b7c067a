import CSwiftlet
import Glibc
import SwiftletHost
import SwiftletMemory
import SystemPackage

/// A KVM VM handle: memory slots, the in-kernel irqchip and PIT, irqfd/ioeventfd registration, vCPU creation.
public final class VirtualMachine: Sendable {
    public let kvm: KVM
    public let descriptor: OwnedFileDescriptor

    init(kvm: KVM, descriptor: OwnedFileDescriptor) {
        self.kvm = kvm
        self.descriptor = descriptor
    }

    private func call<T: BitwiseCopyable>(_ name: String, _ request: UInt, _ argument: inout T) throws(SwiftletError) {
        do { _ = try checkedIoctl(descriptor.rawValue, request, &argument) } catch {
            throw SwiftletError(.systemCall, "\(name) failed", cause: error)
        }
    }

    private func call(_ name: String, _ request: UInt, value: UInt) throws(SwiftletError) {
        do { _ = try checkedIoctl(descriptor.rawValue, request, value: value) } catch {
            throw SwiftletError(.systemCall, "\(name) failed", cause: error)
        }
    }

    /// Gives every region of `memory` to the guest, one slot each. The regions must outlive the VM. With
    /// `logDirtyPages` (KVM_MEM_LOG_DIRTY_PAGES), KVM records the pages the guest writes (`takeDirtyLog`); it also
    /// maps the guest with 4 KiB pages, which costs a little speed.
    public func map(_ memory: GuestMemory, logDirtyPages: Bool = false) throws(SwiftletError) {
        for (slot, region) in memory.regions.enumerated() {
            var description = kvm_userspace_memory_region(
                slot: UInt32(slot), flags: logDirtyPages ? 1 : 0, // KVM_MEM_LOG_DIRTY_PAGES
                guest_phys_addr: region.start.rawValue, memory_size: region.size,
                userspace_addr: UInt64(UInt(bitPattern: region.host)))
            try call("KVM_SET_USER_MEMORY_REGION (slot \(slot), \(region.size >> 20) MiB at \(region.start))",
                     CSwiftlet_KVM_SET_USER_MEMORY_REGION, &description)
        }
    }

    /// The pages the guest wrote in each region of `memory` (mapped with `logDirtyPages`) since the last call, as
    /// 64-page words (KVM_GET_DIRTY_LOG, which clears the log as it reads it; its unsigned longs are these words on
    /// the 64-bit little-endian hosts Swiftlet runs on).
    public func takeDirtyLog(_ memory: GuestMemory) throws(SwiftletError) -> [[UInt64]] {
        var logs: [[UInt64]] = []
        for (slot, region) in memory.regions.enumerated() {
            let pages = Int(region.size / hostPageSize)
            var words = [UInt64](repeating: 0, count: (pages + 63) / 64)
            var failure: Errno?
            words.withUnsafeMutableBytes { buffer in
                var log = kvm_dirty_log()
                log.slot = UInt32(slot)
                log.dirty_bitmap = buffer.baseAddress
                // kvm_dirty_log holds a pointer in a union, which Swift does not see as BitwiseCopyable.
                withUnsafeMutableBytes(of: &log) { argument in
                    do throws(Errno) { _ = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_DIRTY_LOG, argument.baseAddress) } catch {
                        failure = error
                    }
                }
            }
            if let failure { throw SwiftletError(.systemCall, "KVM_GET_DIRTY_LOG (slot \(slot)) failed", cause: failure) }
            logs.append(words)
        }
        return logs
    }

    /// x86: where KVM keeps its three-page TSS and its identity-map page (guest-physical space that is not RAM).
    public func setSystemPages(tss: GuestAddress, identityMap: GuestAddress) throws(SwiftletError) {
        var identity = identityMap.rawValue
        try call("KVM_SET_IDENTITY_MAP_ADDR", CSwiftlet_KVM_SET_IDENTITY_MAP_ADDR, &identity)
        try call("KVM_SET_TSS_ADDR", CSwiftlet_KVM_SET_TSS_ADDR, value: UInt(tss.rawValue))
    }

    /// x86: the in-kernel PIC, IOAPIC and local APICs, and the PIT. Must come before vCPUs are created.
    public func createInterruptControllers() throws(SwiftletError) {
        try call("KVM_CREATE_IRQCHIP", CSwiftlet_KVM_CREATE_IRQCHIP, value: 0)
        var pit = kvm_pit_config()
        try call("KVM_CREATE_PIT2", CSwiftlet_KVM_CREATE_PIT2, &pit)
    }

    /// x86: the guest's kvmclock, in nanoseconds (KVM_GET_CLOCK): what a pause saves so that the guest's time stops.
    public func clock() throws(SwiftletError) -> UInt64 {
        var data = kvm_clock_data()
        try call("KVM_GET_CLOCK", CSwiftlet_KVM_GET_CLOCK, &data)
        return data.clock
    }

    /// x86: sets the guest's kvmclock (KVM_SET_CLOCK), so that it goes on from `nanoseconds` (a resume).
    public func setClock(_ nanoseconds: UInt64) throws(SwiftletError) {
        var data = kvm_clock_data()
        data.clock = nanoseconds
        try call("KVM_SET_CLOCK", CSwiftlet_KVM_SET_CLOCK, &data)
    }

    /// Wires `eventFd` to interrupt line `gsi`: a write to it raises the interrupt without a trip through the VMM.
    public func registerIrqfd(_ eventFd: EventFd, gsi: UInt32) throws(SwiftletError) {
        var request = kvm_irqfd()
        request.fd = UInt32(bitPattern: eventFd.rawValue)
        request.gsi = gsi
        try call("KVM_IRQFD (GSI \(gsi))", CSwiftlet_KVM_IRQFD, &request)
    }

    /// Wires guest writes of `length` bytes to MMIO `address` (whose value equals `datamatch`, when given) to
    /// `eventFd`: KVM completes such a write in the kernel and signals the eventfd, with no exit to the VMM.
    public func registerIoeventfd(_ eventFd: EventFd, address: UInt64, length: UInt32, datamatch: UInt64?) throws(SwiftletError) {
        var request = kvm_ioeventfd()
        request.addr = address
        request.len = length
        request.fd = eventFd.rawValue
        if let datamatch {
            request.datamatch = datamatch
            request.flags = UInt32(1 << kvm_ioeventfd_flag_nr_datamatch)
        }
        try call("KVM_IOEVENTFD (0x\(String(address, radix: 16)))", CSwiftlet_KVM_IOEVENTFD, &request)
    }

    /// Creates vCPU `id` (its APIC ID).
    public func createVcpu(id: Int) throws(SwiftletError) -> Vcpu {
        let fd: Int32
        do { fd = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_CREATE_VCPU, value: UInt(id)) } catch {
            throw SwiftletError(.systemCall, "KVM_CREATE_VCPU \(id) failed", cause: error)
        }
        return try Vcpu(id: id, descriptor: OwnedFileDescriptor(taking: fd), mapSize: kvm.vcpuMapSize)
    }
}
