import FoundationEssentials
import Swiftlet
import SwiftletDevices
import SwiftletHost

/// A machine the API started: what the post-boot calls act on. `MicroVM` is one; tests use a fake.
public protocol RunningMachine: AnyObject, Sendable {
    func setBalloonTarget(bytes: UInt64) throws(SwiftletError)
    func setBalloonStatisticsInterval(seconds: UInt32) throws(SwiftletError)
    func sendCtrlAltDel() throws(SwiftletError)
    func replaceDiskImage(index: Int, path: String) throws(SwiftletError)
    func balloonStatus() -> BalloonStatus?
    func statistics() -> [DeviceStatistics]
    func pause() throws(SwiftletError)
    func resume() throws(SwiftletError)
    @discardableResult
    func snapshot(to paths: SnapshotPaths, kind: SnapshotKind) throws(SwiftletError) -> SnapshotStatistics
}

extension MicroVM: RunningMachine {}

/// Starts the machine `InstanceStart` describes; the default boots a `MicroVM`, tests pass a fake.
public typealias MachineStarter = @Sendable (MachineConfiguration) async throws(SwiftletError) -> any RunningMachine

/// Restores the machine `PUT /snapshot/load` names: the snapshot, whether it resumes, and the overrides to apply to
/// its saved configuration (`MicroVM.restore(from:resume:overrides:)`).
public typealias MachineRestorer = @Sendable (MicroVMSnapshot, Bool, @escaping @Sendable (inout MachineConfiguration) -> Void)
    async throws(SwiftletError) -> any RunningMachine

/// An API answer: an HTTP status and, unless 204, a JSON body.
public struct APIResponse: Equatable, Sendable {
    public var status: Int
    public var body: [UInt8]

    static let noContent = APIResponse(status: 204, body: [])

    static func fault(_ message: String, status: Int = 400) -> APIResponse {
        APIResponse(status: status, body: json(ErrorBody(fault_message: message)))
    }

    static func ok<T: Encodable>(_ value: T) -> APIResponse { APIResponse(status: 200, body: json(value)) }

    /// The fault message of an error answer, for tests and logs.
    public var faultMessage: String? {
        guard status >= 400, let text = String(bytes: body, encoding: .utf8) else { return nil }
        struct Fault: Decodable { var fault_message: String }
        return try? JSONDecoder().decode(Fault.self, from: Data(text.utf8)).fault_message
    }
}

func json<T: Encodable>(_ value: T) -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return (try? Array(encoder.encode(value))) ?? Array("{}".utf8)
}

