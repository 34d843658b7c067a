import Synchronization
import SwiftletHost
import SwiftletDevices
import Testing

final class Recorder: SerialOutput, InterruptLine {
    let bytes = Mutex<[UInt8]>([])
    let interrupts = Atomic<Int>(0)
    func write(_ byte: UInt8) { bytes.withLock { $0.append(byte) } }
    func trigger() { interrupts.add(1, ordering: .relaxed) }
    var count: Int { interrupts.load(ordering: .relaxed) }
}

extension BusDevice {
    func readByte(_ offset: UInt64) -> UInt8 {
        var value: UInt8 = 0
        withUnsafeMutableBytes(of: &value) { read(offset: offset, data: $0) }
        return value
    }

    func writeByte(_ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { write(offset: offset, data: $0) }
    }
}

@Suite struct SerialTests {
    let recorder = Recorder()
    var serial: Serial { Serial(output: recorder, interrupt: recorder) }

    @Test func transmitsBytesAndReportsAnEmptyTransmitter() {
        let uart = serial
        uart.writeByte(0, 0x41)
        uart.writeByte(0, 0x42)
        #expect(recorder.bytes.withLock { $0 } == [0x41, 0x42])
        #expect(uart.readByte(5) & 0x60 == 0x60)
        #expect(recorder.count == 0) // no interrupt enabled
    }

    @Test func enablingTHREmptyRaisesItAndReadingIIRClearsIt() {
        let uart = serial
        #expect(uart.readByte(2) & 0x0f == 0x01)
        uart.writeByte(1, 0x02)
        #expect(recorder.count == 1)
        #expect(uart.readByte(2) & 0x0f == 0x02)
        #expect(uart.readByte(2) & 0x0f == 0x01)
        uart.writeByte(0, 0x30)
        #expect(recorder.count == 2)
        #expect(uart.readByte(2) & 0x0f == 0x02)
        #expect(uart.readByte(2) & 0xc0 == 0xc0) // FIFOs reported: a 16550A
    }

    @Test func receivedDataRaisesAnInterruptAndDrains() {
        let uart = serial
        uart.writeByte(1, 0x01)
        #expect(uart.receive([0x61, 0x62]) == 2)
        #expect(recorder.count == 1)
        #expect(uart.readByte(5) & 0x01 == 0x01)
        #expect(uart.readByte(2) & 0x0f == 0x04)
        #expect(uart.readByte(0) == 0x61)
        #expect(uart.readByte(0) == 0x62)
        #expect(uart.readByte(5) & 0x01 == 0)
        #expect(uart.readByte(2) & 0x0f == 0x01)
        #expect(uart.readByte(0) == 0) // empty reads are harmless
    }

    @Test func receiveBufferIsBounded() {
        let uart = serial
        #expect(uart.receive([UInt8](repeating: 1, count: Serial.receiveCapacity + 10)) == Serial.receiveCapacity)
        #expect(uart.freeSpace == 0)
        #expect(uart.receive([1]) == 0)
        _ = uart.readByte(0)
        #expect(uart.freeSpace == 1)
    }

    @Test func loopbackEchoesAndMirrorsModemLines() {
        let uart = serial
        uart.writeByte(4, 0x10 | 0x0a) // loop, RTS, OUT2
        #expect(uart.readByte(6) & 0xf0 == 0x90) // CTS and DCD
        uart.writeByte(0, 0x55)
        #expect(recorder.bytes.withLock { $0 }.isEmpty)
        #expect(uart.readByte(0) == 0x55)
    }

    @Test func divisorLatchSwapsRegisters() {
        let uart = serial
        uart.writeByte(3, 0x80)
        uart.writeByte(0, 0x01)
        uart.writeByte(1, 0x02)
        #expect(uart.readByte(0) == 0x01 && uart.readByte(1) == 0x02)
        uart.writeByte(3, 0x03)
        #expect(uart.readByte(1) == 0)
        #expect(recorder.bytes.withLock { $0 }.isEmpty)
        uart.writeByte(7, 0x5a)
        #expect(uart.readByte(7) == 0x5a)
    }

    @Test func wideAccessesTouchOnlyTheFirstByte() {
        let uart = serial
        var value: UInt32 = 0xffff_ffff
        withUnsafeMutableBytes(of: &value) { uart.read(offset: 5, data: $0) }
        #expect(value == 0x60)
    }
}

