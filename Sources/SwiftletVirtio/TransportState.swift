import SwiftletMemory
import SwiftletSnapshot

/// What a snapshot keeps of a virtio-mmio transport: the driver's view of the device (status, the negotiated
/// features, the selectors, each queue's configuration) and where the device stands in each queue's ring. The
/// device's own state is saved by the device.
public struct TransportState: Sendable, Equatable {
    public var status: UInt32 = 0
    public var deviceFeaturesSelect: UInt32 = 0
    public var driverFeaturesSelect: UInt32 = 0
    public var driverFeatures: UInt64 = 0
    public var queueSelect: UInt32 = 0
    public var configurationGeneration: UInt32 = 0
    /// InterruptStatus: interrupts raised that the driver had not acknowledged.
    public var interruptStatus: UInt32 = 0
    public var queues: [QueueConfiguration] = []
    /// Per queue, where the device resumes; nil for a queue the device was not serving.
    public var positions: [QueuePosition?] = []

    /// No transport has more queues than this (vsock has 3, a multi-queue device would have tens).
    public static let maximumQueues = 64

    public init() {}

    public func save(into encoder: inout SnapshotEncoder) {
        encoder.record("stat", integer: UInt64(status))
        encoder.record("dfsl", integer: UInt64(deviceFeaturesSelect))
        encoder.record("drsl", integer: UInt64(driverFeaturesSelect))
        encoder.record("drft", integer: driverFeatures)
        encoder.record("qsel", integer: UInt64(queueSelect))
        encoder.record("cgen", integer: UInt64(configurationGeneration))
        encoder.record("isr ", integer: UInt64(interruptStatus))
        for (index, queue) in queues.enumerated() {
            encoder.record("queu") { record in
                record.record("size", integer: UInt64(queue.size))
                record.record("redy", integer: queue.ready ? 1 : 0)
                record.record("desc", integer: queue.descriptorTable.rawValue)
                record.record("avai", integer: queue.availableRing.rawValue)
                record.record("used", integer: queue.usedRing.rawValue)
                if let position = positions[index] {
                    record.record("nava", integer: UInt64(position.nextAvailable))
                    record.record("nusd", integer: UInt64(position.nextUsed))
                }
            }
        }
    }

    public init(from decoder: SnapshotDecoder) throws(SnapshotError) {
        func narrow<T: FixedWidthInteger>(_ tag: SnapshotTag, in decoder: SnapshotDecoder, as: T.Type) throws(SnapshotError) -> T {
            let value = try decoder.integer(tag)
            guard let narrowed = T(exactly: value) else {
                throw .malformed("record '\(tag)' in \(decoder.context) holds \(value), more than \(T.self) holds")
            }
            return narrowed
        }
        status = try narrow("stat", in: decoder, as: UInt32.self)
        deviceFeaturesSelect = try narrow("dfsl", in: decoder, as: UInt32.self)
        driverFeaturesSelect = try narrow("drsl", in: decoder, as: UInt32.self)
        driverFeatures = try decoder.integer("drft")
        queueSelect = try narrow("qsel", in: decoder, as: UInt32.self)
        configurationGeneration = try narrow("cgen", in: decoder, as: UInt32.self)
        interruptStatus = try narrow("isr ", in: decoder, as: UInt32.self)
        for record in try decoder.all("queu", maximum: Self.maximumQueues) {
            var queue = QueueConfiguration()
            queue.size = try narrow("size", in: record, as: UInt16.self)
            queue.ready = try narrow("redy", in: record, as: UInt8.self) != 0
            queue.descriptorTable = GuestAddress(try record.integer("desc"))
            queue.availableRing = GuestAddress(try record.integer("avai"))
            queue.usedRing = GuestAddress(try record.integer("used"))
            queues.append(queue)
            if record.contains("nava") {
                positions.append(QueuePosition(nextAvailable: try narrow("nava", in: record, as: UInt16.self),
                                               nextUsed: try narrow("nusd", in: record, as: UInt16.self)))
            } else {
                positions.append(nil)
            }
        }
    }
}
