import SwiftletVirtio

/// virtio-blk request framing (virtio 1.2 §5.2.6): a 16-byte header the device reads (type, reserved, sector),
/// data, and one status byte the device writes last. The header may be split across descriptors; the status byte
/// is the last byte of the last device-writable buffer.
public struct BlockRequestHeader: Equatable, Sendable {
    public static let size = 16
    public var type: UInt32
    public var sector: UInt64

    public enum RequestType {
        public static let read: UInt32 = 0          // VIRTIO_BLK_T_IN
        public static let write: UInt32 = 1         // VIRTIO_BLK_T_OUT
        public static let flush: UInt32 = 4         // VIRTIO_BLK_T_FLUSH
        public static let getID: UInt32 = 8         // VIRTIO_BLK_T_GET_ID
        public static let discard: UInt32 = 11      // VIRTIO_BLK_T_DISCARD
        public static let writeZeroes: UInt32 = 13  // VIRTIO_BLK_T_WRITE_ZEROES
    }

    public enum Status {
        public static let ok: UInt8 = 0, ioError: UInt8 = 1, unsupported: UInt8 = 2
    }

    /// Gathers the header from the chain's device-readable buffers; nil when they hold fewer than 16 bytes.
    public static func parse(_ chain: DescriptorChain) -> BlockRequestHeader? {
        var reader = ChainReader(chain)
        guard let type = reader.read(UInt32.self), reader.skip(4) == 4, let sector = reader.read(UInt64.self) else {
            return nil
        }
        return BlockRequestHeader(type: type, sector: sector)
    }
}

/// One segment of a DISCARD or WRITE_ZEROES request (struct virtio_blk_discard_write_zeroes).
public struct BlockRangeSegment: Equatable, Sendable {
    public static let size = 16
    public var sector: UInt64
    public var sectorCount: UInt32
    /// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: the zeroed range may be deallocated.
    public var unmap: Bool
}
