import SwiftletHost
import SwiftletMemory

public enum ZeroPage {
    /// Writes the command line (NUL-terminated, within the kernel's cmdline_size) and the zero page: the kernel's
    /// own setup header (or a minimal one for ELF), loader id, command line and initrd pointers, the e820 map, and
    /// where the ACPI RSDP is (`acpi_rsdp_addr`; a kernel also finds it by scanning 0xE0000-0xFFFFF).
    public static func write(into memory: GuestMemory, kernel: LoadedKernel, commandLine: String,
                             initrd: (address: GuestAddress, size: Int)?, e820: [E820Entry],
                             acpiRSDP: GuestAddress? = nil) throws(SwiftletError) {
        let commandLineBytes = Array(commandLine.utf8) + [0]
        let limit = min(kernel.commandLineLimit, Int(X86Layout.commandLineLimit))
        guard commandLineBytes.count <= limit else {
            throw SwiftletError(.invalidConfiguration, "kernel command line is \(commandLineBytes.count - 1) bytes; this kernel takes at most \(limit - 1)")
        }
        guard e820.count <= BootParams.e820MaxEntries else {
            throw SwiftletError(.invalidConfiguration, "e820 map has \(e820.count) entries; the zero page holds \(BootParams.e820MaxEntries)")
        }
        try memory.write(commandLineBytes, at: X86Layout.commandLine)

        var page = [UInt8](repeating: 0, count: BootParams.size)
        if let header = kernel.setupHeader {
            page.replaceSubrange(BootParams.setupSects..<BootParams.setupSects + header.count, with: header)
        } else {
            page.setLE(BootParams.bootFlagMagic, BootParams.bootFlag)
            page.setLE(BootParams.headerMagic, BootParams.header)
            page.setLE(UInt16(0x020c), BootParams.version)
            page.setLE(UInt32(0x0100_0000), BootParams.kernelAlignment)
        }
        page[BootParams.typeOfLoader] = BootParams.undefinedLoader
        page[BootParams.loadFlags] |= BootParams.loadedHigh | BootParams.canUseHeap
        // boot.rst: heap_end_ptr is the offset from the real-mode code's start (0x200 less than its end) of the heap end.
        page.setLE(UInt16(0xfe00), BootParams.heapEndPointer)
        let commandLineAddress = X86Layout.commandLine.rawValue
        page.setLE(UInt32(truncatingIfNeeded: commandLineAddress), BootParams.commandLinePointer)
        page.setLE(UInt32(truncatingIfNeeded: commandLineAddress >> 32), BootParams.extCommandLinePointer)
        if let initrd {
            page.setLE(UInt32(truncatingIfNeeded: initrd.address.rawValue), BootParams.ramdiskImage)
            page.setLE(UInt32(truncatingIfNeeded: initrd.address.rawValue >> 32), BootParams.extRamdiskImage)
            page.setLE(UInt32(truncatingIfNeeded: UInt64(initrd.size)), BootParams.ramdiskSize)
            page.setLE(UInt32(truncatingIfNeeded: UInt64(initrd.size) >> 32), BootParams.extRamdiskSize)
        }
        if let acpiRSDP { page.setLE(acpiRSDP.rawValue, BootParams.acpiRSDPAddress) }
        page[BootParams.e820Entries] = UInt8(e820.count)
        for (index, entry) in e820.enumerated() {
            let base = BootParams.e820Table + index * 20
            page.setLE(entry.start.rawValue, base)
            page.setLE(entry.size, base + 8)
            page.setLE(entry.kind.rawValue, base + 16)
        }
        try memory.write(page, at: X86Layout.zeroPage)
    }
}
