import Glibc
@testable import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import SwiftletSnapshot
import SwiftletTestSupport
import SwiftletVirtio
import Testing

/// Each device's own state through a snapshot's records: what it saves comes back on a new device, and what it
/// holds unused is given back in its queue positions.
@Suite struct DeviceSnapshotTests {
    /// `save`'s records through a state file and back.
    func throughAFile(_ save: (inout SnapshotEncoder) -> Void) throws -> SnapshotDecoder {
        var body = SnapshotEncoder()
        body.record("stat", save)
        return try SnapshotFile.body(of: SnapshotFile.bytes(body: body)).nested("stat")
    }

    @Test func theSerialPortComesBackWithItsRegistersAndUnreadInput() throws {
        let recorder = Recorder()
        let old = Serial(output: recorder, interrupt: recorder)
        old.writeByte(3, 0x80)          // divisor latch
        old.writeByte(0, 0x01)          // 115200 baud
        old.writeByte(3, 0x03)          // 8N1
        old.writeByte(7, 0x5a)          // scratch
        old.writeByte(1, 0x01)          // received-data interrupt on
        old.receive(Array("hi".utf8))
        #expect(old.readByte(0) == UInt8(ascii: "h"))
        let saved = try throughAFile { old.saveState(into: &$0) }

        let fresh = Recorder()
        let new = Serial(output: fresh, interrupt: fresh)
        try new.restoreState(from: saved)
        #expect(fresh.count == 1) // the unread byte's interrupt, owed to the guest
        #expect(new.readByte(3) == 0x03 && new.readByte(7) == 0x5a && new.readByte(1) == 0x01)
        new.writeByte(3, 0x83)
        #expect(new.readByte(0) == 0x01 && new.readByte(1) == 0)
        new.writeByte(3, 0x03)
        #expect(new.readByte(0) == UInt8(ascii: "i"))
        #expect(new.readByte(5) & 0x01 == 0) // nothing more to read
    }

