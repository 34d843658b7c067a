import FoundationEssentials
import Glibc
import Swiftlet
import SwiftletDevices
@testable import SwiftletFirecracker
import SwiftletHost
import Synchronization
import Testing

/// A machine that records what it was asked.
final class FakeMachine: RunningMachine {
    let targets = Mutex<[UInt64]>([])
    func setBalloonTarget(bytes: UInt64) throws(SwiftletError) { targets.withLock { $0.append(bytes) } }
    func balloonStatus() -> BalloonStatus? { nil }
    let pauses = Mutex<[String]>([])
    func pause() throws(SwiftletError) { pauses.withLock { $0.append("pause") } }
    func resume() throws(SwiftletError) { pauses.withLock { $0.append("resume") } }
    let intervals = Mutex<[UInt32]>([])
    func setBalloonStatisticsInterval(seconds: UInt32) throws(SwiftletError) { intervals.withLock { $0.append(seconds) } }
    let ctrlAltDels = Mutex(0)
    func sendCtrlAltDel() throws(SwiftletError) { ctrlAltDels.withLock { $0 += 1 } }
    let snapshots = Mutex<[SnapshotPaths]>([])
    let snapshotKinds = Mutex<[SnapshotKind]>([])
    func snapshot(to paths: SnapshotPaths, kind: SnapshotKind) throws(SwiftletError) -> SnapshotStatistics {
        snapshots.withLock { $0.append(paths) }
        snapshotKinds.withLock { $0.append(kind) }
        return SnapshotStatistics(stateBytes: 100, memoryBytes: 1 << 20, memoryWrittenBytes: 4096)
    }
    let images = Mutex<[String]>([])
    func replaceDiskImage(index: Int, path: String) throws(SwiftletError) {
        guard !path.hasPrefix("/missing") else { throw SwiftletError(.invalidConfiguration, "cannot open disk image \(path)") }
        images.withLock { $0.append("\(index):\(path)") }
    }
    func statistics() -> [DeviceStatistics] {
        [DeviceStatistics(name: "blk0", notifications: 5, interrupts: 4, requests: 3, guestErrors: 0)]
    }
}

final class Recorder: Sendable {
    let configurations = Mutex<[MachineConfiguration]>([])
    let machine = FakeMachine()
    var starter: MachineStarter {
        { [self] configuration async throws(SwiftletError) -> any RunningMachine in
            configurations.withLock { $0.append(configuration) }
            return machine
        }
    }
}

private func send(_ vmm: FirecrackerVMM, _ method: String, _ path: String, _ body: String = "") async -> APIResponse {
    await vmm.handle(method: method, path: path, body: Array(body.utf8))
}

private func object(_ response: APIResponse) throws -> [String: String] {
    struct Loose: Decodable {
        var values: [String: String] = [:]
        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: AnyKey.self)
            for key in container.allKeys {
                if let text = try? container.decode(String.self, forKey: key) { values[key.stringValue] = text }
                else if let number = try? container.decode(Int.self, forKey: key) { values[key.stringValue] = String(number) }
                else if let flag = try? container.decode(Bool.self, forKey: key) { values[key.stringValue] = String(flag) }
            }
        }
    }
    return try JSONDecoder().decode(Loose.self, from: Data(response.body)).values
}

