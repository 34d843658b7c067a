import FoundationEssentials
import Glibc
import Swiftlet
import SwiftletHost
import SystemPackage

/// One metrics line: Firecracker's JSON groups, with Swiftlet's per-device counters under Firecracker's names where
/// it has them (`block`, `net`, `vsock`, `balloon`: the sums over devices of a kind, and a group per device, as
/// Firecracker's `block_<drive_id>`), plus Swiftlet's own group.
struct MetricsSnapshot: Encodable {
    var utc_timestamp_ms: UInt64
    var block: DeviceGroup
    var net: DeviceGroup
    var vsock: DeviceGroup
    var balloon: DeviceGroup
    var swiftlet: SwiftletGroup

    struct DeviceGroup: Encodable {
        /// Firecracker's per-device event counters: queue notifications and requests (frames for net).
        var queue_event_count: UInt64 = 0
        var activate_fails: UInt64 = 0
        var event_fails: UInt64 = 0
        var requests: UInt64 = 0
        var interrupts: UInt64 = 0
        var guest_errors: UInt64 = 0
    }

    struct SwiftletGroup: Encodable {
        var uptime_ms: UInt64
        var devices: [String: DeviceGroup]
    }

    init(devices: [DeviceStatistics], uptimeNanoseconds: UInt64) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        utc_timestamp_ms = UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
        var groups: [String: DeviceGroup] = [:]
        var byKind: [String: DeviceGroup] = [:]
        for device in devices {
            let group = DeviceGroup(queue_event_count: device.notifications, requests: device.requests,
                                    interrupts: device.interrupts, guest_errors: device.guestErrors)
            groups[device.name] = group
            let kind = String(device.name.prefix { $0 != "-" && !$0.isNumber })
            var sum = byKind[kind] ?? DeviceGroup()
            sum.queue_event_count += group.queue_event_count
            sum.requests += group.requests
            sum.interrupts += group.interrupts
            sum.guest_errors += group.guest_errors
            byKind[kind] = sum
        }
        block = byKind["blk"] ?? byKind["block"] ?? DeviceGroup()
        net = byKind["net"] ?? DeviceGroup()
        vsock = byKind["vsock"] ?? DeviceGroup()
        balloon = byKind["balloon"] ?? DeviceGroup()
        swiftlet = SwiftletGroup(uptime_ms: uptimeNanoseconds / 1_000_000, devices: groups)
    }
}

/// Appends metrics lines to the metrics path (a file or a FIFO, which must exist, as Firecracker requires).
final class MetricsWriter: Sendable {
    private let file: OwnedFileDescriptor
    let path: String

    init(path: String) throws(APIFault) {
        self.path = path
        do {
            file = try OwnedFileDescriptor(opening: path, flags: O_WRONLY | O_APPEND | O_NONBLOCK)
        } catch {
            throw APIFault("metrics_path \(path): \(error) (Firecracker's metrics path must exist: create the file or FIFO first)")
        }
    }

    func write(_ snapshot: MetricsSnapshot) throws(APIFault) {
        var line = json(snapshot)
        line.append(UInt8(ascii: "\n"))
        let failure: Errno? = line.withUnsafeBytes { bytes in
            do throws(Errno) { try file.writeAll(bytes) } catch { return error }
            return nil
        }
        if let failure { throw APIFault("FlushMetrics: writing \(path) failed: \(failure)") }
    }
}
