import SwiftletDevices
import Synchronization
import Testing

/// pvpanic: a read gives the supported events (PANICKED and CRASH_LOADED, which Linux's driver masks its own
/// capabilities with), a byte write with PANICKED reports the panic, and nothing else does.
@Suite struct PVPanicTests {
    final class Events: Sendable {
        let panics = Mutex<[UInt8]>([])
    }

    private func device(_ events: Events) -> PVPanic {
        PVPanic { event in events.panics.withLock { $0.append(event) } }
    }

    private func write(_ device: PVPanic, offset: UInt64 = 0, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { device.write(offset: offset, data: $0) }
    }

    @Test func aReadGivesTheSupportedEvents() {
        let panic = device(Events())
        var byte: [UInt8] = [0xff]
        byte.withUnsafeMutableBytes { panic.read(offset: 0, data: $0) }
        #expect(byte == [PVPanic.panicked | PVPanic.crashLoaded])
        var word: [UInt8] = [0xff, 0xff]
        word.withUnsafeMutableBytes { panic.read(offset: 0, data: $0) }
        #expect(word == [0, 0])
    }

    @Test func panickedIsReported() {
        let events = Events()
        let panic = device(events)
        write(panic, [PVPanic.panicked])
        write(panic, [PVPanic.panicked | PVPanic.crashLoaded | 0xf0]) // unknown bits are dropped
        #expect(events.panics.withLock { $0 } == [1, 3])
    }

    @Test func everythingElseIsIgnored() {
        let events = Events()
        let panic = device(events)
        write(panic, [PVPanic.crashLoaded])       // a crash kernel handles it
        write(panic, [0])
        write(panic, [0xfe])                      // no PANICKED bit
        write(panic, [1, 0])                      // not one byte
        write(panic, offset: 1, [1])              // past the register
        #expect(events.panics.withLock { $0 }.isEmpty)
    }
}
