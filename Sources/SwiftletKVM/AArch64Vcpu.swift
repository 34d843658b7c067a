import CSwiftlet
import SwiftletHost
import SwiftletMemory
import SystemPackage

extension VirtualMachine {
    /// The vCPU target this host's KVM prefers (KVM_ARM_PREFERRED_TARGET), for KVM_ARM_VCPU_INIT. arm64 hosts only.
    public func preferredAArch64Target() throws(SwiftletError) -> CSwiftlet_kvm_vcpu_init {
        var target = CSwiftlet_kvm_vcpu_init()
        do { _ = try ioctl(descriptor.rawValue, CSwiftlet_KVM_ARM_PREFERRED_TARGET, &target) } catch {
            throw SwiftletError(.kvmUnsupported, "KVM_ARM_PREFERRED_TARGET failed: this host's KVM cannot run an aarch64 guest", cause: error)
        }
        return target
    }

    /// Creates an in-kernel device (KVM_CREATE_DEVICE) and returns its fd.
    public func createDevice(type: UInt32, name: String) throws(SwiftletError) -> OwnedFileDescriptor {
        var request = kvm_create_device()
        request.type = type
        do { _ = try ioctl(descriptor.rawValue, CSwiftlet_KVM_CREATE_DEVICE, &request) } catch {
            throw SwiftletError(.kvmUnsupported, "KVM_CREATE_DEVICE (\(name)) failed", cause: error)
        }
        return OwnedFileDescriptor(taking: Int32(bitPattern: request.fd))
    }
}

extension Vcpu {
    /// KVM_ARM_VCPU_INIT with `target` and PSCI 0.2; every vCPU but the first starts powered off, to be started by
    /// the guest's PSCI CPU_ON.
    public func initializeAArch64(target: CSwiftlet_kvm_vcpu_init, poweredOff: Bool) throws(SwiftletError) {
        var request = target
        request.features = (0, 0, 0, 0, 0, 0, 0)
        var features: UInt32 = 1 << CSWIFTLET_KVM_ARM_VCPU_PSCI_0_2
        if poweredOff { features |= 1 << CSWIFTLET_KVM_ARM_VCPU_POWER_OFF }
        request.features.0 = features
        do { _ = try ioctl(descriptor.rawValue, CSwiftlet_KVM_ARM_VCPU_INIT, &request) } catch {
            throw SwiftletError(.kvmUnsupported, "KVM_ARM_VCPU_INIT on vCPU \(id) (target \(target.target)) failed", cause: error)
        }
    }

    /// Writes one 64-bit register (KVM_SET_ONE_REG).
    public func setRegister(_ register: UInt64, _ value: UInt64) throws(SwiftletError) {
        var value = value
        let result = withUnsafeMutablePointer(to: &value) { pointer in
            var request = kvm_one_reg(id: register, addr: UInt64(UInt(bitPattern: pointer)))
            return Result { () throws(Errno) in try ioctl(descriptor.rawValue, CSwiftlet_KVM_SET_ONE_REG, &request) }
        }
        do { _ = try result.get() } catch {
            throw SwiftletError(.systemCall, "KVM_SET_ONE_REG 0x\(String(register, radix: 16)) on vCPU \(id) failed", cause: error)
        }
    }

    /// Reads one 64-bit register (KVM_GET_ONE_REG).
    public func register(_ register: UInt64) throws(SwiftletError) -> UInt64 {
        var value: UInt64 = 0
        let result = withUnsafeMutablePointer(to: &value) { pointer in
            var request = kvm_one_reg(id: register, addr: UInt64(UInt(bitPattern: pointer)))
            return Result { () throws(Errno) in try ioctl(descriptor.rawValue, CSwiftlet_KVM_GET_ONE_REG, &request) }
        }
        do { _ = try result.get() } catch {
            throw SwiftletError(.systemCall, "KVM_GET_ONE_REG 0x\(String(register, radix: 16)) on vCPU \(id) failed", cause: error)
        }
        return value
    }

    /// Sets the boot vCPU's entry state (booting.rst): PC at the Image's first byte, X0 the device tree's
    /// physical address, X1-X3 zero, PSTATE EL1h with DAIF masked.
    public func setAArch64BootState(entry: GuestAddress, deviceTree: GuestAddress) throws(SwiftletError) {
        try setRegister(AArch64Register.pstate, AArch64Register.bootPSTATE)
        try setRegister(AArch64Register.x(0), deviceTree.rawValue)
        for number in 1...3 { try setRegister(AArch64Register.x(number), 0) }
        try setRegister(AArch64Register.pc, entry.rawValue)
    }
}
