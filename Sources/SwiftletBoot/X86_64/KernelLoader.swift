import SwiftletHost
import SwiftletMemory

/// Where a loaded kernel went and how to enter it.
public struct LoadedKernel: Sendable {
    public enum Format: String, Sendable { case bzImage, elf }
    public var format: Format
    /// The 64-bit entry point.
    public var entry: GuestAddress
    /// The kernel occupies [start, end) including what it needs to decompress itself (init_size).
    public var start: GuestAddress
    public var end: GuestAddress
    /// The bzImage setup header (boot_params offsets 0x1f1 up to its end), copied into the zero page; nil for ELF.
    public var setupHeader: [UInt8]?
    /// The largest command line the kernel takes, including the NUL.
    public var commandLineLimit: Int
    /// The highest address the initrd may reach (inclusive).
    public var initrdAddressMax: UInt64
}

/// Offsets into struct boot_params / setup_header (Documentation/arch/x86/boot.rst).
enum BootParams {
    static let acpiRSDPAddress = 0x070   // acpi_rsdp_addr (u64)
    static let e820Entries = 0x1e8
    static let setupSects = 0x1f1
    static let systemSize = 0x1f4
    static let bootFlag = 0x1fe
    static let jump = 0x200
    static let header = 0x202
    static let version = 0x206
    static let typeOfLoader = 0x210
    static let loadFlags = 0x211
    static let ramdiskImage = 0x218
    static let ramdiskSize = 0x21c
    static let heapEndPointer = 0x224
    static let commandLinePointer = 0x228
    static let initrdAddressMax = 0x22c
    static let kernelAlignment = 0x230
    static let relocatableKernel = 0x234
    static let xLoadFlags = 0x236
    static let commandLineSize = 0x238
    static let preferredAddress = 0x258
    static let initSize = 0x260
    static let extRamdiskImage = 0x0c0
    static let extRamdiskSize = 0x0c4
    static let extCommandLinePointer = 0x0c8
    static let e820Table = 0x2d0
    static let e820MaxEntries = 128
    static let size = 4096

    static let headerMagic: UInt32 = 0x5372_6448 // "HdrS"
    static let bootFlagMagic: UInt16 = 0xaa55
    static let xlfKernel64: UInt16 = 1 << 0
    static let loadedHigh: UInt8 = 1 << 0
    static let canUseHeap: UInt8 = 1 << 7
    /// "Undefined" boot loader id (boot.rst: 0xff).
    static let undefinedLoader: UInt8 = 0xff
}

public enum KernelLoader {
    /// Where the 64-bit boot protocol enters a bzImage's protected-mode code (boot.rst, "64-bit BOOT PROTOCOL").
    static let bzImageEntryOffset = 0x200

    /// Loads a bzImage or an ELF vmlinux from `source` into `memory`, telling them apart by their magic numbers.
    public static func load(_ source: BootSource, into memory: GuestMemory) throws(SwiftletError) -> LoadedKernel {
        guard source.size >= 64 else {
            throw SwiftletError(.invalidKernel, "kernel image is \(source.size) bytes: too small to be a bzImage or an ELF vmlinux")
        }
        let magic = try source.bytes(at: 0, count: 4)
        if magic == [0x7f, 0x45, 0x4c, 0x46] { return try loadELF(source, into: memory) }
        return try loadBzImage(source, into: memory)
    }

