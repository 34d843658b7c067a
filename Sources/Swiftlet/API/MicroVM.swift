import SwiftletConfinement
import SwiftletDevices
import SwiftletHost
import Synchronization

/// A microVM: configure, `start()`, then `wait()` for the guest to end or `stop()` it.
///
/// ```swift
/// let vm = MicroVM(MachineConfiguration(kernelPath: "bzImage", initrdPath: "initramfs.cpio"))
/// try await vm.start()
/// let exit = await vm.wait()
/// ```
public final class MicroVM: Sendable {
    public let configuration: MachineConfiguration
    private let machine = Mutex<Machine?>(nil)
    /// When this object was made, on CLOCK_MONOTONIC.
    public let createdAt: UInt64

    public init(_ configuration: MachineConfiguration) {
        self.configuration = configuration
        createdAt = monotonicNanoseconds()
    }

    /// Builds the machine (KVM VM, memory, kernel, vCPUs, devices) and starts its vCPUs.
    public func start() async throws(SwiftletError) {
        let built = try Machine(configuration)
        try machine.withLock { (current) throws(SwiftletError) in
            guard current == nil else { throw SwiftletError(.invalidConfiguration, "this MicroVM was already started") }
            current = built
        }
        do { try built.start() } catch {
            built.finish(.failed(error.description))
            built.tearDown()
            throw error
        }
    }

    /// Waits for the guest to end (reset, power-off, triple fault, failure or `stop()`), then releases its threads.
    public func wait() async -> MachineExit {
        guard let built = machine.withLock({ $0 }) else { return .failed("the VM was never started") }
        let exit = await built.wait()
        built.tearDown()
        return exit
    }

    /// Stops the guest from the host and waits for it to end.
    @discardableResult
    public func stop() async -> MachineExit {
        guard let built = machine.withLock({ $0 }) else { return .stopped }
        built.finish(.stopped)
        return await wait()
    }

    /// Pauses the guest: every vCPU leaves KVM_RUN and parks, and the guest's time stops (its kvmclock and TSCs are
    /// saved and set back on `resume()`, so the guest does not see the pause as time passing). Then the device thread
    /// parks once the requests in flight are done, and takes nothing new until `resume()`. Returns once all have
    /// parked. Pausing a paused VM does nothing.
    public func pause() throws(SwiftletError) {
        guard let built = machine.withLock({ $0 }) else { throw SwiftletError(.invalidConfiguration, "this MicroVM is not started") }
        try built.pause()
    }

    /// Lets a paused guest run again. Resuming a running VM does nothing.
    public func resume() throws(SwiftletError) {
        guard let built = machine.withLock({ $0 }) else { throw SwiftletError(.invalidConfiguration, "this MicroVM is not started") }
        try built.resume()
    }

    /// Whether `pause()` holds the guest.
    public var isPaused: Bool { machine.withLock { $0 }?.isPaused ?? false }

    /// Saves the paused VM: the state file (vCPUs, interrupt controllers, PIT, kvmclock, every device's transport and
    /// state, the configuration) and the memory file (guest RAM, sparse), both created or replaced. The VM stays
    /// paused; `resume()` lets it go on, or `stop()` ends it. Refused when the VM is not paused. A `.diff` snapshot
    /// (with `trackDirtyPages`) writes only the pages written since the last snapshot or the restore (`SnapshotKind`).
    @discardableResult
    public func snapshot(to paths: SnapshotPaths, kind: SnapshotKind = .full) throws(SwiftletError) -> SnapshotStatistics {
        guard let built = machine.withLock({ $0 }) else { throw SwiftletError(.invalidConfiguration, "this MicroVM is not started: there is nothing to snapshot") }
        return try built.snapshot(to: paths, kind: kind)
    }