    @Test func aSerialRecordThatIsNotTheRightSizeIsRefused() throws {
        let saved = try throughAFile { $0.record("regs", bytes: [1, 2, 3]); $0.record("rbuf", bytes: []) }
        let recorder = Recorder()
        #expect(throws: SnapshotError.wrongSize(tag: "regs", size: 3, expected: 7)) {
            try Serial(output: recorder, interrupt: recorder).restoreState(from: saved)
        }
    }

    @Test func theBalloonComesBackWithItsSizesAndItsPages() throws {
        let driver = try FakeDriver(size: 16)
        let configuration = BalloonConfiguration(targetSize: 8 << 12, statisticsInterval: 5)
        let old = try Balloon(configuration, guestMemorySize: FakeDriver.memorySize)
        old.attach(interrupt: VirtioInterrupt(line: CountingLine())) {}
        // Inflate on queue 0 (two pages), and hold a statistics buffer on queue 2.
        let inflate = try driver.queue()
        try old.activate(VirtioActivation(queues: [inflate, nil, nil], features: old.offeredFeatures, memory: driver.memory))
        let frames: [UInt8] = [0x40, 0, 0, 0, 0x41, 0, 0, 0]
        try driver.memory.write(frames, at: GuestAddress(0x10000))
        try driver.setDescriptor(0, address: 0x10000, length: 8)
        try driver.publish(0)
        old.queueEvents[0].signal()
        old.handleQueueEvent(0)
        #expect(old.status().inflatedPages == 2)
        withUnsafeBytes(of: UInt32(5).littleEndian) { old.writeConfiguration(offset: 4, from: $0) } // actual
        let positions = old.queuePositions()
        #expect(positions[0] == QueuePosition(nextAvailable: 1, nextUsed: 1))
        let saved = try throughAFile { old.saveState(into: &$0) }

        let new = try Balloon(configuration, guestMemorySize: FakeDriver.memorySize)
        new.attach(interrupt: VirtioInterrupt(line: CountingLine())) {}
        try new.restoreState(from: saved)
        #expect(new.status().targetPages == 8 && new.status().actualPages == 5)
        try new.activate(VirtioActivation(queues: [nil, try driver.queue(), nil], features: new.offeredFeatures, memory: driver.memory))
        // Deflating a page the old balloon held counts: the restored one knows it is in the balloon.
        try driver.memory.write([0x40, 0, 0, 0], at: GuestAddress(0x10000))
        try driver.setDescriptor(0, address: 0x10000, length: 4)
        try driver.publish(0)
        new.queueEvents[1].signal()
        new.handleQueueEvent(1)
        #expect(new.status().deflatedPages == 1)
    }

    @Test func theHeldStatisticsBufferIsGivenBackInItsQueuePosition() throws {
        let driver = try FakeDriver(size: 16)
        let balloon = try Balloon(BalloonConfiguration(statisticsInterval: 5), guestMemorySize: FakeDriver.memorySize)
        balloon.attach(interrupt: VirtioInterrupt(line: CountingLine())) {}
        try balloon.activate(VirtioActivation(queues: [nil, nil, try driver.queue()], features: balloon.offeredFeatures, memory: driver.memory))
        try driver.memory.write(BalloonStatisticsTests.entry(4, 1 << 20), at: GuestAddress(0x10000))
        try driver.setDescriptor(0, address: 0x10000, length: 10)
        try driver.publish(0)
        balloon.queueEvents[2].signal()
        balloon.handleQueueEvent(2)
        #expect(driver.usedIndex == 0) // held until the device wants fresh statistics
        #expect(balloon.queuePositions()[2] == QueuePosition(nextAvailable: 0, nextUsed: 0))
        let saved = try throughAFile { balloon.saveState(into: &$0) }
        let new = try Balloon(BalloonConfiguration(statisticsInterval: 5), guestMemorySize: FakeDriver.memorySize)
        try new.restoreState(from: saved)
        #expect(new.status().statistics?.freeMemory == 1 << 20)
    }

    @Test func aBalloonSnapshotForAnotherMachineIsRefused() throws {
        let saved = try throughAFile { $0.record("targ", integer: 1 << 30); $0.record("actl", integer: 0); $0.record("sint", integer: 0) }
        let balloon = try Balloon(BalloonConfiguration(), guestMemorySize: FakeDriver.memorySize)
        #expect(throws: SnapshotError.self) { try balloon.restoreState(from: saved) }
        let withStatistics = try throughAFile { $0.record("targ", integer: 0); $0.record("actl", integer: 0); $0.record("sint", integer: 5) }
        do {
            try balloon.restoreState(from: withStatistics)
            Issue.record("a balloon without a statistics queue took a snapshot with one")
        } catch {
            #expect(error.description.contains("statistics queue"))
        }
    }

    @Test func aRestoredVsockTellsTheDriverItsTransportWasReset() throws {
        let driver = try FakeDriver(size: 8)
        let path = "/tmp/swiftlet-vsock-snapshot-\(getpid()).sock"
        let vsock = try Vsock(VsockConfiguration(guestCID: 3, socketPath: path), clock: { 0 })
        defer { vsock.shutDown() }
        vsock.attach(interrupt: VirtioInterrupt(line: CountingLine())) {}
        try vsock.restoreState(from: throughAFile { _ in })
        // The event queue shares the fake ring; rx and tx get queues of their own driver.
        let other = try FakeDriver(size: 8)
        try driver.setDescriptor(0, address: FakeDriver.dataArea.rawValue, length: 8, flags: FakeDriver.write)
        try driver.memory.write(UInt32(0xffff_ffff), at: FakeDriver.dataArea)
        try driver.publish(0)
        try vsock.activate(VirtioActivation(queues: [try other.queue(), try other.queue(), try driver.queue()],
                                            features: vsock.offeredFeatures, memory: driver.memory))
        vsock.eventQueueNotified()
        #expect(driver.usedIndex == 1)
        #expect(try driver.usedElement(0) == (id: 0, length: 4))
        #expect(try driver.memory.read(UInt32.self, at: FakeDriver.dataArea) == 0) // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
        #expect(vsock.queuePositions()[2] == QueuePosition(nextAvailable: 1, nextUsed: 1))
        // Once: a second notification sends nothing more.
        try driver.publish(0)
        vsock.eventQueueNotified()
        #expect(driver.usedIndex == 1)
    }
}
