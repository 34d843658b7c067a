import SwiftletBoot
import SwiftletMemory

/// Synthetic kernel images, with every header field where a real one has it.
enum Images {
    static func le<T: FixedWidthInteger>(_ value: T, into bytes: inout [UInt8], at offset: Int) {
        for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }

    /// A bzImage with one setup sector after the boot sector, protocol 2.15, and `payload` as protected-mode code.
    static func bzImage(payload: [UInt8] = (0..<4096).map { UInt8($0 & 0xff) }, version: UInt16 = 0x020f,
                        xloadflags: UInt16 = 1, preferredAddress: UInt64 = 0x100_0000, initSize: UInt32 = 0x20_0000) -> [UInt8] {
        var image = [UInt8](repeating: 0, count: 1024)
        image[0x1f1] = 1 // setup_sects
        le(UInt32((payload.count + 15) / 16), into: &image, at: 0x1f4) // syssize
        le(UInt16(0xaa55), into: &image, at: 0x1fe)
        image[0x200] = 0xeb
        image[0x201] = 0x66 // header ends at 0x268
        le(UInt32(0x5372_6448), into: &image, at: 0x202)
        le(version, into: &image, at: 0x206)
        le(UInt32(0x37ff_ffff), into: &image, at: 0x22c)
        le(UInt32(0x20_0000), into: &image, at: 0x230)
        image[0x234] = 1
        le(xloadflags, into: &image, at: 0x236)
        le(UInt32(2047), into: &image, at: 0x238)
        le(preferredAddress, into: &image, at: 0x258)
        le(initSize, into: &image, at: 0x260)
        return image + payload
    }

    /// An x86_64 ELF with PT_LOAD segments (paddr, file bytes, memsz) and an entry point.
    static func elf(entry: UInt64, segments: [(paddr: UInt64, bytes: [UInt8], memorySize: UInt64)], machine: UInt16 = 0x3e,
                    elfClass: UInt8 = 2) -> [UInt8] {
        var image = [UInt8](repeating: 0, count: 64 + 56 * segments.count)
        image[0..<4] = [0x7f, 0x45, 0x4c, 0x46]
        image[4] = elfClass
        image[5] = 1
        image[6] = 1
        le(UInt16(2), into: &image, at: 0x10)
        le(machine, into: &image, at: 0x12)
        le(entry, into: &image, at: 0x18)
        le(UInt64(64), into: &image, at: 0x20)
        le(UInt16(64), into: &image, at: 0x34)
        le(UInt16(56), into: &image, at: 0x36)
        le(UInt16(segments.count), into: &image, at: 0x38)
        var data: [UInt8] = []
        for (index, segment) in segments.enumerated() {
            let base = 64 + 56 * index
            le(UInt32(1), into: &image, at: base)
            le(UInt64(image.count + data.count), into: &image, at: base + 8)
            le(segment.paddr | 0xffff_ffff_8000_0000, into: &image, at: base + 16)
            le(segment.paddr, into: &image, at: base + 24)
            le(UInt64(segment.bytes.count), into: &image, at: base + 32)
            le(segment.memorySize, into: &image, at: base + 40)
            data += segment.bytes
        }
        return image + data
    }

    static func memory(size: UInt64 = 64 << 20) throws -> GuestMemory {
        try GuestMemory(layout: X86Layout.ramRegions(size: size))
    }
}