    /// A VM restored from `snapshot`, running (or paused, with `resume: false`) where the snapshot was taken. Its
    /// memory is the memory file mapped copy-on-write: pages load as the guest touches them, its writes stay its own,
    /// and every clone of one snapshot shares the pages none has written. `overrides` changes the saved
    /// configuration's host side before the devices open it: disk images (a clone's own copy), TAPs, the vsock socket
    /// path and CID, a NIC's MAC, the console, seccomp, the jail hook. What the guest's machine is made of (vCPUs,
    /// memory, devices) stays the snapshot's; a change to it is refused. On any error nothing is left running.
    public static func restore(from snapshot: MicroVMSnapshot, resume: Bool = true,
                               overrides: (inout MachineConfiguration) -> Void = { _ in }) async throws(SwiftletError) -> MicroVM {
        var configuration = snapshot.configuration
        configuration.console = .none
        overrides(&configuration)
        if let why = SnapshotConfiguration.incompatibility(saved: snapshot.configuration, changed: configuration) {
            throw SwiftletError(.invalidConfiguration, "cannot restore \(snapshot.paths.state) with these overrides: \(why)")
        }
        if snapshot.kind == .diff, try snapshot.memoryIsUnmergedDiff() {
            throw SwiftletError(.invalidConfiguration, "\(snapshot.paths.state) is a diff snapshot, and \(snapshot.paths.memory) holds only its own pages (those written since the snapshot before it): merge them onto that snapshot's memory file first (swiftlet snapshot-merge, MicroVMSnapshot.mergeDiff), then restore from the merged file")
        }
        let vm = MicroVM(configuration)
        let built = try Machine(configuration, restoring: snapshot)
        vm.machine.withLock { $0 = built }
        do { try built.start(paused: !resume) } catch {
            built.finish(.failed(error.description))
            built.tearDown()
            throw error
        }
        return vm
    }

    /// Loads `threadClass`'s seccomp filter (`MachineConfiguration.seccomp`) on the calling thread: for threads the
    /// embedding code runs for this VM (the CLI's control socket). Needs a started VM; does nothing with `.off`.
    public func confineCurrentThread(_ threadClass: ThreadClass) throws(SwiftletError) {
        guard let built = machine.withLock({ $0 }) else {
            throw SwiftletError(.invalidConfiguration, "this MicroVM is not started, and has no seccomp filters yet")
        }
        try built.confinement.enter(threadClass)
    }

    /// Per-device counters: notifications from the driver, interrupts to it, requests completed.
    public func statistics() -> [DeviceStatistics] {
        guard let built = machine.withLock({ $0 }) else { return [] }
        return built.virtioDevices.map { slot in
            let counters = slot.device.counters
            return DeviceStatistics(name: slot.name, notifications: counters.notifications,
                                    interrupts: slot.transport.interrupt.count, requests: counters.requests,
                                    guestErrors: counters.guestErrors + slot.transport.ignoredWrites,
                                    engine: (slot.device as? Block)?.engine)
        }
    }

    /// Asks the guest for a memory balloon of `bytes` (rounded down to 4 KiB pages): inflating it gives that much
    /// of the guest's memory back to the host, deflating gives it back to the guest. The guest gets there at its own
    /// pace; `balloonStatus()` says how far it got. Needs `MachineConfiguration.balloon` and a started VM.
    public func setBalloonTarget(bytes: UInt64) throws(SwiftletError) {
        guard let balloon = machine.withLock({ $0?.balloon }) else {
            throw SwiftletError(.invalidConfiguration, "this VM has no balloon (set MachineConfiguration.balloon, or --balloon) or is not started")
        }
        try balloon.setTarget(bytes: bytes)
    }

    /// Presses Ctrl+Alt+Del on the VM's i8042 keyboard (Firecracker's `SendCtrlAltDel`): a guest kernel with the
    /// i8042 and AT keyboard drivers and a VT treats it as its Ctrl-Alt-Del (systemd reboots; init's `ctrlaltdel`
    /// action). A guest without them never reads it; a second press before the guest read the first is refused.
    public func sendCtrlAltDel() throws(SwiftletError) {
        guard let i8042 = machine.withLock({ $0?.i8042 }) else {
            throw SwiftletError(.invalidConfiguration, "the VM is not started")
        }
        try i8042.pressCtrlAltDel()
    }

    /// Changes how often a running VM's balloon asks the guest for memory statistics (its configuration's
    /// `statisticsInterval` must have been above 0: that offered the statistics queue).
    public func setBalloonStatisticsInterval(seconds: UInt32) throws(SwiftletError) {
        guard let balloon = machine.withLock({ $0?.balloon }) else {
            throw SwiftletError(.invalidConfiguration, "this VM has no balloon (set MachineConfiguration.balloon, or --balloon) or is not started")
        }
        try balloon.setStatisticsInterval(seconds: seconds)
    }

