import Glibc
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import SwiftletSnapshot
import SwiftletVirtio
import SystemPackage

/// A machine's snapshot: the state file's records, written by `Machine.snapshot(to:)` and set back on a new
/// machine by its restore (docs/SNAPSHOT.md, "Machine").
///
///     arch  "x86_64"
///     conf  the configuration (SnapshotConfiguration)
///     vm    the VM: interrupt controllers, PIT, kvmclock (X86VMState)
///     vcpu  one per vCPU, in order (X86VcpuState)
///     serl  the UART (Serial)
///     dev   one per virtio device, in slot order: name, type, its transport (TransportState), its own state
///     dirt  a diff snapshot's: the page size, and one bitmap per memory region of the pages its memory file holds
enum MachineState {
    static func restoreProcessor(_ snapshot: MicroVMSnapshot, vm: SwiftletKVM.VirtualMachine, vcpus: [Vcpu],
                                 supported: CPUIDTable, tscDeadlineTimer: Bool) throws(SwiftletError) {
        let body = snapshot.body
        func invalid(_ error: SnapshotError) -> SwiftletError {
            SwiftletError(.invalidConfiguration, "cannot restore from \(snapshot.paths.state): \(error.description)")
        }
        let states: [X86VcpuState]
        let vmState: X86VMState
        let time: GuestTime
        do throws(SnapshotError) {
            let records = try body.all("vcpu", maximum: MachineConfiguration.maximumCPUs)
            guard records.count == vcpus.count else {
                throw .malformed("it holds \(records.count) vCPUs, and its machine \(vcpus.count)")
            }
            var decoded: [X86VcpuState] = []
            for record in records { decoded.append(try X86VcpuState(from: record)) }
            states = decoded
            vmState = try X86VMState(from: body.nested("vm  ", context: "the VM's state"))
            time = try GuestTime(from: body.nested("time", context: "the guest's time"), vcpus: vcpus.count)
        } catch {
            throw invalid(error)
        }
        // What this host offers: the CPUID a boot here would give vCPU 0 (KVM's supported one, as Swiftlet adjusts it:
        // the hypervisor bit, the TSC deadline timer where KVM emulates it), and what KVM reports back once vCPU 0
        // has it (replaced below by the snapshot's).
        let booted = X86CPUID.adjusted(supported.entries, vcpu: 0, cpus: vcpus.count, tscDeadlineTimer: tscDeadlineTimer)
        try vcpus[0].setCPUID(CPUIDTable.with(booted))
        let offered = X86CPUID.offered(supported: booted, readBack: try vcpus[0].savedCPUID())
        let missing = X86CPUID.missingFeatures(saved: states[0].cpuid, supported: offered)
        guard missing.isEmpty else {
            throw SwiftletError(.kvmUnsupported, "the snapshot's vCPUs use CPU features this host's KVM does not offer (CPUID \(missing.joined(separator: ", "))): restore it on a host with the same CPU, or take the snapshot on the older one")
        }
        try vm.restoreX86State(vmState)
        for (vcpu, state) in zip(vcpus, states) {
            do { try vcpu.restoreX86State(state) } catch {
                throw SwiftletError(error.code, "cannot restore vCPU \(vcpu.id): \(error.message)", cause: error.cause)
            }
        }
        // The clock and TSCs again, each TSC from the clock just read (GuestTime): setting every vCPU's state took
        // long enough since the clock was set to show the guest's clocksource watchdog a skew.
        try time.set(vm: vm, vcpus: vcpus)
    }

    static func restoreDevices(_ snapshot: MicroVMSnapshot, serial: Serial, slots: [VirtioSlot]) throws(SwiftletError) {
        let body = snapshot.body
        func invalid(_ what: String, _ error: SnapshotError) -> SwiftletError {
            SwiftletError(.invalidConfiguration, "cannot restore \(what) from \(snapshot.paths.state): \(error.description)")
        }
        do { try serial.restoreState(from: body.nested("serl", context: "the serial port's state")) } catch {
            throw invalid("the serial port", error)
        }
        let records: [SnapshotDecoder]
        do { records = try body.all("dev ", maximum: SnapshotConfiguration.maximumDevices) } catch { throw invalid("the devices", error) }
        guard records.count == slots.count else {
            throw SwiftletError(.invalidConfiguration, "cannot restore from \(snapshot.paths.state): it holds \(records.count) devices, and its machine \(slots.count)")
        }
        for (slot, record) in zip(slots, records) {
            let transport: TransportState
            do throws(SnapshotError) {
                let name = try record.string("name", maximumBytes: 32)
                let type = try record.integer("type")
                guard name == slot.name, type == UInt64(slot.device.deviceType) else {
                    throw .malformed("device \(slot.name) is \(name) (type \(type)) in the snapshot")
                }
                transport = try TransportState(from: record.nested("trsp", context: "\(name)'s transport"))
                try slot.device.restoreState(from: record.nested("stat", context: "\(name)'s state"))
            } catch {
                throw invalid(slot.name, error)
            }
            try slot.transport.restore(transport)
        }
    }
}

