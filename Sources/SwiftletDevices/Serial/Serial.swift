import Synchronization
import SwiftletHost
import SwiftletSnapshot

/// Where a UART's transmitted bytes go.
public protocol SerialOutput: Sendable {
    func write(_ byte: UInt8)
}

/// A 16550A-compatible UART (an 8250 with FIFOs), as Linux's 8250 driver expects: THR-empty and received-data
/// interrupts, loopback for the driver's probe, divisor latch, scratch register.
/// Register map: PC16550D data sheet; Linux drivers/tty/serial/8250/8250_port.c for what the driver checks.
public final class Serial: BusDevice {
    public static let portCount: UInt64 = 8
    /// The most received bytes held for the guest; input beyond it waits (see `freeSpace`).
    public static let receiveCapacity = 4096

    // Register offsets and bits.
    static let dataRegister: UInt64 = 0, interruptEnable: UInt64 = 1, interruptIdentification: UInt64 = 2
    static let lineControl: UInt64 = 3, modemControl: UInt64 = 4, lineStatus: UInt64 = 5, modemStatus: UInt64 = 6, scratch: UInt64 = 7
    static let ierReceivedData: UInt8 = 0x01, ierTransmitterEmpty: UInt8 = 0x02, ierValidBits: UInt8 = 0x0f
    static let iirNoInterrupt: UInt8 = 0x01, iirTransmitterEmpty: UInt8 = 0x02, iirReceivedData: UInt8 = 0x04, iirFIFOEnabled: UInt8 = 0xc0
    static let lcrDivisorLatch: UInt8 = 0x80
    static let mcrLoopback: UInt8 = 0x10
    static let lsrDataReady: UInt8 = 0x01, lsrTransmitterHoldingEmpty: UInt8 = 0x20, lsrTransmitterEmpty: UInt8 = 0x40
    static let msrCTS: UInt8 = 0x10, msrDSR: UInt8 = 0x20, msrRI: UInt8 = 0x40, msrDCD: UInt8 = 0x80

    struct State {
        var interruptEnable: UInt8 = 0
        var lineControl: UInt8 = 0x03 // 8N1
        var modemControl: UInt8 = 0x08 // OUT2
        var scratch: UInt8 = 0
        var divisorLow: UInt8 = 0x0c // 9600 baud
        var divisorHigh: UInt8 = 0
        var transmitterEmptyPending = false
        var received: [UInt8] = []
        var receivedHead = 0
        var receivedCount: Int { received.count - receivedHead }
    }

    private let state = Mutex(State())
    private let output: any SerialOutput
    private let interrupt: any InterruptLine

    public init(output: any SerialOutput, interrupt: any InterruptLine) {
        self.output = output
        self.interrupt = interrupt
    }

    /// Room left in the receive buffer.
    public var freeSpace: Int { state.withLock { Self.receiveCapacity - $0.receivedCount } }

