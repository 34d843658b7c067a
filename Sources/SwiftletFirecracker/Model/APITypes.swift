// The request and response bodies of Firecracker's API (../shared/firecracker/firecracker.yaml, v1.16.1), with the
// JSON names of the specification. Request bodies refuse unknown fields (StrictObject).

/// `PUT /boot-source`.
public struct BootSource: StrictObject, Encodable, Equatable, Sendable {
    public var kernel_image_path: String
    public var initrd_path: String?
    public var boot_args: String?
    public static let fields: Set<String> = ["kernel_image_path", "initrd_path", "boot_args"]
}

/// Firecracker's token bucket. Swiftlet has no rate limiters: a body that sets one is refused, saying so.
public struct TokenBucket: StrictObject, Encodable, Equatable, Sendable {
    public var size: Int64
    public var one_time_burst: Int64?
    public var refill_time: Int64
    public static let fields: Set<String> = ["size", "one_time_burst", "refill_time"]
}

public struct RateLimiter: StrictObject, Encodable, Equatable, Sendable {
    @StrictOptional public var bandwidth: TokenBucket?
    @StrictOptional public var ops: TokenBucket?
    public static let fields: Set<String> = ["bandwidth", "ops"]
    /// Firecracker treats a limiter without buckets as none.
    var isEmpty: Bool { bandwidth == nil && ops == nil }
}

/// `PUT /drives/{drive_id}`.
public struct Drive: StrictObject, Encodable, Equatable, Sendable {
    public var drive_id: String
    public var is_root_device: Bool
    public var partuuid: String?
    public var cache_type: String?
    public var is_read_only: Bool?
    public var path_on_host: String?
    @StrictOptional public var rate_limiter: RateLimiter?
    public var io_engine: String?
    public var socket: String?
    public static let fields: Set<String> = ["drive_id", "is_root_device", "partuuid", "cache_type", "is_read_only", "path_on_host",
                                      "rate_limiter", "io_engine", "socket"]
}

/// `PATCH /drives/{drive_id}`.
public struct PartialDrive: StrictObject, Encodable, Equatable, Sendable {
    public var drive_id: String
    public var path_on_host: String?
    @StrictOptional public var rate_limiter: RateLimiter?
    public static let fields: Set<String> = ["drive_id", "path_on_host", "rate_limiter"]
}

/// `PUT /network-interfaces/{iface_id}`.
public struct NetworkInterface: StrictObject, Encodable, Equatable, Sendable {
    public var iface_id: String
    public var host_dev_name: String
    public var guest_mac: String?
    public var mtu: Int?
    @StrictOptional public var rx_rate_limiter: RateLimiter?
    @StrictOptional public var tx_rate_limiter: RateLimiter?
    public static let fields: Set<String> = ["iface_id", "host_dev_name", "guest_mac", "mtu", "rx_rate_limiter", "tx_rate_limiter"]
}

/// `PATCH /network-interfaces/{iface_id}`: rate limiters only.
public struct PartialNetworkInterface: StrictObject, Encodable, Equatable, Sendable {
    public var iface_id: String
    @StrictOptional public var rx_rate_limiter: RateLimiter?
    @StrictOptional public var tx_rate_limiter: RateLimiter?
    public static let fields: Set<String> = ["iface_id", "rx_rate_limiter", "tx_rate_limiter"]
}