/// Firecracker's VMM as its API sees it: the machine being configured, then the one running. Each request is handled
/// whole before the next (an actor), as in Firecracker, whose API thread hands requests to the VMM one at a time.
///
/// The configuration calls build a `FirecrackerSetup`, which turns into the same `MachineConfiguration` that
/// `swiftlet run`'s flags build; `InstanceStart` boots it.
public actor FirecrackerVMM {
    public enum State: String, Sendable { case notStarted = "Not started", running = "Running", paused = "Paused" }

    public let id: String
    public private(set) var state = State.notStarted
    public private(set) var setup: FirecrackerSetup
    private var machine: (any RunningMachine)?
    private let starter: MachineStarter
    private let restorer: MachineRestorer?
    /// The metrics writer, once `PUT /metrics` (or the configuration file) named a path.
    private var metrics: MetricsWriter?
    /// The log, once `PUT /logger` (or `--log-path`, or the configuration file) named a path.
    private var log: LogWriter?
    private let startedAt = monotonicNanoseconds()

    /// The API level answered: Firecracker's specification this implements.
    public static let apiVersion = "1.16.1"

    public init(id: String = "anonymous-instance", setup: FirecrackerSetup = FirecrackerSetup(), starter: @escaping MachineStarter,
                restorer: MachineRestorer? = nil) {
        self.id = id
        self.setup = setup
        self.starter = starter
        self.restorer = restorer
    }

    /// Handles one request: METHOD, the path (with any query string) and the body.
    public func handle(method: String, path rawPath: String, body: [UInt8]) async -> APIResponse {
        let response = await answer(method: method, path: rawPath, body: body)
        if let log {
            if let fault = response.faultMessage {
                log.log(.warning, "\(method) \(rawPath) refused (\(response.status)): \(fault)")
            } else {
                log.log(.debug, "\(method) \(rawPath): \(response.status)")
            }
        }
        return response
    }

    private func answer(method: String, path rawPath: String, body: [UInt8]) async -> APIResponse {
        let path = String(rawPath.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
        let parts = path.split(separator: "/").map(String.init)
        do throws(APIFault) {
            if let refusal = Refusals.reason(for: parts) { return .fault(refusal) }
            switch (method, parts.first, parts.count) {
            case ("GET", nil, 0): return .ok(InstanceInfo(app_name: "Swiftlet", id: id, state: state.rawValue, vmm_version: Self.apiVersion))
            case ("GET", "version", 1): return .ok(FirecrackerVersion(firecracker_version: Self.apiVersion))
            case ("GET", "machine-config", 1): return .ok(setup.machineConfig)
            case ("PUT", "machine-config", 1):
                try requireNotStarted("machine-config")
                try setup.setMachineConfig(decodeBody(FirecrackerMachineConfig.self, body))
                return .noContent
            case ("PATCH", "machine-config", 1):
                try requireNotStarted("machine-config")
                try setup.updateMachineConfig(decodeBody(MachineConfigUpdate.self, body))
                return .noContent
            case ("PUT", "boot-source", 1):
                try requireNotStarted("boot-source")
                try setup.setBootSource(decodeBody(BootSource.self, body))
                return .noContent
            case ("PUT", "drives", 2):
                try requireNotStarted("drives")
                try setup.putDrive(id: parts[1], decodeBody(Drive.self, body))
                return .noContent
            case ("PATCH", "drives", 2):
                return try await patchDrive(id: parts[1], decodeBody(PartialDrive.self, body))
            case ("PUT", "network-interfaces", 2):
                try requireNotStarted("network-interfaces")
                try setup.putNetworkInterface(id: parts[1], decodeBody(NetworkInterface.self, body))
                return .noContent
            case ("PATCH", "network-interfaces", 2):
                let update = try decodeBody(PartialNetworkInterface.self, body)
                try setup.checkNetworkPatch(id: parts[1], update)
                guard state != .notStarted else {
                    throw APIFault("PATCH /network-interfaces/\(parts[1]) changes a running microVM's rate limiters; before InstanceStart, PUT the interface instead")
                }
                return .noContent
            case ("PUT", "vsock", 1):
                try requireNotStarted("vsock")
                try setup.setVsock(decodeBody(Vsock.self, body))
                return .noContent
            case ("GET", "balloon", 1):
                guard let balloon = setup.balloon else { throw APIFault("no balloon device is configured (PUT /balloon before InstanceStart)") }
                var answer = balloon
                if let status = machine?.balloonStatus() { answer.amount_mib = Int(status.targetBytes >> 20) }
                return .ok(answer)
            case ("PUT", "balloon", 1):
                try requireNotStarted("balloon")
                try setup.setBalloon(decodeBody(Balloon.self, body))
                return .noContent
            case ("PATCH", "balloon", 1):
                return try patchBalloon(decodeBody(BalloonUpdate.self, body))
            case ("GET", "balloon", 2) where parts[1] == "statistics":
                return try balloonStatistics()
            case ("PATCH", "balloon", 2) where parts[1] == "statistics":
                let update = try decodeBody(BalloonStatsUpdate.self, body)
                return try patchBalloonStatistics(update)
            case ("PUT", "entropy", 1):
                try requireNotStarted("entropy")
                try setup.setEntropy(decodeBody(EntropyDevice.self, body))
                return .noContent
            case ("PUT", "logger", 1):
                try requireNotStarted("logger")
                try setLogger(decodeBody(Logger.self, body))
                return .noContent
            case ("PUT", "metrics", 1):
                try requireNotStarted("metrics")
                try setMetrics(decodeBody(Metrics.self, body))
                return .noContent
            case ("PUT", "actions", 1):
                return try await action(decodeBody(InstanceActionInfo.self, body))
            case ("PATCH", "vm", 1):
                let request = try decodeBody(VmState.self, body)
                guard request.state == "Paused" || request.state == "Resumed" else {
                    throw APIFault("state `\(request.state)` is not one of `Paused`, `Resumed`")
                }
                guard state != .notStarted, let machine else { throw APIFault("the microVM is not started: InstanceStart first") }
                do {
                    if request.state == "Paused" { try machine.pause(); state = .paused } else { try machine.resume(); state = .running }
                    log?.log(.info, "the microVM is \(state.rawValue.lowercased())")
                } catch {
                    throw APIFault("PATCH /vm (\(request.state)): \(error.description)")
                }
                return .noContent
            case ("GET", "vm", 2) where parts[1] == "config":
                return .ok(setup.fullConfiguration)
            case ("PUT", "snapshot", 2) where parts[1] == "create":
                return try createSnapshot(decodeBody(SnapshotCreateParams.self, body))
            case ("PUT", "snapshot", 2) where parts[1] == "load":
                return try await loadSnapshot(decodeBody(SnapshotLoadParams.self, body))
            default:
                let known = ["", "version", "machine-config", "boot-source", "drives", "network-interfaces", "vsock", "balloon",
                             "entropy", "logger", "metrics", "actions", "vm", "snapshot"]
                if let first = parts.first, !known.contains(first) {
                    return .fault("unknown resource \(path): this API (Firecracker \(Self.apiVersion)) has no such endpoint")
                }
                return .fault("invalid request method and/or path: \(method) \(path)")
            }
        } catch {
            return .fault(error.message)
        }
    }

    /// `--config-file`: Firecracker's JSON (the shape of `GET /vm/config`), applied as the PUT of each part would be,
    /// with the same checks. The parts Swiftlet does not have are refused by name.
    public func configure(fromFile bytes: [UInt8]) throws(APIFault) {
        let file = try decodeBody(FullVmConfiguration.self, bytes, limit: 1 << 20)
        for (key, refused) in [("cpu-config", "cpu-config"), ("mmds-config", "mmds"), ("pmem", "pmem"),
                               ("memory-hotplug", "hotplug"), ("serial", "serial")] where file.present.contains(key) {
            throw APIFault("`\(key)`: " + (Refusals.reason(for: [refused]) ?? "not supported"))
        }
        if let logger = file.logger { try setLogger(logger) }
        if let config = file.machine_config { try setup.setMachineConfig(config) }
        if let source = file.boot_source { try setup.setBootSource(source) }
        for drive in file.drives ?? [] { try setup.putDrive(id: drive.drive_id, drive) }
        for interface in file.network_interfaces ?? [] { try setup.putNetworkInterface(id: interface.iface_id, interface) }
        if let vsock = file.vsock { try setup.setVsock(vsock) }
        if let balloon = file.balloon { try setup.setBalloon(balloon) }
        if let entropy = file.entropy { try setup.setEntropy(entropy) }
        if let request = file.metrics { try setMetrics(request) }
    }

    /// Firecracker's `--level`, `--log-path` and `--metrics-path`: what `PUT /logger` and `PUT /metrics` set.
    public func configure(logLevel: String?, logPath: String?, metricsPath: String?) throws(APIFault) {
        if logPath != nil { try setLogger(Logger(level: logLevel, log_path: logPath)) } else if logLevel != nil {
            try setup.setLogger(Logger(level: logLevel)) // a level without a path: checked, kept for a later PUT /logger
        }
        if let metricsPath { try setMetrics(Metrics(metrics_path: metricsPath)) }
    }

    /// Opens the log path (the level as checked by the setup); Firecracker sets it once.
    private func setLogger(_ request: Logger) throws(APIFault) {
        guard log == nil else {
            throw APIFault("the logger is already set (\(log?.path ?? "")): Firecracker sets it once")
        }
        var request = request
        if request.level == nil { request.level = setup.logger?.level }
        try setup.setLogger(request)
        log = try LogWriter(request, id: id)
        log?.log(.info, "Swiftlet \(Self.apiVersion)-compatible API, instance \(id): logging at \(request.level ?? "Info")")
    }

    /// Opens the metrics path; Firecracker sets it once.
    private func setMetrics(_ request: Metrics) throws(APIFault) {
        guard metrics == nil else {
            throw APIFault("the metrics path is already set (\(setup.metrics?.metrics_path ?? "")): Firecracker sets it once")
        }
        metrics = try MetricsWriter(path: request.metrics_path)
        setup.metrics = request
    }

    private func requireNotStarted(_ resource: String) throws(APIFault) {
        guard state == .notStarted else {
            throw APIFault("/\(resource) can only be set before InstanceStart: the microVM is \(state.rawValue.lowercased())")
        }
    }

    private func action(_ request: InstanceActionInfo) async throws(APIFault) -> APIResponse {
        switch request.action_type {
        case "InstanceStart":
            guard state == .notStarted else { throw APIFault("InstanceStart: the microVM is already \(state.rawValue.lowercased())") }
            let configuration = try setup.machineConfiguration()
            do {
                machine = try await starter(configuration)
            } catch {
                log?.log(.error, "InstanceStart failed: \(error.description)")
                throw APIFault("InstanceStart failed: \(error.description)")
            }
            state = .running
            log?.log(.info, "InstanceStart: the microVM runs (\(configuration.cpus) vCPUs, \(configuration.memorySize >> 20) MiB, "
                + "\(configuration.disks.count) drives, \(configuration.networks.count) network interfaces)")
            return .noContent
        case "FlushMetrics":
            guard let metrics else { throw APIFault("FlushMetrics: no metrics path is set (PUT /metrics first)") }
            try metrics.write(snapshot())
            return .noContent
        case "SendCtrlAltDel":
            guard state != .notStarted, let machine else { throw APIFault("SendCtrlAltDel: the microVM is not started") }
            do { try machine.sendCtrlAltDel() } catch { throw APIFault("SendCtrlAltDel: \(error.description)") }
            return .noContent
        default:
            throw APIFault("action_type `\(request.action_type)` is not one of `InstanceStart`, `SendCtrlAltDel`, `FlushMetrics`")
        }
    }

    /// `PUT /snapshot/create`: a full or diff snapshot of the paused microVM (Firecracker requires the pause too).
    /// A diff needs `track_dirty_pages` (machine-config, or the load's), as Firecracker's does.
    private func createSnapshot(_ request: SnapshotCreateParams) throws(APIFault) -> APIResponse {
        let kind: SnapshotKind
        switch request.snapshot_type {
        case nil, "Full": kind = .full
        case "Diff": kind = .diff
        case let other?: throw APIFault("snapshot_type `\(other)` is not one of `Full`, `Diff`")
        }
        guard let machine, state != .notStarted else { throw APIFault("the microVM is not started: there is nothing to snapshot") }
        guard state == .paused else { throw APIFault("the microVM is running: pause it first (PATCH /vm {\"state\": \"Paused\"})") }
        let started = monotonicNanoseconds()
        do {
            let written = try machine.snapshot(to: SnapshotPaths(state: request.snapshot_path, memory: request.mem_file_path), kind: kind)
            log?.log(.info, "snapshot created: \(request.snapshot_path) (\(written.stateBytes) bytes), \(request.mem_file_path) "
                + "(\(written.memoryWrittenBytes >> 10) KiB of \(written.memoryBytes >> 20) MiB written) in \((monotonicNanoseconds() - started) / 1_000_000) ms")
        } catch {
            throw APIFault("PUT /snapshot/create: \(error.description)")
        }
        return .noContent
    }

    /// `PUT /snapshot/load`: a microVM restored from a snapshot, in place of one configured and started here.
    private func loadSnapshot(_ request: SnapshotLoadParams) async throws(APIFault) -> APIResponse {
        guard state == .notStarted else { throw APIFault("PUT /snapshot/load: the microVM is already \(state.rawValue.lowercased()); load a snapshot into a new process") }
        guard setup.bootSource == nil && setup.drives.isEmpty && setup.networkInterfaces.isEmpty && setup.vsock == nil
                && setup.balloon == nil && setup.entropy == nil else {
            throw APIFault("PUT /snapshot/load is not allowed after configuring boot-specific resources: the snapshot brings its own machine")
        }
        guard let restorer else { throw APIFault("PUT /snapshot/load is not available in this front end") }
        let trackDirtyPages = request.track_dirty_pages == true || request.enable_diff_snapshots == true
        let memoryPath: String
        switch (request.mem_file_path, request.mem_backend) {
        case (let path?, nil): memoryPath = path
        case (nil, let backend?):
            guard backend.backend_type == "File" else {
                throw APIFault("mem_backend `\(backend.backend_type)`: Swiftlet loads guest memory from a file (`File`); it has no userfaultfd backend")
            }
            memoryPath = backend.backend_path
        case (nil, nil): throw APIFault("PUT /snapshot/load needs the guest memory: `mem_backend` (or the older `mem_file_path`)")
        case (.some, .some): throw APIFault("PUT /snapshot/load takes `mem_backend` or `mem_file_path`, not both")
        }
        let snapshot: MicroVMSnapshot
        do { snapshot = try MicroVMSnapshot(SnapshotPaths(state: request.snapshot_path, memory: memoryPath)) } catch {
            throw APIFault("PUT /snapshot/load: \(error.description)")
        }
        var taps: [Int: String] = [:]
        for override in request.network_overrides ?? [] {
            guard let index = snapshot.configuration.networks.firstIndex(where: { $0.id == override.iface_id }) else {
                let known = snapshot.configuration.networks.compactMap(\.id)
                throw APIFault("network_overrides: the snapshot has no network interface `\(override.iface_id)` (it has \(known.isEmpty ? "none" : known.map { "`\($0)`" }.joined(separator: ", ")))")
            }
            taps[index] = override.host_dev_name
        }
        if request.vsock_override != nil && snapshot.configuration.vsock == nil {
            throw APIFault("vsock_override: the snapshot has no vsock device")
        }
        let vsockPath = request.vsock_override?.uds_path
        let resume = request.resume_vm ?? false
        let overriddenTaps = taps
        do {
            machine = try await restorer(snapshot, resume) { configuration in
                configuration.trackDirtyPages = trackDirtyPages
                for (index, tap) in overriddenTaps { configuration.networks[index].tap = tap }
                if let vsockPath { configuration.vsock?.socketPath = vsockPath }
            }
        } catch {
            log?.log(.error, "snapshot load failed: \(error.description)")
            throw APIFault("PUT /snapshot/load: \(error.description)")
        }
        var adopted = snapshot.configuration
        adopted.trackDirtyPages = trackDirtyPages
        setup.adopt(adopted, overriddenTaps: taps, vsockPath: vsockPath)
        state = resume ? .running : .paused
        log?.log(.info, "snapshot loaded from \(request.snapshot_path): the microVM is \(state.rawValue.lowercased())")
        return .noContent
    }

    private func patchDrive(id: String, _ update: PartialDrive) async throws(APIFault) -> APIResponse {
        try setup.checkDrivePatch(id: id, update)
        guard state != .notStarted else {
            throw APIFault("PATCH /drives/\(id) changes a running microVM's drive; before InstanceStart, PUT the drive instead")
        }
        guard let path = update.path_on_host else { return .noContent } // nothing to change (no rate limiters)
        guard let machine, let index = setup.diskIndex(of: id) else { throw APIFault("no drive `\(id)` in the running microVM") }
        do { try machine.replaceDiskImage(index: index, path: path) } catch {
            throw APIFault("PATCH /drives/\(id): \(error.description); the drive keeps its image")
        }
        setup.setDrivePath(id: id, path)
        return .noContent
    }

    private func patchBalloon(_ update: BalloonUpdate) throws(APIFault) -> APIResponse {
        guard setup.balloon != nil else { throw APIFault("no balloon device is configured (PUT /balloon before InstanceStart)") }
        guard update.amount_mib >= 0 else { throw APIFault("amount_mib must not be negative") }
        guard UInt64(update.amount_mib) << 20 <= setup.memoryBytes else {
            throw APIFault("amount_mib \(update.amount_mib) is more than the guest's \(setup.machineConfig.mem_size_mib) MiB")
        }
        guard let machine else {
            throw APIFault("PATCH /balloon changes a running microVM's balloon; before InstanceStart, PUT /balloon instead")
        }
        do { try machine.setBalloonTarget(bytes: UInt64(update.amount_mib) << 20) } catch {
            throw APIFault("PATCH /balloon: \(error.description)")
        }
        setup.balloon?.amount_mib = update.amount_mib
        return .noContent
    }

    private func balloonStatistics() throws(APIFault) -> APIResponse {
        guard let balloon = setup.balloon else { throw APIFault("no balloon device is configured (PUT /balloon before InstanceStart)") }
        guard (balloon.stats_polling_interval_s ?? 0) > 0 else {
            throw APIFault("the balloon's statistics are off: set stats_polling_interval_s in PUT /balloon before InstanceStart")
        }
        guard let status = machine?.balloonStatus() else { throw APIFault("the microVM is not started: its balloon has no statistics yet") }
        let s = status.statistics
        return .ok(BalloonStats(target_pages: UInt64(status.targetPages), actual_pages: UInt64(status.actualPages),
                                target_mib: status.targetBytes >> 20, actual_mib: status.actualBytes >> 20,
                                swap_in: s?.swapIn, swap_out: s?.swapOut, major_faults: s?.majorFaults,
                                minor_faults: s?.minorFaults, free_memory: s?.freeMemory, total_memory: s?.totalMemory,
                                available_memory: s?.availableMemory, disk_caches: s?.diskCaches,
                                hugetlb_allocations: s?.hugetlbAllocations, hugetlb_failures: s?.hugetlbFailures))
    }

    private func patchBalloonStatistics(_ update: BalloonStatsUpdate) throws(APIFault) -> APIResponse {
        guard let balloon = setup.balloon else { throw APIFault("no balloon device is configured (PUT /balloon before InstanceStart)") }
        guard state != .notStarted else {
            throw APIFault("PATCH /balloon/statistics changes a running microVM's balloon; before InstanceStart, PUT /balloon instead")
        }
        let current = balloon.stats_polling_interval_s ?? 0
        guard (current == 0) == (update.stats_polling_interval_s == 0) else {
            throw APIFault("the balloon's statistics cannot be turned \(current == 0 ? "on" : "off") after InstanceStart")
        }
        guard (0...Int(UInt16.max)).contains(update.stats_polling_interval_s) else {
            throw APIFault("stats_polling_interval_s \(update.stats_polling_interval_s) is out of range: 0 to \(UInt16.max)")
        }
        guard update.stats_polling_interval_s != current else { return .noContent }
        guard let machine else { throw APIFault("the microVM is not started") }
        do { try machine.setBalloonStatisticsInterval(seconds: UInt32(update.stats_polling_interval_s)) } catch {
            throw APIFault("PATCH /balloon/statistics: \(error.description)")
        }
        setup.balloon?.stats_polling_interval_s = update.stats_polling_interval_s
        return .noContent
    }

    /// The periodic metrics line (PeriodicMetrics): written once the microVM runs and a metrics path is set. A
    /// failed write (a FIFO nobody reads) is counted, not fatal, and the next period tries again.
    public func writePeriodicMetrics() {
        guard state != .notStarted, let metrics else { return }
        do { try metrics.write(snapshot()) } catch { periodicMetricsFailures += 1 }
    }

    /// Periodic metrics lines that could not be written.
    public private(set) var periodicMetricsFailures = 0

    /// The metrics line: Firecracker's groups, with Swiftlet's counters where Firecracker has a name for them.
    func snapshot() -> MetricsSnapshot {
        MetricsSnapshot(devices: machine?.statistics() ?? [], uptimeNanoseconds: monotonicNanoseconds() - startedAt)
    }
}
