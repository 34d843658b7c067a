import SwiftletHost
import Synchronization

/// The part of an i8042 keyboard controller a microVM guest uses: its reset line, and a keyboard that can press
/// Ctrl+Alt+Del (Firecracker's `SendCtrlAltDel`).
/// - Writing 0xFE (pulse reset) to the command port is how Linux reboots with `reboot=k`; Swiftlet turns it into a
///   clean VMM exit.
/// - The controller commands Linux's i8042 driver sends while probing are answered as a real controller does
///   (configuration byte, self test, keyboard interface test, keyboard enable and disable); there is no auxiliary
///   (mouse) port, so its commands get no answer and the driver finds none.
/// - The keyboard answers what Linux's atkbd sends it (ACK, its ID, its reset's self-test result, the scan code set:
///   2), and `pressCtrlAltDel()` queues the make and break codes of Ctrl, Alt and Delete (scan code set 2: the
///   configuration byte has no translation, so the driver reads set 2). Each keyboard byte raises IRQ 1 while the
///   configuration enables the keyboard interrupt.
///
/// The guest controls what it writes, so everything it can queue is bounded: the output buffer holds at most
/// `outputCapacity` bytes, and a byte that does not fit is dropped (as a real controller's would be lost).
public final class I8042: BusDevice {
    public static let dataPort: UInt16 = 0x60
    public static let commandPort: UInt16 = 0x64
    /// The ISA interrupt of the keyboard.
    public static let keyboardIRQ: UInt32 = 1
    static let outputCapacity = 16

    static let commandReadConfiguration: UInt8 = 0x20, commandWriteConfiguration: UInt8 = 0x60
    static let commandSelfTest: UInt8 = 0xaa, commandKeyboardTest: UInt8 = 0xab
    static let commandDisableKeyboard: UInt8 = 0xad, commandEnableKeyboard: UInt8 = 0xae
    static let commandWriteKeyboardOutput: UInt8 = 0xd2, commandWriteAuxiliaryOutput: UInt8 = 0xd3
    static let commandWriteAuxiliary: UInt8 = 0xd4, commandPulseReset: UInt8 = 0xfe
    static let statusOutputFull: UInt8 = 0x01, statusSystemFlag: UInt8 = 0x04, statusCommand: UInt8 = 0x08
    /// Bit 4 set: the keyboard is not inhibited (clear, Linux warns "Keylock active").
    static let statusNotInhibited: UInt8 = 0x10
    /// Configuration byte: keyboard interrupt enabled (bit 0), system flag (2), keyboard clock disabled (4).
    static let configurationKeyboardInterrupt: UInt8 = 0x01, configurationSystemFlag: UInt8 = 0x04
    static let configurationKeyboardDisabled: UInt8 = 0x10