/// `GET`, `PUT` and `PATCH /machine-config` (`FirecrackerMachineConfig`: Swiftlet's own is `MachineConfiguration`).
public struct FirecrackerMachineConfig: StrictObject, Encodable, Equatable, Sendable {
    public var vcpu_count: Int
    public var mem_size_mib: Int
    public var smt: Bool?
    public var track_dirty_pages: Bool?
    public var huge_pages: String?
    public var cpu_template: String?
    public static let fields: Set<String> = ["vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "huge_pages", "cpu_template"]
}

/// `PATCH /machine-config`: every field optional.
public struct MachineConfigUpdate: StrictObject, Equatable, Sendable {
    public var vcpu_count: Int?
    public var mem_size_mib: Int?
    public var smt: Bool?
    public var track_dirty_pages: Bool?
    public var huge_pages: String?
    public var cpu_template: String?
    public static let fields = FirecrackerMachineConfig.fields
}

/// `PUT /vsock`.
public struct Vsock: StrictObject, Encodable, Equatable, Sendable {
    public var guest_cid: Int
    public var uds_path: String
    public var vsock_id: String?
    public static let fields: Set<String> = ["guest_cid", "uds_path", "vsock_id"]
}

/// `PUT /balloon`, and `GET /balloon`'s answer.
public struct Balloon: StrictObject, Encodable, Equatable, Sendable {
    public var amount_mib: Int
    public var deflate_on_oom: Bool
    public var stats_polling_interval_s: Int?
    public var free_page_hinting: Bool?
    public var free_page_reporting: Bool?
    public static let fields: Set<String> = ["amount_mib", "deflate_on_oom", "stats_polling_interval_s", "free_page_hinting",
                                      "free_page_reporting"]
}

/// `PATCH /balloon`.
public struct BalloonUpdate: StrictObject, Equatable, Sendable {
    public var amount_mib: Int
    public static let fields: Set<String> = ["amount_mib"]
}

/// `PATCH /balloon/statistics`.
public struct BalloonStatsUpdate: StrictObject, Equatable, Sendable {
    public var stats_polling_interval_s: Int
    public static let fields: Set<String> = ["stats_polling_interval_s"]
}

/// `GET /balloon/statistics`.
public struct BalloonStats: Encodable, Equatable, Sendable {
    public var target_pages: UInt64
    public var actual_pages: UInt64
    public var target_mib: UInt64
    public var actual_mib: UInt64
    public var swap_in: UInt64?
    public var swap_out: UInt64?
    public var major_faults: UInt64?
    public var minor_faults: UInt64?
    public var free_memory: UInt64?
    public var total_memory: UInt64?
    public var available_memory: UInt64?
    public var disk_caches: UInt64?
    public var hugetlb_allocations: UInt64?
    public var hugetlb_failures: UInt64?
    public var oom_kill: UInt64?
    public var alloc_stall: UInt64?
    public var async_scan: UInt64?
    public var direct_scan: UInt64?
    public var async_reclaim: UInt64?
    public var direct_reclaim: UInt64?
}

/// `PUT /entropy`.
public struct EntropyDevice: StrictObject, Encodable, Equatable, Sendable {
    @StrictOptional public var rate_limiter: RateLimiter?
    public static let fields: Set<String> = ["rate_limiter"]
}

/// `PUT /logger`.
public struct Logger: StrictObject, Encodable, Equatable, Sendable {
    public var level: String?
    public var log_path: String?
    public var show_level: Bool?
    public var show_log_origin: Bool?
    public var module: String?
    public static let fields: Set<String> = ["level", "log_path", "show_level", "show_log_origin", "module"]
}

/// `PUT /metrics`.
public struct Metrics: StrictObject, Encodable, Equatable, Sendable {
    public var metrics_path: String
    public static let fields: Set<String> = ["metrics_path"]
}

/// `PUT /actions`.
public struct InstanceActionInfo: StrictObject, Equatable, Sendable {
    public var action_type: String
    public static let fields: Set<String> = ["action_type"]
}

/// `PATCH /vm`.
public struct VmState: StrictObject, Equatable, Sendable {
    public var state: String
    public static let fields: Set<String> = ["state"]
}

/// `GET /`.
public struct InstanceInfo: Encodable, Equatable, Sendable {
    public var app_name: String
    public var id: String
    public var state: String
    public var vmm_version: String
}

/// `GET /version`.
public struct FirecrackerVersion: Encodable, Equatable, Sendable {
    public var firecracker_version: String
}

/// `GET /vm/config`, and the `--config-file` format.
public struct FullVmConfiguration: StrictObject, Encodable, Equatable, Sendable {
    @StrictOptional public var balloon: Balloon?
    @StrictArray public var drives: [Drive]?
    @StrictOptional public var boot_source: BootSource?
    @StrictOptional public var logger: Logger?
    @StrictOptional public var machine_config: FirecrackerMachineConfig?
    @StrictOptional public var metrics: Metrics?
    @StrictArray public var network_interfaces: [NetworkInterface]?
    @StrictOptional public var vsock: Vsock?
    @StrictOptional public var entropy: EntropyDevice?

