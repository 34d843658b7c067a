/// QEMU's pvpanic device (docs/specs/pvpanic.rst in QEMU; Linux's drivers/misc/pvpanic): one byte of port I/O,
/// described in the DSDT as `QEMU0001`, through which a guest kernel says it panicked. A read gives the events the
/// device supports; the guest's panic notifier writes PANICKED, and Swiftlet ends the VMM and says so, instead of
/// the guest's `panic=` reboot (or hang) looking like a clean end. CRASH_LOADED (a kdump kernel takes over) is
/// accepted and changes nothing: the guest is handling its crash itself. Any other value, size or offset is ignored.
public final class PVPanic: BusDevice {
    public static let portCount: UInt64 = 1
    /// The guest kernel panicked.
    public static let panicked: UInt8 = 1 << 0
    /// The guest kernel panicked and a crash kernel was loaded to handle it.
    public static let crashLoaded: UInt8 = 1 << 1
    static let supported: UInt8 = panicked | crashLoaded

    private let onPanic: @Sendable (UInt8) -> Void

    /// `onPanic` gets the event byte the guest wrote; it runs on the vCPU thread that wrote it.
    public init(onPanic: @escaping @Sendable (UInt8) -> Void) {
        self.onPanic = onPanic
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
        if offset == 0, data.count == 1 { data[0] = PVPanic.supported }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count == 1, let value = data.first else { return }
        if value & PVPanic.panicked != 0 { onPanic(value & PVPanic.supported) }
    }
}
