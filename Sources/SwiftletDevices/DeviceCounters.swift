import Synchronization

/// Counters a device exposes; read at any time from any thread.
public final class DeviceCounters: Sendable {
    let notificationCount = Atomic<UInt64>(0)
    let requestCount = Atomic<UInt64>(0)
    let errorCount = Atomic<UInt64>(0)
    let byteCount = Atomic<UInt64>(0)
    public init() {}
    /// Driver-to-device queue notifications (ioeventfd signals, coalesced ones included).
    public var notifications: UInt64 { notificationCount.load(ordering: .relaxed) }
    /// Requests completed.
    public var requests: UInt64 { requestCount.load(ordering: .relaxed) }
    /// Malformed chains and requests the guest sent.
    public var guestErrors: UInt64 { errorCount.load(ordering: .relaxed) }
    /// Bytes moved between the guest's buffers and the backend (frames, sector data, stream payload): what the
    /// device loop's adaptive scheduling watches (`ThreadScheduling.adaptive`).
    public var bytes: UInt64 { byteCount.load(ordering: .relaxed) }
    func addBytes(_ count: Int) { if count > 0 { byteCount.add(UInt64(count), ordering: .relaxed) } }
}
