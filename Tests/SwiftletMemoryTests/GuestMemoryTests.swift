import SwiftletHost
import SwiftletMemory
import Testing

@Suite struct GuestMemoryTests {
    let memory: GuestMemory

    init() throws {
        memory = try GuestMemory(layout: [(GuestAddress(0), 0x10000), (GuestAddress(0x100000), 0x2000)])
    }

    @Test func readsAndWritesLittleEndianAtAnyAlignment() throws {
        try memory.write(UInt32(0x1122_3344), at: GuestAddress(0x101))
        #expect(try memory.read(UInt32.self, at: GuestAddress(0x101)) == 0x1122_3344)
        #expect(try memory.read(count: 4, at: GuestAddress(0x101)) == [0x44, 0x33, 0x22, 0x11])
        try memory.write(UInt64.max, at: GuestAddress(0x101ff8))
        #expect(try memory.read(UInt64.self, at: GuestAddress(0x101ff8)) == .max)
    }

    @Test func rejectsAccessesOutsideRegions() {
        // Past the end of the first region, straddling its end, in the gap, past the last region, and wrapping.
        #expect(throws: SwiftletError.self) { try memory.read(UInt8.self, at: GuestAddress(0x10000)) }
        #expect(throws: SwiftletError.self) { try memory.read(UInt32.self, at: GuestAddress(0xfffe)) }
        #expect(throws: SwiftletError.self) { try memory.write(UInt8(1), at: GuestAddress(0x50000)) }
        #expect(throws: SwiftletError.self) { try memory.buffer(GuestAddress(0x101000), count: 0x1001) }
        #expect(throws: SwiftletError.self) { try memory.read(UInt64.self, at: GuestAddress(UInt64.max - 3)) }
        #expect(throws: SwiftletError.self) { try memory.buffer(GuestAddress(0), count: -1) }
        #expect(throws: SwiftletError.self) { try memory.hostPointer(GuestAddress(0x100000), count: UInt64.max) }
    }

    @Test func accessesNeverSpanTwoRegions() throws {
        let adjacent = try GuestMemory(layout: [(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
        #expect(throws: SwiftletError.self) { try adjacent.read(UInt32.self, at: GuestAddress(0xffe)) }
        #expect(try adjacent.read(UInt32.self, at: GuestAddress(0x1000)) == 0)
    }

    @Test func regionsAreHugePageAligned() throws {
        let large = try GuestMemory(layout: [(GuestAddress(0), 6 << 20)])
        #expect(UInt(bitPattern: large.regions[0].host) % (2 << 20) == 0)
        try large.write(UInt64(7), at: GuestAddress((6 << 20) - 8))
        #expect(try large.read(UInt64.self, at: GuestAddress((6 << 20) - 8)) == 7)
    }

    @Test func rejectsBadLayouts() {
        #expect(throws: SwiftletError.self) { try GuestMemory(layout: [(GuestAddress(0), 0x2000), (GuestAddress(0x1000), 0x1000)]) }
        #expect(throws: SwiftletError.self) { try GuestMemory(layout: [(GuestAddress(0), 100)]) }
        #expect(throws: SwiftletError.self) { try GuestMemory(layout: [(GuestAddress(UInt64.max - 0xfff), 0x2000)]) }
    }

    @Test func addressArithmeticReportsOverflow() {
        #expect(GuestAddress(UInt64.max).adding(1) == nil)
        #expect(GuestAddress(0x1001).alignedUp(to: 0x1000) == GuestAddress(0x2000))
        #expect(GuestAddress(UInt64.max - 1).alignedUp(to: 0x1000) == nil)
    }
}

@Suite struct GuestMemoryDiscardTests {
    @Test func discardedPagesReadZeroAndTheRestStays() throws {
        let memory = try GuestMemory(layout: [(GuestAddress(0), 1 << 20), (GuestAddress(1 << 20), 1 << 20)])
        try memory.write([UInt8](repeating: 7, count: 1 << 20), at: GuestAddress(0))
        try memory.write([UInt8](repeating: 7, count: 1 << 20), at: GuestAddress(1 << 20))
        // Spans the two touching regions.
        try memory.discard(GuestAddress(0xff000), count: 0x2000)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0xff000)) == 0)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x100fff)) == 0)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0xfefff)) == 7)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x101000)) == 7)
    }

    @Test func misalignedOrOutsideRangesAreRefusedWhole() throws {
        let memory = try GuestMemory(layout: [(GuestAddress(0), 1 << 20)])
        try memory.write([UInt8](repeating: 7, count: 1 << 20), at: GuestAddress(0))
        #expect(throws: SwiftletError.self) { try memory.discard(GuestAddress(0x800), count: 0x1000) }
        #expect(throws: SwiftletError.self) { try memory.discard(GuestAddress(0), count: 0x800) }
        #expect(throws: SwiftletError.self) { try memory.discard(GuestAddress(0xff000), count: 0x2000) }
        #expect(throws: SwiftletError.self) { try memory.discard(GuestAddress(UInt64.max & ~0xfff), count: 0x2000) }
        #expect(try memory.read(UInt8.self, at: GuestAddress(0xff000)) == 7) // the part inside was not discarded
    }
}
