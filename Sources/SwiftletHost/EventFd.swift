import CSwiftlet
import Glibc
import SystemPackage

/// An eventfd(2): a counter the kernel and threads signal through. KVM uses them for irqfd and ioeventfd.
public final class EventFd: Sendable {
    public let descriptor: OwnedFileDescriptor
    public var rawValue: Int32 { descriptor.rawValue }

    public init(nonBlocking: Bool = false) throws(Errno) {
        let fd = try retryingSystemCall { eventfd(0, Int32(EFD_CLOEXEC) | (nonBlocking ? Int32(EFD_NONBLOCK) : 0)) }
        descriptor = OwnedFileDescriptor(taking: fd)
    }

    /// Adds `value` to the counter. The corresponding C function is `eventfd_write`.
    public func signal(_ value: UInt64 = 1) {
        var value = value
        _ = try? retryingSystemCall { write(rawValue, &value, 8) }
    }

    /// Reads and resets the counter; nil when it is zero on a non-blocking eventfd. The corresponding C function is `eventfd_read`.
    public func consume() -> UInt64? {
        var value: UInt64 = 0
        guard (try? retryingSystemCall { read(rawValue, &value, 8) }) == 8 else { return nil }
        return value
    }
}
