import Glibc
import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import SwiftletTestSupport
import SwiftletVirtio
import Testing

/// A temporary raw image, removed when the test ends.
final class TemporaryImage {
    let path: String
    init(bytes: Int, fill: UInt8 = 0) throws {
        var template = Array("/tmp/swiftlet-blk-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        try #require(fd >= 0)
        path = String(cString: template)
        let chunk = [UInt8](repeating: fill, count: bytes)
        _ = chunk.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
    deinit { unlink(path) }

    func read(at offset: Int, count: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        _ = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        return bytes
    }

    var allocatedBlocks: Int {
        var info = stat()
        stat(path, &info)
        return Int(info.st_blocks)
    }
}

@Suite struct BlockTests {
    let driver: FakeDriver
    let line = CountingLine()
    let header = GuestAddress(0x10000), data = GuestAddress(0x11000), status = GuestAddress(0x20000)

    init() throws { driver = try FakeDriver(size: 16) }

    func device(_ image: TemporaryImage, readOnly: Bool = false, serial: String? = nil) throws -> Block {
        let block = try Block(BlockConfiguration(path: image.path, readOnly: readOnly, serial: serial))
        block.attach(interrupt: VirtioInterrupt(line: line)) {}
        try block.activate(VirtioActivation(queues: [try driver.queue(features: block.offeredFeatures)],
                                            features: block.offeredFeatures, memory: driver.memory))
        _ = block.queueEvents[0].consume()
        return block
    }

    func writeHeader(type: UInt32, sector: UInt64, at address: GuestAddress? = nil) throws {
        let address = address ?? header
        try driver.memory.write(type, at: address)
        try driver.memory.write(UInt32(0), at: GuestAddress(address.rawValue + 4))
        try driver.memory.write(sector, at: GuestAddress(address.rawValue + 8))
    }

    /// Header, data (readable for writes, writable for reads) and status, as Linux lays a request out.
    func submit(_ block: Block, type: UInt32, sector: UInt64, dataLength: UInt32, dataWritable: Bool) throws -> (status: UInt8, used: UInt32) {
        try writeHeader(type: type, sector: sector)
        try driver.memory.write(UInt8(0xee), at: status)
        try driver.setDescriptor(0, address: header.rawValue, length: 16, flags: FakeDriver.next, next: dataLength > 0 ? 1 : 2)
        try driver.setDescriptor(1, address: data.rawValue, length: dataLength,
                                 flags: FakeDriver.next | (dataWritable ? FakeDriver.write : 0), next: 2)
        try driver.setDescriptor(2, address: status.rawValue, length: 1, flags: FakeDriver.write)
        try driver.publish(0)
        return try complete(block)
    }

    func complete(_ block: Block) throws -> (status: UInt8, used: UInt32) {
        block.queueEvents[0].signal()
        block.handleQueueEvent()
        let element = try driver.usedElement(driver.usedIndex &- 1)
        return (try driver.memory.read(UInt8.self, at: status), element.length)
    }

    @Test func readsAndWritesSectors() throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let block = try device(image)
        try driver.memory.write([UInt8](repeating: 0x5a, count: 1024), at: data)
        let written = try submit(block, type: 1, sector: 3, dataLength: 1024, dataWritable: false)
        #expect(written.status == 0 && written.used == 1)
        #expect(image.read(at: 3 * 512, count: 1024) == [UInt8](repeating: 0x5a, count: 1024))
        #expect(image.read(at: 3 * 512 - 1, count: 1) == [0])

        try driver.memory.write([UInt8](repeating: 0, count: 1024), at: data)
        let read = try submit(block, type: 0, sector: 4, dataLength: 512, dataWritable: true)
        #expect(read.status == 0 && read.used == 513) // exact: data plus the status byte
        #expect(try driver.memory.read(count: 512, at: data) == [UInt8](repeating: 0x5a, count: 512))
        #expect(block.counters.requests == 2 && line.count >= 1)
    }

    @Test func aHeaderSplitAcrossDescriptorsStillParses() throws {
        let image = try TemporaryImage(bytes: 1 << 20, fill: 7)
        let block = try device(image)
        try writeHeader(type: 0, sector: 1)
        try driver.setDescriptor(0, address: header.rawValue, length: 5, flags: FakeDriver.next, next: 3)
        try driver.setDescriptor(3, address: header.rawValue + 5, length: 11, flags: FakeDriver.next, next: 1)
        try driver.setDescriptor(1, address: data.rawValue, length: 512, flags: FakeDriver.next | FakeDriver.write, next: 2)
        try driver.setDescriptor(2, address: status.rawValue, length: 1, flags: FakeDriver.write)
        try driver.publish(0)
        let result = try complete(block)
        #expect(result.status == 0 && result.used == 513)
        #expect(try driver.memory.read(UInt8.self, at: data) == 7)
    }

    @Test func requestsPastTheEndAreRejected() throws {
        let image = try TemporaryImage(bytes: 64 * 1024)
        let block = try device(image)
        #expect(try submit(block, type: 0, sector: 127, dataLength: 1024, dataWritable: true).status == 1)
        #expect(try submit(block, type: 1, sector: 128, dataLength: 512, dataWritable: false).status == 1)
        #expect(try submit(block, type: 0, sector: UInt64.max / 256, dataLength: 512, dataWritable: true).status == 1)
        #expect(try submit(block, type: 0, sector: 0, dataLength: 100, dataWritable: true).status == 1) // not whole sectors
        #expect(try submit(block, type: 0, sector: 127, dataLength: 512, dataWritable: true).status == 0)
        #expect(block.counters.guestErrors == 4)
    }

    @Test func readOnlyDisksRefuseWrites() throws {
        let image = try TemporaryImage(bytes: 64 * 1024, fill: 1)
        let block = try device(image, readOnly: true)
        #expect(block.offeredFeatures & Block.Feature.readOnly != 0)
        #expect(try submit(block, type: 1, sector: 0, dataLength: 512, dataWritable: false).status == 1)
        #expect(image.read(at: 0, count: 1) == [1])
        #expect(try submit(block, type: 0, sector: 0, dataLength: 512, dataWritable: true).status == 0)
    }

    @Test func getIDReturnsTheSerial() throws {
        let image = try TemporaryImage(bytes: 4096)
        let block = try device(image, serial: "disk-7")
        let result = try submit(block, type: 8, sector: 0, dataLength: 20, dataWritable: true)
        #expect(result.status == 0 && result.used == 21)
        #expect(try driver.memory.read(count: 20, at: data) == Array("disk-7".utf8) + [UInt8](repeating: 0, count: 14))
        #expect(throws: SwiftletError.self) { try Block(BlockConfiguration(path: image.path, serial: String(repeating: "x", count: 21))) }
    }

    @Test func flushAndUnknownTypes() throws {
        let image = try TemporaryImage(bytes: 4096)
        let block = try device(image)
        #expect(try submit(block, type: 4, sector: 0, dataLength: 0, dataWritable: false).status == 0)
        #expect(try submit(block, type: 99, sector: 0, dataLength: 0, dataWritable: false).status == 2)
    }

    @Test func discardPunchesAHole() throws {
        let image = try TemporaryImage(bytes: 1 << 20, fill: 0xaa)
        let block = try device(image)
        let before = image.allocatedBlocks
        // One segment: sectors 0..<1024 (512 KiB).
        try driver.memory.write(UInt64(0), at: data)
        try driver.memory.write(UInt32(1024), at: GuestAddress(data.rawValue + 8))
        try driver.memory.write(UInt32(0), at: GuestAddress(data.rawValue + 12))
        #expect(try submit(block, type: 11, sector: 0, dataLength: 16, dataWritable: false).status == 0)
        #expect(image.read(at: 0, count: 4) == [0, 0, 0, 0])
        #expect(image.read(at: 512 * 1024, count: 1) == [0xaa])
        #expect(image.allocatedBlocks < before)
        // A segment past the end, and two segments where one is allowed.
        try driver.memory.write(UInt64(2047), at: data)
        try driver.memory.write(UInt32(2), at: GuestAddress(data.rawValue + 8))
        #expect(try submit(block, type: 13, sector: 0, dataLength: 16, dataWritable: false).status == 1)
        #expect(try submit(block, type: 11, sector: 0, dataLength: 32, dataWritable: false).status == 1)
    }

    @Test func malformedRequests() throws {
        let image = try TemporaryImage(bytes: 4096)
        let block = try device(image)
        // A write-only header: nothing readable, so no header: IOERR.
        try writeHeader(type: 0, sector: 0)
        try driver.setDescriptor(0, address: header.rawValue, length: 16, flags: FakeDriver.next | FakeDriver.write, next: 2)
        try driver.setDescriptor(2, address: status.rawValue, length: 1, flags: FakeDriver.write)
        try driver.publish(0)
        #expect(try complete(block).status == 1)
        // No writable status byte at all: returned with length 0, nothing written.
        try driver.setDescriptor(0, address: header.rawValue, length: 16)
        try driver.publish(0)
        #expect(try complete(block).used == 0)
        // A loop: consumed, returned with length 0, device still works.
        try driver.setDescriptor(5, address: header.rawValue, length: 16, flags: FakeDriver.next, next: 5)
        try driver.publish(5)
        #expect(try complete(block).used == 0)
        #expect(try submit(block, type: 4, sector: 0, dataLength: 0, dataWritable: false).status == 0)
        #expect(block.counters.guestErrors == 3)
    }

    @Test func aCorruptRingAsksForAReset() throws {
        let image = try TemporaryImage(bytes: 4096)
        let resets = CountingLine()
        let block = try Block(BlockConfiguration(path: image.path))
        block.attach(interrupt: VirtioInterrupt(line: line)) { resets.trigger() }
        try block.activate(VirtioActivation(queues: [try driver.queue()], features: VirtioFeature.version1, memory: driver.memory))
        try driver.setAvailableIndex(100)
        block.handleQueueEvent()
        #expect(resets.count == 1)
        block.queueEvents[0].signal()
        block.handleQueueEvent() // inactive now: nothing happens
        #expect(resets.count == 1)
    }

    @Test func writableImagesAreLockedExclusively() throws {
        let image = try TemporaryImage(bytes: 4096)
        let first = try Block(BlockConfiguration(path: image.path))
        #expect(throws: SwiftletError.self) { try Block(BlockConfiguration(path: image.path)) }
        _ = try Block(BlockConfiguration(path: image.path, readOnly: true)) // readers do not lock
        _ = first
    }

    @Test func aDiskMustBeAFileOrABlockDevice() throws {
        // /dev/null opens, locks and has size 0, like an empty image; it is refused by kind, with what to give.
        do {
            _ = try Block(BlockConfiguration(path: "/dev/null", readOnly: true))
            Issue.record("a character device was accepted as a disk")
        } catch {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("/dev/null is neither a regular file nor a block device"))
        }
    }