    /// Queues host input for the guest (up to `freeSpace` bytes are kept) and raises the received-data interrupt.
    @discardableResult
    public func receive(_ bytes: some Collection<UInt8>) -> Int {
        let (accepted, raise) = state.withLock { state -> (Int, Bool) in
            let room = Self.receiveCapacity - state.receivedCount
            let taken = min(room, bytes.count)
            guard taken > 0 else { return (0, false) }
            let wasEmpty = state.receivedCount == 0
            state.received.append(contentsOf: bytes.prefix(taken))
            return (taken, wasEmpty && state.interruptEnable & Self.ierReceivedData != 0)
        }
        if raise { interrupt.trigger() }
        return accepted
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        for index in 1..<data.count { data[index] = 0 }
        data[0] = state.withLock { state -> UInt8 in
            let latch = state.lineControl & Self.lcrDivisorLatch != 0
            switch offset {
            case Self.dataRegister:
                if latch { return state.divisorLow }
                guard state.receivedCount > 0 else { return 0 }
                let byte = state.received[state.receivedHead]
                state.receivedHead += 1
                if state.receivedHead == state.received.count {
                    state.received.removeAll(keepingCapacity: true)
                    state.receivedHead = 0
                } else if state.receivedHead >= 1024 {
                    state.received.removeFirst(state.receivedHead)
                    state.receivedHead = 0
                }
                return byte
            case Self.interruptEnable:
                return latch ? state.divisorHigh : state.interruptEnable
            case Self.interruptIdentification:
                // Received data outranks THR-empty; reading the IIR that reports THR-empty clears it (16550 data sheet).
                if state.receivedCount > 0 && state.interruptEnable & Self.ierReceivedData != 0 {
                    return Self.iirReceivedData | Self.iirFIFOEnabled
                }
                if state.transmitterEmptyPending {
                    state.transmitterEmptyPending = false
                    return Self.iirTransmitterEmpty | Self.iirFIFOEnabled
                }
                return Self.iirNoInterrupt | Self.iirFIFOEnabled
            case Self.lineControl: return state.lineControl
            case Self.modemControl: return state.modemControl
            case Self.lineStatus:
                return Self.lsrTransmitterHoldingEmpty | Self.lsrTransmitterEmpty | (state.receivedCount > 0 ? Self.lsrDataReady : 0)
            case Self.modemStatus:
                if state.modemControl & Self.mcrLoopback != 0 {
                    // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD (the driver's probe checks this wiring).
                    let mcr = state.modemControl
                    return (mcr & 0x01 != 0 ? Self.msrDSR : 0) | (mcr & 0x02 != 0 ? Self.msrCTS : 0)
                        | (mcr & 0x04 != 0 ? Self.msrRI : 0) | (mcr & 0x08 != 0 ? Self.msrDCD : 0)
                }
                return Self.msrDCD | Self.msrDSR | Self.msrCTS
            case Self.scratch: return state.scratch
            default: return 0
            }
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        var transmit: UInt8?
        var raise = false
        state.withLock { state in
            let latch = state.lineControl & Self.lcrDivisorLatch != 0
            switch offset {
            case Self.dataRegister:
                if latch { state.divisorLow = value; return }
                if state.modemControl & Self.mcrLoopback != 0 {
                    if state.receivedCount < Self.receiveCapacity { state.received.append(value) }
                    raise = state.interruptEnable & Self.ierReceivedData != 0
                } else {
                    transmit = value
                }
                // The byte leaves at once, so the holding register is empty again.
                if state.interruptEnable & Self.ierTransmitterEmpty != 0 {
                    state.transmitterEmptyPending = true
                    raise = true
                }
            case Self.interruptEnable:
                if latch { state.divisorHigh = value; return }
                let enabled = value & Self.ierValidBits
                let newlyTransmitterEmpty = enabled & Self.ierTransmitterEmpty != 0 && state.interruptEnable & Self.ierTransmitterEmpty == 0
                state.interruptEnable = enabled
                // Enabling THR-empty with an empty holding register raises it at once; Linux's 8250 driver tests
                // this at start-up and otherwise falls back to polling with a timer (UART_BUG_THRE).
                if newlyTransmitterEmpty {
                    state.transmitterEmptyPending = true
                    raise = true
                }
                if enabled & Self.ierReceivedData != 0 && state.receivedCount > 0 { raise = true }
            case Self.interruptIdentification: break // FCR: FIFOs are always on.
            case Self.lineControl: state.lineControl = value
            case Self.modemControl: state.modemControl = value & 0x1f
            case Self.scratch: state.scratch = value
            default: break // LSR and MSR are read-only.
            }
        }
        if let transmit { output.write(transmit) }
        if raise { interrupt.trigger() }
    }

    // MARK: Snapshots

    /// The registers, a pending THR-empty interrupt, and input the guest had not read yet.
    public func saveState(into encoder: inout SnapshotEncoder) {
        let saved = state.withLock { $0 }
        encoder.record("regs", bytes: [saved.interruptEnable, saved.lineControl, saved.modemControl, saved.scratch,
                                       saved.divisorLow, saved.divisorHigh, saved.transmitterEmptyPending ? 1 : 0])
        encoder.record("rbuf", bytes: saved.received[saved.receivedHead...])
    }

    /// Sets `saveState`'s registers back, and raises the interrupt the guest was owed (a pending THR-empty or
    /// unread input it had enabled): the interrupt controller's state says whether it had seen it.
    public func restoreState(from decoder: SnapshotDecoder) throws(SnapshotError) {
        let registers = Array(try decoder.bytes("regs"))
        guard registers.count == 7 else { throw .wrongSize(tag: "regs", size: registers.count, expected: 7) }
        let received = Array(try decoder.bytes("rbuf"))
        guard received.count <= Self.receiveCapacity else {
            throw .tooMany(tag: "rbuf", count: received.count, maximum: Self.receiveCapacity)
        }
        let raise = state.withLock { state -> Bool in
            state = State()
            state.interruptEnable = registers[0] & Self.ierValidBits
            state.lineControl = registers[1]
            state.modemControl = registers[2] & 0x1f
            state.scratch = registers[3]
            state.divisorLow = registers[4]
            state.divisorHigh = registers[5]
            state.transmitterEmptyPending = registers[6] != 0
            state.received = received
            return (state.transmitterEmptyPending && state.interruptEnable & Self.ierTransmitterEmpty != 0)
                || (state.receivedCount > 0 && state.interruptEnable & Self.ierReceivedData != 0)
        }
        if raise { interrupt.trigger() }
    }
}
