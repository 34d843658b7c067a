import CSwiftlet
import Glibc
import SwiftletHost
import SystemPackage

/// The /dev/kvm system handle: API version, capabilities, and the VM factory.
public final class KVM: Sendable {
    public let descriptor: OwnedFileDescriptor
    public let vcpuMapSize: Int

    /// Opens /dev/kvm (or `path`) and checks the API version, with errors that say what to do.
    public init(path: String = "/dev/kvm") throws(SwiftletError) {
        do {
            descriptor = try OwnedFileDescriptor(opening: path, flags: O_RDWR)
        } catch .noSuchFileOrDirectory {
            throw SwiftletError(.kvmUnavailable, "cannot open \(path): it does not exist (load the kvm-intel or kvm-amd module, or enable virtualization in the firmware)")
        } catch .permissionDenied {
            throw SwiftletError(.kvmUnavailable, "cannot open \(path): permission denied (add the user to group kvm, or run as root)")
        } catch {
            throw SwiftletError(.kvmUnavailable, "cannot open \(path)", cause: error)
        }
        let version = (try? checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_API_VERSION, value: 0)) ?? -1
        guard version == KVM_API_VERSION else {
            throw SwiftletError(.kvmUnsupported, "\(path) speaks KVM API version \(version); Swiftlet needs \(KVM_API_VERSION)")
        }
        do {
            vcpuMapSize = Int(try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_VCPU_MMAP_SIZE, value: 0))
        } catch {
            throw SwiftletError(.kvmUnsupported, "KVM_GET_VCPU_MMAP_SIZE failed", cause: error)
        }
    }

    /// The value KVM_CHECK_EXTENSION reports for `capability` (0 when absent).
    public func check(_ capability: Int32) -> Int {
        Int((try? checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_CHECK_EXTENSION, value: UInt(capability))) ?? 0)
    }

    /// Throws unless every capability Swiftlet relies on is present.
    public func requireCapabilities() throws(SwiftletError) {
        let required: [(Int32, String)] = [
            (KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"), (KVM_CAP_PIT2, "KVM_CAP_PIT2"), (KVM_CAP_IRQFD, "KVM_CAP_IRQFD"),
            (KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"), (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
            (KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"), (KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"),
            (KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"),
        ]
        for (capability, name) in required where check(capability) == 0 {
            throw SwiftletError(.kvmUnsupported, "this host's KVM lacks \(name); Swiftlet needs it (a newer host kernel has it)")
        }
    }

    /// The CPUID entries this host's KVM can offer a guest (KVM_GET_SUPPORTED_CPUID).
    public func supportedCPUID() throws(SwiftletError) -> CPUIDTable {
        let table = CPUIDTable(capacity: 256)
        do {
            _ = try checkedIoctl(descriptor.rawValue, CSwiftlet_KVM_GET_SUPPORTED_CPUID, table.raw)
        } catch {
            throw SwiftletError(.kvmUnsupported, "KVM_GET_SUPPORTED_CPUID failed", cause: error)
        }
        return table
    }

    /// Creates a VM (KVM_CREATE_VM).
    public func createVM() throws(SwiftletError) -> VirtualMachine {
        do {
            let fd = try retryingSystemCall { CSwiftlet_ioctl_value(descriptor.rawValue, CSwiftlet_KVM_CREATE_VM, 0) }
            return VirtualMachine(kvm: self, descriptor: OwnedFileDescriptor(taking: fd))
        } catch {
            throw SwiftletError(.kvmUnavailable, "KVM_CREATE_VM failed", cause: error)
        }
    }
}

/// A struct kvm_cpuid2 with room for `capacity` entries, in memory this object owns.
public final class CPUIDTable: @unchecked Sendable {
    // @unchecked: the buffer is filled before the table is shared and only read afterwards (copies are made per vCPU).
    let raw: UnsafeMutableRawPointer
    let capacity: Int
    static let headerSize = MemoryLayout<kvm_cpuid2>.size
    static let entrySize = MemoryLayout<kvm_cpuid_entry2>.stride

    init(capacity: Int) {
        self.capacity = capacity
        raw = UnsafeMutableRawPointer.allocate(byteCount: Self.headerSize + capacity * Self.entrySize, alignment: 8)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: Self.headerSize + capacity * Self.entrySize)
        raw.storeBytes(of: UInt32(capacity), as: UInt32.self) // nent
    }

    deinit { raw.deallocate() }

    public var entries: [kvm_cpuid_entry2] {
        get {
            let count = Int(raw.load(as: UInt32.self))
            let base = (raw + Self.headerSize).bindMemory(to: kvm_cpuid_entry2.self, capacity: count)
            return Array(UnsafeBufferPointer(start: base, count: count))
        }
    }

    /// A new table holding `entries`.
    public static func with(_ entries: [kvm_cpuid_entry2]) -> CPUIDTable {
        let table = CPUIDTable(capacity: entries.count)
        let base = (table.raw + headerSize).bindMemory(to: kvm_cpuid_entry2.self, capacity: entries.count)
        for (index, entry) in entries.enumerated() { base[index] = entry }
        return table
    }
}
