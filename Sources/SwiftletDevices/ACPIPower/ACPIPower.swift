/// The hardware-reduced ACPI registers the FADT names (X86Layout.acpiSleepControlPort and the two after it): sleep
/// control, sleep status and reset, one byte each. A guest powers off by writing SLP_TYP 5 (`\_S5`) with SLP_EN,
/// (5 << 2) | 0x20, to sleep control, and reboots by writing the reset value to the reset register; Swiftlet turns
/// both into a clean VMM exit. Any other value, size or offset is ignored (a guest's own business); reads give 0
/// (no wake status).
public final class ACPIPower: BusDevice {
    /// Sleep control, sleep status, reset.
    public static let portCount: UInt64 = 3
    static let sleepControl: UInt64 = 0, sleepStatus: UInt64 = 1, reset: UInt64 = 2
    /// SLP_EN, and where SLP_TYP sits (bits 2-4) in the sleep control register (ACPI 6.5, 4.8.3.7).
    static let sleepEnable: UInt8 = 0x20
    static let sleepTypeShift: UInt8 = 2, sleepTypeMask: UInt8 = 0x7

    private let sleepTypeOff: UInt8
    private let resetValue: UInt8
    private let onPowerOff: @Sendable () -> Void
    private let onReset: @Sendable () -> Void

    /// `sleepTypeOff` is `\_S5`'s SLP_TYP; the callbacks run on the vCPU thread that wrote the register.
    public init(sleepTypeOff: UInt8, resetValue: UInt8, onPowerOff: @escaping @Sendable () -> Void, onReset: @escaping @Sendable () -> Void) {
        self.sleepTypeOff = sleepTypeOff
        self.resetValue = resetValue
        self.onPowerOff = onPowerOff
        self.onReset = onReset
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count == 1, let value = data.first else { return }
        switch offset {
        case ACPIPower.sleepControl:
            if value & ACPIPower.sleepEnable != 0, (value >> ACPIPower.sleepTypeShift) & ACPIPower.sleepTypeMask == sleepTypeOff {
                onPowerOff()
            }
        case ACPIPower.reset:
            if value == resetValue { onReset() }
        default:
            break
        }
    }
}
