import Swiftlet

/// The machine a Firecracker client has described so far, in Firecracker's terms, and its translation into
/// Swiftlet's `MachineConfiguration`. Every setter checks its input as Firecracker does and says what was wrong.
public struct FirecrackerSetup: Sendable, Equatable {
    public var bootSource: BootSource?
    public var machineConfig = FirecrackerMachineConfig(vcpu_count: 1, mem_size_mib: 128, smt: false,
                                                        track_dirty_pages: false, huge_pages: "None")
    /// In the order they were first put; the root device goes first when the machine is built (Firecracker's order).
    public var drives: [Drive] = []
    public var networkInterfaces: [NetworkInterface] = []
    public var vsock: Vsock?
    public var balloon: Balloon?
    public var entropy: EntropyDevice?
    public var logger: Logger?
    public var metrics: Metrics?

    /// Firecracker's default kernel command line (when `boot_args` is absent).
    public static let defaultBootArgs = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
    /// Firecracker's limit on vCPUs.
    public static let maximumVcpus = 32
    /// virtio-blk's device ID is 20 bytes (VIRTIO_BLK_ID_BYTES): a longer drive_id is cut there, as Firecracker does.
    static let serialBytes = 20

    public init() {}

    var memoryBytes: UInt64 { UInt64(machineConfig.mem_size_mib) << 20 }

    mutating func setBootSource(_ source: BootSource) throws(APIFault) {
        guard !source.kernel_image_path.isEmpty else { throw APIFault("kernel_image_path must not be empty") }
        bootSource = source
    }

    mutating func setMachineConfig(_ config: FirecrackerMachineConfig) throws(APIFault) {
        try Self.check(config)
        machineConfig = config
        if machineConfig.smt == nil { machineConfig.smt = false }
        if machineConfig.track_dirty_pages == nil { machineConfig.track_dirty_pages = false }
        if machineConfig.huge_pages == nil { machineConfig.huge_pages = "None" }
    }

    mutating func updateMachineConfig(_ update: MachineConfigUpdate) throws(APIFault) {
        var config = machineConfig
        if let value = update.vcpu_count { config.vcpu_count = value }
        if let value = update.mem_size_mib { config.mem_size_mib = value }
        if let value = update.smt { config.smt = value }
        if let value = update.track_dirty_pages { config.track_dirty_pages = value }
        if let value = update.huge_pages { config.huge_pages = value }
        if let value = update.cpu_template { config.cpu_template = value }
        try setMachineConfig(config)
    }

    static func check(_ config: FirecrackerMachineConfig) throws(APIFault) {
        guard (1...maximumVcpus).contains(config.vcpu_count) else {
            throw APIFault("vcpu_count \(config.vcpu_count) is out of range: 1 to \(maximumVcpus)")
        }
        guard config.mem_size_mib >= Int(MachineConfiguration.minimumMemory >> 20) else {
            throw APIFault("mem_size_mib \(config.mem_size_mib) is less than Swiftlet's minimum of \(MachineConfiguration.minimumMemory >> 20) MiB")
        }
        guard config.mem_size_mib <= 1 << 20 else { throw APIFault("mem_size_mib \(config.mem_size_mib) is more than 1 TiB") }
        if config.smt == true {
            throw APIFault("smt: Swiftlet does not describe SMT siblings to the guest; leave smt false")
        }
        switch config.huge_pages {
        case nil, "None": break
        case "2M": throw APIFault("huge_pages 2M: Swiftlet backs guest memory with normal pages only; use None")
        case let other?: throw APIFault("huge_pages `\(other)` is not one of `None`, `2M`")
        }
        switch config.cpu_template {
        case nil, "None": break
        case let other?:
            let known = ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1"]
            throw APIFault(known.contains(other)
                ? "cpu_template \(other): Swiftlet has no CPU templates (the guest sees the host's CPUID as KVM reports it); use None"
                : "cpu_template `\(other)` is not one of `C3`, `T2`, `T2S`, `T2CL`, `T2A`, `V1N1`, `None`")
        }
    }

    mutating func putDrive(id: String, _ drive: Drive) throws(APIFault) {
        guard drive.drive_id == id else {
            throw APIFault("the path names drive `\(id)` but the body's drive_id is `\(drive.drive_id)`")
        }
        try Self.check(drive)
        if drive.is_root_device, let other = drives.first(where: { $0.is_root_device && $0.drive_id != id }) {
            throw APIFault("drive `\(other.drive_id)` is already the root device: only one drive can be")
        }
        if let index = drives.firstIndex(where: { $0.drive_id == id }) { drives[index] = drive } else {
            guard drives.count < Self.maximumDrives else { throw APIFault("at most \(Self.maximumDrives) drives") }
            drives.append(drive)
        }
    }

