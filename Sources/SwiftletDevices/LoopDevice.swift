import SwiftletHost
import SwiftletSnapshot
import SwiftletVirtio

/// A device that does its work on the device event loop: it registers its own event sources there (queue
/// ioeventfds, a TAP, sockets) before the loop starts, and counts what it did.
public protocol LoopDevice: VirtioDevice {
    func register(on loop: EventLoop) throws(SwiftletError)
    var counters: DeviceCounters { get }
    /// Connects the device to its interrupt and to what it does when the driver broke a queue beyond use.
    func attach(interrupt: VirtioInterrupt, onFatalError: @escaping @Sendable () -> Void)
    /// The machine is going away and its loop has stopped: remove what the device made on the host (socket files),
    /// close its connections.
    func shutDown()

    // Snapshots. Each is called while nothing runs the device: its vCPUs and its loop are parked (save), or the
    // machine has not started (restore).

    /// Where the device stands in each of its queues, nil for a queue it does not serve. Chains it popped and holds
    /// unused (receive buffers waiting for a frame) are given back in the position, so that a restored device pops
    /// them again.
    func queuePositions() -> [QueuePosition?]
    /// The device's own state beyond its transport's (none by default).
    func saveState(into encoder: inout SnapshotEncoder)
    /// Sets `saveState`'s records back, before the transport activates the device again.
    func restoreState(from decoder: SnapshotDecoder) throws(SnapshotError)
}

extension LoopDevice {
    public func shutDown() {}
    public func saveState(into encoder: inout SnapshotEncoder) {}
    public func restoreState(from decoder: SnapshotDecoder) throws(SnapshotError) {}
}

extension Block: LoopDevice {
    public func register(on loop: EventLoop) throws(SwiftletError) {
        try loop.register(queueEvents[0].rawValue) { [self] _ in handleQueueEvent() }
        if let completionEvent {
            try loop.register(completionEvent.rawValue) { [self] _ in handleCompletions() }
            try loop.registerPause { [self] in quiesce() }
        }
    }
}

extension Balloon: LoopDevice {
    public func register(on loop: EventLoop) throws(SwiftletError) { try registerSources(on: loop) }
}
