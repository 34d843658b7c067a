@testable import SwiftletSnapshot
import Testing

@Suite struct SnapshotFileTests {
    struct Pair: Equatable { var a: UInt32; var b: UInt64 }

    private func sample() -> [UInt8] {
        var body = SnapshotEncoder()
        body.record("name", string: "sandbox-1")
        body.record("cpus", integer: 2)
        for index in 0..<2 {
            body.record("vcpu") { vcpu in
                vcpu.record("indx", integer: UInt64(index))
                vcpu.record("pair", Pair(a: UInt32(index), b: 0xDEAD_BEEF_0000 + UInt64(index)))
                vcpu.record("list", array: [UInt16(1), 2, 3])
            }
        }
        return SnapshotFile.bytes(body: body)
    }

    private func error(_ file: [UInt8]) -> SnapshotError? {
        do throws(SnapshotError) {
            _ = try SnapshotFile.body(of: file)
            return nil
        } catch {
            return error
        }
    }

    @Test func recordsComeBackAsWritten() throws {
        let body = try SnapshotFile.body(of: sample())
        #expect(try body.string("name") == "sandbox-1")
        #expect(try body.integer("cpus") == 2)
        let vcpus = try body.all("vcpu", maximum: 8)
        #expect(vcpus.count == 2)
        for (index, vcpu) in vcpus.enumerated() {
            #expect(try vcpu.integer("indx") == UInt64(index))
            #expect(try vcpu.value("pair", as: Pair.self) == Pair(a: UInt32(index), b: 0xDEAD_BEEF_0000 + UInt64(index)))
            #expect(try vcpu.array("list", of: UInt16.self, maximum: 3) == [1, 2, 3])
        }
    }

    @Test func headerIsMagicVersionFlagsLength() {
        let file = sample()
        #expect(Array(file[0..<8]) == Array("SWLTSNAP".utf8))
        #expect(Array(file[8..<12]) == [1, 0, 0, 0])
        #expect(Array(file[12..<16]) == [0, 0, 0, 0])
        let length = file[16..<24].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        #expect(length == file.count - 28)
    }

    @Test func crc32cIsCastagnolis() {
        // The check value of CRC-32C: the checksum of "123456789".
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    }

    @Test func everyTruncationIsRefused() {
        let file = sample()
        for length in 0..<file.count {
            let found = error(Array(file[0..<length]))
            switch found {
            case .notASnapshot? where length < 8: break
            case .truncated(let size, _)? where size == length && length >= 8: break
            default: Issue.record("a file cut to \(length) of \(file.count) bytes gave \(String(describing: found))")
            }
        }
    }

    @Test func everyFlippedByteIsRefused() {
        let file = sample()
        for offset in 0..<file.count {
            var damaged = file
            damaged[offset] ^= 0x40
            let found = error(damaged)
            #expect(found != nil, "a flipped byte at \(offset) went unnoticed")
            if offset >= 24 { #expect(found == .checksumMismatch, "byte \(offset): \(String(describing: found))") }
        }
    }

    @Test func aNewerFormatIsRefusedSayingSo() {
        var file = sample()
        file[8] = 2
        let found = error(file)
        #expect(found == .unsupportedVersion(found: 2, readable: 1...1))
        #expect(found?.description == "the snapshot is format 2, written by a newer Swiftlet; this build reads formats 1 to 1: restore it with the build that took it, or a newer one")
        file[8] = 0
        #expect(error(file)?.description == "the snapshot is format 0, which this build no longer reads (it reads 1 to 1): restore it with an older build, or take it again")
    }

    @Test func unknownFlagsAndAppendedBytesAreRefused() {
        var flagged = sample()
        flagged[12] = 1
        #expect(error(flagged) == .malformed("the header's flags are 0x1; format 1 defines none"))
        let appended = sample() + [0]
        #expect(error(appended) == .malformed("the file is \(appended.count) bytes, but its header says \(appended.count - 1): something was appended to it"))
    }

    @Test func aMemoryFileIsNotTakenForAState() {
        #expect(error([UInt8](repeating: 0, count: 4096)) == .notASnapshot)
        #expect(error([UInt8](repeating: 0, count: SnapshotFile.maximumSize + 1)) == .tooLarge(size: SnapshotFile.maximumSize + 1, maximum: SnapshotFile.maximumSize))
    }
}

@Suite struct SnapshotRecordTests {
    private func decoder(_ body: (inout SnapshotEncoder) -> Void) throws -> SnapshotDecoder {
        var encoder = SnapshotEncoder()
        body(&encoder)
        return try SnapshotFile.body(of: SnapshotFile.bytes(body: encoder))
    }

