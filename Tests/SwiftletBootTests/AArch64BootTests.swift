import Glibc
import SwiftletBoot
import SwiftletHost
import SwiftletMemory
import Testing

/// Synthetic arm64 Images: the 64-byte header of Documentation/arch/arm64/booting.rst, then `payload`.
enum ARM64Images {
    static func image(textOffset: UInt64 = 0, imageSize: UInt64? = nil, flags: UInt64 = 0xa,
                      magic: UInt32 = ARM64ImageHeader.magic, payload: Int = 8192) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 64 + payload)
        func le<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        le(UInt32(0xfa40_5a4d), 0) // code0: "MZ" and a branch, as an EFI-stub kernel has
        le(textOffset, 8)
        le(imageSize ?? UInt64(bytes.count + 0x10000), 16) // BSS after the file
        le(flags, 24)
        le(magic, 56)
        for index in 64..<bytes.count { bytes[index] = UInt8(truncatingIfNeeded: index * 7) }
        return bytes
    }

    /// A real Debian arm64 kernel, fetched by tools/setup-devicetree-tools.sh, when it is there.
    static var debianImagePath: String? {
        let cache = getenv("SWIFTLET_CACHE").map { String(cString: $0) }
            ?? (getenv("HOME").map { String(cString: $0) + "/.cache/swiftlet" } ?? "/root/.cache/swiftlet")
        let path = cache + "/arm64/Image"
        return access(path, R_OK) == 0 ? path : nil
    }
}

@Suite struct ARM64ImageHeaderTests {
    @Test(.enabled(if: ARM64Images.debianImagePath != nil,
                   "needs a Debian arm64 kernel in ~/.cache/swiftlet/arm64 (tools/setup-devicetree-tools.sh fetches it)"))
    func readsARealDebianKernel() throws {
        let source = try FileBootSource(path: ARM64Images.debianImagePath!, what: "kernel")
        let header = try AArch64ImageLoader.header(of: source)
        // Every arm64 kernel since 3.17 has a non-zero image_size at least as large as the file, text_offset 0
        // since 5.8 (Debian 12's is 6.1), little-endian and 4 KiB pages.
        #expect(header.textOffset == 0)
        #expect(header.imageSize >= UInt64(source.size))
        #expect(header.imageSize < UInt64(source.size) + (64 << 20))
        #expect(!header.bigEndian)
        #expect(header.pageSize == .kib4)
        #expect(header.physicalPlacementAnywhere)
        let plan = try AArch64BootPlan(header: header, ram: .init(start: AArch64Layout.ramStart, size: 256 << 20), initrdSize: 4 << 20)
        #expect(plan.kernel == AArch64Layout.ramStart)
        #expect(plan.kernelEnd.rawValue == AArch64Layout.ramStart.rawValue + header.imageSize)
    }

    @Test func parsesEveryField() throws {
        let bytes = ARM64Images.image(textOffset: 0x80000, imageSize: 0x20_0000, flags: 0x2)
        let header = try ARM64ImageHeader(bytes, fileSize: bytes.count)
        #expect(header.textOffset == 0x80000)
        #expect(header.imageSize == 0x20_0000)
        #expect(header.pageSize == .kib4)
        #expect(!header.physicalPlacementAnywhere)
        #expect(!header.bigEndian)
        #expect(try ARM64ImageHeader(ARM64Images.image(flags: 0x6), fileSize: 9000).pageSize == .kib64)
        #expect(try ARM64ImageHeader(ARM64Images.image(flags: 0x0), fileSize: 9000).pageSize == .unspecified)
    }

    @Test(arguments: [
        ("bad magic", ARM64Images.image(magic: 0x464c_457f), "not an arm64 Image"),
        ("image_size 0 (before 3.17)", ARM64Images.image(imageSize: 0), "image_size is 0"),
        ("big-endian", ARM64Images.image(flags: 0xb), "big-endian"),
        ("reserved flag bits", ARM64Images.image(flags: 0x1a), "reserved bits"),
        ("text_offset past 2 MiB", ARM64Images.image(textOffset: 0x20_0000), "text_offset"),
        ("text_offset not page-aligned", ARM64Images.image(textOffset: 0x80010), "text_offset"),
        ("image_size smaller than the file", ARM64Images.image(imageSize: 100), "image_size"),
        ("image_size over 4 GiB", ARM64Images.image(imageSize: 1 << 40), "over 4 GiB"),
    ])
    func refusesCorruptHeaders(_ name: String, _ bytes: [UInt8], _ message: String) {
        let error = #expect(throws: SwiftletError.self, "\(name)") { try ARM64ImageHeader(bytes, fileSize: bytes.count) }
        #expect(error?.code == .invalidKernel)
        #expect(error?.message.contains(message) == true, "\(name): \(error?.message ?? "")")
    }

