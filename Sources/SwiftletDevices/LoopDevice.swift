import SwiftletHost
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
}

extension LoopDevice {
    public func shutDown() {}
}

extension Block: LoopDevice {
    public func register(on loop: EventLoop) throws(SwiftletError) {
        try loop.register(queueEvents[0].rawValue) { [self] _ in handleQueueEvent() }
    }
}

extension Balloon: LoopDevice {
    public func register(on loop: EventLoop) throws(SwiftletError) { try registerSources(on: loop) }
}
