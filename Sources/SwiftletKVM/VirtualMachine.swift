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

    /// Gives every region of `memory` to the guest, one slot each. The regions must outlive the VM.
    public func map(_ memory: GuestMemory) throws(SwiftletError) {
        for (slot, region) in memory.regions.enumerated() {
            var description = kvm_userspace_memory_region(
                slot: UInt32(slot), flags: 0, guest_phys_addr: region.start.rawValue, memory_size: region.size,
                userspace_addr: UInt64(UInt(bitPattern: region.host)))
            try call("KVM_SET_USER_MEMORY_REGION (slot \(slot), \(region.size >> 20) MiB at \(region.start))",
                     CSwiftlet_KVM_SET_USER_MEMORY_REGION, &description)
        }
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
