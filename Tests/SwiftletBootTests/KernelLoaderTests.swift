import SwiftletBoot
import SwiftletHost
import SwiftletMemory
import Testing

@Suite struct KernelLoaderTests {
    @Test func loadsABzImageWhereItsHeaderAsks() throws {
        let memory = try Images.memory()
        let image = Images.bzImage()
        let kernel = try KernelLoader.load(BytesBootSource(image), into: memory)
        #expect(kernel.format == .bzImage)
        #expect(kernel.start == GuestAddress(0x100_0000))
        #expect(kernel.entry == GuestAddress(0x100_0200))
        #expect(kernel.end == GuestAddress(0x120_0000)) // init_size beyond the payload
        #expect(kernel.commandLineLimit == 2048)
        #expect(kernel.initrdAddressMax == 0x37ff_ffff)
        #expect(try memory.read(count: 4096, at: kernel.start) == Array(image[1024...]))
        #expect(kernel.setupHeader?.count == 0x268 - 0x1f1)
        #expect(kernel.setupHeader?.first == 1)
    }

    @Test(arguments: [
        ("no magic", Array(repeating: UInt8(0), count: 2048)),
        ("protocol 2.09", Images.bzImage(version: 0x0209)),
        ("no 64-bit entry", Images.bzImage(xloadflags: 0)),
        ("setup only", Array(Images.bzImage().prefix(1024))),
        ("truncated payload", Array(Images.bzImage().dropLast(100))),
        ("outside RAM", Images.bzImage(preferredAddress: 0xbff0_0000)),
        ("wraps", Images.bzImage(preferredAddress: UInt64.max - 0xfff)),
        ("too small", [0x7f, 0x45]),
    ])
    func rejectsCorruptBzImages(_ name: String, _ image: [UInt8]) throws {
        let memory = try Images.memory()
        #expect(throws: SwiftletError.self, "\(name)") { try KernelLoader.load(BytesBootSource(image), into: memory) }
    }