/// An empty file under /tmp (the metrics and log paths must exist); the caller removes it.
private func temporaryFile(_ name: String) throws -> String {
    var template = Array("/tmp/swiftlet-\(name)-XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    try #require(fd >= 0)
    close(fd)
    return String(cString: template)
}

/// The lines of the file at `path` (none if it cannot be read).
private func fileLines(_ path: String) -> [String] {
    guard let handle = fopen(path, "r") else { return [] }
    defer { fclose(handle) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while case let n = fread(&chunk, 1, chunk.count, handle), n > 0 { bytes += chunk[0..<n] }
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
}

private let bootSource = #"{"kernel_image_path": "/k/vmlinux", "initrd_path": "/k/initrd", "boot_args": "console=ttyS0"}"#
private let start = #"{"action_type": "InstanceStart"}"#

@Suite struct FirecrackerVMMTests {
    @Test func instanceInfoAndVersion() async throws {
        let vmm = FirecrackerVMM(id: "sandbox-7", starter: Recorder().starter)
        let info = try object(await send(vmm, "GET", "/"))
        #expect(info == ["app_name": "Swiftlet", "id": "sandbox-7", "state": "Not started", "vmm_version": "1.16.1"])
        #expect(try object(await send(vmm, "GET", "/version")) == ["firecracker_version": "1.16.1"])
    }

    @Test func gettingStartedBuildsTheMachineRunWouldBuild() async throws {
        let recorder = Recorder()
        let vmm = FirecrackerVMM(starter: recorder.starter)
        #expect(await send(vmm, "PUT", "/boot-source", bootSource).status == 204)
        #expect(await send(vmm, "PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 512}"#).status == 204)
        #expect(await send(vmm, "PUT", "/drives/scratch", #"{"drive_id": "scratch", "path_on_host": "/d/scratch.img", "is_root_device": false, "is_read_only": true}"#).status == 204)
        #expect(await send(vmm, "PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "/d/root.img", "is_root_device": true, "is_read_only": false}"#).status == 204)
        #expect(await send(vmm, "PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "tap7", "guest_mac": "06:00:AC:10:00:02"}"#).status == 204)
        #expect(await send(vmm, "PUT", "/vsock", #"{"guest_cid": 9, "uds_path": "/run/v.sock"}"#).status == 204)
        #expect(await send(vmm, "PUT", "/balloon", #"{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 5}"#).status == 204)
        #expect(await send(vmm, "PUT", "/entropy", #"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#).status == 204)
        #expect(await send(vmm, "PUT", "/actions", start).status == 204)
        let built = try #require(recorder.configurations.withLock { $0.first })
        #expect(built.entropy == EntropyConfiguration(bytesPerSecond: 10_000))
        // What `swiftlet run --kernel /k/vmlinux --initrd /k/initrd --cmdline '… root=/dev/vda rw' --cpus 2 --memory 512M
        // --disk /d/root.img,id=rootfs --disk /d/scratch.img,readonly=on,id=scratch --net tap=tap7,mac=… --vsock … --balloon …` builds.
        var expected = MachineConfiguration(kernelPath: "/k/vmlinux", initrdPath: "/k/initrd", commandLine: "console=ttyS0 root=/dev/vda rw",
                                            cpus: 2, memorySize: 512 << 20, console: .stdio)
        expected.disks = [DiskConfiguration(path: "/d/root.img", readOnly: false, serial: "rootfs"),
                          DiskConfiguration(path: "/d/scratch.img", readOnly: true, serial: "scratch")]
        expected.networks = [NetworkConfiguration(tap: "tap7", mac: [0x06, 0, 0xac, 0x10, 0, 2], id: "eth0")]
        expected.vsock = SocketConfiguration(guestCID: 9, socketPath: "/run/v.sock")
        expected.balloon = MemoryBalloonConfiguration(targetSize: 64 << 20, deflateOnOOM: true, statisticsInterval: 5)
        #expect(built.kernelPath == expected.kernelPath && built.initrdPath == expected.initrdPath)
        #expect(built.commandLine == expected.commandLine)
        #expect(built.cpus == 2 && built.memorySize == expected.memorySize)
        #expect(built.disks == expected.disks)
        #expect(built.networks == expected.networks)
        #expect(built.vsock == expected.vsock)
        #expect(built.balloon == expected.balloon)
        #expect(try object(await send(vmm, "GET", "/"))["state"] == "Running")
    }

    @Test func defaultBootArgsAndPartuuidRoot() async throws {
        let recorder = Recorder()
        let vmm = FirecrackerVMM(starter: recorder.starter)
        #expect(await send(vmm, "PUT", "/boot-source", #"{"kernel_image_path": "/k"}"#).status == 204)
        #expect(await send(vmm, "PUT", "/drives/r", #"{"drive_id": "r", "path_on_host": "/r", "is_root_device": true, "is_read_only": true, "partuuid": "0eaa91a0-01"}"#).status == 204)
        #expect(await send(vmm, "PUT", "/actions", start).status == 204)
        let built = try #require(recorder.configurations.withLock { $0.first })
        #expect(built.commandLine == FirecrackerSetup.defaultBootArgs + " root=PARTUUID=0eaa91a0-01 ro")
    }

    @Test func unknownFieldsWrongTypesAndBadJSONAreRefusedByName() async {
        let vmm = FirecrackerVMM(starter: Recorder().starter)
        let cases: [(String, String, String)] = [
            ("/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "vcpus": 2}"#, "unknown field `vcpus`"),
            ("/machine-config", #"{"vcpu_count": "one", "mem_size_mib": 128}"#, "vcpu_count: invalid type: expected an integer"),
            ("/machine-config", #"{"mem_size_mib": 128}"#, "missing field `vcpu_count`"),
            ("/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "smt": null}"#, "smt: invalid type: null (leave the field out instead)"),
            ("/drives/a", #"{"drive_id": "a", "is_root_device": false, "is_read_only": false, "path_on_host": "/a", "rate_limiter": {"bandwidth": null}}"#,
             "rate_limiter.bandwidth: invalid type: null"),
            ("/machine-config", #"{"vcpu_count": 1,"#, "not valid JSON"),
            ("/machine-config", "", "needs a JSON body"),
            ("/machine-config", "[1, 2]", "expected a JSON object"),
            ("/machine-config", String(repeating: "[", count: 40), "nests deeper than 16"),
            ("/drives/a", #"{"drive_id": "a", "is_root_device": false, "is_read_only": false, "path_on_host": "/a", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "extra": 0}}}"#,
             "rate_limiter.bandwidth: unknown field `extra`"),
        ]
        for (path, body, fragment) in cases {
            let response = await send(vmm, "PUT", path, body)
            #expect(response.status == 400, "\(path) \(body)")
            #expect(response.faultMessage?.contains(fragment) == true, "\(path) \(body): \(response.faultMessage ?? "no fault")")
        }
    }

    @Test func firecrackerRulesOnValues() async {
        let vmm = FirecrackerVMM(starter: Recorder().starter)
        let cases: [(String, String, String, String)] = [
            ("PUT", "/machine-config", #"{"vcpu_count": 33, "mem_size_mib": 128}"#, "vcpu_count 33 is out of range: 1 to 32"),
            ("PUT", "/machine-config", #"{"vcpu_count": 0, "mem_size_mib": 128}"#, "out of range"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}"#, "huge_pages `1G` is not one of"),
            ("PUT", "/drives/a", #"{"drive_id": "b", "is_root_device": false, "is_read_only": false, "path_on_host": "/a"}"#, "the body's drive_id is `b`"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "is_root_device": false, "path_on_host": "/a"}"#, "is_read_only is required"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "is_root_device": false, "is_read_only": false, "socket": "/s"}"#, "vhost-user"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "is_root_device": false, "is_read_only": false, "path_on_host": "/a", "cache_type": "Sometimes"}"#, "cache_type `Sometimes`"),
            ("PUT", "/network-interfaces/e", #"{"iface_id": "e", "host_dev_name": "tap0", "guest_mac": "zz:00:00:00:00:00"}"#, "is not a MAC address"),
            ("PUT", "/network-interfaces/e", #"{"iface_id": "e", "host_dev_name": "a-very-long-tap-name"}"#, "1 to 15 bytes"),
            ("PUT", "/vsock", #"{"guest_cid": 2, "uds_path": "/v"}"#, "guest_cid 2 is out of range"),
            ("PUT", "/balloon", #"{"amount_mib": 4096, "deflate_on_oom": false}"#, "more than the guest's 128 MiB"),
            ("PUT", "/balloon", #"{"amount_mib": 1, "deflate_on_oom": false, "free_page_hinting": true}"#, "free page reporting is"),
            ("PUT", "/actions", #"{"action_type": "Reboot"}"#, "action_type `Reboot` is not one of"),
            ("PUT", "/actions", start, "PUT /boot-source first"),
            ("PATCH", "/vm", #"{"state": "Paused"}"#, "not started"),
            ("PATCH", "/vm", #"{"state": "Frozen"}"#, "`Frozen` is not one of"),
            ("PATCH", "/balloon", #"{"amount_mib": 1}"#, "no balloon device"),
            ("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#, "no metrics path"),
        ]
        for (method, path, body, fragment) in cases {
            let response = await send(vmm, method, path, body)
            #expect(response.status == 400, "\(method) \(path) \(body)")
            #expect(response.faultMessage?.contains(fragment) == true, "\(method) \(path): \(response.faultMessage ?? "no fault")")
        }
    }

    @Test func onlyOneRootDevice() async {
        let vmm = FirecrackerVMM(starter: Recorder().starter)
        #expect(await send(vmm, "PUT", "/drives/a", #"{"drive_id": "a", "is_root_device": true, "is_read_only": false, "path_on_host": "/a"}"#).status == 204)
        let second = await send(vmm, "PUT", "/drives/b", #"{"drive_id": "b", "is_root_device": true, "is_read_only": false, "path_on_host": "/b"}"#)
        #expect(second.faultMessage == "drive `a` is already the root device: only one drive can be")
        // Putting `a` again replaces it.
        #expect(await send(vmm, "PUT", "/drives/a", #"{"drive_id": "a", "is_root_device": false, "is_read_only": false, "path_on_host": "/a"}"#).status == 204)
        #expect(await send(vmm, "PUT", "/drives/b", #"{"drive_id": "b", "is_root_device": true, "is_read_only": false, "path_on_host": "/b"}"#).status == 204)
    }

    @Test func preBootOnlyCallsAreRefusedAfterStart() async throws {
        let recorder = Recorder()
        let vmm = FirecrackerVMM(starter: recorder.starter)
        _ = await send(vmm, "PUT", "/boot-source", bootSource)
        _ = await send(vmm, "PUT", "/balloon", #"{"amount_mib": 0, "deflate_on_oom": false}"#)
        #expect(await send(vmm, "PUT", "/actions", start).status == 204)
        for (path, body) in [("/boot-source", bootSource), ("/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128}"#),
                             ("/vsock", #"{"guest_cid": 3, "uds_path": "/v"}"#)] {
            let response = await send(vmm, "PUT", path, body)
            #expect(response.faultMessage == "\(path) can only be set before InstanceStart: the microVM is running", "\(path)")
        }
        #expect(await send(vmm, "PUT", "/actions", start).faultMessage == "InstanceStart: the microVM is already running")
        // A post-boot call reaches the machine.
        #expect(await send(vmm, "PATCH", "/balloon", #"{"amount_mib": 32}"#).status == 204)
        #expect(recorder.machine.targets.withLock { $0 } == [32 << 20])
        #expect(try object(await send(vmm, "GET", "/balloon"))["amount_mib"] == "32")
        #expect(await send(vmm, "PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        #expect(try object(await send(vmm, "GET", "/"))["state"] == "Paused")
        #expect(await send(vmm, "PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
        #expect(try object(await send(vmm, "GET", "/"))["state"] == "Running")
        #expect(recorder.machine.pauses.withLock { $0 } == ["pause", "resume"])
        #expect(await send(vmm, "PUT", "/actions", #"{"action_type": "SendCtrlAltDel"}"#).status == 204)
        #expect(recorder.machine.ctrlAltDels.withLock { $0 } == 1)
    }

    @Test func drivePatchAndStatisticsIntervalReachTheRunningMachine() async throws {
        let recorder = Recorder()
        let vmm = FirecrackerVMM(starter: recorder.starter)
        _ = await send(vmm, "PUT", "/boot-source", bootSource)
        _ = await send(vmm, "PUT", "/drives/data", #"{"drive_id": "data", "is_root_device": false, "is_read_only": false, "path_on_host": "/d1"}"#)
        _ = await send(vmm, "PUT", "/drives/root", #"{"drive_id": "root", "is_root_device": true, "is_read_only": true, "path_on_host": "/r"}"#)
        _ = await send(vmm, "PUT", "/balloon", #"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 5}"#)
        let patch = #"{"drive_id": "data", "path_on_host": "/d2"}"#
        #expect(await send(vmm, "PATCH", "/drives/data", patch).faultMessage
                == "PATCH /drives/data changes a running microVM's drive; before InstanceStart, PUT the drive instead")
        #expect(await send(vmm, "PUT", "/actions", start).status == 204)
        // The root drive is disk 0 whatever the order of the PUTs: `data` is disk 1.
        #expect(await send(vmm, "PATCH", "/drives/data", patch).status == 204)
        #expect(recorder.machine.images.withLock { $0 } == ["1:/d2"])
        let text = String(decoding: await send(vmm, "GET", "/vm/config").body, as: UTF8.self)
        #expect(text.contains(#""path_on_host":"/d2""#), "\(text)")
        let failed = await send(vmm, "PATCH", "/drives/data", #"{"drive_id": "data", "path_on_host": "/missing.img"}"#)
        #expect(failed.faultMessage == "PATCH /drives/data: cannot open disk image /missing.img; the drive keeps its image")
        #expect(await send(vmm, "PATCH", "/drives/nope", #"{"drive_id": "nope", "path_on_host": "/x"}"#).faultMessage
                == "no drive `nope` (PUT it before InstanceStart)")
        #expect(await send(vmm, "PATCH", "/drives/data", #"{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#).faultMessage
                == "drive `data`: Swiftlet has no rate limiters; leave rate_limiter out")

        #expect(await send(vmm, "PATCH", "/balloon/statistics", #"{"stats_polling_interval_s": 2}"#).status == 204)
        #expect(recorder.machine.intervals.withLock { $0 } == [2])
        #expect(try object(await send(vmm, "GET", "/balloon"))["stats_polling_interval_s"] == "2")
        #expect(await send(vmm, "PATCH", "/balloon/statistics", #"{"stats_polling_interval_s": 0}"#).faultMessage
                == "the balloon's statistics cannot be turned off after InstanceStart")
        #expect(await send(vmm, "PATCH", "/balloon/statistics", #"{"stats_polling_interval_s": 70000}"#).faultMessage
                == "stats_polling_interval_s 70000 is out of range: 0 to 65535")
    }

    @Test func metricsLinesOnFlushAndEveryPeriodOnceRunning() async throws {
        let path = try temporaryFile("metrics")
        defer { unlink(path) }
        func lines() -> [String] { fileLines(path) }
        let vmm = FirecrackerVMM(starter: Recorder().starter)
        _ = await send(vmm, "PUT", "/boot-source", bootSource)
        #expect(await send(vmm, "PUT", "/metrics", #"{"metrics_path": "\#(path)"}"#).status == 204)
        let periodic = PeriodicMetrics(vmm, every: .milliseconds(50))
        defer { periodic.stop() }
        try await Task.sleep(for: .milliseconds(200))
        #expect(lines().isEmpty) // nothing before the microVM runs
        #expect(await send(vmm, "PUT", "/actions", start).status == 204)
        var waited = 0
        while lines().count < 2 && waited < 100 { try await Task.sleep(for: .milliseconds(20)); waited += 1 }
        let written = lines()
        #expect(written.count >= 2)
        #expect(written.first?.contains(#""swiftlet":{"devices":{"blk0":{"#) == true, "\(written.first ?? "")")
        #expect(written.first?.contains(#""block":{"activate_fails":0,"event_fails":0,"guest_errors":0,"interrupts":4,"queue_event_count":5,"requests":3}"#) == true)
        #expect(await vmm.periodicMetricsFailures == 0)
    }

    @Test func theLogHasTheEventsAndTheRefusals() async throws {
        let path = try temporaryFile("log")
        defer { unlink(path) }
        let vmm = FirecrackerVMM(id: "logged", starter: Recorder().starter)
        #expect(await send(vmm, "PUT", "/logger", #"{"log_path": "/nonexistent/fc.log"}"#).faultMessage?
                .hasPrefix("log_path /nonexistent/fc.log:") == true)
        #expect(await send(vmm, "PUT", "/logger", #"{"log_path": "\#(path)", "level": "Info", "show_level": true}"#).status == 204)
        #expect(await send(vmm, "PUT", "/logger", #"{"log_path": "\#(path)"}"#).faultMessage?.hasPrefix("the logger is already set") == true)
        _ = await send(vmm, "PUT", "/boot-source", bootSource)
        _ = await send(vmm, "PUT", "/machine-config", #"{"vcpu_count": 0, "mem_size_mib": 128}"#)
        #expect(await send(vmm, "PUT", "/actions", start).status == 204)
        let lines = fileLines(path)
        #expect(lines.count == 4, "\(lines)")
        #expect(lines.allSatisfy { $0.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[logged:api:(INFO|WARN)\] .+/) != nil }, "\(lines)")
        #expect(lines[0].hasSuffix("[logged:api:INFO] Swiftlet 1.16.1-compatible API, instance logged: logging at Info"))
        #expect(lines[1].contains("[logged:api:WARN] PUT /logger refused (400): the logger is already set"))
        #expect(lines[2].contains("[logged:api:WARN] PUT /machine-config refused (400): vcpu_count"))
        #expect(lines[3].contains("[logged:api:INFO] InstanceStart: the microVM runs (1 vCPUs, 128 MiB, 0 drives, 0 network interfaces)"))
    }

    @Test func snapshotCreateNeedsAPausedMicroVMAndTakesFullOrDiff() async throws {
        let recorder = Recorder()
        let vmm = FirecrackerVMM(starter: recorder.starter)
        let create = #"{"snapshot_path": "/s/vm.snap", "mem_file_path": "/s/vm.mem"}"#
        #expect(await send(vmm, "PUT", "/snapshot/create", create).faultMessage == "the microVM is not started: there is nothing to snapshot")
        #expect(await send(vmm, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}"#).status == 204)
        #expect(await send(vmm, "PUT", "/boot-source", #"{"kernel_image_path": "/k"}"#).status == 204)
        #expect(await send(vmm, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(await send(vmm, "PUT", "/snapshot/create", create).faultMessage?.hasPrefix("the microVM is running: pause it first") == true)
        #expect(await send(vmm, "PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        #expect(await send(vmm, "PUT", "/snapshot/create", #"{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Half"}"#)
            .faultMessage == "snapshot_type `Half` is not one of `Full`, `Diff`")
        #expect(await send(vmm, "PUT", "/snapshot/create", #"{"snapshot_path": "/s", "mem_file_path": "/m", "compress": true}"#)
            .faultMessage?.contains("unknown field `compress`") == true)
        #expect(await send(vmm, "PUT", "/snapshot/create", create).status == 204)
        #expect(await send(vmm, "PUT", "/snapshot/create", #"{"snapshot_path": "/s/d.snap", "mem_file_path": "/s/d.mem", "snapshot_type": "Diff"}"#).status == 204)
        #expect(recorder.machine.snapshots.withLock { $0 } == [SnapshotPaths(state: "/s/vm.snap", memory: "/s/vm.mem"), SnapshotPaths(state: "/s/d.snap", memory: "/s/d.mem")])
        #expect(recorder.machine.snapshotKinds.withLock { $0 } == [.full, .diff])
        // The machine was built to track dirty pages, and GET /vm/config says so.
        #expect(recorder.configurations.withLock { $0.map(\.trackDirtyPages) } == [true])
        let config = String(decoding: await send(vmm, "GET", "/vm/config").body, as: UTF8.self)
        #expect(config.contains(#""track_dirty_pages":true"#), "\(config)")
        #expect(await send(vmm, "PUT", "/snapshot/nothing", "{}").faultMessage?.contains("the snapshot endpoints are /snapshot/create and /snapshot/load") == true)
    }

    @Test func snapshotLoadRefusesWhatItCannotDoBeforeReadingAnything() async {
        let vmm = FirecrackerVMM(starter: Recorder().starter)
        #expect(await send(vmm, "PUT", "/snapshot/load", #"{"snapshot_path": "/s"}"#).faultMessage == "PUT /snapshot/load is not available in this front end")
        let restoring = FirecrackerVMM(starter: Recorder().starter) { _, _, _ async throws(SwiftletError) -> any RunningMachine in
            throw SwiftletError(.invalidConfiguration, "not in this test")
        }
        #expect(await send(restoring, "PUT", "/snapshot/load", #"{"snapshot_path": "/s"}"#).faultMessage?.hasPrefix("PUT /snapshot/load needs the guest memory") == true)
        #expect(await send(restoring, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#)
            .faultMessage == "PUT /snapshot/load takes `mem_backend` or `mem_file_path`, not both")
        #expect(await send(restoring, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#)
            .faultMessage?.contains("it has no userfaultfd backend") == true)
        #expect(await send(restoring, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m", "x": 1}}"#)
            .faultMessage?.contains("unknown field `x`") == true)
        #expect(await send(restoring, "PUT", "/snapshot/load", #"{"snapshot_path": "/nonexistent.snap", "mem_file_path": "/m"}"#)
            .faultMessage?.hasPrefix("PUT /snapshot/load: cannot open the snapshot's state file /nonexistent.snap") == true)
        #expect(await send(restoring, "PUT", "/boot-source", #"{"kernel_image_path": "/k"}"#).status == 204)
        #expect(await send(restoring, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
            .faultMessage == "PUT /snapshot/load is not allowed after configuring boot-specific resources: the snapshot brings its own machine")
    }

    @Test func unimplementedEndpointsAnswer400NamingThem() async {
        let vmm = FirecrackerVMM(starter: Recorder().starter)
        for (method, path) in [("GET", "/mmds"), ("PUT", "/mmds/config"),
                               ("PUT", "/cpu-config"), ("PUT", "/hotplug/memory"), ("PUT", "/pmem/p0"), ("PUT", "/serial"),
                               ("PATCH", "/balloon/hinting/start"), ("GET", "/balloon/hinting/status")] {
            let response = await send(vmm, method, path, "{}")
            #expect(response.status == 400)
            #expect(response.faultMessage?.hasPrefix(path + " is not supported") == true, "\(path): \(response.faultMessage ?? "")")
        }
        #expect(await send(vmm, "GET", "/no-such-thing").faultMessage?.contains("unknown resource /no-such-thing") == true)
        #expect(await send(vmm, "DELETE", "/machine-config").faultMessage == "invalid request method and/or path: DELETE /machine-config")
    }

    @Test func configFileIsAppliedWithTheSameChecks() async throws {
        let recorder = Recorder()
        let vmm = FirecrackerVMM(starter: recorder.starter)
        let file = #"""
            {"boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
             "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}],
             "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
             "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap3"}]}
            """#
        try await vmm.configure(fromFile: Array(file.utf8))
        #expect(await send(vmm, "PUT", "/actions", start).status == 204)
        let built = try #require(recorder.configurations.withLock { $0.first })
        #expect(built.cpus == 2 && built.memorySize == 256 << 20 && built.disks.map(\.path) == ["/r"] && built.networks.map(\.tap) == ["tap3"])
        let vmConfig = await send(vmm, "GET", "/vm/config")
        let text = String(decoding: vmConfig.body, as: UTF8.self)
        #expect(text.contains(#""drives":[{"drive_id":"rootfs","is_read_only":false,"is_root_device":true,"path_on_host":"/r"}]"#), "\(text)")

        let refused = FirecrackerVMM(starter: Recorder().starter)
        await #expect(throws: APIFault(#"`mmds-config`: /mmds is not supported: Swiftlet has no microVM metadata service (MMDS); pass data to the guest over vsock or the kernel command line"#)) {
            try await refused.configure(fromFile: Array(#"{"mmds-config": {"network_interfaces": []}}"#.utf8))
        }
        await #expect(throws: APIFault("drives[0]: missing field `is_root_device`")) {
            try await refused.configure(fromFile: Array(#"{"drives": [{"drive_id": "x", "path_on_host": "/x", "is_read_only": false}]}"#.utf8))
        }
    }
}
