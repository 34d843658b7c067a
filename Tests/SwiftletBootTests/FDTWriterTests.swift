import CLibFDT
import SwiftletBoot
import SwiftletHost
import Testing

/// Reads a tree back through libfdt's read-only API, which shares no code with the sequential writer.
struct FDTReader {
    let blob: [UInt8]

    func offset(_ path: String) -> Int32 {
        blob.withUnsafeBytes { fdt_path_offset($0.baseAddress!, path) }
    }

    func property(_ path: String, _ name: String) -> [UInt8]? {
        blob.withUnsafeBytes { raw -> [UInt8]? in
            let node = fdt_path_offset(raw.baseAddress!, path)
            guard node >= 0 else { return nil }
            var length: Int32 = 0
            guard let value = fdt_getprop(raw.baseAddress!, node, name, &length), length >= 0 else { return nil }
            return Array(UnsafeRawBufferPointer(start: value, count: Int(length)))
        }
    }

    func cells(_ path: String, _ name: String) -> [UInt32]? {
        guard let bytes = property(path, name), bytes.count % 4 == 0 else { return nil }
        return stride(from: 0, to: bytes.count, by: 4).map { index in
            bytes[index..<index + 4].reduce(0) { $0 << 8 | UInt32($1) }
        }
    }

    func u64s(_ path: String, _ name: String) -> [UInt64]? {
        guard let cells = cells(path, name), cells.count % 2 == 0 else { return nil }
        return stride(from: 0, to: cells.count, by: 2).map { UInt64(cells[$0]) << 32 | UInt64(cells[$0 + 1]) }
    }

    func string(_ path: String, _ name: String) -> String? {
        guard let bytes = property(path, name), bytes.last == 0 else { return nil }
        return String(decoding: bytes.dropLast(), as: UTF8.self)
    }

    /// The names of `path`'s subnodes, in order.
    func children(_ path: String) -> [String] {
        blob.withUnsafeBytes { raw -> [String] in
            var names: [String] = []
            var child = fdt_first_subnode(raw.baseAddress!, fdt_path_offset(raw.baseAddress!, path))
            while child >= 0 {
                names.append(String(cString: fdt_get_name(raw.baseAddress!, child, nil)))
                child = fdt_next_subnode(raw.baseAddress!, child)
            }
            return names
        }
    }
}

@Suite struct FDTWriterTests {
    @Test func writesEveryPropertyKindAndLibfdtReadsThemBack() throws {
        var writer = try FDTWriter()
        try writer.beginNode("")
        try writer.property("#address-cells", u32: 2)
        try writer.property("compatible", strings: ["vendor,board", "generic-board"])
        try writer.beginNode("node@1000")
        try writer.property("reg", u64Cells: [0x1000, 0x2_0000_0000])
        try writer.property("big", u64: 0x0123_4567_89ab_cdef)
        try writer.property("cells", cells: [1, 2, 0xffff_ffff])
        try writer.property("label", string: "hello")
        try writer.property("raw", bytes: [9, 8, 7])
        try writer.empty("flag")
        try writer.phandle(7)
        try writer.endNode()
        try writer.endNode()
        let blob = try writer.finish()

        try FDTWriter.check(blob)
        let tree = FDTReader(blob: blob)
        #expect(tree.cells("/", "#address-cells") == [2])
        #expect(tree.property("/", "compatible") == Array("vendor,board\0generic-board\0".utf8))
        #expect(tree.u64s("/node@1000", "reg") == [0x1000, 0x2_0000_0000])
        #expect(tree.u64s("/node@1000", "big") == [0x0123_4567_89ab_cdef])
        #expect(tree.cells("/node@1000", "cells") == [1, 2, 0xffff_ffff])
        #expect(tree.string("/node@1000", "label") == "hello")
        #expect(tree.property("/node@1000", "raw") == [9, 8, 7])
        #expect(tree.property("/node@1000", "flag") == [])
        #expect(tree.cells("/node@1000", "phandle") == [7])
        #expect(blob.withUnsafeBytes { fdt_node_offset_by_phandle($0.baseAddress!, 7) } == tree.offset("/node@1000"))
        // The header's totalsize is the blob's length: nothing after the tree is handed to a guest.
        #expect(blob.withUnsafeBytes { Int(CLibFDT_totalsize($0.baseAddress!)) } == blob.count)
    }