    /// Attaches the image at `path` to disk `index` (in `MachineConfiguration.disks` order) of a running VM, in place
    /// of the one it has, opened the same way (read-only or not); the guest is told the capacity changed. Requests
    /// in flight finish on the old image. On an error the old image stays attached.
    public func replaceDiskImage(index: Int, path: String) throws(SwiftletError) {
        guard let slots = machine.withLock({ $0?.virtioDevices }) else {
            throw SwiftletError(.invalidConfiguration, "the VM is not started: change MachineConfiguration.disks instead")
        }
        guard let block = slots.first(where: { $0.name == "blk\(index)" })?.device as? Block else {
            throw SwiftletError(.invalidConfiguration, "this VM has no disk \(index) (it has \(slots.filter { $0.device is Block }.count))")
        }
        try block.replaceImage(path: path)
    }

    /// The balloon's target and actual size, the guest's latest memory statistics and what the device released;
    /// nil without a balloon or before `start()`.
    public func balloonStatus() -> BalloonStatus? {
        machine.withLock { $0?.balloon }?.status()
    }

    /// What the guest's serial console wrote, and what was dropped past a console file's cap; nil before `start()`.
    public var consoleStatistics: ConsoleStatistics? { machine.withLock { $0?.console.statistics } }

    /// The device thread's rounds, those run under SCHED_BATCH, and its switches to it; nil without virtio devices.
    public var deviceThreadStatistics: EventLoop.Statistics? { machine.withLock { $0?.eventLoop?.statistics } }

    /// Why the device thread runs under SCHED_OTHER although `MachineConfiguration.deviceScheduling` asked for
    /// `.batch` or `.adaptive`; nil when it got what was asked (or the VM has no virtio devices, or the thread has not started).
    public var deviceSchedulingError: SwiftletError? {
        guard let error = machine.withLock({ $0?.deviceSchedulingError.withLock { $0 } }) else { return nil }
        return SwiftletError(.systemCall, "the device thread could not be set to SCHED_BATCH; it runs under SCHED_OTHER, and devices preempt vCPUs that share their CPU",
                             cause: error)
    }

    /// What set-up could not give as configured and did otherwise (a disk asked for io_uring and got the
    /// synchronous engine): one line each. Empty before `start()`.
    public var setupWarnings: [String] { machine.withLock { $0?.setupWarnings ?? [] } }

    /// CLOCK_MONOTONIC nanoseconds of the first KVM_RUN of vCPU 0.
    public var firstRunAt: UInt64? { machine.withLock { $0?.firstRunAt } }

    /// CLOCK_MONOTONIC nanoseconds when the guest wrote the boot-timer port (its init reached userspace).
    public var userspaceReachedAt: UInt64? { machine.withLock { $0?.bootTimer.userspaceReachedAt } }
}

/// What the serial console carried: bytes written to its output, and bytes dropped past a console file's cap.
public struct ConsoleStatistics: Sendable, Equatable {
    public var written: UInt64
    public var dropped: UInt64
}

/// What a device counted while the VM ran.
public struct DeviceStatistics: Sendable, Equatable {
    public var name: String
    /// Driver-to-device queue notifications (what ioeventfd delivered).
    public var notifications: UInt64
    /// Interrupts the device raised.
    public var interrupts: UInt64
    /// Requests completed (frames, for a NIC).
    public var requests: UInt64
    /// Malformed requests, chains and register writes the guest sent.
    public var guestErrors: UInt64
    /// A disk's engine (the one it got: `sync` where io_uring was refused); nil for other devices.
    public var engine: DiskEngine?

    public init(name: String, notifications: UInt64, interrupts: UInt64, requests: UInt64, guestErrors: UInt64,
                engine: DiskEngine? = nil) {
        self.name = name
        self.engine = engine
        self.notifications = notifications
        self.interrupts = interrupts
        self.requests = requests
        self.guestErrors = guestErrors
    }
}
