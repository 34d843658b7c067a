import SwiftletHost
import SwiftletMemory

/// The 64-byte header at the start of an arm64 `Image` (Documentation/arch/arm64/booting.rst, "Call the kernel
/// image"): code0/code1, text_offset, image_size, flags, three reserved words, the magic "ARM\x64" and the PE header
/// offset.
public struct ARM64ImageHeader: Equatable, Sendable {
    public static let size = 64
    public static let magic: UInt32 = 0x644d_5241 // "ARM\x64", little-endian
    /// The Image must sit `textOffset` bytes above a 2 MiB-aligned base.
    public static let baseAlignment: UInt64 = 2 << 20

    public enum PageSize: UInt64, Sendable { case unspecified = 0, kib4 = 1, kib16 = 2, kib64 = 3 }

    public var textOffset: UInt64
    /// How much memory from the load address the kernel needs, BSS included (more than the file).
    public var imageSize: UInt64
    public var flags: UInt64
    /// flags bit 0: the kernel is big-endian.
    public var bigEndian: Bool { flags & 1 != 0 }
    /// flags bits 1-2: the kernel's page size.
    public var pageSize: PageSize { PageSize(rawValue: (flags >> 1) & 3)! }
    /// flags bit 3: the 2 MiB-aligned base may be anywhere in RAM; otherwise it should be as close as possible to the
    /// start of DRAM.
    public var physicalPlacementAnywhere: Bool { flags & 8 != 0 }
    static let knownFlags: UInt64 = 0xf

    /// Parses and checks the header of an Image `fileSize` bytes long.
    public init(_ bytes: [UInt8], fileSize: Int) throws(SwiftletError) {
        guard bytes.count >= ARM64ImageHeader.size, fileSize >= ARM64ImageHeader.size else {
            throw SwiftletError(.invalidKernel, "the kernel is \(fileSize) bytes, shorter than an arm64 Image header (64 bytes)")
        }
        let magic = bytes.le(UInt32.self, 56)
        guard magic == ARM64ImageHeader.magic else {
            throw SwiftletError(.invalidKernel, "the kernel is not an arm64 Image: magic at offset 56 is 0x\(String(magic, radix: 16)), not 0x644d5241 (\"ARM\\x64\"); pass arch/arm64/boot/Image, uncompressed")
        }
        textOffset = bytes.le(UInt64.self, 8)
        imageSize = bytes.le(UInt64.self, 16)
        flags = bytes.le(UInt64.self, 24)
        guard imageSize != 0 else {
            // Before Linux 3.17 image_size was 0 and text_offset of unspecified endianness: the kernel's real extent
            // (BSS included) is unknown, so nothing can be placed safely after it.
            throw SwiftletError(.invalidKernel, "the arm64 Image's image_size is 0 (a kernel older than 3.17): its memory footprint is unknown; use a newer kernel")
        }
        guard flags & ~ARM64ImageHeader.knownFlags == 0 else {
            throw SwiftletError(.invalidKernel, "the arm64 Image's flags 0x\(String(flags, radix: 16)) set reserved bits 4-63: the header is corrupt or newer than this loader")
        }
        guard !bigEndian else {
            throw SwiftletError(.invalidKernel, "the arm64 Image is big-endian; Swiftlet boots little-endian kernels only")
        }
        guard textOffset < ARM64ImageHeader.baseAlignment, textOffset % 4096 == 0 else {
            throw SwiftletError(.invalidKernel, "the arm64 Image's text_offset 0x\(String(textOffset, radix: 16)) is not a page-aligned offset below 2 MiB: the header is corrupt")
        }
        guard UInt64(fileSize) <= imageSize else {
            throw SwiftletError(.invalidKernel, "the arm64 Image is \(fileSize) bytes but its header's image_size is \(imageSize): the header is corrupt")
        }
        guard imageSize <= 1 << 32 else {
            throw SwiftletError(.invalidKernel, "the arm64 Image's image_size \(imageSize) is over 4 GiB: the header is corrupt")
        }
    }
}

/// Where the kernel, initrd and device tree go in an aarch64 guest's RAM.
///
/// The rules are those of Documentation/arch/arm64/booting.rst: the Image at `text_offset` above a 2 MiB-aligned base
/// (the start of RAM, which is also "as close as possible to the base of DRAM" when the header asks for that),
/// `image_size` bytes free from there; the device tree 8-byte aligned, at most 2 MiB, in a 2 MiB region of its own
/// (the kernel maps it with 2 MiB blocks) at the top of RAM; the initrd page-aligned just below the device tree.
/// Nothing overlaps.
public struct AArch64BootPlan: Equatable, Sendable {
    public var kernel: GuestAddress
    public var kernelEnd: GuestAddress
    public var initrd: MachineDescription.Initrd?
    public var deviceTree: GuestAddress
    public static let deviceTreeRegion: UInt64 = 2 << 20

