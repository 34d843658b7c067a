import SwiftletHost

/// What an initrd must start with: a cpio archive in the kernel's "newc" format, or one compressed in a format the
/// kernel can unpack (lib/decompress.c), after any zero padding (init/initramfs.c skips it). Anything else, such as
/// a text file, a kernel, or a disk image given as the initrd by mistake, is refused before the guest boots, instead
/// of the guest failing to mount its root much later. (Old-style initrd filesystem images, which a kernel with
/// CONFIG_BLK_DEV_RAM also accepts, are refused too: Swiftlet boots initramfs archives only.)
public enum Initramfs {
    static let formats: [(name: String, magic: [UInt8])] = [
        ("cpio", Array("070701".utf8)), ("cpio", Array("070702".utf8)),
        ("gzip", [0x1f, 0x8b]), ("gzip", [0x1f, 0x9e]), ("bzip2", [0x42, 0x5a, 0x68]), ("lzma", [0x5d, 0x00, 0x00]),
        ("xz", [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), ("lzo", [0x89, 0x4c, 0x5a, 0x4f]), ("lz4", [0x02, 0x21, 0x4c, 0x18]),
        ("zstd", [0x28, 0xb5, 0x2f, 0xfd]),
    ]
    /// How far zero padding may go before the archive starts.
    static let paddingLimit = 4096

    /// The format `source` starts with; throws `.invalidInitrd` when it is none of them.
    @discardableResult
    public static func check(_ source: BootSource, name: String) throws(SwiftletError) -> String {
        let head = UnsafeMutableRawBufferPointer.allocate(byteCount: min(source.size, paddingLimit + 8), alignment: 1)
        defer { head.deallocate() }
        try source.read(into: head, at: 0)
        var start = 0
        while start < min(head.count, paddingLimit), head[start] == 0 { start += 1 }
        let rest = Array(head[start...])
        if let format = formats.first(where: { rest.starts(with: $0.magic) }) { return format.name }
        let shown = rest.prefix(8).map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: " ")
        throw SwiftletError(.invalidInitrd, "\(name) is not an initramfs: it starts with \(shown.isEmpty ? "nothing but zeros" : shown), not a cpio archive (070701) or one compressed with gzip, bzip2, lzma, xz, lzo, lz4 or zstd (make one with cpio -H newc, or your distribution's mkinitramfs or dracut)")
    }
}