extension Machine {
    /// Writes the paused machine's snapshot: the state file at `paths.state` and guest RAM at `paths.memory` (both
    /// created or replaced). Refused unless `pause()` holds the machine: a running guest would change under the copy.
    /// A `.diff` snapshot's memory file holds only the pages written since the last snapshot (or the restore);
    /// with `trackDirtyPages`, every snapshot starts the count again.
    func snapshot(to paths: SnapshotPaths, kind: SnapshotKind = .full) throws(SwiftletError) -> SnapshotStatistics {
        try pauseLock.withLock { (paused) throws(SwiftletError) -> SnapshotStatistics in
            guard let time = paused else {
                throw SwiftletError(.invalidConfiguration, "the VM is not paused: pause it first (MicroVM.pause(), PATCH /vm {\"state\": \"Paused\"}), so that nothing changes while it is saved")
            }
            if kind == .diff {
                guard configuration.trackDirtyPages else {
                    throw SwiftletError(.invalidConfiguration, "a diff snapshot needs dirty-page tracking, which this VM was started without: start it with --track-dirty-pages (Firecracker: machine-config track_dirty_pages), or take a full snapshot")
                }
                guard dirtyPagesHaveBase.load(ordering: .acquiring) else {
                    throw SwiftletError(.invalidConfiguration, "a diff snapshot holds the pages written since the last snapshot, and this VM has none to build on (it booted, and took no full snapshot since, or the last snapshot failed): take a full snapshot first")
                }
            }
            // The pages written since the last snapshot: the guest's (KVM's log) and the host's. Taking them clears
            // both, so until this snapshot is written whole there is no base for the next diff.
            var dirty: [[UInt64]]?
            if configuration.trackDirtyPages {
                dirtyPagesHaveBase.store(false, ordering: .releasing)
                let guest = try vm.takeDirtyLog(memory)
                let host = memory.takeHostWrites()
                dirty = zip(guest, host).map { guestWords, hostWords in
                    guestWords.indices.map { guestWords[$0] | (hostWords.indices.contains($0) ? hostWords[$0] : 0) }
                }
            }
            var body = SnapshotEncoder()
            body.record("arch", string: "x86_64")
            body.record("conf") { SnapshotConfiguration.save(configuration, into: &$0) }
            var vmState = try vm.saveX86State()
            vmState.clock.clock = time.clock // the guest's time when it was paused
            body.record("vm  ") { vmState.save(into: &$0) }
            for vcpu in vcpus {
                var state: X86VcpuState
                do throws(SwiftletError) { state = try vcpu.saveX86State(msrIndices: msrIndices) } catch {
                    throw SwiftletError(error.code, "cannot save vCPU \(vcpu.id): \(error.message)", cause: error.cause)
                }
                // Its TSC as the pause left it, with the clock above: the guest's time stood still since.
                for index in state.msrs.indices where state.msrs[index].index == Vcpu.tscMSR {
                    state.msrs[index].data = time.counters[vcpu.id].value
                }
                body.record("vcpu") { state.save(into: &$0) }
            }
            body.record("time") { time.save(into: &$0) }
            body.record("serl") { serial.saveState(into: &$0) }
            for slot in virtioDevices {
                let positions = slot.device.queuePositions()
                let transport = slot.transport.saveState(positions: positions)
                body.record("dev ") { record in
                    record.record("name", string: slot.name)
                    record.record("type", integer: UInt64(slot.device.deviceType))
                    record.record("trsp") { transport.save(into: &$0) }
                    record.record("stat") { slot.device.saveState(into: &$0) }
                }
            }
            if kind == .diff, let dirty {
                body.record("dirt") { record in
                    record.record("page", integer: hostPageSize)
                    for words in dirty { record.record("regn") { $0.record("bits", array: words) } }
                }
            }
            let file = SnapshotFile.bytes(body: body)
            let memoryStatistics = try writeMemory(to: paths.memory, dirty: kind == .diff ? dirty : nil)
            try Self.write(file, to: paths.state)
            if configuration.trackDirtyPages { dirtyPagesHaveBase.store(true, ordering: .releasing) }
            return SnapshotStatistics(stateBytes: file.count, memoryBytes: memoryStatistics.totalBytes,
                                      memoryWrittenBytes: memoryStatistics.writtenBytes)
        }
    }

    private func writeMemory(to path: String, dirty: [[UInt64]]?) throws(SwiftletError) -> GuestMemory.SaveStatistics {
        if let memoryFile {
            var info = stat()
            if stat(path, &info) == 0 && UInt64(info.st_dev) == memoryFile.device && UInt64(info.st_ino) == memoryFile.inode {
                throw SwiftletError(.invalidConfiguration, "\(path) is the memory file this VM was restored from and still maps: write the new snapshot's memory to another file")
            }
        }
        let file: OwnedFileDescriptor
        do { file = try OwnedFileDescriptor(opening: path, flags: O_RDWR | O_CREAT, mode: 0o600) } catch {
            throw SwiftletError(.io, "cannot create the memory file \(path)", cause: error)
        }
        if let dirty { return try memory.saveDirty(to: file.rawValue, dirty: dirty) }
        return try memory.save(to: file.rawValue)
    }

    private static func write(_ bytes: [UInt8], to path: String) throws(SwiftletError) {
        let file: OwnedFileDescriptor
        do { file = try OwnedFileDescriptor(opening: path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600) } catch {
            throw SwiftletError(.io, "cannot create the state file \(path)", cause: error)
        }
        var failure: Errno?
        bytes.withUnsafeBytes { buffer in
            do throws(Errno) { try file.writeAll(buffer) } catch { failure = error }
        }
        if let failure { throw SwiftletError(.io, "cannot write the state file \(path)", cause: failure) }
    }
}
