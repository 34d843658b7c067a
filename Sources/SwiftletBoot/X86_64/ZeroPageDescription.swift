import SwiftletHost
import SwiftletMemory

extension ZeroPage {
    /// A readable account of the zero page and command line as they lie in guest memory (read back, not
    /// recomputed), for `swiftlet describe`.
    public static func describe(in memory: GuestMemory) throws(SwiftletError) -> [String] {
        let page = try memory.read(count: BootParams.size, at: X86Layout.zeroPage)
        func hex<T: FixedWidthInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
        let commandLinePointer = UInt64(page.le(UInt32.self, BootParams.commandLinePointer))
            | UInt64(page.le(UInt32.self, BootParams.extCommandLinePointer)) << 32
        let ramdisk = UInt64(page.le(UInt32.self, BootParams.ramdiskImage)) | UInt64(page.le(UInt32.self, BootParams.extRamdiskImage)) << 32
        let ramdiskSize = UInt64(page.le(UInt32.self, BootParams.ramdiskSize)) | UInt64(page.le(UInt32.self, BootParams.extRamdiskSize)) << 32
        var lines = [
            "zero-page \(hex(X86Layout.zeroPage.rawValue)) boot-protocol \(page[BootParams.version + 1]).\(page[BootParams.version]) loader \(hex(page[BootParams.typeOfLoader])) loadflags \(hex(page[BootParams.loadFlags]))",
            "zero-page cmd_line_ptr \(hex(commandLinePointer)) ramdisk_image \(hex(ramdisk)) ramdisk_size \(ramdiskSize)",
        ]
        let count = min(Int(page[BootParams.e820Entries]), BootParams.e820MaxEntries)
        for index in 0..<count {
            let base = BootParams.e820Table + index * 20
            let start = page.le(UInt64.self, base), size = page.le(UInt64.self, base + 8), kind = page.le(UInt32.self, base + 16)
            lines.append("zero-page e820 \(hex(start))-\(hex(start &+ size &- 1)) \(kind == 1 ? "ram" : kind == 2 ? "reserved" : kind == 3 ? "acpi" : "type \(kind)")")
        }
        let rsdp = page.le(UInt64.self, BootParams.acpiRSDPAddress)
        if rsdp != 0 { lines.append("zero-page acpi_rsdp_addr \(hex(rsdp))") }
        let text = try memory.read(count: Int(X86Layout.commandLineLimit), at: X86Layout.commandLine)
        lines.append("command-line-in-memory \(String(decoding: text.prefix { $0 != 0 }, as: UTF8.self))")
        return lines
    }
}
