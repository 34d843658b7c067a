import Synchronization
import SwiftletHost
import SwiftletMemory

/// The interrupt of one virtio-mmio device: the InterruptStatus bits the driver reads and acknowledges, and the
/// line (an irqfd) that tells it to look. Shared by the transport (vCPU threads) and the device (its event loop).
public final class VirtioInterrupt: Sendable {
    public static let usedBuffer: UInt32 = 1 << 0   // VIRTIO_MMIO_INT_VRING
    public static let configChange: UInt32 = 1 << 1 // VIRTIO_MMIO_INT_CONFIG

    private let line: any InterruptLine
    private let status = Atomic<UInt32>(0)
    private let raised = Atomic<UInt64>(0)

    public init(line: any InterruptLine) { self.line = line }

    public var pending: UInt32 { status.load(ordering: .acquiring) }
    /// How many interrupts the device raised (not counting those it left out because one was still pending).
    public var count: UInt64 { raised.load(ordering: .relaxed) }

    /// Sets `reason` in InterruptStatus and raises the line, unless that bit was still set: then the driver has an
    /// interrupt it has not acknowledged yet, and its handler (Linux's vm_interrupt) acknowledges the status it
    /// read and then looks at every queue, so it finds what the device used meanwhile without a second interrupt.
    /// (Whatever the device used was published before this call.)
    public func signal(_ reason: UInt32) {
        let (old, _) = status.bitwiseOr(reason, ordering: .acquiringAndReleasing)
        guard old & reason != reason else { return }
        raised.add(1, ordering: .relaxed)
        line.trigger()
    }

    func acknowledge(_ bits: UInt32) { status.bitwiseAnd(~bits, ordering: .acquiringAndReleasing) }

    /// Sets InterruptStatus back to a snapshot's, and raises the line when something was pending: the interrupt
    /// controller's own state says whether the guest had seen it, and a second look costs its handler one read.
    func restore(_ bits: UInt32) {
        status.store(bits & (Self.usedBuffer | Self.configChange), ordering: .releasing)
        if bits & (Self.usedBuffer | Self.configChange) != 0 { line.trigger() }
    }
    func clear() { status.store(0, ordering: .releasing) }
}

/// What a virtio device gets when the driver sets DRIVER_OK: its queues (nil where the driver left one unused),
/// the negotiated features and guest memory.
public struct VirtioActivation: Sendable {
    public var queues: [(any Virtqueue)?]
    public var features: UInt64
    public var memory: GuestMemory

    public init(queues: [(any Virtqueue)?], features: UInt64, memory: GuestMemory) {
        self.queues = queues
        self.features = features
        self.memory = memory
    }
}

/// A virtio device behind a transport (virtio 1.2 §5). The transport calls these from vCPU threads; the device does
/// its queue work on its event loop.
public protocol VirtioDevice: AnyObject, Sendable {
    /// Device ID (§5): 2 for block, 1 for network, ...
    var deviceType: UInt32 { get }
    /// The features the device offers, VERSION_1 included.
    var offeredFeatures: UInt64 { get }
    /// The largest size of each queue.
    var queueMaximumSizes: [UInt16] { get }
    /// One eventfd per queue that the driver's notifications arrive on (registered as ioeventfds).
    var queueEvents: [EventFd] { get }
    /// Reads device configuration space; bytes past its end read as zero.
    func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer)
    func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer)
    /// The driver set DRIVER_OK. Throwing makes the transport set DEVICE_NEEDS_RESET.
    func activate(_ activation: VirtioActivation) throws(SwiftletError)
    /// The driver wrote 0 to Status: forget the queues and all negotiated state.
    func reset()
}

/// A device whose configuration space changes while the driver runs (a balloon's new target, a disk's new image):
/// the machine gives it the transport's configuration change notice (a new ConfigGeneration and an interrupt).
public protocol ConfigurationChanging: AnyObject, Sendable {
    func attachConfigurationNotifier(_ notify: @escaping @Sendable () -> Void)
}

/// What connects a device to its transport once both exist: the interrupt it raises when it used buffers, and what
/// it calls when the driver broke a queue beyond use (the transport then sets DEVICE_NEEDS_RESET).
public final class DeviceLink: Sendable {
    private let interrupt = Mutex<VirtioInterrupt?>(nil)
    private let onFatalError = Mutex<Callback?>(nil) // a Callback, not a closure: see Callback

    public init() {}

    public func attach(interrupt: VirtioInterrupt, onFatalError: @escaping @Sendable () -> Void) {
        self.interrupt.withLock { $0 = interrupt }
        self.onFatalError.withLock { $0 = Callback(onFatalError) }
    }

    public func signalUsedBuffers() { interrupt.withLock { $0 }?.signal(VirtioInterrupt.usedBuffer) }
    public func reportFatalError() { onFatalError.withLock { $0 }?() }
}

/// Device configuration space as bytes: reads copy from it, and bytes past its end read as zero (§4.2.2.2 lets the
/// driver read any width at any offset).
public struct ConfigurationSpace: Sendable {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func read(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices {
            let position = offset + index
            data[index] = position >= 0 && position < bytes.count ? bytes[position] : 0
        }
    }
}
