@testable import Swiftlet
import SwiftletSnapshot
import Testing

/// The configuration a snapshot keeps: every guest-visible setting and host path comes back, and a restore may
/// change the host side only.
@Suite struct SnapshotConfigurationTests {
    static var machine: MachineConfiguration {
        var configuration = MachineConfiguration(kernelPath: "/k", commandLine: "console=ttyS0 quiet", cpus: 2, memorySize: 512 << 20)
        configuration.disks = [DiskConfiguration(path: "/d/root.img", readOnly: false, serial: "rootfs", eventIndex: true, engine: .ioUring),
                               DiskConfiguration(path: "/d/ro.img", readOnly: true, serial: nil, eventIndex: false, packedRing: false)]
        configuration.networks = [NetworkConfiguration(tap: "tap0", mac: [2, 0, 0, 0, 0, 1], mtu: 9000, id: "eth0")]
        configuration.vsock = SocketConfiguration(guestCID: 7, socketPath: "/run/v.sock", packedRing: false)
        configuration.balloon = MemoryBalloonConfiguration(targetSize: 64 << 20, deflateOnOOM: true, freePageReporting: true, statisticsInterval: 3)
        configuration.entropy = EntropyConfiguration(bytesPerSecond: 4096)
        configuration.discovery = .acpi
        return configuration
    }

    func throughAFile(_ configuration: MachineConfiguration) throws -> MachineConfiguration {
        var body = SnapshotEncoder()
        body.record("conf") { SnapshotConfiguration.save(configuration, into: &$0) }
        return try SnapshotConfiguration.load(from: SnapshotFile.body(of: SnapshotFile.bytes(body: body)).nested("conf"))
    }

    @Test func everySavedSettingComesBack() throws {
        let saved = Self.machine
        let loaded = try throughAFile(saved)
        #expect(loaded.kernelPath == "") // a restored guest runs the kernel it booted
        #expect(loaded.cpus == 2 && loaded.memorySize == 512 << 20 && loaded.commandLine == saved.commandLine)
        #expect(loaded.disks == saved.disks && loaded.networks == saved.networks && loaded.vsock == saved.vsock)
        #expect(loaded.balloon == saved.balloon && loaded.entropy == saved.entropy && loaded.discovery == .acpi)
        #expect(SnapshotConfiguration.incompatibility(saved: saved, changed: loaded) == nil)
        var minimal = MachineConfiguration(kernelPath: "/k")
        minimal.discovery = .legacy
        let back = try throughAFile(minimal)
        #expect(back.disks.isEmpty && back.networks.isEmpty && back.vsock == nil && back.balloon == nil && back.entropy == nil)
    }

    @Test func aRestoreMayChangeTheHostSideOnly() {
        let saved = Self.machine
        var clone = saved
        clone.disks[0].path = "/d/clone.img"
        clone.networks[0].tap = "tap9"
        clone.networks[0].mac = [2, 0, 0, 0, 0, 9]
        clone.vsock = SocketConfiguration(guestCID: 8, socketPath: "/run/clone.sock", packedRing: false)
        #expect(SnapshotConfiguration.incompatibility(saved: saved, changed: clone) == nil)
        func why(_ change: (inout MachineConfiguration) -> Void) -> String {
            var changed = saved
            change(&changed)
            return SnapshotConfiguration.incompatibility(saved: saved, changed: changed) ?? ""
        }
        #expect(why { $0.cpus = 1 } == "the snapshot has 2 vCPUs, not 1")
        #expect(why { $0.memorySize = 256 << 20 } == "the snapshot has 512 MiB of memory, not 256")
        #expect(why { $0.disks.removeLast() } == "the snapshot has 2 disks, not 1")
        #expect(why { $0.disks[1].readOnly = false }.hasPrefix("disk 1 may change its image"))
        #expect(why { $0.networks[0].mtu = 1500 } == "NIC 0 may change its TAP and MAC, not its MTU or packed ring")
        #expect(why { $0.networks[0].packedRing = false } == "NIC 0 may change its TAP and MAC, not its MTU or packed ring")
        #expect(why { $0.disks[0].packedRing = false }.hasSuffix("(read-only, serial, event index, packed ring)"))
        #expect(why { $0.vsock?.packedRing = true } == "the vsock device's packed ring is the snapshot's")
        #expect(why { $0.vsock = nil } == "the snapshot has a vsock device")
        let balloonChanged = why { configuration in configuration.balloon?.targetSize = 0 }
        #expect(balloonChanged.hasPrefix("the balloon's configuration is the snapshot's"))
        #expect(why { $0.entropy = nil } == "the entropy device's configuration is the snapshot's")
        #expect(why { $0.discovery = .both } == "device discovery is the snapshot's (acpi)")
    }

