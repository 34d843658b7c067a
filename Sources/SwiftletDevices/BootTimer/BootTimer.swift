import Synchronization

/// The boot-timer port: the guest's init writes `magic` to it once it reaches userspace, and the VMM notes the time
/// (Firecracker's boot-timer device, as a one-byte I/O port: one exit, no /dev/mem in the guest).
public final class BootTimer: BusDevice {
    public static let port: UInt16 = 0x440
    public static let magic: UInt8 = 123

    private let clock: @Sendable () -> UInt64
    private let reached = Mutex<UInt64?>(nil)

    /// `clock` returns nanoseconds on the clock the VMM measures start-up on.
    public init(clock: @escaping @Sendable () -> UInt64) {
        self.clock = clock
    }

    /// When the guest reached userspace, in `clock`'s nanoseconds; nil until it has.
    public var userspaceReachedAt: UInt64? { reached.withLock { $0 } }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.first == Self.magic else { return }
        let now = clock()
        reached.withLock { if $0 == nil { $0 = now } }
    }
}