    /// Device slots: virtio-mmio windows the machine lays out (MachineDescription); drives and NICs share them with
    /// vsock and the balloon.
    static let maximumDrives = 16
    static let maximumNetworkInterfaces = 8

    static func check(_ drive: Drive) throws(APIFault) {
        guard !drive.drive_id.isEmpty, drive.drive_id.utf8.count <= 64,
              drive.drive_id.utf8.allSatisfy({ $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") || (0x30...0x39).contains($0) || (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0) }) else {
            throw APIFault("drive_id `\(drive.drive_id)` must be 1 to 64 letters, digits, `_` or `-`")
        }
        if drive.socket != nil { throw APIFault("drive `\(drive.drive_id)`: vhost-user block devices (socket) are not supported; give path_on_host") }
        guard let path = drive.path_on_host, !path.isEmpty else {
            throw APIFault("drive `\(drive.drive_id)`: path_on_host is required (Swiftlet has no vhost-user block devices)")
        }
        guard drive.is_read_only != nil else { throw APIFault("drive `\(drive.drive_id)`: is_read_only is required for a virtio-block drive") }
        switch drive.cache_type {
        case nil, "Unsafe", "Writeback": break
        case let other?: throw APIFault("drive `\(drive.drive_id)`: cache_type `\(other)` is not one of `Unsafe`, `Writeback`")
        }
        switch drive.io_engine {
        case nil, "Sync", "Async": break // Async: Swiftlet's io_uring engine
        case let other?: throw APIFault("drive `\(drive.drive_id)`: io_engine `\(other)` is not one of `Sync`, `Async`")
        }
        try checkNoLimiter(drive.rate_limiter, "drive `\(drive.drive_id)`")
        if drive.partuuid != nil && !drive.is_root_device {
            throw APIFault("drive `\(drive.drive_id)`: partuuid is only for the root device")
        }
    }

    static func checkNoLimiter(_ limiter: RateLimiter?, _ what: String) throws(APIFault) {
        if let limiter, !limiter.isEmpty {
            throw APIFault("\(what): Swiftlet has no rate limiters; leave rate_limiter out")
        }
    }

    func checkDrivePatch(id: String, _ update: PartialDrive) throws(APIFault) {
        guard update.drive_id == id else {
            throw APIFault("the path names drive `\(id)` but the body's drive_id is `\(update.drive_id)`")
        }
        guard drives.contains(where: { $0.drive_id == id }) else { throw APIFault("no drive `\(id)` (PUT it before InstanceStart)") }
        try Self.checkNoLimiter(update.rate_limiter, "drive `\(id)`")
        if let path = update.path_on_host, path.isEmpty { throw APIFault("drive `\(id)`: path_on_host must not be empty") }
    }

    mutating func putNetworkInterface(id: String, _ interface: NetworkInterface) throws(APIFault) {
        guard interface.iface_id == id else {
            throw APIFault("the path names interface `\(id)` but the body's iface_id is `\(interface.iface_id)`")
        }
        guard !interface.host_dev_name.isEmpty, interface.host_dev_name.utf8.count < 16 else {
            throw APIFault("interface `\(id)`: host_dev_name must be a TAP name of 1 to 15 bytes")
        }
        if let mac = interface.guest_mac, Self.parseMAC(mac) == nil {
            throw APIFault("interface `\(id)`: guest_mac `\(mac)` is not a MAC address (six hex bytes, colon-separated)")
        }
        if let mtu = interface.mtu, !(68...65535).contains(mtu) { throw APIFault("interface `\(id)`: mtu \(mtu) is out of range: 68 to 65535") }
        try Self.checkNoLimiter(interface.rx_rate_limiter, "interface `\(id)`")
        try Self.checkNoLimiter(interface.tx_rate_limiter, "interface `\(id)`")
        if let other = networkInterfaces.first(where: { $0.iface_id != id && $0.host_dev_name == interface.host_dev_name }) {
            throw APIFault("interface `\(other.iface_id)` already uses TAP \(interface.host_dev_name)")
        }
        if let mac = interface.guest_mac, let other = networkInterfaces.first(where: { $0.iface_id != id && $0.guest_mac.flatMap(Self.parseMAC) == Self.parseMAC(mac) }) {
            throw APIFault("interface `\(other.iface_id)` already has MAC \(mac)")
        }
        if let index = networkInterfaces.firstIndex(where: { $0.iface_id == id }) { networkInterfaces[index] = interface } else {
            guard networkInterfaces.count < Self.maximumNetworkInterfaces else { throw APIFault("at most \(Self.maximumNetworkInterfaces) network interfaces") }
            networkInterfaces.append(interface)
        }
    }

    func checkNetworkPatch(id: String, _ update: PartialNetworkInterface) throws(APIFault) {
        guard update.iface_id == id else {
            throw APIFault("the path names interface `\(id)` but the body's iface_id is `\(update.iface_id)`")
        }
        guard networkInterfaces.contains(where: { $0.iface_id == id }) else { throw APIFault("no network interface `\(id)` (PUT it before InstanceStart)") }
        try Self.checkNoLimiter(update.rx_rate_limiter, "interface `\(id)`")
        try Self.checkNoLimiter(update.tx_rate_limiter, "interface `\(id)`")
    }

    static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return bytes.count == 6 ? bytes : nil
    }