    /// The SnapshotError `body` threw (any other error fails the test).
    private func thrown(_ body: () throws -> Void) -> SnapshotError? {
        do {
            try body()
            return nil
        } catch let error as SnapshotError {
            return error
        } catch {
            Issue.record("not a SnapshotError: \(error)")
            return nil
        }
    }

    @Test func aValueMustBeItsTypesSize() throws {
        let records = try decoder { $0.record("regs", bytes: [1, 2, 3]) }
        #expect(thrown { _ = try records.value("regs", as: UInt64.self) } == .wrongSize(tag: "regs", size: 3, expected: 8))
    }

    @Test func anArrayMustBeWholeAndWithinItsMaximum() throws {
        let records = try decoder {
            $0.record("odd ", bytes: [1, 2, 3])
            $0.record("many", array: [UInt32](repeating: 7, count: 10))
        }
        #expect(thrown { _ = try records.array("odd ", of: UInt16.self, maximum: 10) }
            == .malformed("record 'odd ' in the snapshot is 3 bytes, not a whole number of 2-byte entries"))
        #expect(thrown { _ = try records.array("many", of: UInt32.self, maximum: 9) } == .tooMany(tag: "many", count: 10, maximum: 9))
        #expect(try records.array("many", of: UInt32.self, maximum: 10).count == 10)
    }

    @Test func aMissingRecordSaysWhereItWasLookedFor() throws {
        let records = try decoder { $0.record("vcpu") { $0.record("regs", integer: 1) } }
        let vcpu = try records.all("vcpu", maximum: 1)[0]
        #expect(thrown { _ = try vcpu.integer("sreg") } == .missingRecord(tag: "sreg", in: "'vcpu' 0 in the snapshot"))
        #expect(thrown { _ = try records.all("vcpu", maximum: 0) } == .tooMany(tag: "vcpu", count: 1, maximum: 0))
    }

    @Test func aRecordLongerThanItsSectionIsRefused() {
        // A record head claiming 100 bytes with 2 behind it, inside a file whose checksum is right.
        var encoder = SnapshotEncoder()
        encoder.record("outr", bytes: Array("innr".utf8) + [100, 0, 0, 0, 1, 2])
        let file = SnapshotFile.bytes(body: encoder)
        let outer = try? SnapshotFile.body(of: file)
        #expect(thrown { _ = try outer?.nested("outr") } == .malformed("record 'innr' in 'outr' in the snapshot claims 100 bytes, but only 2 follow"))
        var stray = SnapshotEncoder()
        stray.record("outr", bytes: [1, 2, 3])
        let strayOuter = try? SnapshotFile.body(of: SnapshotFile.bytes(body: stray))
        #expect(thrown { _ = try strayOuter?.nested("outr") } == .malformed("3 stray bytes at the end of 'outr' in the snapshot, too few for a record"))
    }

    @Test func stringsAreCheckedUTF8AndBounded() throws {
        let records = try decoder {
            $0.record("bad ", bytes: [0xFF, 0xFE])
            $0.record("long", string: String(repeating: "x", count: 20))
        }
        #expect(thrown { _ = try records.string("bad ") } == .malformed("record 'bad ' in the snapshot is not UTF-8"))
        #expect(thrown { _ = try records.string("long", maximumBytes: 10) } == .tooMany(tag: "long", count: 20, maximum: 10))
    }
}
