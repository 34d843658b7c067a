import SwiftletDevices
import Synchronization
import Testing

/// The FADT's sleep and reset registers: only S5 with SLP_EN powers off, only the reset value resets; anything else
/// a guest writes there is ignored.
@Suite struct ACPIPowerTests {
    final class Events: Sendable {
        let powerOffs = Atomic<Int>(0)
        let resets = Atomic<Int>(0)
    }

    private func device(_ events: Events) -> ACPIPower {
        ACPIPower(sleepTypeOff: 5, resetValue: 1, onPowerOff: { events.powerOffs.add(1, ordering: .relaxed) },
                  onReset: { events.resets.add(1, ordering: .relaxed) })
    }

    private func write(_ device: ACPIPower, offset: UInt64, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { device.write(offset: offset, data: $0) }
    }

    @Test func s5WithSleepEnablePowersOff() {
        let events = Events()
        let power = device(events)
        write(power, offset: 0, [5 << 2 | 0x20])
        #expect(events.powerOffs.load(ordering: .relaxed) == 1)
        #expect(events.resets.load(ordering: .relaxed) == 0)
    }

    @Test func resetValueResets() {
        let events = Events()
        let power = device(events)
        write(power, offset: 2, [1])
        #expect(events.resets.load(ordering: .relaxed) == 1)
        #expect(events.powerOffs.load(ordering: .relaxed) == 0)
    }

    @Test func everythingElseIsIgnored() {
        let events = Events()
        let power = device(events)
        // Another sleep state, S5 without SLP_EN, SLP_EN alone, the status register, a wrong reset value,
        // two-byte writes, offsets past the device, and every byte to the status register.
        for value: UInt8 in [3 << 2 | 0x20, 5 << 2, 0x20, 0x00, 0xff & ~0x1c] { write(power, offset: 0, [value]) }
        for value in UInt8.min...UInt8.max { write(power, offset: 1, [value]) }
        for value: UInt8 in [0, 2, 0x06, 0xfe, 0xff] { write(power, offset: 2, [value]) }
        write(power, offset: 0, [5 << 2 | 0x20, 0])
        write(power, offset: 2, [1, 0])
        write(power, offset: 3, [1])
        write(power, offset: 0, [])
        #expect(events.powerOffs.load(ordering: .relaxed) == 0)
        #expect(events.resets.load(ordering: .relaxed) == 0)
        var byte: [UInt8] = [0xaa, 0xbb]
        byte.withUnsafeMutableBytes { power.read(offset: 1, data: $0) }
        #expect(byte == [0, 0])
    }
}