@Suite struct I8042Tests {
    @Test func resetCommandResets() {
        let resets = Atomic<Int>(0)
        let controller = I8042 { resets.add(1, ordering: .relaxed) }
        controller.writeByte(4, 0xaa)
        #expect(controller.readByte(4) & 0x01 == 0x01)
        #expect(controller.readByte(0) == 0x55)
        controller.writeByte(4, 0x60)
        controller.writeByte(0, 0x47)
        controller.writeByte(4, 0x20)
        #expect(controller.readByte(0) == 0x47)
        #expect(resets.load(ordering: .relaxed) == 0)
        controller.writeByte(4, 0xfe)
        #expect(resets.load(ordering: .relaxed) == 1)
    }

    /// What Linux's i8042 and atkbd drivers do at boot, then Ctrl+Alt+Del: every keyboard byte raises IRQ 1.
    @Test func theKeyboardAnswersAtkbdAndPressesCtrlAltDel() throws {
        let line = CountingInterrupts()
        let controller = I8042(interrupt: line) {}
        func drain() -> [UInt8] {
            var bytes: [UInt8] = []
            while controller.readByte(4) & 0x01 != 0 && bytes.count < 64 { bytes.append(controller.readByte(0)) }
            return bytes
        }
        controller.writeByte(4, 0x20)
        #expect(drain() == [0x05]) // keyboard interrupt on, system flag, no translation: scan code set 2
        controller.writeByte(4, 0xab)
        #expect(drain() == [0x00])
        controller.writeByte(4, 0xa9) // the auxiliary port's test: no answer, so no mouse
        controller.writeByte(4, 0xd3) // its loop-back: the byte is taken, and nothing comes back
        controller.writeByte(0, 0x5a)
        #expect(drain() == [])
        #expect(line.count == 0) // controller answers raise no interrupt
        controller.writeByte(0, 0xf2) // GET ID
        #expect(drain() == [0xfa, 0xab, 0x83])
        #expect(line.count == 3) // one per byte: the first when queued, each following after a read
        controller.writeByte(0, 0xf0) // SET SCAN CODE SET ...
        controller.writeByte(0, 0x02) // ... 2
        #expect(drain() == [0xfa, 0xfa])
        controller.writeByte(0, 0xff) // RESET
        #expect(drain() == [0xfa, 0xaa])
        try controller.pressCtrlAltDel()
        #expect(drain() == [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14])
        // A guest that never reads: the second press does not fit and is refused, the first stays whole.
        try controller.pressCtrlAltDel()
        #expect(throws: SwiftletError.self) { try controller.pressCtrlAltDel() }
        #expect(drain().count == 11)
        // With the keyboard interrupt off in the configuration byte, keys queue without interrupts.
        controller.writeByte(4, 0x60)
        controller.writeByte(0, 0x04)
        let before = line.count
        try controller.pressCtrlAltDel()
        #expect(line.count == before && drain().count == 11)
        // A guest flooding the keyboard with commands fills the buffer, and no further.
        for _ in 0..<1000 { controller.writeByte(0, 0xee) }
        #expect(drain().count == 16)
    }
}

final class CountingInterrupts: InterruptLine, @unchecked Sendable {
    // @unchecked: one test thread.
    private(set) var count = 0
    func trigger() { count += 1 }
}

@Suite struct BusTests {
    @Test func resolvesAndRejectsOverlaps() throws {
        let recorder = Recorder()
        var bus = Bus()
        let uart = Serial(output: recorder, interrupt: recorder)
        try bus.insert(uart, base: 0x3f8, size: 8)
        #expect(throws: BusError.self) { try bus.insert(uart, base: 0x3ff, size: 1) }
        #expect(throws: BusError.self) { try bus.insert(uart, base: UInt64.max, size: 2) }
        #expect(bus.resolve(0x3f8, length: 1)?.offset == 0)
        #expect(bus.resolve(0x3ff, length: 1)?.offset == 7)
        #expect(bus.resolve(0x3ff, length: 2) == nil) // would run past the device
        var value: UInt16 = 0
        withUnsafeMutableBytes(of: &value) { bus.read(0x2f8, data: $0) }
        #expect(value == 0xffff)
    }

    @Test func bootTimerRecordsTheFirstMagicWrite() {
        let clock = Atomic<UInt64>(100)
        let timer = BootTimer { clock.add(1, ordering: .relaxed).newValue }
        timer.writeByte(0, 1)
        #expect(timer.userspaceReachedAt == nil)
        timer.writeByte(0, BootTimer.magic)
        timer.writeByte(0, BootTimer.magic)
        #expect(timer.userspaceReachedAt == 101)
    }
}
