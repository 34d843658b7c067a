import CSwiftlet
import Glibc
import SystemPackage

/// A TAP interface opened with a virtio-net header on every frame (IFF_VNET_HDR, 12 bytes: virtio_net_hdr_v1), non-
/// blocking. Attaches to an existing TAP by name, or creates one that disappears when this object closes its fd (it
/// is not made persistent), so nothing is left behind at exit.
public final class Tap: Sendable {
    public static let headerSize: Int32 = 12
    public let name: String
    public let descriptor: OwnedFileDescriptor
    /// Whether the interface existed before (attached) or was created here.
    public let attached: Bool
    /// The TUN_F_* offloads this kernel's TAP takes: checksum, TSO and ECN always (Linux 2.6.27), UDP segmentation
    /// (TUN_F_USO4/6) from Linux 6.2 on, probed once when the TAP is opened.
    public let supportedOffloads: UInt32
    static let baseOffloads = UInt32(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
    static let udpSegmentationOffloads = UInt32(TUN_F_USO4 | TUN_F_USO6)
    public var rawValue: Int32 { descriptor.rawValue }

    public init(name: String) throws(SwiftletError) {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count < 16, !bytes.contains(UInt8(ascii: "/")), !bytes.contains(0) else {
            throw SwiftletError(.invalidConfiguration, "TAP name \"\(name)\" is invalid (1 to 15 characters, no /)")
        }
        self.name = name
        attached = Tap.interfaceExists(name)
        do {
            descriptor = try OwnedFileDescriptor(opening: "/dev/net/tun", flags: O_RDWR | O_NONBLOCK)
        } catch .noSuchFileOrDirectory {
            throw SwiftletError(.invalidConfiguration, "cannot open /dev/net/tun: it does not exist (load the tun module: modprobe tun)")
        } catch {
            throw SwiftletError(.invalidConfiguration, "cannot open /dev/net/tun" + (error == .permissionDenied
                ? " (permission denied: run as root or give the user CAP_NET_ADMIN)" : ""), cause: error)
        }
        let fd = descriptor.rawValue
        // struct ifreq: the name in its first 16 bytes, the flags (a short) right after.
        var request = [UInt8](repeating: 0, count: 40)
        request.replaceSubrange(0..<bytes.count, with: bytes)
        let flags = UInt16(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        request[16] = UInt8(flags & 0xff)
        request[17] = UInt8(flags >> 8)
        let result = request.withUnsafeMutableBytes { CSwiftlet_ioctl_ptr(fd, CSwiftlet_TUNSETIFF, $0.baseAddress) }
        if result != 0 {
            let error = Errno(rawValue: errno)
            let hint: String = switch error {
            case .permissionDenied, .notPermitted: " (it belongs to another user, or this process lacks CAP_NET_ADMIN)"
            case .resourceBusy: " (another process has it open)"
            case .invalidArgument: " (is \(name) an interface that is not a TAP?)"
            default: ""
            }
            throw SwiftletError(.invalidConfiguration, "cannot \(attached ? "attach to" : "create") TAP \(name)\(hint)", cause: error)
        }
        var size = Tap.headerSize
        guard CSwiftlet_ioctl_ptr(fd, CSwiftlet_TUNSETVNETHDRSZ, &size) == 0 else {
            throw SwiftletError(.invalidConfiguration, "TAP \(name) refused a \(Tap.headerSize)-byte virtio-net header", cause: Errno(rawValue: errno))
        }
        // A kernel without USO refuses the whole TUNSETOFFLOAD with EINVAL; offloads stay off until the guest
        // says what it takes.
        let all = Tap.baseOffloads | Tap.udpSegmentationOffloads
        supportedOffloads = CSwiftlet_ioctl_value(fd, CSwiftlet_TUNSETOFFLOAD, UInt(all)) == 0 ? all : Tap.baseOffloads
        _ = CSwiftlet_ioctl_value(fd, CSwiftlet_TUNSETOFFLOAD, 0)
    }

    private static func interfaceExists(_ name: String) -> Bool {
        access("/sys/class/net/\(name)", F_OK) == 0
    }

    /// Tells the TAP which offloads the guest can take in frames it receives (TUN_F_* bits). A kernel that does
    /// not know UDP segmentation refuses the whole set with EINVAL: then the same without TUN_F_USO4/6.
    /// Returns the flags the TAP took. The corresponding C function is `ioctl(TUNSETOFFLOAD)`.
    @discardableResult
    public func setOffloads(_ flags: UInt32) throws(SwiftletError) -> UInt32 {
        if CSwiftlet_ioctl_value(descriptor.rawValue, CSwiftlet_TUNSETOFFLOAD, UInt(flags)) == 0 { return flags }
        var error = Errno(rawValue: errno)
        let withoutUSO = flags & ~Tap.udpSegmentationOffloads
        if error == .invalidArgument && withoutUSO != flags {
            if CSwiftlet_ioctl_value(descriptor.rawValue, CSwiftlet_TUNSETOFFLOAD, UInt(withoutUSO)) == 0 { return withoutUSO }
            error = Errno(rawValue: errno)
        }
        throw SwiftletError(.invalidConfiguration, "TAP \(name) refused offloads 0x\(String(flags, radix: 16))", cause: error)
    }
}
