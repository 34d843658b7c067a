import CSwiftlet
import SwiftletVirtio

/// virtio-net feature bits (virtio 1.2 §5.1.3) and what they mean for a TAP.
public enum NetFeature {
    public static let checksum: UInt64 = 1 << 0          // VIRTIO_NET_F_CSUM: the device takes partially checksummed frames
    public static let guestChecksum: UInt64 = 1 << 1     // VIRTIO_NET_F_GUEST_CSUM
    public static let mtu: UInt64 = 1 << 3
    public static let mac: UInt64 = 1 << 5
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    public static let guestECN: UInt64 = 1 << 9
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    public static let hostECN: UInt64 = 1 << 13
    public static let mergeableReceiveBuffers: UInt64 = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF
    public static let status: UInt64 = 1 << 16
    public static let guestUSO4: UInt64 = 1 << 54        // VIRTIO_NET_F_GUEST_USO4: the guest takes UDP segments (IPv4)
    public static let guestUSO6: UInt64 = 1 << 55
    public static let hostUSO: UInt64 = 1 << 56          // VIRTIO_NET_F_HOST_USO: the device takes them from the guest

    /// The USO features to offer on an endpoint whose TAP takes `tapOffloads` (TUN_F_* bits): each GUEST_USO bit
    /// only where the TAP can hand the guest that kind of UDP segment, and HOST_USO only where it takes both: the
    /// TAP's own USO support (TUN_F_USO4/6, Linux 6.2) came with its acceptance of VIRTIO_NET_HDR_GSO_UDP_L4 frames
    /// from the guest, so one stands in for the other.
    public static func udpSegmentationFeatures(tapOffloads: UInt32) -> UInt64 {
        var features: UInt64 = 0
        if tapOffloads & UInt32(TUN_F_USO4) != 0 { features |= guestUSO4 }
        if tapOffloads & UInt32(TUN_F_USO6) != 0 { features |= guestUSO6 }
        if features == guestUSO4 | guestUSO6 { features |= hostUSO }
        return features
    }

    /// TUNSETOFFLOAD flags for what the guest accepted (§5.1.6.4: with GUEST_CSUM it takes frames with partial
    /// checksums, with GUEST_TSO4/6 (and ECN) large TCP segments, with GUEST_USO4/6 large UDP ones): the TAP may
    /// then hand such frames up unchanged.
    public static func tapOffloads(negotiated features: UInt64) -> UInt32 {
        guard features & guestChecksum != 0 else { return 0 } // TSO without checksum offload is not allowed (§5.1.3.1)
        var flags = UInt32(TUN_F_CSUM)
        if features & guestTSO4 != 0 { flags |= UInt32(TUN_F_TSO4) }
        if features & guestTSO6 != 0 { flags |= UInt32(TUN_F_TSO6) }
        if features & guestECN != 0 && flags & UInt32(TUN_F_TSO4 | TUN_F_TSO6) != 0 { flags |= UInt32(TUN_F_TSO_ECN) }
        if features & guestUSO4 != 0 { flags |= UInt32(TUN_F_USO4) }
        if features & guestUSO6 != 0 { flags |= UInt32(TUN_F_USO6) }
        return flags
    }
}

/// struct virtio_net_hdr_v1 (§5.1.6): the 12 bytes in front of every frame, in both directions. With IFF_VNET_HDR
/// and a 12-byte header size, a TAP reads and writes exactly this layout, so frames pass through untranslated;
/// only num_buffers is the device's to fill in on receive.
public struct VirtioNetHeader: Equatable, Sendable {
    public static let size = 12
    public static let numBuffersOffset = 10
    public var flags: UInt8 = 0
    public var gsoType: UInt8 = 0
    public var headerLength: UInt16 = 0
    public var gsoSize: UInt16 = 0
    public var checksumStart: UInt16 = 0
    public var checksumOffset: UInt16 = 0
    public var numBuffers: UInt16 = 0

    public init() {}

    public init(_ bytes: [UInt8]) {
        precondition(bytes.count >= Self.size)
        func u16(_ offset: Int) -> UInt16 { UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8 }
        flags = bytes[0]
        gsoType = bytes[1]
        headerLength = u16(2)
        gsoSize = u16(4)
        checksumStart = u16(6)
        checksumOffset = u16(8)
        numBuffers = u16(10)
    }

    public var bytes: [UInt8] {
        func le(_ value: UInt16) -> [UInt8] { [UInt8(value & 0xff), UInt8(value >> 8)] }
        return [flags, gsoType] + le(headerLength) + le(gsoSize) + le(checksumStart) + le(checksumOffset) + le(numBuffers)
    }
}

/// How many receive chains, of the given capacities in order, a received frame of `length` bytes (header
/// included) fills; the last of them gets what is left, the others their whole capacity. nil when the chains cannot
/// hold it. With MRG_RXBUF a frame may take several chains (num_buffers); without it, exactly one.
public func receiveChainCount(length: Int, capacities: some Sequence<Int>, mergeable: Bool) -> Int? {
    guard length > 0 else { return nil }
    var remaining = length
    var count = 0
    for capacity in capacities {
        count += 1
        remaining -= min(capacity, remaining)
        if remaining == 0 || !mergeable { break }
    }
    return remaining == 0 ? count : nil
}