    // The keyboard's commands (what atkbd sends through the data port) and answers.
    static let keyboardAck: UInt8 = 0xfa, keyboardSelfTestPassed: UInt8 = 0xaa
    static let keyboardSetLeds: UInt8 = 0xed, keyboardEcho: UInt8 = 0xee, keyboardScanCodeSet: UInt8 = 0xf0
    static let keyboardGetID: UInt8 = 0xf2, keyboardTypematic: UInt8 = 0xf3, keyboardReset: UInt8 = 0xff
    /// An MF2 keyboard's ID.
    static let keyboardID: [UInt8] = [0xab, 0x83]
    /// Ctrl, Alt and Delete pressed, then released, in scan code set 2.
    static let ctrlAltDelete: [UInt8] = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]

    struct State {
        var configuration: UInt8 = I8042.configurationKeyboardInterrupt | I8042.configurationSystemFlag
        var output: [UInt8] = []
        /// What the next data-port write is: the configuration byte, a byte for the keyboard output buffer, or the
        /// argument of a keyboard command.
        var expecting: Expecting = .keyboardCommand
        var lastWasCommand = false

        enum Expecting { case keyboardCommand, configuration, keyboardOutput, keyboardArgument, auxiliary }

        var keyboardInterruptEnabled: Bool {
            configuration & I8042.configurationKeyboardInterrupt != 0 && configuration & I8042.configurationKeyboardDisabled == 0
        }

        /// Queues `bytes` if they all fit; false if they do not (nothing is queued then).
        mutating func queue(_ bytes: [UInt8]) -> Bool {
            guard output.count + bytes.count <= I8042.outputCapacity else { return false }
            output += bytes
            return true
        }
    }

    private let state = Mutex(State())
    private let onReset: @Sendable () -> Void
    private let interrupt: (any InterruptLine)?

    /// `onReset` runs on the vCPU thread that wrote the reset command; `interrupt` is IRQ 1 (none: a keyboard that
    /// cannot interrupt, for tests of the reset line).
    public init(interrupt: (any InterruptLine)? = nil, onReset: @escaping @Sendable () -> Void) {
        self.interrupt = interrupt
        self.onReset = onReset
    }

    /// Presses and releases Ctrl+Alt+Del on the keyboard. Linux's keyboard driver turns it into its Ctrl-Alt-Del
    /// action (systemd: ctrl-alt-del.target, a reboot). Throws when the guest has not read what the keyboard sent
    /// before, so that the whole sequence does not fit.
    public func pressCtrlAltDel() throws(SwiftletError) {
        let raise = try state.withLock { state throws(SwiftletError) -> Bool in
            guard state.queue(Self.ctrlAltDelete) else {
                throw SwiftletError(.invalidConfiguration, "the keyboard's buffer is full: the guest has not read the keys sent before (does its kernel have an i8042 driver?)")
            }
            return state.keyboardInterruptEnabled
        }
        if raise { interrupt?.trigger() }
    }

    /// The device sits at two one-byte ports; offsets are relative to the data port (0x60): 0 data, 4 command/status.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        var raise = false
        data[0] = state.withLock { state -> UInt8 in
            switch offset {
            case 0:
                guard !state.output.isEmpty else { return 0 }
                let value = state.output.removeFirst()
                // What is left is announced again, one byte per interrupt, as a controller does.
                raise = !state.output.isEmpty && state.keyboardInterruptEnabled
                return value
            case 4:
                return Self.statusSystemFlag | Self.statusNotInhibited | (state.output.isEmpty ? 0 : Self.statusOutputFull)
                    | (state.lastWasCommand ? Self.statusCommand : 0)
            default:
                return 0xff
            }
        }
        if raise { interrupt?.trigger() }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        var reset = false
        var raise = false
        state.withLock { state in
            switch offset {
            case 0:
                state.lastWasCommand = false
                switch state.expecting {
                case .configuration:
                    state.configuration = value
                    state.expecting = .keyboardCommand
                case .auxiliary:
                    state.expecting = .keyboardCommand // for the auxiliary port, which is not there: dropped
                case .keyboardOutput:
                    state.expecting = .keyboardCommand
                    raise = state.queue([value]) && state.keyboardInterruptEnabled
                case .keyboardArgument:
                    state.expecting = .keyboardCommand
                    // The argument of SET LEDS, SET SCAN CODE SET or SET TYPEMATIC: acknowledged; asking for the
                    // current scan code set (0) also gets it: 2.
                    raise = state.queue(value == 0 ? [Self.keyboardAck, 2] : [Self.keyboardAck]) && state.keyboardInterruptEnabled
                case .keyboardCommand:
                    raise = keyboardCommand(value, &state) && state.keyboardInterruptEnabled
                }
            case 4:
                state.lastWasCommand = true
                switch value {
                case Self.commandPulseReset: reset = true
                case Self.commandReadConfiguration: _ = state.queue([state.configuration])
                case Self.commandWriteConfiguration: state.expecting = .configuration
                case Self.commandSelfTest: _ = state.queue([0x55])
                case Self.commandKeyboardTest: _ = state.queue([0x00])
                case Self.commandDisableKeyboard: state.configuration |= Self.configurationKeyboardDisabled
                case Self.commandEnableKeyboard: state.configuration &= ~Self.configurationKeyboardDisabled
                case Self.commandWriteKeyboardOutput: state.expecting = .keyboardOutput
                // A byte for the auxiliary port (its loop-back test, a mouse command): taken, never answered, so
                // the driver's probe of the port fails and no mouse is found.
                case Self.commandWriteAuxiliaryOutput, Self.commandWriteAuxiliary: state.expecting = .auxiliary
                default: break // the auxiliary port's commands and the rest: no answer
                }
            default: break
            }
        }
        if raise { interrupt?.trigger() }
        if reset { onReset() }
    }

    /// A byte the driver sent to the keyboard: its answer is queued. True if something was queued.
    private func keyboardCommand(_ command: UInt8, _ state: inout State) -> Bool {
        switch command {
        case Self.keyboardReset:
            state.output.removeAll()
            return state.queue([Self.keyboardAck, Self.keyboardSelfTestPassed])
        case Self.keyboardGetID:
            return state.queue([Self.keyboardAck] + Self.keyboardID)
        case Self.keyboardEcho:
            return state.queue([Self.keyboardEcho])
        case Self.keyboardSetLeds, Self.keyboardScanCodeSet, Self.keyboardTypematic:
            state.expecting = .keyboardArgument
            return state.queue([Self.keyboardAck])
        default:
            // Enable, disable, set defaults, and the rest: acknowledged.
            return state.queue([Self.keyboardAck])
        }
    }
}