    mutating func setVsock(_ request: Vsock) throws(APIFault) {
        guard request.guest_cid >= 3, request.guest_cid < Int(UInt32.max) else {
            throw APIFault("guest_cid \(request.guest_cid) is out of range: 3 to \(UInt32.max - 1) (0 to 2 are reserved)")
        }
        guard !request.uds_path.isEmpty, request.uds_path.utf8.count < 108 else {
            throw APIFault("uds_path must be a Unix socket path of 1 to 107 bytes")
        }
        vsock = request
    }

    mutating func setBalloon(_ request: Balloon) throws(APIFault) {
        guard request.amount_mib >= 0 else { throw APIFault("amount_mib must not be negative") }
        guard UInt64(request.amount_mib) << 20 <= memoryBytes else {
            throw APIFault("amount_mib \(request.amount_mib) is more than the guest's \(machineConfig.mem_size_mib) MiB")
        }
        if let interval = request.stats_polling_interval_s, !(0...Int(UInt16.max)).contains(interval) {
            throw APIFault("stats_polling_interval_s \(interval) is out of range: 0 to \(UInt16.max)")
        }
        if request.free_page_hinting == true {
            throw APIFault("free_page_hinting is not supported (free page reporting is: free_page_reporting)")
        }
        balloon = request
    }

    mutating func setEntropy(_ request: EntropyDevice) throws(APIFault) {
        _ = try Self.entropyRate(request)
        entropy = request
    }

    /// The bytes a second an entropy device's bandwidth bucket allows (`size` bytes per `refill_time` ms); an ops
    /// bucket is refused (Swiftlet limits bytes only).
    static func entropyRate(_ request: EntropyDevice) throws(APIFault) -> UInt64? {
        guard let limiter = request.rate_limiter, !limiter.isEmpty else { return nil }
        if limiter.ops != nil { throw APIFault("entropy: Swiftlet limits the entropy device's bytes only; leave out the ops bucket") }
        guard let bandwidth = limiter.bandwidth else { return nil }
        guard bandwidth.size > 0, bandwidth.refill_time > 0 else {
            throw APIFault("entropy: the bandwidth bucket needs a size and a refill_time above 0")
        }
        if bandwidth.one_time_burst != nil { throw APIFault("entropy: one_time_burst is not supported; leave it out") }
        let (rate, overflow) = UInt64(bandwidth.size).multipliedReportingOverflow(by: 1000)
        guard !overflow else { throw APIFault("entropy: the bandwidth bucket's size is too large") }
        return max(1, rate / UInt64(bandwidth.refill_time))
    }

    mutating func setLogger(_ request: Logger) throws(APIFault) {
        switch request.level {
        case nil, "Error", "Warning", "Info", "Debug", "Trace", "Off": break
        case let other?: throw APIFault("level `\(other)` is not one of `Error`, `Warning`, `Info`, `Debug`, `Trace`, `Off`")
        }
        logger = request
    }

    /// The drives in the order the machine attaches them: the root device first (/dev/vda), then the others as
    /// they were PUT.
    var orderedDrives: [Drive] { drives.filter(\.is_root_device) + drives.filter { !$0.is_root_device } }

    /// Where drive `id` is in `MachineConfiguration.disks`.
    func diskIndex(of id: String) -> Int? { orderedDrives.firstIndex { $0.drive_id == id } }