    /// Found by the loaders fuzz target: a bzImage whose protected-mode code ends before the 64-bit entry point
    /// (startup_64, 0x200 bytes in) was loaded, and the vCPU would have started in whatever memory followed it.
    @Test func rejectsABzImageWhoseCodeEndsBeforeTheEntryPoint() throws {
        let memory = try Images.memory()
        let image = Images.bzImage(payload: [UInt8](repeating: 0x90, count: 0x200))
        let error = try #require(throws: SwiftletError.self) { try KernelLoader.load(BytesBootSource(image), into: memory) }
        #expect(error.code == .invalidKernel)
        #expect(error.message.contains("ends before its 64-bit entry point"))
        #expect(try KernelLoader.load(BytesBootSource(Images.bzImage(payload: [UInt8](repeating: 0x90, count: 0x210))), into: memory).entry
                == GuestAddress(0x100_0200))
    }

    /// Found by the loaders fuzz target in make test: a bzImage's cmdline_size was reported as it was written (up to
    /// 4 GiB). The zero page clamped it when writing the command line, but the loaded kernel's limit is what the
    /// VMM honours, so it is clamped where it is read.
    @Test func aBzImageCommandLineLimitIsClampedToTheLayout() throws {
        var image = Images.bzImage()
        Images.le(UInt32.max - 1, into: &image, at: 0x238) // cmdline_size
        let kernel = try KernelLoader.load(BytesBootSource(image), into: try Images.memory())
        #expect(kernel.commandLineLimit == Int(X86Layout.commandLineLimit))
    }

    @Test func loadsELFSegmentsAtTheirPhysicalAddresses() throws {
        let memory = try Images.memory()
        try memory.write([UInt8](repeating: 0xee, count: 0x100), at: GuestAddress(0x100_0000 + 0x10))
        let image = Images.elf(entry: 0x100_0000, segments: [(0x100_0000, [1, 2, 3, 4], 0x100), (0x200_0000, [9], 1)])
        let kernel = try KernelLoader.load(BytesBootSource(image), into: memory)
        #expect(kernel.format == .elf)
        #expect(kernel.entry == GuestAddress(0x100_0000))
        #expect(kernel.start == GuestAddress(0x100_0000) && kernel.end == GuestAddress(0x200_0001))
        #expect(try memory.read(count: 5, at: GuestAddress(0x100_0000)) == [1, 2, 3, 4, 0])
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x100_0010)) == 0) // bss zeroed
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x200_0000)) == 9)
        #expect(kernel.setupHeader == nil)
    }

    @Test func rejectsCorruptELFs() throws {
        let memory = try Images.memory()
        let cases: [(String, [UInt8])] = [
            ("entry outside segments", Images.elf(entry: 0x300_0000, segments: [(0x100_0000, [1], 1)])),
            ("32-bit", Images.elf(entry: 0x100_0000, segments: [(0x100_0000, [1], 1)], elfClass: 1)),
            ("aarch64", Images.elf(entry: 0x100_0000, segments: [(0x100_0000, [1], 1)], machine: 0xb7)),
            ("filesz > memsz", Images.elf(entry: 0x100_0000, segments: [(0x100_0000, [1, 2], 1)])),
            ("beyond RAM", Images.elf(entry: 0x100_0000, segments: [(0x100_0000, [1], 0x1000_0000)])),
            ("no segments", Images.elf(entry: 0x100_0000, segments: [])),
            ("truncated", Array(Images.elf(entry: 0x100_0000, segments: [(0x100_0000, [1, 2, 3, 4], 4)]).dropLast(2))),
        ]
        for (name, image) in cases {
            #expect(throws: SwiftletError.self, "\(name)") { try KernelLoader.load(BytesBootSource(image), into: memory) }
        }
    }

    @Test func placesTheInitrdHighAndAligned() throws {
        let memory = try Images.memory()
        let kernel = try KernelLoader.load(BytesBootSource(Images.bzImage()), into: memory)
        let initrd = Array("070701".utf8) + [UInt8](repeating: 7, count: 4994)
        let placed = try KernelLoader.loadInitrd(BytesBootSource(initrd), into: memory, kernel: kernel)
        #expect(placed.address.rawValue % 4096 == 0)
        #expect(placed.address.rawValue + 5000 <= 64 << 20)
        #expect(placed.address.rawValue + 5000 > (64 << 20) - 8192)
        #expect(try memory.read(count: 5000, at: placed.address) == initrd)
        let huge = BytesBootSource(Array("070701".utf8) + [UInt8](repeating: 0, count: 48 << 20)) // would overlap the kernel at 16 MiB
        #expect(throws: SwiftletError.self) { try KernelLoader.loadInitrd(huge, into: memory, kernel: kernel) }
        #expect(throws: SwiftletError.self) { try KernelLoader.loadInitrd(BytesBootSource([]), into: memory, kernel: kernel) }
    }

    /// An initrd must be an initramfs: a newc cpio archive or a compressed one, after any zero padding.
    @Test func anInitrdThatIsNotAnInitramfsIsRefused() throws {
        for (bytes, format) in [(Array("070701".utf8), "cpio"), ([0, 0, 0, 0] + Array("070702".utf8), "cpio"),
                                ([0x1f, 0x8b, 8], "gzip"), ([0x28, 0xb5, 0x2f, 0xfd], "zstd"), ([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], "xz"),
                                ([0x02, 0x21, 0x4c, 0x18], "lz4"), (Array("BZh9".utf8), "bzip2")] as [([UInt8], String)] {
            #expect(try Initramfs.check(BytesBootSource(bytes), name: "t") == format)
        }
        let memory = try Images.memory()
        let kernel = try KernelLoader.load(BytesBootSource(Images.bzImage()), into: memory)
        for bytes in [Array("hello world\n".utf8), [0x7f, 0x45, 0x4c, 0x46, 2, 1], [UInt8](repeating: 0, count: 5000), Array("070707".utf8)] {
            do throws(SwiftletError) {
                _ = try KernelLoader.loadInitrd(BytesBootSource(bytes), into: memory, kernel: kernel)
                Issue.record("\(bytes.prefix(6)) was taken as an initramfs")
            } catch {
                #expect(error.code == .invalidInitrd)
                #expect(error.message.hasPrefix("the initrd is not an initramfs: it starts with "), "\(error.message)")
            }
        }
    }

    @Test func initrdStaysBelowInitrdAddressMaxAndTheHole() throws {
        let memory = try Images.memory(size: 3584 << 20)
        var kernel = try KernelLoader.load(BytesBootSource(Images.bzImage()), into: memory)
        let placed = try KernelLoader.loadInitrd(BytesBootSource([0x1f, 0x8b, 3]), into: memory, kernel: kernel)
        #expect(placed.address.rawValue + 3 <= 0x3800_0000)
        kernel.initrdAddressMax = UInt64(UInt32.max)
        let high = try KernelLoader.loadInitrd(BytesBootSource([0x1f, 0x8b, 3]), into: memory, kernel: kernel)
        #expect(high.address.rawValue + 3 <= X86Layout.mmioHoleStart.rawValue)
    }

    static let realKernelDirectory: String? = {
        guard let directory = getenvString("SWIFTLET_GUEST_KERNEL_DIR") else { return nil }
        return directory
    }()

    @Test(.enabled(if: realKernelDirectory != nil, "set SWIFTLET_GUEST_KERNEL_DIR to the built guest kernel (make test does)"))
    func loadsTheRealGuestKernels() throws {
        let directory = try #require(Self.realKernelDirectory)
        let memory = try Images.memory(size: 256 << 20)
        let bz = try KernelLoader.load(FileBootSource(path: directory + "/bzImage", what: "kernel"), into: memory)
        #expect(bz.format == .bzImage)
        #expect(bz.entry.rawValue == bz.start.rawValue + 0x200)
        #expect(bz.commandLineLimit > 255)
        let elf = try KernelLoader.load(FileBootSource(path: directory + "/vmlinux", what: "kernel"), into: memory)
        #expect(elf.format == .elf)
        #expect(elf.entry == GuestAddress(0x100_0000))
    }
}

import Glibc
func getenvString(_ name: String) -> String? {
    guard let value = getenv(name) else { return nil }
    let string = String(cString: value)
    return string.isEmpty ? nil : string
}
