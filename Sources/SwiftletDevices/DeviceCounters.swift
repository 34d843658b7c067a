import Synchronization
import SwiftletHost

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

    /// Signals a device gave its own queue eventfds, per queue, to come back for the rest of a drain that used up
    /// its budget (`DrainResult.more`): the loop serves its other sources first. They are not the driver's.
    /// `resumesPending` is their total not yet consumed, so a notification takes the lock only while there are any.
    private let resumes = Mutex<[Int: UInt64]>([:])
    private let resumesPending = Atomic<UInt64>(0)

    /// Comes back to queue `index` on the loop's next round, through its eventfd.
    func resume(queue index: Int, _ event: EventFd) {
        resumes.withLock { $0[index, default: 0] += 1 }
        resumesPending.add(1, ordering: .relaxed)
        event.signal()
    }

    /// Counts what queue `index`'s eventfd delivered, less the device's own resume signals.
    func countNotifications(queue index: Int, _ count: UInt64) {
        var own: UInt64 = 0
        if resumesPending.load(ordering: .relaxed) != 0 {
            own = resumes.withLock { $0.removeValue(forKey: index) ?? 0 }
            if own > 0 { resumesPending.subtract(own, ordering: .relaxed) }
        }
        if count > own { notificationCount.add(count - own, ordering: .relaxed) }
    }
}