    @Test func aConfigurationNoMachineCanHaveIsRefused() throws {
        var body = SnapshotEncoder()
        body.record("conf") { record in
            record.record("cpus", integer: 0)
            record.record("mem ", integer: 1 << 30)
            record.record("cmdl", string: "")
            record.record("disc", string: "both")
        }
        let decoder = try SnapshotFile.body(of: SnapshotFile.bytes(body: body)).nested("conf")
        #expect(throws: SnapshotError.malformed("the snapshot's machine has 0 vCPUs (1 to \(MachineConfiguration.maximumCPUs) are possible)")) {
            try SnapshotConfiguration.load(from: decoder)
        }
    }

    /// A snapshot from before the packed ring was offered has no record of it: its devices offered the split ring
    /// only, and so do the restored ones.
    @Test func anOlderSnapshotRestoresSplitOnlyDevices() throws {
        var body = SnapshotEncoder()
        body.record("conf") { record in
            record.record("cpus", integer: 1)
            record.record("mem ", integer: 256 << 20)
            record.record("cmdl", string: "")
            record.record("disc", string: "both")
            record.record("disk") { disk in
                disk.record("path", string: "/d/a.img")
                disk.record("ro  ", integer: 0)
                disk.record("evix", integer: 1)
            }
            record.record("rng ") { _ in }
        }
        let loaded = try SnapshotConfiguration.load(from: SnapshotFile.body(of: SnapshotFile.bytes(body: body)).nested("conf"))
        #expect(loaded.disks.first?.packedRing == false && loaded.entropy?.packedRing == false)
    }
}

/// The guest's time through a state file: the clock and each vCPU's TSC pairing come back; a record for another
/// number of vCPUs, or a TSC frequency no CPU has, is refused.
@Suite struct GuestTimeRecordTests {
    func throughAFile(_ save: (inout SnapshotEncoder) -> Void) throws -> SnapshotDecoder {
        var body = SnapshotEncoder()
        body.record("time", save)
        return try SnapshotFile.body(of: SnapshotFile.bytes(body: body)).nested("time")
    }

    @Test func theClockAndEveryTSCComeBack() throws {
        let time = GuestTime(clock: 7_000_000_000, counters: [
            GuestTime.Counter(clock: 7_000_001_000, value: 0x1234_5678_9abc, kilohertz: 2_300_000),
            GuestTime.Counter(clock: 7_000_002_000, value: 0x1234_5678_ffff, kilohertz: 2_300_000),
        ])
        #expect(try GuestTime(from: throughAFile { time.save(into: &$0) }, vcpus: 2) == time)
        #expect(throws: SnapshotError.malformed("the guest's time has 2 TSCs, and the machine 3 vCPUs")) {
            try GuestTime(from: throughAFile { time.save(into: &$0) }, vcpus: 3)
        }
        let impossible = GuestTime(clock: 1, counters: [GuestTime.Counter(clock: 1, value: 1, kilohertz: UInt32.max)])
        #expect(throws: SnapshotError.malformed("vCPU 0's TSC runs at \(UInt32.max) kHz")) {
            try GuestTime(from: throughAFile { impossible.save(into: &$0) }, vcpus: 1)
        }
    }
}
