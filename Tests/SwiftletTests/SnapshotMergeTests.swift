import Foundation
import Glibc
@testable import Swiftlet
import SwiftletHost
import SwiftletMemory
import SwiftletSnapshot
import Testing

/// A diff snapshot merged onto its base: the pages its state file lists come from the diff, every other page from
/// the base; and what is wrong with the files is refused before anything is written.
@Suite struct SnapshotMergeTests {
    let directory: String
    /// 64 MiB, the smallest machine: one region of 16384 pages.
    static let memorySize: UInt64 = 64 << 20
    var pages: Int { Int(Self.memorySize / hostPageSize) }

    init() throws {
        var template = Array("/tmp/swiftlet-merge-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        directory = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A state file of a 64 MiB machine; a diff's lists `dirty` (one bitmap; nil: a full snapshot).
    func stateFile(_ name: String, dirty: [[UInt64]]?, pageSize: UInt64 = hostPageSize) throws -> String {
        var body = SnapshotEncoder()
        body.record("arch", string: "x86_64")
        body.record("conf") { SnapshotConfiguration.save(MachineConfiguration(kernelPath: "/k", memorySize: Self.memorySize), into: &$0) }
        if let dirty {
            body.record("dirt") { record in
                record.record("page", integer: pageSize)
                for words in dirty { record.record("regn") { $0.record("bits", array: words) } }
            }
        }
        let path = "\(directory)/\(name)"
        try write(SnapshotFile.bytes(body: body), to: path)
        return path
    }

    func write(_ bytes: [UInt8], to path: String, size: UInt64? = nil) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0)
        defer { close(fd) }
        if let size { try #require(ftruncate(fd, off_t(size)) == 0) }
        try #require(bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count)
    }

    /// A memory file of guest RAM's size with `pages` (page index, byte) written at each page's start.
    func memoryFile(_ name: String, _ marks: [(Int, UInt8)], size: UInt64 = memorySize) throws -> String {
        let path = "\(directory)/\(name)"
        try write([], to: path, size: size)
        let fd = open(path, O_WRONLY)
        defer { close(fd) }
        for (page, byte) in marks {
            var value = byte
            try #require(pwrite(fd, &value, 1, off_t(UInt64(page) * hostPageSize)) == 1)
        }
        return path
    }

    func byte(_ path: String, page: Int) -> UInt8? {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var value: UInt8 = 0xAA
        return pread(fd, &value, 1, off_t(UInt64(page) * hostPageSize)) == 1 ? value : nil
    }

    func cleanUp() { try? FileManager.default.removeItem(atPath: directory) }

    @Test func theDiffsPagesGoOverTheBase() throws {
        defer { cleanUp() }
        var bits = [UInt64](repeating: 0, count: (pages + 63) / 64)
        bits[0] = 1 << 2 | 1 << 3        // page 2 changed, page 3 was cleared since the base
        bits[100] = 1 << 5               // page 6405
        let state = try stateFile("diff.snap", dirty: [bits])
        let base = try memoryFile("base.mem", [(1, 11), (2, 12), (3, 13), (9000, 14)])
        let diff = try memoryFile("diff.mem", [(2, 22), (6405, 25), (7, 99)]) // page 7 is not listed: not taken
        // Diff memory files write the zeroes of a cleared page; here page 3 is a hole in the diff, which reads 0.
        let snapshot = try MicroVMSnapshot(SnapshotPaths(state: state, memory: diff))
        #expect(snapshot.kind == .diff)
        let output = "\(directory)/full.mem"
        let merged = try snapshot.mergeDiff(base: base, output: output)
        #expect(merged.mergedBytes == 3 * hostPageSize && merged.copiedBytes == 4 * hostPageSize)
        #expect([1, 2, 3, 6405, 7, 9000].map { byte(output, page: $0) } == [11, 22, 0, 25, 0, 14])
        #expect(byte(base, page: 2) == 12, "the base is left as it was")
        // In place: the output is the base.
        let again = try snapshot.mergeDiff(base: base, output: base)
        #expect(again.copiedBytes == 0 && again.mergedBytes == 3 * hostPageSize)
        #expect([1, 2, 3, 6405, 9000].map { byte(base, page: $0) } == [11, 22, 0, 25, 14])
    }

    @Test func whatCannotBeMergedIsRefusedBeforeWriting() throws {
        defer { cleanUp() }
        let bits = [UInt64](repeating: 1, count: (pages + 63) / 64)
        let base = try memoryFile("base.mem", [(0, 1)])
        let diff = try memoryFile("diff.mem", [(0, 2)])
        func refusal(_ state: String, diff: String, base: String, output: String) -> String? {
            do {
                try MicroVMSnapshot(SnapshotPaths(state: state, memory: diff)).mergeDiff(base: base, output: output)
                return nil
            } catch {
                return error.message
            }
        }
        let full = try stateFile("full.snap", dirty: nil)
        #expect(refusal(full, diff: diff, base: base, output: "\(directory)/o")?.contains("is a full snapshot: its memory file restores as it is") == true)
        let good = try stateFile("diff.snap", dirty: [bits])
        let short = try memoryFile("short.mem", [], size: Self.memorySize - hostPageSize)
        #expect(refusal(good, diff: short, base: base, output: "\(directory)/o")?.contains("the diff's memory file \(short) is \(Self.memorySize - hostPageSize) bytes") == true)
        #expect(refusal(good, diff: diff, base: short, output: "\(directory)/o")?.contains("the base memory file \(short) is") == true)
        #expect(refusal(good, diff: diff, base: diff, output: "\(directory)/o")?.contains("is the diff's own memory file") == true)
        #expect(refusal(good, diff: diff, base: base, output: diff)?.contains("is the diff's memory file, which the merge reads") == true)
        let wrongRegions = try stateFile("regions.snap", dirty: [bits, bits])
        #expect(refusal(wrongRegions, diff: diff, base: base, output: "\(directory)/o")?.contains("lists the pages of 2 memory regions, and its machine has 1") == true)
        let wrongLength = try stateFile("length.snap", dirty: [Array(bits.dropLast())])
        #expect(refusal(wrongLength, diff: diff, base: base, output: "\(directory)/o")?.contains("pages for a memory region of \(pages)") == true)
        let wrongPage = try stateFile("page.snap", dirty: [bits], pageSize: 2 << 20)
        #expect(refusal(wrongPage, diff: diff, base: base, output: "\(directory)/o")?.contains("its pages are 2097152 bytes") == true)
        #expect(access("\(directory)/o", F_OK) != 0, "nothing was written")
        #expect(byte(base, page: 0) == 1)
    }
}