    @Test func growsPastItsFirstBuffer() throws {
        var writer = try FDTWriter(initialCapacity: 256)
        try writer.beginNode("")
        for index in 0..<500 {
            try writer.beginNode("n@\(index)")
            try writer.property("value", u32: UInt32(index))
            try writer.property("name-\(index % 7)", string: String(repeating: "x", count: index % 50))
            try writer.endNode()
        }
        try writer.endNode()
        let blob = try writer.finish()
        #expect(blob.count > 16 << 10)
        let tree = FDTReader(blob: blob)
        #expect(tree.cells("/n@499", "value") == [499])
        #expect(tree.children("/").count == 500)
    }

    @Test func aTreeOverTwoMebibytesIsNoSpace() throws {
        var writer = try FDTWriter()
        try writer.beginNode("")
        // Seven 256 KiB properties fit; the eighth would take the tree past 2 MiB.
        let chunk = [UInt8](repeating: 0xaa, count: 256 << 10)
        #expect(throws: FDTError(code: FDT_ERR_NOSPACE, operation: "fdt_property(\"p7\")")) {
            for index in 0..<9 { try writer.property("p\(index)", bytes: chunk) }
        }
    }

    @Test func misuseIsRefusedWithTheLibfdtCodeNamed() throws {
        var writer = try FDTWriter()
        let noNode = #expect(throws: FDTError.self) { try writer.property("early", u32: 1) }
        #expect(noNode?.name == "FDT_ERR_BADSTATE")
        #expect(throws: FDTError.self) { try writer.endNode() }
        #expect(throws: FDTError.self) { try writer.beginNode("child") } // the root comes first, and is named ""
        try writer.beginNode("")
        #expect(throws: FDTError.self) { try writer.beginNode("") }
        let open = #expect(throws: FDTError.self) { _ = try writer.finish() }
        #expect(open?.description.contains("FDT_ERR_BADSTATE") == true)
        let badPhandle = #expect(throws: FDTError.self) { try writer.phandle(0) }
        #expect(badPhandle?.name == "FDT_ERR_BADPHANDLE")
        let nul = #expect(throws: FDTError.self) { try writer.property("s", string: "a\0b") }
        #expect(nul?.name == "FDT_ERR_BADVALUE")
    }

    @Test func errorNamesFollowLibfdt() {
        #expect(FDTError(code: FDT_ERR_NOSPACE, operation: "x").name == "FDT_ERR_NOSPACE")
        #expect(FDTError(code: FDT_ERR_BADMAGIC, operation: "x").name == "FDT_ERR_BADMAGIC")
        #expect(FDTError(code: FDT_ERR_TRUNCATED, operation: "x").name == "FDT_ERR_TRUNCATED")
        #expect(FDTError(code: FDT_ERR_BADSTRUCTURE, operation: "x").name == "FDT_ERR_BADSTRUCTURE")
        #expect(FDTError(code: 999, operation: "x").name == "FDT_ERR_999")
        // Every name agrees with libfdt's own (fdt_strerror spells each code by its name).
        for code in Int32(1)...FDT_ERR_BADFLAGS {
            #expect(FDTError(code: code, operation: "x").name == String(cString: fdt_strerror(-code)))
        }
        #expect(FDTError(code: FDT_ERR_NOSPACE, operation: "fdt_begin_node(\"a\")").description
            == "libfdt fdt_begin_node(\"a\") failed: FDT_ERR_NOSPACE")
    }

    @Test func fdtCheckFullRejectsDamagedBlobs() throws {
        var writer = try FDTWriter()
        try writer.beginNode("")
        try writer.beginNode("a")
        try writer.property("x", u32: 1)
        try writer.endNode()
        try writer.endNode()
        let blob = try writer.finish()
        try FDTWriter.check(blob)

        var badMagic = blob
        badMagic[0] ^= 0xff
        #expect(throws: FDTError(code: FDT_ERR_BADMAGIC, operation: "fdt_check_full")) { try FDTWriter.check(badMagic) }
        #expect(throws: FDTError(code: FDT_ERR_TRUNCATED, operation: "fdt_check_full")) { try FDTWriter.check(Array(blob.dropLast(8))) }
        // An FDT_END_NODE token turned into FDT_BEGIN_NODE: the structure no longer nests.
        let structureOffset = Int(blob[8]) << 24 | Int(blob[9]) << 16 | Int(blob[10]) << 8 | Int(blob[11])
        var badNesting = blob
        let tokens = stride(from: structureOffset, to: blob.count - 4, by: 4)
        let endNode = try #require(tokens.first { Array(blob[$0..<$0 + 4]) == [0, 0, 0, 2] })
        badNesting[endNode + 3] = 9 // FDT_END
        #expect(throws: FDTError.self) { try FDTWriter.check(badNesting) }
    }
}
