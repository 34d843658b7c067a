import SwiftletBoot
import SwiftletDevices
import SwiftletSnapshot

/// The part of a `MachineConfiguration` a snapshot keeps: what the guest sees (vCPUs, memory, devices and their
/// settings) and the host paths the devices were opened by, which a restore opens again unless it is told others.
/// Host-side choices (the console, seccomp, the device thread's scheduling, the jail) are the restoring process's own.
enum SnapshotConfiguration {
    static let maximumDevices = 64

    static func save(_ configuration: MachineConfiguration, into encoder: inout SnapshotEncoder) {
        encoder.record("cpus", integer: UInt64(configuration.cpus))
        encoder.record("mem ", integer: configuration.memorySize)
        encoder.record("cmdl", string: configuration.commandLine)
        encoder.record("disc", string: configuration.discovery.rawValue)
        for disk in configuration.disks {
            encoder.record("disk") { record in
                record.record("path", string: disk.path)
                record.record("ro  ", integer: disk.readOnly ? 1 : 0)
                if let serial = disk.serial { record.record("serl", string: serial) }
                record.record("evix", integer: disk.eventIndex ? 1 : 0)
                record.record("pckd", integer: disk.packedRing ? 1 : 0)
                // The engine is the host's choice, not the guest's; a restore keeps it (absent: sync).
                record.record("engn", string: disk.engine.rawValue)
            }
        }
        for network in configuration.networks {
            encoder.record("net ") { record in
                record.record("tap ", string: network.tap)
                record.record("mac ", bytes: network.mac)
                if let mtu = network.mtu { record.record("mtu ", integer: UInt64(mtu)) }
                if let id = network.id { record.record("id  ", string: id) }
                record.record("pckd", integer: network.packedRing ? 1 : 0)
            }
        }
        if let vsock = configuration.vsock {
            encoder.record("vsck") { record in
                record.record("cid ", integer: vsock.guestCID)
                record.record("sock", string: vsock.socketPath)
                record.record("pckd", integer: vsock.packedRing ? 1 : 0)
            }
        }
        if let balloon = configuration.balloon {
            encoder.record("blln") { record in
                record.record("size", integer: balloon.targetSize)
                record.record("oom ", integer: balloon.deflateOnOOM ? 1 : 0)
                record.record("fprp", integer: balloon.freePageReporting ? 1 : 0)
                record.record("sint", integer: UInt64(balloon.statisticsInterval))
                record.record("pckd", integer: balloon.packedRing ? 1 : 0)
            }
        }
        if let entropy = configuration.entropy {
            encoder.record("rng ") { record in
                if let rate = entropy.bytesPerSecond { record.record("rate", integer: rate) }
                record.record("pckd", integer: entropy.packedRing ? 1 : 0)
            }
        }
    }