    /// Loads the protected-mode part of a bzImage where its header prefers (pref_address), for the 64-bit boot
    /// protocol (boot protocol 2.10 or later, XLF_KERNEL_64).
    public static func loadBzImage(_ source: BootSource, into memory: GuestMemory) throws(SwiftletError) -> LoadedKernel {
        guard source.size >= 1024 else { throw SwiftletError(.invalidKernel, "kernel image is \(source.size) bytes: too small for a bzImage") }
        let header = try source.bytes(at: 0, count: 1024)
        guard header.le(UInt16.self, BootParams.bootFlag) == BootParams.bootFlagMagic,
              header.le(UInt32.self, BootParams.header) == BootParams.headerMagic else {
            throw SwiftletError(.invalidKernel, "kernel image is neither an ELF vmlinux nor a bzImage (no HdrS boot header)")
        }
        let version = header.le(UInt16.self, BootParams.version)
        guard version >= 0x020a else {
            throw SwiftletError(.invalidKernel, "bzImage uses boot protocol \(version >> 8).\(version & 0xff); Swiftlet needs 2.10 or later")
        }
        guard header.le(UInt16.self, BootParams.xLoadFlags) & BootParams.xlfKernel64 != 0 else {
            throw SwiftletError(.invalidKernel, "bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear): build a 64-bit kernel")
        }
        var setupSectors = Int(header[BootParams.setupSects])
        if setupSectors == 0 { setupSectors = 4 } // boot.rst: "If this field is 0, the real value is 4."
        let setupSize = (setupSectors + 1) * 512
        guard setupSize < source.size else {
            throw SwiftletError(.invalidKernel, "bzImage is truncated: setup is \(setupSize) bytes, file is \(source.size)")
        }
        let payloadSize = source.size - setupSize
        // syssize: the protected-mode code's size in 16-byte paragraphs (boot protocol 2.04+).
        let declaredSize = UInt64(header.le(UInt32.self, BootParams.systemSize)) * 16
        guard UInt64(payloadSize) >= declaredSize else {
            throw SwiftletError(.invalidKernel, "bzImage is truncated: its header declares \(declaredSize) bytes of kernel after the setup, the file has \(payloadSize)")
        }
        // The 64-bit entry (startup_64) is 0x200 bytes into the protected-mode code: code that ends before it
        // would start the vCPU in whatever memory follows.
        guard payloadSize > Self.bzImageEntryOffset else {
            throw SwiftletError(.invalidKernel, "bzImage's protected-mode code (\(payloadSize) bytes) ends before its 64-bit entry point at offset 0x200")
        }
        let loadAddress = GuestAddress(header.le(UInt64.self, BootParams.preferredAddress))
        let initSize = UInt64(header.le(UInt32.self, BootParams.initSize))
        let footprint = max(UInt64(payloadSize), initSize)
        guard let end = loadAddress.adding(footprint), memory.contains(loadAddress, count: footprint),
              end <= X86Layout.mmioHoleStart else {
            throw SwiftletError(.invalidKernel, "bzImage wants \(footprint >> 20) MiB at \(loadAddress), which is not in guest RAM (give the guest more --memory)")
        }
        try source.read(into: memory.buffer(loadAddress, count: payloadSize), at: setupSize)
        let headerEnd = BootParams.jump + 2 + Int(header[BootParams.jump + 1])
        guard headerEnd > BootParams.setupSects, headerEnd <= 1024 else {
            throw SwiftletError(.invalidKernel, "bzImage setup header length \(headerEnd) is invalid")
        }
        return LoadedKernel(format: .bzImage, entry: GuestAddress(loadAddress.rawValue + UInt64(Self.bzImageEntryOffset)), start: loadAddress, end: end,
                            setupHeader: Array(header[BootParams.setupSects..<headerEnd]),
                            // cmdline_size comes from the file: no more than the layout's room for a command line
                            commandLineLimit: min(Int(header.le(UInt32.self, BootParams.commandLineSize)) + 1,
                                                  Int(X86Layout.commandLineLimit)),
                            initrdAddressMax: UInt64(header.le(UInt32.self, BootParams.initrdAddressMax)))
    }

