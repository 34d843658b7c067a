import CSwiftlet
import SwiftletHost
import SwiftletMemory
import SystemPackage

/// The in-kernel arm64 interrupt controller (KVM's VGIC), created through KVM_CREATE_DEVICE: a GICv3 when the host
/// has one, otherwise a GICv2 (Documentation/virt/kvm/devices/arm-vgic-v3.rst, arm-vgic.rst).
public final class AArch64VGIC: Sendable {
    public enum Version: Sendable { case v3, v2 }
    public let version: Version
    public let descriptor: OwnedFileDescriptor

    /// Where the guest finds the GIC's frames.
    public struct Placement: Sendable {
        public var distributor: GuestAddress
        /// GICv3: the first redistributor (one 128 KiB frame pair per vCPU follows).
        public var redistributors: GuestAddress
        /// GICv2: the CPU interface.
        public var cpuInterface: GuestAddress
        /// Interrupt IDs to support: 32 private plus the SPIs, a multiple of 32.
        public var interruptCount: UInt32

        public init(distributor: GuestAddress, redistributors: GuestAddress, cpuInterface: GuestAddress, interruptCount: UInt32) {
            self.distributor = distributor
            self.redistributors = redistributors
            self.cpuInterface = cpuInterface
            self.interruptCount = interruptCount
        }
    }

    /// Creates the VGIC, preferring `preferred` and falling back to the other version, and places its frames. Call
    /// `initialize()` once every vCPU exists.
    /// A GICv2 addresses at most 8 CPUs, so with more vCPUs only a GICv3 will do.
    public init(vm: VirtualMachine, placement: Placement, cpus: Int, preferred: Version = .v3) throws(SwiftletError) {
        var made: (Version, OwnedFileDescriptor)?
        var lastError: SwiftletError?
        let candidates: [Version] = preferred == .v3 ? [.v3, .v2] : [.v2, .v3]
        for version in candidates where version == .v3 || cpus <= 8 {
            let type = version == .v3 ? KVM_DEV_TYPE_ARM_VGIC_V3 : KVM_DEV_TYPE_ARM_VGIC_V2
            do {
                made = (version, try vm.createDevice(type: type.rawValue, name: version == .v3 ? "VGICv3" : "VGICv2"))
                break
            } catch { lastError = error }
        }
        guard let (version, descriptor) = made else {
            throw SwiftletError(.kvmUnsupported, "this host's KVM offers no VGIC for \(cpus) vCPUs (a GICv3, or a GICv2 for up to 8): it cannot run an aarch64 guest", cause: lastError?.cause)
        }
        self.version = version
        self.descriptor = descriptor
        switch version {
        case .v3:
            try setAddress(UInt64(CSWIFTLET_KVM_VGIC_V3_ADDR_TYPE_DIST), placement.distributor, "distributor")
            try setAddress(UInt64(CSWIFTLET_KVM_VGIC_V3_ADDR_TYPE_REDIST), placement.redistributors, "redistributors")
        case .v2:
            try setAddress(UInt64(CSWIFTLET_KVM_VGIC_V2_ADDR_TYPE_DIST), placement.distributor, "distributor")
            try setAddress(UInt64(CSWIFTLET_KVM_VGIC_V2_ADDR_TYPE_CPU), placement.cpuInterface, "CPU interface")
        }
        var count = placement.interruptCount
        try withUnsafeMutablePointer(to: &count) { (pointer) throws(SwiftletError) in
            try setAttribute(group: UInt32(CSWIFTLET_KVM_DEV_ARM_VGIC_GRP_NR_IRQS), attribute: 0, address: UnsafeMutableRawPointer(pointer),
                             what: "the number of interrupts (\(placement.interruptCount))")
        }
    }

    private func setAddress(_ type: UInt64, _ address: GuestAddress, _ what: String) throws(SwiftletError) {
        var value = address.rawValue
        try withUnsafeMutablePointer(to: &value) { (pointer) throws(SwiftletError) in
            try setAttribute(group: UInt32(CSWIFTLET_KVM_DEV_ARM_VGIC_GRP_ADDR), attribute: type,
                             address: UnsafeMutableRawPointer(pointer), what: "the \(what) address \(address)")
        }
    }

    private func setAttribute(group: UInt32, attribute: UInt64, address: UnsafeMutableRawPointer?, what: String) throws(SwiftletError) {
        var request = kvm_device_attr(flags: 0, group: group, attr: attribute, addr: UInt64(UInt(bitPattern: address)))
        do { _ = try ioctl(descriptor.rawValue, CSwiftlet_KVM_SET_DEVICE_ATTR, &request) } catch {
            throw SwiftletError(.kvmUnsupported, "KVM_SET_DEVICE_ATTR on the VGIC (\(what)) failed", cause: error)
        }
    }

    /// Finishes the VGIC's set-up (KVM_DEV_ARM_VGIC_CTRL_INIT); KVM requires every vCPU to exist by then.
    public func initialize() throws(SwiftletError) {
        try setAttribute(group: UInt32(CSWIFTLET_KVM_DEV_ARM_VGIC_GRP_CTRL), attribute: UInt64(CSWIFTLET_KVM_DEV_ARM_VGIC_CTRL_INIT),
                         address: nil, what: "initialization")
    }
}