    /// The saved configuration, with no kernel (a restored guest is already running one).
    static func load(from decoder: SnapshotDecoder) throws(SnapshotError) -> MachineConfiguration {
        func flag(_ tag: SnapshotTag, _ record: SnapshotDecoder) throws(SnapshotError) -> Bool { try record.integer(tag) != 0 }
        // Whether the device offered the packed ring: snapshots from before it was offered have no such record.
        func packed(_ record: SnapshotDecoder) throws(SnapshotError) -> Bool { record.contains("pckd") ? try flag("pckd", record) : false }
        func engine(_ record: SnapshotDecoder) throws(SnapshotError) -> DiskEngine {
            guard record.contains("engn") else { return .sync }
            let name = try record.string("engn", maximumBytes: 16)
            guard let engine = DiskEngine(rawValue: name) else { throw .malformed("a disk's engine `\(name)` is not one Swiftlet knows") }
            return engine
        }
        let cpus = try decoder.integer("cpus")
        guard cpus >= 1, cpus <= UInt64(MachineConfiguration.maximumCPUs) else {
            throw .malformed("the snapshot's machine has \(cpus) vCPUs (1 to \(MachineConfiguration.maximumCPUs) are possible)")
        }
        var configuration = MachineConfiguration(kernelPath: "", commandLine: try decoder.string("cmdl"), cpus: Int(cpus),
                                                 memorySize: try decoder.integer("mem "))
        guard let discovery = DeviceDiscovery(rawValue: try decoder.string("disc", maximumBytes: 16)) else {
            throw .malformed("the snapshot's device discovery is not one Swiftlet knows")
        }
        configuration.discovery = discovery
        for record in try decoder.all("disk", maximum: maximumDevices) {
            configuration.disks.append(DiskConfiguration(path: try record.string("path"), readOnly: try flag("ro  ", record),
                                                         serial: record.contains("serl") ? try record.string("serl", maximumBytes: 20) : nil,
                                                         eventIndex: try flag("evix", record), packedRing: try packed(record),
                                                         engine: try engine(record)))
        }
        for record in try decoder.all("net ", maximum: maximumDevices) {
            let mac = Array(try record.bytes("mac "))
            guard mac.count == 6 else { throw .wrongSize(tag: "mac ", size: mac.count, expected: 6) }
            var mtu: UInt16?
            if record.contains("mtu ") {
                let value = try record.integer("mtu ")
                guard let narrow = UInt16(exactly: value) else { throw .malformed("the snapshot's MTU \(value) is out of range") }
                mtu = narrow
            }
            configuration.networks.append(NetworkConfiguration(tap: try record.string("tap ", maximumBytes: 16), mac: mac, mtu: mtu,
                                                               id: record.contains("id  ") ? try record.string("id  ", maximumBytes: 256) : nil,
                                                               packedRing: try packed(record)))
        }
        if decoder.contains("vsck") {
            let record = try decoder.nested("vsck")
            configuration.vsock = SocketConfiguration(guestCID: try record.integer("cid "), socketPath: try record.string("sock"),
                                                      packedRing: try packed(record))
        }
        if decoder.contains("blln") {
            let record = try decoder.nested("blln")
            let interval = try record.integer("sint")
            guard let seconds = UInt32(exactly: interval) else { throw .malformed("the snapshot's balloon interval \(interval) is out of range") }
            configuration.balloon = MemoryBalloonConfiguration(targetSize: try record.integer("size"), deflateOnOOM: try flag("oom ", record),
                                                               freePageReporting: try flag("fprp", record), statisticsInterval: seconds,
                                                               packedRing: try packed(record))
        }
        if decoder.contains("rng ") {
            let record = try decoder.nested("rng ")
            configuration.entropy = EntropyConfiguration(bytesPerSecond: record.contains("rate") ? try record.integer("rate") : nil,
                                                         packedRing: try packed(record))
        }
        return configuration
    }

    /// Why `changed` cannot restore a snapshot of `saved`, or nil: the guest-visible machine must stay the same. Host
    /// paths (disk images, TAPs, the vsock socket), the vsock CID and a NIC's MAC may change (a clone's own identity).
    static func incompatibility(saved: MachineConfiguration, changed: MachineConfiguration) -> String? {
        if saved.cpus != changed.cpus { return "the snapshot has \(saved.cpus) vCPUs, not \(changed.cpus)" }
        if saved.memorySize != changed.memorySize { return "the snapshot has \(saved.memorySize >> 20) MiB of memory, not \(changed.memorySize >> 20)" }
        if saved.disks.count != changed.disks.count { return "the snapshot has \(saved.disks.count) disks, not \(changed.disks.count)" }
        for (index, (a, b)) in zip(saved.disks, changed.disks).enumerated() where a.readOnly != b.readOnly || a.serial != b.serial || a.eventIndex != b.eventIndex || a.packedRing != b.packedRing {
            return "disk \(index) may change its image, not how the guest sees it (read-only, serial, event index, packed ring)"
        }
        if saved.networks.count != changed.networks.count { return "the snapshot has \(saved.networks.count) NICs, not \(changed.networks.count)" }
        for (index, (a, b)) in zip(saved.networks, changed.networks).enumerated() where a.mtu != b.mtu || a.packedRing != b.packedRing {
            return "NIC \(index) may change its TAP and MAC, not its MTU or packed ring"
        }
        if (saved.vsock == nil) != (changed.vsock == nil) { return "the snapshot \(saved.vsock == nil ? "has no" : "has a") vsock device" }
        if let a = saved.vsock, let b = changed.vsock, a.packedRing != b.packedRing { return "the vsock device's packed ring is the snapshot's" }
        if saved.balloon != changed.balloon { return "the balloon's configuration is the snapshot's (its size changes through the running VM)" }
        if saved.entropy != changed.entropy { return "the entropy device's configuration is the snapshot's" }
        if saved.discovery != changed.discovery { return "device discovery is the snapshot's (\(saved.discovery.rawValue))" }
        return nil
    }
}