    /// Loads every PT_LOAD segment of an x86_64 ELF vmlinux at its physical address and enters at e_entry
    /// (the 64-bit boot protocol, with a zero page that carries a minimal setup header).
    public static func loadELF(_ source: BootSource, into memory: GuestMemory) throws(SwiftletError) -> LoadedKernel {
        let header = try source.bytes(at: 0, count: 64)
        guard header[4] == 2, header[5] == 1 else { throw SwiftletError(.invalidKernel, "ELF kernel is not 64-bit little-endian") }
        guard header.le(UInt16.self, 0x12) == 0x3e else { throw SwiftletError(.invalidKernel, "ELF kernel is not for x86_64") }
        let entry = GuestAddress(header.le(UInt64.self, 0x18))
        let programHeaderOffset = header.le(UInt64.self, 0x20)
        let programHeaderSize = Int(header.le(UInt16.self, 0x36))
        let programHeaderCount = Int(header.le(UInt16.self, 0x38))
        guard programHeaderSize >= 56, programHeaderCount > 0, programHeaderCount <= 64,
              programHeaderOffset < UInt64(source.size),
              UInt64(programHeaderSize * programHeaderCount) <= UInt64(source.size) - programHeaderOffset else {
            throw SwiftletError(.invalidKernel, "ELF kernel has an invalid program header table")
        }
        let table = try source.bytes(at: Int(programHeaderOffset), count: programHeaderSize * programHeaderCount)
        var lowest = UInt64.max
        var highest: UInt64 = 0
        var entryLoaded = false
        for index in 0..<programHeaderCount {
            let base = index * programHeaderSize
            guard table.le(UInt32.self, base) == 1 /* PT_LOAD */ else { continue }
            let offset = table.le(UInt64.self, base + 8)
            let address = GuestAddress(table.le(UInt64.self, base + 24))
            let fileSize = table.le(UInt64.self, base + 32)
            let memorySize = table.le(UInt64.self, base + 40)
            guard fileSize <= memorySize, offset <= UInt64(source.size), fileSize <= UInt64(source.size) - offset else {
                throw SwiftletError(.invalidKernel, "ELF kernel segment \(index) lies outside the file")
            }
            guard let end = address.adding(memorySize), memory.contains(address, count: memorySize), end <= X86Layout.mmioHoleStart else {
                throw SwiftletError(.invalidKernel, "ELF kernel segment \(index) (\(memorySize >> 10) KiB at \(address)) is not in guest RAM (give the guest more --memory)")
            }
            try source.read(into: memory.buffer(address, count: Int(fileSize)), at: Int(offset))
            try memory.zero(GuestAddress(address.rawValue + fileSize), count: memorySize - fileSize)
            lowest = min(lowest, address.rawValue)
            highest = max(highest, end.rawValue)
            if entry >= address && entry < end { entryLoaded = true }
        }
        guard lowest < highest else { throw SwiftletError(.invalidKernel, "ELF kernel has no loadable segment") }
        guard entryLoaded else { throw SwiftletError(.invalidKernel, "ELF kernel entry point \(entry) is not inside a loaded segment") }
        return LoadedKernel(format: .elf, entry: entry, start: GuestAddress(lowest), end: GuestAddress(highest), setupHeader: nil,
                            commandLineLimit: Int(X86Layout.commandLineLimit), initrdAddressMax: 0x7fff_ffff)
    }

    /// Puts the initrd as high as the kernel allows (below initrd_addr_max and the MMIO hole, page-aligned),
    /// above the kernel.
    public static func loadInitrd(_ source: BootSource, into memory: GuestMemory, kernel: LoadedKernel) throws(SwiftletError) -> (address: GuestAddress, size: Int) {
        let size = UInt64(source.size)
        if size > 0 { try Initramfs.check(source, name: (source as? FileBootSource).map { "initrd \($0.path)" } ?? "the initrd") }
        let ceiling = min(kernel.initrdAddressMax &+ 1, memory.regions[0].end.rawValue, X86Layout.mmioHoleStart.rawValue)
        guard size > 0, size <= ceiling else {
            throw SwiftletError(.invalidInitrd, "initrd of \(size >> 20) MiB does not fit below \(GuestAddress(ceiling)) (give the guest more --memory)")
        }
        let address = (ceiling - size) & ~UInt64(0xfff)
        guard address >= kernel.end.rawValue else {
            throw SwiftletError(.invalidInitrd, "initrd of \(size >> 20) MiB does not fit between the kernel and \(GuestAddress(ceiling)) (give the guest more --memory)")
        }
        try source.read(into: memory.buffer(GuestAddress(address), count: Int(size)), at: 0)
        return (GuestAddress(address), Int(size))
    }
}
