import Glibc
import SwiftletHost
import SwiftletMemory
import Testing

/// Guest RAM to a snapshot's memory file and back: sparse where the guest left zeroes, mapped MAP_PRIVATE on restore.
@Suite struct MemoryFileTests {
    let layout: [(start: GuestAddress, size: UInt64)] = [(GuestAddress(0), 1 << 20), (GuestAddress(4 << 20), 1 << 20)]

    private func temporaryFile() throws -> (path: String, fd: Int32) {
        var template = Array("/tmp/swiftlet-memfile-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        try #require(fd >= 0)
        return (String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self), fd)
    }

    private func fileBytes(_ fd: Int32, at offset: Int, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xAA, count: count)
        let read = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        return read == count ? bytes : []
    }

    @Test func savesOnlyWhatIsNotZeroAndRestoresIt() throws {
        let memory = try GuestMemory(layout: layout)
        try memory.write([1, 2, 3, 4], at: GuestAddress(0x1000))
        try memory.write(UInt64(0xFEED), at: GuestAddress((4 << 20) + 0xFF000))
        try memory.write(UInt8(9), at: GuestAddress(0x2FFF)) // the page after the first: one run of two pages
        let (path, fd) = try temporaryFile()
        defer { close(fd); unlink(path) }
        let statistics = try memory.save(to: fd)
        #expect(statistics.totalBytes == 2 << 20 && statistics.writtenBytes == 3 * hostPageSize)
        var info = stat()
        #expect(fstat(fd, &info) == 0)
        #expect(info.st_size == 2 << 20)
        #expect(UInt64(info.st_blocks) * 512 < 1 << 20, "the zero pages are holes (\(info.st_blocks) blocks)")
        // The second region follows the first in the file.
        #expect(fileBytes(fd, at: (1 << 20) + 0xFF000, count: 2) == [0xED, 0xFE])

        let restored = try GuestMemory(layout: layout, restoringFrom: fd)
        #expect(try restored.read(count: 4, at: GuestAddress(0x1000)) == [1, 2, 3, 4])
        #expect(try restored.read(UInt8.self, at: GuestAddress(0x2FFF)) == 9)
        #expect(try restored.read(UInt64.self, at: GuestAddress((4 << 20) + 0xFF000)) == 0xFEED)
        #expect(try restored.read(UInt64.self, at: GuestAddress(0x8000)) == 0)
        // The restored guest's writes stay in this process: the file, and any other clone of it, keep the snapshot.
        try restored.write([7, 7, 7, 7], at: GuestAddress(0x1000))
        #expect(try restored.read(count: 4, at: GuestAddress(0x1000)) == [7, 7, 7, 7])
        #expect(fileBytes(fd, at: 0x1000, count: 4) == [1, 2, 3, 4])
        let clone = try GuestMemory(layout: layout, restoringFrom: fd)
        #expect(try clone.read(count: 4, at: GuestAddress(0x1000)) == [1, 2, 3, 4])
    }

    /// The host's own writes are recorded page by page when tracking: write, zero, discard (a discarded page reads
    /// as something else next), ranges across a word of the bitmap and across regions; reads are not.
    @Test func hostWritesAreMarkedPageByPage() throws {
        let memory = try GuestMemory(layout: layout, tracksDirtyPages: true)
        #expect(memory.takeHostWrites().map(\.count) == [Int((1 << 20) / hostPageSize + 63) / 64, Int((1 << 20) / hostPageSize + 63) / 64])
        try memory.write(UInt32(1), at: GuestAddress(0x1ffe))                 // pages 1 and 2
        try memory.zero(GuestAddress(0x3f000), count: 0x3000)                  // pages 63, 64, 65: across a word
        try memory.discard(GuestAddress((4 << 20) + 0x5000), count: hostPageSize) // region 1, page 5
        _ = try memory.read(count: 64, at: GuestAddress(0x9000))
        let dirty = memory.takeHostWrites()
        #expect(dirty[0][0] == (1 << 1 | 1 << 2 | 1 << 63) && dirty[0][1] == (1 << 0 | 1 << 1))
        #expect(dirty[1][0] == 1 << 5)
        #expect(memory.takeHostWrites().allSatisfy { $0.allSatisfy { $0 == 0 } }, "taking clears them")
        // A range that covers the end of one region, the hole and the start of the next marks both ends only.
        memory.markDirty(GuestAddress((1 << 20) - hostPageSize), count: (3 << 20) + 2 * hostPageSize)
        let spanned = memory.takeHostWrites()
        #expect(spanned[0].reduce(0) { $0 + $1.nonzeroBitCount } == 1 && spanned[1].reduce(0) { $0 + $1.nonzeroBitCount } == 1)
        #expect(spanned[1][0] == 1)
    }

    /// A diff's memory file holds exactly the marked pages, zero pages too (a page the guest cleared since the base
    /// must overwrite the base's), at the offsets a full file has them; the rest are holes.
    @Test func aDiffSavesTheMarkedPagesOnly() throws {
        let memory = try GuestMemory(layout: layout)
        try memory.write([5, 6], at: GuestAddress(0x3000))
        try memory.write([8], at: GuestAddress((4 << 20) + 0x1000))
        try memory.write([9], at: GuestAddress(0x7000)) // not marked: not in the diff
        let pages = Int((1 << 20) / hostPageSize)
        var first = [UInt64](repeating: 0, count: (pages + 63) / 64), second = first
        first[0] = 1 << 3 | 1 << 4 // page 4 is zeroes, and is written all the same
        second[0] = 1 << 1
        let (path, fd) = try temporaryFile()
        defer { close(fd); unlink(path) }
        let statistics = try memory.saveDirty(to: fd, dirty: [first, second])
        #expect(statistics.totalBytes == 2 << 20 && statistics.writtenBytes == 3 * hostPageSize)
        #expect(fileBytes(fd, at: 0x3000, count: 2) == [5, 6])
        #expect(fileBytes(fd, at: (1 << 20) + 0x1000, count: 1) == [8])
        #expect(fileBytes(fd, at: 0x7000, count: 1) == [0])
        var info = stat()
        #expect(fstat(fd, &info) == 0 && info.st_size == 2 << 20)
        #expect(lseek(fd, 0x4000, 3 /* SEEK_DATA */) == 0x4000, "the zero page is data, not a hole")
        #expect(lseek(fd, 0x5000, 3 /* SEEK_DATA */) == (1 << 20) + 0x1000, "what is not marked is a hole")
    }

    @Test func aSecondSaveReplacesTheFirst() throws {
        let memory = try GuestMemory(layout: layout)
        try memory.write(UInt8(1), at: GuestAddress(0x5000))
        let (path, fd) = try temporaryFile()
        defer { close(fd); unlink(path) }
        _ = try memory.save(to: fd)
        try memory.zero(GuestAddress(0x5000), count: 1)
        #expect(try memory.save(to: fd).writtenBytes == 0)
        #expect(fileBytes(fd, at: 0x5000, count: 1) == [0], "a page zero now is not left with its old contents")
    }

    @Test func aLayoutThatWrapsIsRefused() throws {
        let (path, fd) = try temporaryFile()
        defer { close(fd); unlink(path) }
        #expect(ftruncate(fd, 1 << 20) == 0)
        do {
            _ = try GuestMemory(layout: [(GuestAddress(0), 1 << 20), (GuestAddress(1 << 40), UInt64.max - (1 << 20) + 1)], restoringFrom: fd)
            Issue.record("a layout whose sizes wrap to 0 was mapped")
        } catch {
            #expect(error.message == "the guest memory layout adds up to more than 2^64 bytes")
        }
    }

    @Test func aShortFileIsRefused() throws {
        let (path, fd) = try temporaryFile()
        defer { close(fd); unlink(path) }
        #expect(ftruncate(fd, (2 << 20) - 4096) == 0)
        #expect(throws: SwiftletError.self) { try GuestMemory(layout: layout, restoringFrom: fd) }
        do {
            _ = try GuestMemory(layout: layout, restoringFrom: fd)
        } catch {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message == "the memory file is \((2 << 20) - 4096) bytes, smaller than the \(2 << 20) bytes of guest RAM it should hold: it is truncated, or belongs to another snapshot")
        }
    }
}