    public init(header: ARM64ImageHeader, ram: MachineDescription.MemoryRegion, initrdSize: UInt64?) throws(SwiftletError) {
        let alignment = ARM64ImageHeader.baseAlignment
        func tooSmall(_ what: String) -> SwiftletError {
            SwiftletError(.invalidConfiguration, "--memory \(ram.size >> 20) MiB is too small for \(what) (raise --memory)")
        }
        guard let base = ram.start.alignedUp(to: alignment), base.rawValue < ram.end.rawValue else { throw tooSmall("the kernel") }
        let ramTop = ram.end.rawValue & ~(alignment - 1)
        guard ramTop >= base.rawValue + alignment else { throw tooSmall("the device tree") }
        deviceTree = GuestAddress(ramTop - alignment)
        kernel = GuestAddress(base.rawValue + header.textOffset)
        let (end, overflow) = kernel.rawValue.addingReportingOverflow(header.imageSize)
        guard !overflow, end <= deviceTree.rawValue else {
            throw tooSmall("a kernel of \(header.imageSize >> 20) MiB (image_size) and the device tree")
        }
        kernelEnd = GuestAddress(end)
        if let initrdSize {
            guard initrdSize <= deviceTree.rawValue - end else {
                throw tooSmall("the kernel and an initrd of \(initrdSize >> 20) MiB")
            }
            let start = (deviceTree.rawValue - initrdSize) & ~UInt64(4095)
            guard start >= end else { throw tooSmall("the kernel and an initrd of \(initrdSize >> 20) MiB") }
            initrd = MachineDescription.Initrd(start: GuestAddress(start), size: initrdSize)
        }
    }

    /// Throws unless `blob` may be handed to the kernel from `deviceTree`: 8-byte aligned, at most 2 MiB, inside
    /// RAM and clear of the kernel and the initrd.
    public func checkDeviceTree(size: Int, ram: MachineDescription.MemoryRegion) throws(SwiftletError) {
        let end = deviceTree.rawValue + UInt64(size)
        guard deviceTree.rawValue % 8 == 0, UInt64(size) <= AArch64BootPlan.deviceTreeRegion,
              deviceTree >= ram.start, end <= ram.end.rawValue,
              deviceTree >= kernelEnd || end <= kernel.rawValue else {
            throw SwiftletError(.invalidConfiguration, "the device tree (\(size) bytes at \(deviceTree)) breaks the arm64 boot protocol's placement rules")
        }
        if let initrd, !(deviceTree.rawValue >= initrd.start.rawValue + initrd.size || end <= initrd.start.rawValue) {
            throw SwiftletError(.invalidConfiguration, "the device tree (\(size) bytes at \(deviceTree)) overlaps the initrd")
        }
    }
}

/// Loads an arm64 Image and an initrd into guest memory where an `AArch64BootPlan` puts them.
public enum AArch64ImageLoader {
    /// Reads and checks the Image header.
    public static func header(of source: some BootSource) throws(SwiftletError) -> ARM64ImageHeader {
        guard source.size >= ARM64ImageHeader.size else {
            throw SwiftletError(.invalidKernel, "the kernel is \(source.size) bytes, shorter than an arm64 Image header (64 bytes)")
        }
        return try ARM64ImageHeader(source.bytes(at: 0, count: ARM64ImageHeader.size), fileSize: source.size)
    }

    /// Copies the Image to `plan.kernel` (the BSS after it is left as the zeroed RAM it is) and the initrd to
    /// `plan.initrd`.
    public static func load(kernel: some BootSource, initrd: (some BootSource)?, plan: AArch64BootPlan,
                            into memory: GuestMemory) throws(SwiftletError) {
        try kernel.read(into: memory.buffer(plan.kernel, count: kernel.size), at: 0)
        if let initrd, let placement = plan.initrd {
            guard UInt64(initrd.size) == placement.size else {
                throw SwiftletError(.invalidInitrd, "the initrd changed size while loading (\(initrd.size) bytes, planned \(placement.size))")
            }
            try initrd.read(into: memory.buffer(placement.start, count: initrd.size), at: 0)
        }
    }
}