    @Test func refusesATruncatedFile() {
        let source = BytesBootSource(Array(ARM64Images.image().prefix(40)))
        let error = #expect(throws: SwiftletError.self) { try AArch64ImageLoader.header(of: source) }
        #expect(error?.message.contains("shorter than an arm64 Image header") == true)
    }
}

@Suite struct AArch64PlacementTests {
    let ram = MachineDescription.MemoryRegion(start: AArch64Layout.ramStart, size: 256 << 20)

    @Test func kernelAtTextOffsetFromA2MiBBaseDeviceTreeOnTopInitrdBelowIt() throws {
        let header = try ARM64ImageHeader(ARM64Images.image(textOffset: 0x80000, imageSize: 0x180_0000), fileSize: 8256)
        let plan = try AArch64BootPlan(header: header, ram: ram, initrdSize: 3_000_001)
        #expect(plan.kernel.rawValue == 0x8008_0000)
        #expect(plan.kernelEnd.rawValue == 0x8008_0000 + 0x180_0000)
        #expect(plan.deviceTree.rawValue == 0x8000_0000 + (256 << 20) - (2 << 20))
        #expect(plan.deviceTree.rawValue % (2 << 20) == 0)
        let initrd = try #require(plan.initrd)
        #expect(initrd.start.rawValue % 4096 == 0)
        #expect(initrd.start.rawValue + initrd.size <= plan.deviceTree.rawValue)
        #expect(initrd.start >= plan.kernelEnd)
        try plan.checkDeviceTree(size: 2 << 20, ram: ram)
        #expect(throws: SwiftletError.self) { try plan.checkDeviceTree(size: (2 << 20) + 8, ram: ram) }
    }

    @Test func aBaseThatIsNot2MiBAlignedIsRoundedUp() throws {
        let header = try ARM64ImageHeader(ARM64Images.image(), fileSize: 8256)
        let plan = try AArch64BootPlan(header: header, ram: .init(start: GuestAddress(0x8010_0000), size: 64 << 20), initrdSize: nil)
        #expect(plan.kernel.rawValue == 0x8020_0000)
        #expect(plan.initrd == nil)
    }

    @Test func refusesWhatDoesNotFit() throws {
        let big = try ARM64ImageHeader(ARM64Images.image(imageSize: 255 << 20), fileSize: 8256)
        let error = #expect(throws: SwiftletError.self) { try AArch64BootPlan(header: big, ram: ram, initrdSize: nil) }
        #expect(error?.message.contains("raise --memory") == true)
        let small = try ARM64ImageHeader(ARM64Images.image(imageSize: 200 << 20), fileSize: 8256)
        #expect(throws: SwiftletError.self) { try AArch64BootPlan(header: small, ram: ram, initrdSize: 60 << 20) }
        #expect(throws: SwiftletError.self) { try AArch64BootPlan(header: small, ram: ram, initrdSize: UInt64.max) }
        #expect(throws: SwiftletError.self) {
            try AArch64BootPlan(header: small, ram: .init(start: AArch64Layout.ramStart, size: 3 << 20), initrdSize: nil)
        }
    }

    @Test func deviceTreeOverlappingTheKernelOrInitrdIsRefused() throws {
        let header = try ARM64ImageHeader(ARM64Images.image(imageSize: 0x40_0000), fileSize: 8256)
        var plan = try AArch64BootPlan(header: header, ram: ram, initrdSize: 1 << 20)
        plan.deviceTree = plan.kernel.adding(0x1000)!
        #expect(throws: SwiftletError.self) { try plan.checkDeviceTree(size: 4096, ram: ram) }
        plan.deviceTree = plan.initrd!.start
        #expect(throws: SwiftletError.self) { try plan.checkDeviceTree(size: 4096, ram: ram) }
        plan.deviceTree = GuestAddress(plan.kernelEnd.rawValue + 4)
        #expect(throws: SwiftletError.self) { try plan.checkDeviceTree(size: 4096, ram: ram) } // not 8-byte aligned
    }

    @Test func loadsKernelAndInitrdWhereThePlanSays() throws {
        let memory = try GuestMemory(layout: [(AArch64Layout.ramStart, 64 << 20)])
        let image = ARM64Images.image(textOffset: 0x1000, payload: 20000)
        let header = try ARM64ImageHeader(image, fileSize: image.count)
        let initrd = (0..<5000).map { UInt8(truncatingIfNeeded: $0 * 13) }
        let plan = try AArch64BootPlan(header: header, ram: .init(start: AArch64Layout.ramStart, size: 64 << 20),
                                       initrdSize: UInt64(initrd.count))
        try AArch64ImageLoader.load(kernel: BytesBootSource(image), initrd: BytesBootSource(initrd), plan: plan, into: memory)
        #expect(try memory.read(count: image.count, at: plan.kernel) == image)
        #expect(try memory.read(count: initrd.count, at: plan.initrd!.start) == initrd)
        #expect(try memory.read(count: 16, at: AArch64Layout.ramStart) == [UInt8](repeating: 0, count: 16))
    }
}
