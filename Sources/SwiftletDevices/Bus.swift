import SwiftletHost

/// A device on the port I/O or MMIO bus, reached synchronously from a vCPU thread. `offset` is relative to the
/// start of the device's range; `data` is the access (1, 2, 4 or 8 bytes): written for reads, read for writes.
public protocol BusDevice: AnyObject, Sendable {
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt64, data: UnsafeRawBufferPointer)
}

/// Maps address ranges to devices. Built before the vCPUs start and never changed, so lookups need no lock.
public struct Bus: Sendable {
    public struct Entry: Sendable {
        public let base: UInt64
        public let size: UInt64
        public let device: any BusDevice
    }

    public private(set) var entries: [Entry] = []

    public init() {}

    /// Adds `device` at [base, base+size); throws if the range overlaps another device's.
    public mutating func insert(_ device: any BusDevice, base: UInt64, size: UInt64) throws(BusError) {
        guard size > 0, base.addingReportingOverflow(size).overflow == false else { throw BusError.invalidRange(base: base, size: size) }
        for entry in entries where base < entry.base + entry.size && entry.base < base + size {
            throw BusError.overlap(base: base, size: size)
        }
        entries.append(Entry(base: base, size: size, device: device))
        entries.sort { $0.base < $1.base }
    }

    /// The device and offset for an access of `length` bytes at `address`, if one device covers all of it.
    @inline(__always)
    public func resolve(_ address: UInt64, length: Int) -> (device: any BusDevice, offset: UInt64)? {
        for entry in entries where address >= entry.base && address - entry.base < entry.size {
            let offset = address - entry.base
            guard UInt64(length) <= entry.size - offset else { return nil }
            return (entry.device, offset)
        }
        return nil
    }

    /// Dispatches a read; unclaimed addresses read as all ones, like an open bus.
    @inline(__always)
    public func read(_ address: UInt64, data: UnsafeMutableRawBufferPointer) {
        if let (device, offset) = resolve(address, length: data.count) {
            device.read(offset: offset, data: data)
        } else {
            for index in data.indices { data[index] = 0xff }
        }
    }

    /// Dispatches a write; writes to unclaimed addresses are dropped.
    @inline(__always)
    public func write(_ address: UInt64, data: UnsafeRawBufferPointer) {
        if let (device, offset) = resolve(address, length: data.count) {
            device.write(offset: offset, data: data)
        }
    }
}

public enum BusError: Error, Equatable {
    case invalidRange(base: UInt64, size: UInt64)
    case overlap(base: UInt64, size: UInt64)
}