    enum CodingKeys: String, CodingKey {
        case balloon, drives, logger, metrics, vsock, entropy
        case boot_source = "boot-source"
        case machine_config = "machine-config"
        case network_interfaces = "network-interfaces"
    }
    /// What Firecracker's configuration file may hold; the last five are refused with a reason (`Refusals`).
    public static let fields: Set<String> = ["balloon", "drives", "boot-source", "logger", "machine-config", "metrics",
                                      "network-interfaces", "vsock", "entropy", "cpu-config", "mmds-config", "pmem",
                                      "memory-hotplug", "serial"]

    /// The keys the decoded object had (the refused ones among them).
    var present: Set<String> = []

    public init() {}

    public init(from decoder: any Decoder) throws {
        let keys = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        _balloon = try container.decode(StrictOptional<Balloon>.self, forKey: .balloon)
        _drives = try container.decode(StrictArray<Drive>.self, forKey: .drives)
        _boot_source = try container.decode(StrictOptional<BootSource>.self, forKey: .boot_source)
        _logger = try container.decode(StrictOptional<Logger>.self, forKey: .logger)
        _machine_config = try container.decode(StrictOptional<FirecrackerMachineConfig>.self, forKey: .machine_config)
        _metrics = try container.decode(StrictOptional<Metrics>.self, forKey: .metrics)
        _network_interfaces = try container.decode(StrictArray<NetworkInterface>.self, forKey: .network_interfaces)
        _vsock = try container.decode(StrictOptional<Vsock>.self, forKey: .vsock)
        _entropy = try container.decode(StrictOptional<EntropyDevice>.self, forKey: .entropy)
        present = Set(keys)
    }

    public static func == (a: FullVmConfiguration, b: FullVmConfiguration) -> Bool {
        a.balloon == b.balloon && a.drives == b.drives && a.boot_source == b.boot_source && a.logger == b.logger
            && a.machine_config == b.machine_config && a.metrics == b.metrics
            && a.network_interfaces == b.network_interfaces && a.vsock == b.vsock && a.entropy == b.entropy
    }
}

/// `{"fault_message": "…"}`.
struct ErrorBody: Encodable {
    var fault_message: String
}

/// `PUT /snapshot/create`.
public struct SnapshotCreateParams: StrictObject, Equatable, Sendable {
    public var mem_file_path: String
    public var snapshot_path: String
    public var snapshot_type: String?
    public static let fields: Set<String> = ["mem_file_path", "snapshot_path", "snapshot_type"]
}

/// `PUT /snapshot/load`'s `mem_backend`.
public struct MemoryBackend: StrictObject, Encodable, Equatable, Sendable {
    public var backend_type: String
    public var backend_path: String
    public static let fields: Set<String> = ["backend_type", "backend_path"]
}

/// `PUT /snapshot/load`'s `network_overrides` entries.
public struct NetworkOverride: StrictObject, Equatable, Sendable {
    public var iface_id: String
    public var host_dev_name: String
    public static let fields: Set<String> = ["iface_id", "host_dev_name"]
}

/// `PUT /snapshot/load`'s `vsock_override`.
public struct VsockOverride: StrictObject, Encodable, Equatable, Sendable {
    public var uds_path: String
    public static let fields: Set<String> = ["uds_path"]
}

/// `PUT /snapshot/load`.
public struct SnapshotLoadParams: StrictObject, Equatable, Sendable {
    public var snapshot_path: String
    public var mem_file_path: String?
    @StrictOptional public var mem_backend: MemoryBackend?
    public var enable_diff_snapshots: Bool?
    public var track_dirty_pages: Bool?
    public var resume_vm: Bool?
    public var network_overrides: [NetworkOverride]?
    @StrictOptional public var vsock_override: VsockOverride?
    public static let fields: Set<String> = ["snapshot_path", "mem_file_path", "mem_backend", "enable_diff_snapshots",
                                             "track_dirty_pages", "resume_vm", "network_overrides", "vsock_override"]
}
