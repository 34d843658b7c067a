import Synchronization

/// The part of an i8042 keyboard controller a microVM guest uses: its reset line. Writing 0xFE (pulse reset) to the
/// command port is how Linux reboots with `reboot=k`; Swiftlet turns it into a clean VMM exit. The few other
/// controller commands a driver might send are answered consistently; there is no keyboard.
public final class I8042: BusDevice {
    public static let dataPort: UInt16 = 0x60
    public static let commandPort: UInt16 = 0x64
    static let commandReadConfiguration: UInt8 = 0x20, commandWriteConfiguration: UInt8 = 0x60
    static let commandSelfTest: UInt8 = 0xaa, commandPulseReset: UInt8 = 0xfe
    static let statusOutputFull: UInt8 = 0x01, statusSystemFlag: UInt8 = 0x04, statusCommand: UInt8 = 0x08

    struct State {
        var configuration: UInt8 = 0
        var output: UInt8?
        var expectingConfiguration = false
        var lastWasCommand = false
    }

    private let state = Mutex(State())
    private let onReset: @Sendable () -> Void

    /// `onReset` runs on the vCPU thread that wrote the reset command.
    public init(onReset: @escaping @Sendable () -> Void) {
        self.onReset = onReset
    }

    /// The device sits at two one-byte ports; offsets are relative to the data port (0x60): 0 data, 4 command/status.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        data[0] = state.withLock { state -> UInt8 in
            switch offset {
            case 0:
                let value = state.output ?? 0
                state.output = nil
                return value
            case 4:
                return statusSystemFlagged(state)
            default:
                return 0xff
            }
        }
    }

    private func statusSystemFlagged(_ state: State) -> UInt8 {
        Self.statusSystemFlag | (state.output != nil ? Self.statusOutputFull : 0) | (state.lastWasCommand ? Self.statusCommand : 0)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        let reset = state.withLock { state -> Bool in
            switch offset {
            case 0:
                state.lastWasCommand = false
                if state.expectingConfiguration {
                    state.configuration = value
                    state.expectingConfiguration = false
                }
            case 4:
                state.lastWasCommand = true
                switch value {
                case Self.commandPulseReset: return true
                case Self.commandReadConfiguration: state.output = state.configuration
                case Self.commandWriteConfiguration: state.expectingConfiguration = true
                case Self.commandSelfTest: state.output = 0x55
                default: break
                }
            default: break
            }
            return false
        }
        if reset { onReset() }
    }
}