    /// What a snapshot load brought: the restored machine's configuration, as the PUTs that made it would have set it,
    /// so that `GET /vm/config`, `PATCH /drives` and `PATCH /balloon` see it. Drives are named by their serial (the
    /// drive_id they were made with); NICs by the iface_id the snapshot kept.
    mutating func adopt(_ configuration: MachineConfiguration, overriddenTaps: [Int: String], vsockPath: String?) {
        machineConfig.vcpu_count = configuration.cpus
        machineConfig.mem_size_mib = Int(configuration.memorySize >> 20)
        machineConfig.track_dirty_pages = configuration.trackDirtyPages
        drives = configuration.disks.enumerated().map { index, disk in
            Drive(drive_id: disk.serial ?? "drive\(index)", is_root_device: false, is_read_only: disk.readOnly, path_on_host: disk.path)
        }
        networkInterfaces = configuration.networks.enumerated().map { index, network in
            NetworkInterface(iface_id: network.id ?? "eth\(index)", host_dev_name: overriddenTaps[index] ?? network.tap,
                             guest_mac: network.mac.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
                                 .joined(separator: ":"),
                             mtu: network.mtu.map(Int.init))
        }
        vsock = configuration.vsock.map { Vsock(guest_cid: Int($0.guestCID), uds_path: vsockPath ?? $0.socketPath) }
        balloon = configuration.balloon.map {
            Balloon(amount_mib: Int($0.targetSize >> 20), deflate_on_oom: $0.deflateOnOOM,
                    stats_polling_interval_s: Int($0.statisticsInterval), free_page_reporting: $0.freePageReporting)
        }
        entropy = configuration.entropy.map { _ in EntropyDevice() }
    }

    /// Records a running drive's new backing file (after the machine attached it).
    mutating func setDrivePath(id: String, _ path: String) {
        if let index = drives.firstIndex(where: { $0.drive_id == id }) { drives[index].path_on_host = path }
    }

    /// The machine `InstanceStart` boots: what `swiftlet run` would get from the equivalent flags.
    public func machineConfiguration() throws(APIFault) -> MachineConfiguration {
        guard let bootSource else { throw APIFault("InstanceStart needs a kernel: PUT /boot-source first") }
        var commandLine = bootSource.boot_args ?? Self.defaultBootArgs
        let ordered = orderedDrives
        if let root = ordered.first, root.is_root_device {
            let device = root.partuuid.map { "PARTUUID=\($0)" } ?? "/dev/vda"
            commandLine += " root=\(device) \(root.is_read_only == true ? "ro" : "rw")"
        }
        var configuration = MachineConfiguration(kernelPath: bootSource.kernel_image_path, initrdPath: bootSource.initrd_path,
                                                 commandLine: commandLine, cpus: machineConfig.vcpu_count,
                                                 memorySize: memoryBytes, console: .stdio)
        configuration.trackDirtyPages = machineConfig.track_dirty_pages ?? false
        configuration.disks = ordered.map { drive in
            DiskConfiguration(path: drive.path_on_host ?? "", readOnly: drive.is_read_only ?? false,
                              serial: String(decoding: drive.drive_id.utf8.prefix(Self.serialBytes), as: UTF8.self),
                              engine: drive.io_engine == "Async" ? .ioUring : .sync)
        }
        configuration.networks = networkInterfaces.enumerated().map { index, interface in
            NetworkConfiguration(tap: interface.host_dev_name,
                                 mac: interface.guest_mac.flatMap(Self.parseMAC) ?? [0x52, 0x54, 0, 0, 0, UInt8(truncatingIfNeeded: index + 1)],
                                 mtu: interface.mtu.map { UInt16($0) }, id: interface.iface_id)
        }
        configuration.vsock = vsock.map { SocketConfiguration(guestCID: UInt64($0.guest_cid), socketPath: $0.uds_path) }
        if let entropy { configuration.entropy = EntropyConfiguration(bytesPerSecond: try Self.entropyRate(entropy)) }
        configuration.balloon = balloon.map {
            MemoryBalloonConfiguration(targetSize: UInt64($0.amount_mib) << 20, deflateOnOOM: $0.deflate_on_oom,
                                       freePageReporting: $0.free_page_reporting ?? false,
                                       statisticsInterval: UInt32($0.stats_polling_interval_s ?? 0))
        }
        return configuration
    }

    /// `GET /vm/config`.
    var fullConfiguration: FullVmConfiguration {
        var full = FullVmConfiguration()
        full.balloon = balloon
        full.drives = drives
        full.boot_source = bootSource
        full.logger = logger
        full.machine_config = machineConfig
        full.metrics = metrics
        full.network_interfaces = networkInterfaces
        full.vsock = vsock
        full.entropy = entropy
        return full
    }
}