    @Test func replacingTheImageSwitchesRequestsCapacityAndTellsTheDriver() throws {
        let first = try TemporaryImage(bytes: 64 * 1024, fill: 1)
        let second = try TemporaryImage(bytes: 128 * 1024, fill: 2)
        let block = try device(first)
        let notices = CountingLine()
        block.attachConfigurationNotifier { notices.trigger() }
        try block.replaceImage(path: second.path)
        #expect(notices.count == 1 && block.imagePath == second.path && block.capacityBytes == 128 * 1024)
        var capacity: UInt64 = 0
        withUnsafeMutableBytes(of: &capacity) { block.readConfiguration(offset: 0, into: $0) }
        #expect(capacity == 256)
        // Reads come from the new image, and its added sectors are in bounds now.
        #expect(try submit(block, type: 0, sector: 200, dataLength: 512, dataWritable: true).status == 0)
        #expect(try driver.memory.read(UInt8.self, at: data) == 2)
        try driver.memory.write([UInt8](repeating: 9, count: 512), at: data)
        #expect(try submit(block, type: 1, sector: 0, dataLength: 512, dataWritable: false).status == 0)
        #expect(second.read(at: 0, count: 1) == [9] && first.read(at: 0, count: 1) == [1])
        // The old image's lock went with it: another writer can take it; the new one is locked.
        _ = try Block(BlockConfiguration(path: first.path))
        #expect(throws: SwiftletError.self) { try Block(BlockConfiguration(path: second.path)) }
        // A path that cannot be opened leaves the image attached, and the driver is not told anything.
        do {
            try block.replaceImage(path: "/nonexistent/disk.img")
            Issue.record("a missing image was attached")
        } catch {
            #expect(error.code == .invalidConfiguration && error.message.hasPrefix("cannot open disk image /nonexistent/disk.img"))
        }
        #expect(block.imagePath == second.path && notices.count == 1)
    }

    @Test func configurationSpaceDescribesTheDisk() throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let block = try Block(BlockConfiguration(path: image.path))
        var capacity: UInt64 = 0
        withUnsafeMutableBytes(of: &capacity) { block.readConfiguration(offset: 0, into: $0) }
        #expect(capacity == 2048)
        var segments: UInt32 = 0
        withUnsafeMutableBytes(of: &segments) { block.readConfiguration(offset: 12, into: $0) }
        #expect(segments == 254)
        var beyond: UInt32 = 0xffff_ffff
        withUnsafeMutableBytes(of: &beyond) { block.readConfiguration(offset: 4000, into: $0) }
        #expect(beyond == 0)
    }
}
