import CSwiftlet
import Glibc
import Synchronization
import SwiftletBoot
import SwiftletConfinement
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import SwiftletSnapshot
import SwiftletVirtio
import SystemPackage

/// The wired x86_64 machine: KVM VM, guest memory, loaded kernel, vCPUs, buses and legacy devices.
/// One thread per vCPU runs KVM_RUN and serves only synchronous exits (port I/O and MMIO to devices).
final class Machine: Sendable {
    let configuration: MachineConfiguration
    let kvm: KVM
    let vm: SwiftletKVM.VirtualMachine
    let memory: GuestMemory
    let vcpus: [Vcpu]
    let portBus: Bus
    let mmioBus: Bus
    let serial: Serial
    let serialInterrupt: EventFd
    /// The i8042: the reset line, and the keyboard behind `MicroVM.sendCtrlAltDel`, whose IRQ 1 is this eventfd.
    let i8042: I8042
    let keyboardInterrupt: EventFd
    /// The ACPI Generic Event Device's interrupt (with ACPI): raised when a restored machine starts, after it was
    /// given a new VM generation ID, so that the guest reseeds its RNG.
    let acpiEvent: EventFd?
    let bootTimer: BootTimer
    let console: ConsoleSink
    /// The kernel loaded at boot; nil for a machine restored from a snapshot.
    let kernel: LoadedKernel?
    /// The MSRs KVM saves for a snapshot (KVM_GET_MSR_INDEX_LIST, read at set-up: the /dev/kvm ioctl is not one a
    /// confined thread may make).
    let msrIndices: [UInt32]
    /// The memory file a restored machine's guest RAM is mapped from (a snapshot must not overwrite it).
    let memoryFile: (device: UInt64, inode: UInt64)?
    let virtioDevices: [VirtioSlot]
    let balloon: Balloon?
    let eventLoop: EventLoop?
    /// Set when the device thread could not take `configuration.deviceScheduling` (it runs under SCHED_OTHER).
    let deviceSchedulingError = Mutex<Errno?>(nil)
    /// What set-up could not give as configured and did otherwise (a disk's io_uring engine where io_uring is
    /// refused): one line each, for the user.
    var setupWarnings: [String] {
        virtioDevices.compactMap { ($0.device as? Block)?.engineProblem }
    }
    /// The seccomp filters, compiled during set-up (`configuration.seccomp`).
    let confinement: Confinement
    /// Signalled once the machine has ended. Waiters poll it from a thread of their own (`wait()`): the threads that
    /// end a machine (vCPUs, the console) run narrow seccomp filters and must not wake the Swift concurrency pool,
    /// which may create a thread, and that thread would inherit the narrow filter.
    private let ended: EventFd

    private struct RunState {
        var exit: MachineExit?
        var threads: [HostThread] = []
        var input: ConsoleInput?
        var firstRunAt: UInt64?
        var started = false
    }
    private let state = Mutex(RunState())
    private let finished = Atomic<Bool>(false)
    /// Where vCPUs park while paused, and the guest's time saved by `pause()` (nil while running).
    private let pauseGate = ParkingGate()
    let pauseLock = Mutex<GuestTime?>(nil)
    /// With `trackDirtyPages`: whether the dirty pages have a base, the memory of a snapshot this machine took or was
    /// restored from, that a diff snapshot's pages go on top of. A booted machine has none until its first full one.
    let dirtyPagesHaveBase: Atomic<Bool>
    private let teardown = Mutex(false)


    init(_ configuration: MachineConfiguration, restoring snapshot: MicroVMSnapshot? = nil) throws(SwiftletError) {
        if let host = GuestArchitecture.host, host != .x86_64 {
            throw SwiftletError(.kvmUnsupported, "this host is \(host.rawValue): Swiftlet's \(host.rawValue) board (device tree, VGIC, Image loader, vCPU start-up) is built but not yet wired into a running machine; `swiftlet describe --arch \(host.rawValue)` shows what it would boot")
        }
        try Machine.validate(configuration)
        self.configuration = configuration
        dirtyPagesHaveBase = Atomic(snapshot != nil)
        // One description of the machine; guest RAM, the command line's virtio-mmio entries, the e820 map, the MP
        // table and the device slots below all come from it.
        let description = try configuration.machineDescription(for: .x86_64)
        // What the machine opens by name on the host comes first: the kernel, initrd, console file, disk images and
        // TAPs. Then `afterOpeningHostFiles` (where a jail drops privileges), and only then /dev/kvm and the sockets.
        let kernelSource = snapshot == nil ? try FileBootSource(path: configuration.kernelPath, what: "kernel") : nil
        let initrdSource = snapshot == nil ? try configuration.initrdPath.map { path throws(SwiftletError) in try FileBootSource(path: path, what: "initrd") } : nil
        let restoredMemory: OwnedFileDescriptor?
        if let snapshot {
            do { restoredMemory = try OwnedFileDescriptor(opening: snapshot.paths.memory, flags: O_RDONLY) } catch {
                throw SwiftletError(.invalidConfiguration, "cannot open the snapshot's memory file \(snapshot.paths.memory)", cause: error)
            }
        } else {
            restoredMemory = nil
        }
        console = try ConsoleSink(configuration: configuration.console, fileLimit: configuration.consoleFileMaximumSize)
        var devices: [(name: String, device: any LoopDevice)] = []
        for (index, disk) in configuration.disks.enumerated() {
            devices.append(("blk\(index)", try Block(disk)))
        }
        for (index, network) in configuration.networks.enumerated() {
            devices.append(("net\(index)", try Net(network, endpoint: try Tap(name: network.tap))))
        }
        try configuration.afterOpeningHostFiles?()
        // Guest RAM next, so that loading the kernel and initrd into it (file reads, page faults) overlaps with
        // KVM's own set-up of the VM, irqchip, PIT and vCPUs on this thread.
        let layout = description.memory.map { ($0.start, $0.size) }
        if let restoredMemory {
            // MAP_PRIVATE from the file: pages load when the guest touches them, its writes stay in this process.
            do { memory = try GuestMemory(layout: layout, restoringFrom: restoredMemory.rawValue, tracksDirtyPages: configuration.trackDirtyPages) } catch {
                throw SwiftletError(error.code, "the snapshot's memory file \(snapshot!.paths.memory): \(error.message)")
            }
            var info = stat()
            fstat(restoredMemory.rawValue, &info)
            memoryFile = (UInt64(info.st_dev), UInt64(info.st_ino))
        } else {
            memory = try GuestMemory(layout: layout, tracksDirtyPages: configuration.trackDirtyPages)
            memoryFile = nil
        }
        let memory = self.memory
        let loading: BackgroundWork<(kernel: LoadedKernel, boot: X86BootState)>?
        if let kernelSource {
            loading = try BackgroundWork(name: "boot-loader") { () throws(SwiftletError) in
                try Machine.loadGuest(configuration, kernel: kernelSource, initrd: initrdSource, description: description, into: memory)
            }
        } else {
            loading = nil
        }
        // Whatever fails below, the loader thread is joined before the error leaves.
        func collectLoader() -> (kernel: LoadedKernel, boot: X86BootState)? { try? loading?.result() }
        do throws(SwiftletError) {
            kvm = try KVM(path: configuration.kvmPath)
            try kvm.requireCapabilities()
            let maxVcpus = kvm.check(KVM_CAP_MAX_VCPUS)
            if maxVcpus > 0 && configuration.cpus > maxVcpus {
                throw SwiftletError(.invalidConfiguration, "this host's KVM allows at most \(maxVcpus) vCPUs; --cpus \(configuration.cpus) is too many")
            }
            vm = try kvm.createVM()
            try vm.setSystemPages(tss: X86Layout.kvmTss, identityMap: X86Layout.kvmIdentityMap)
            try vm.createInterruptControllers()
            try vm.map(memory, logDirtyPages: configuration.trackDirtyPages)
        } catch {
            _ = collectLoader()
            throw error
        }
        let cpuid: CPUIDTable
        var vcpus: [Vcpu] = []
        do throws(SwiftletError) {
            cpuid = try kvm.supportedCPUID()
            msrIndices = try kvm.msrIndexList()
            for id in 0..<configuration.cpus { vcpus.append(try vm.createVcpu(id: id)) }
        } catch {
            _ = collectLoader()
            throw error
        }
        let tscDeadlineTimer = kvm.check(KVM_CAP_TSC_DEADLINE_TIMER) != 0
        if let loading {
            let (kernel, boot) = try loading.result()
            self.kernel = kernel
            for vcpu in vcpus {
                try X86Vcpu.configure(vcpu, cpus: configuration.cpus, cpuid: cpuid, tscDeadlineTimer: tscDeadlineTimer, boot: boot)
            }
        } else {
            kernel = nil
            try MachineState.restoreProcessor(snapshot!, vm: vm, vcpus: vcpus, supported: cpuid, tscDeadlineTimer: tscDeadlineTimer)
        }
        self.vcpus = vcpus

        confinement = try Confinement(mode: configuration.seccomp)
        do { ended = try EventFd() } catch {
            throw SwiftletError(.systemCall, "cannot create the machine's exit eventfd", cause: error)
        }
        do { serialInterrupt = try EventFd() } catch {
            throw SwiftletError(.systemCall, "cannot create the serial interrupt eventfd", cause: error)
        }
        try vm.registerIrqfd(serialInterrupt, gsi: X86Layout.serialIRQ)
        do { keyboardInterrupt = try EventFd() } catch {
            throw SwiftletError(.systemCall, "cannot create the keyboard interrupt eventfd", cause: error)
        }
        try vm.registerIrqfd(keyboardInterrupt, gsi: I8042.keyboardIRQ)
        if configuration.discovery != .legacy {
            let event: EventFd
            do { event = try EventFd() } catch {
                throw SwiftletError(.systemCall, "cannot create the ACPI event interrupt eventfd", cause: error)
            }
            try vm.registerIrqfd(event, gsi: X86Layout.acpiEventIRQ)
            acpiEvent = event
        } else {
            acpiEvent = nil
        }
        serial = Serial(output: console, interrupt: serialInterrupt)
        bootTimer = BootTimer(clock: monotonicNanoseconds)

        var portBus = Bus()
        var mmioBus = Bus()
        var slots: [VirtioSlot] = []
        if let vsock = configuration.vsock {
            devices.append(("vsock0", try Vsock(vsock, clock: monotonicNanoseconds)))
        }
        var balloon: Balloon?
        if let configuration = configuration.balloon {
            balloon = try Balloon(configuration, guestMemorySize: memory.totalSize)
            devices.append(("balloon0", balloon!))
        }
        self.balloon = balloon
        if let entropy = configuration.entropy {
            devices.append(("rng0", try Rng(entropy, clock: monotonicNanoseconds)))
        }
        guard devices.map(\.name) == description.virtioDevices.map(\.name) else {
            throw SwiftletError(.invalidConfiguration, "the virtio devices \(devices.map(\.name)) differ from the machine description's \(description.virtioDevices.map(\.name))")
        }
        for (index, (name, device)) in devices.enumerated() {
            let slot = try VirtioSlot(name: name, placement: description.virtioDevices[index], device: device, vm: vm, memory: memory)
            (device as? ConfigurationChanging)?.attachConfigurationNotifier { [transport = slot.transport] in transport.notifyConfigurationChange() }
            device.attach(interrupt: slot.transport.interrupt) { [transport = slot.transport] in transport.markNeedsReset() }
            do { try mmioBus.insert(slot.transport, base: slot.base.rawValue, size: MmioTransport.size) } catch {
                throw SwiftletError(.invalidConfiguration, "virtio device \(index) overlaps another device: \(error)")
            }
            slots.append(slot)
        }
        virtioDevices = slots
        if slots.isEmpty {
            eventLoop = nil
        } else {
            let loop = try EventLoop(name: "devices")
            for (_, device) in devices { try device.register(on: loop) }
            eventLoop = loop
        }
        self.mmioBus = mmioBus
        // Devices need `self` to report a reset, so the i8042 reaches the machine through a weak box.
        let resetTarget = WeakMachine()
        i8042 = I8042(interrupt: keyboardInterrupt) { resetTarget.machine?.finish(.reset) }
        do {
            try portBus.insert(serial, base: UInt64(X86Layout.serialPort), size: Serial.portCount)
            try portBus.insert(i8042, base: UInt64(I8042.dataPort), size: 5)
            if configuration.discovery != .legacy {
                // The FADT's sleep and reset registers: `poweroff` and `reboot` of a guest that uses ACPI.
                let power = ACPIPower(sleepTypeOff: ACPITables.sleepTypeS5, resetValue: X86Layout.acpiResetValue,
                                      onPowerOff: { resetTarget.machine?.finish(.powerOff) },
                                      onReset: { resetTarget.machine?.finish(.reset) })
                try portBus.insert(power, base: UInt64(X86Layout.acpiSleepControlPort), size: ACPIPower.portCount)
                // pvpanic, which the DSDT describes: a guest's panic ends the machine as such.
                try portBus.insert(PVPanic { resetTarget.machine?.finish(.guestPanic($0)) },
                                   base: UInt64(X86Layout.pvpanicPort), size: PVPanic.portCount)
            }
            try portBus.insert(bootTimer, base: UInt64(BootTimer.port), size: 1)
        } catch {
            throw SwiftletError(.invalidConfiguration, "port I/O devices overlap: \(error)")
        }
        self.portBus = portBus
        resetTarget.set(self)
        if let snapshot {
            try MachineState.restoreDevices(snapshot, serial: serial, slots: slots)
            // A clone must not go on with the random state the snapshot froze: a new generation ID, which the GED's
            // interrupt announces when the machine starts.
            if acpiEvent != nil { try VMGenerationID.renew(in: memory) }
        }
    }

    /// Loads the kernel and initrd and writes the zero page, ACPI tables, MP table, reset vector, page tables and GDT:
    /// everything the guest finds in its memory at boot.
    static func loadGuest(_ configuration: MachineConfiguration, kernel kernelSource: some BootSource, initrd initrdSource: (some BootSource)?,
                          description: MachineDescription, into memory: GuestMemory) throws(SwiftletError) -> (kernel: LoadedKernel, boot: X86BootState) {
        let kernel = try KernelLoader.load(kernelSource, into: memory)
        var initrd: (address: GuestAddress, size: Int)?
        if let initrdSource {
            initrd = try KernelLoader.loadInitrd(initrdSource, into: memory, kernel: kernel)
        }
        let acpi = try description.acpiTables()
        try acpi?.write(into: memory)
        if acpi != nil { try VMGenerationID.renew(in: memory) }
        try ZeroPage.write(into: memory, kernel: kernel, commandLine: description.x86CommandLine, initrd: initrd,
                           e820: description.e820, acpiRSDP: acpi?.rsdp)
        if description.hasMPTable { try MPTable.write(into: memory, cpus: description.cpus) }
        try ResetVector.write(into: memory)
        return (kernel, try LongMode.prepare(memory: memory, entry: kernel.entry))
    }

    private static func validate(_ configuration: MachineConfiguration) throws(SwiftletError) {
        let deviceCount = configuration.virtioDeviceCount
        guard deviceCount <= X86Layout.virtioMaximumDevices else {
            throw SwiftletError(.invalidConfiguration, "\(deviceCount) virtio devices are more than the \(X86Layout.virtioMaximumDevices) interrupt lines Swiftlet has for them")
        }
        guard configuration.cpus >= 1, configuration.cpus <= MachineConfiguration.maximumCPUs else {
            throw SwiftletError(.invalidConfiguration, "--cpus \(configuration.cpus) is out of range (1 to \(MachineConfiguration.maximumCPUs))")
        }
        let size = configuration.memorySize
        guard size >= MachineConfiguration.minimumMemory else {
            throw SwiftletError(.invalidConfiguration, "--memory \(size >> 20) MiB is too small; a guest needs at least \(MachineConfiguration.minimumMemory >> 20) MiB")
        }
        guard size % (2 << 20) == 0 else {
            throw SwiftletError(.invalidConfiguration, "--memory must be a multiple of 2 MiB (got \(size) bytes)")
        }
        let hostMemory = UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * UInt64(sysconf(Int32(_SC_PAGESIZE)))
        guard size <= hostMemory else {
            throw SwiftletError(.outOfMemory, "--memory \(size >> 20) MiB is more than this host has (\(hostMemory >> 20) MiB)")
        }
    }

    /// Starts one thread per vCPU, and the console input thread when the console is stdio.
    /// `paused` (a restored machine that stays paused) parks the vCPUs and the device loop before either runs, with
    /// the guest clock as the restore set it; `resume()` lets them go.
    func start(paused: Bool = false) throws(SwiftletError) {
        KickSignal.install()
        if paused {
            let time = try GuestTime.read(vm: vm, vcpus: vcpus)
            pauseLock.withLock { $0 = time }
            pauseGate.close()
            eventLoop?.pause()
        }
        try state.withLock { (state) throws(SwiftletError) in
            guard !state.started else { throw SwiftletError(.invalidConfiguration, "the VM was already started") }
            state.started = true
            // Set-up is done: from here on every thread runs under the process filter, and each thread started
            // below under its own class's filter too (Confinement).
            if configuration.confineProcess { try confinement.confineProcess() }
            let counters = virtioDevices.map { $0.device.counters }
            try eventLoop?.start(scheduling: configuration.deviceScheduling,
                                 workProbe: {
                                     counters.reduce(LoopWork(bytes: 0, requests: 0)) {
                                         LoopWork(bytes: $0.bytes &+ $1.bytes, requests: $0.requests &+ $1.requests)
                                     }
                                 },
                                 onSchedulingError: { [weak self] error in self?.deviceSchedulingError.withLock { $0 = error } },
                                 prologue: { [weak self] in self?.confineThread(.device) ?? false })
            if configuration.console == .stdio {
                state.input = try ConsoleInput(serial: serial, prologue: { [weak self] in self?.confineThread(.console) ?? false }) {
                    [weak self] in self?.finish(.stopped)
                }
            }
            // A restored machine's new VM generation ID: the interrupt waits in the restored LAPIC until the guest
            // runs (a paused one: until it is resumed).
            if kernel == nil { acpiEvent?.signal() }
            for vcpu in vcpus {
                do {
                    let thread = try HostThread(name: "vcpu\(vcpu.id)") { [self] in
                        guard confineThread(.vcpu) else { return }
                        self.runLoop(vcpu)
                    }
                    state.threads.append(thread)
                } catch {
                    throw SwiftletError(.systemCall, "cannot start the thread of vCPU \(vcpu.id)", cause: error as? Errno)
                }
            }
        }
    }

    /// Loads `threadClass`'s seccomp filter on the calling thread; on failure the machine fails, saying why.
    func confineThread(_ threadClass: ThreadClass) -> Bool {
        do {
            try confinement.enter(threadClass)
            return true
        } catch {
            finish(.failed(error.description))
            return false
        }
    }

    private func runLoop(_ vcpu: Vcpu) {
        KickSignal.unblockForCurrentThread()
        var exitWith: MachineExit?
        if vcpu.id == 0 { noteFirstRun() }
        while exitWith == nil && !finished.load(ordering: .acquiring) {
            if pauseGate.isClosed {
                pauseGate.park()
                continue
            }
            let exit: VcpuExit
            do { exit = try vcpu.runUntilExit() } catch {
                exitWith = .failed(error.description)
                break
            }
            switch exit {
            case .io(let port, let isWrite, let size, let data):
                // String I/O (rep outs/ins) carries `count` elements of `size` bytes.
                var offset = 0
                while offset + size <= data.count {
                    let element = UnsafeMutableRawBufferPointer(rebasing: data[offset..<offset + size])
                    if isWrite { portBus.write(UInt64(port), data: UnsafeRawBufferPointer(element)) }
                    else { portBus.read(UInt64(port), data: element) }
                    offset += size
                }
            case .mmio(let address, let isWrite, let data):
                if isWrite { mmioBus.write(address, data: UnsafeRawBufferPointer(data)) }
                else { mmioBus.read(address, data: data) }
            case .halt:
                exitWith = .powerOff
            case .shutdown:
                exitWith = .tripleFault
            case .systemEvent(let type):
                switch Int32(type) {
                case KVM_SYSTEM_EVENT_SHUTDOWN: exitWith = .powerOff
                case KVM_SYSTEM_EVENT_RESET: exitWith = .reset
                default: exitWith = .failed("the guest reported a crash (KVM system event \(type))")
                }
            case .internalError(let suberror):
                let rip = (try? vcpu.registers().rip).map { "0x" + String($0, radix: 16) } ?? "unknown"
                var message = "vCPU \(vcpu.id) stopped with KVM_EXIT_INTERNAL_ERROR, suberror \(suberror), at rip \(rip)"
                if suberror == UInt32(KVM_INTERNAL_ERROR_EMULATION) {
                    message += ". KVM could not emulate a guest instruction: this host's /dev/kvm emulates ring-0 guest code"
                        + " (a PVM-style KVM inside a VM) and cannot run Linux guests. Use a host with VT-x/AMD-V, or the"
                        + " nested lab (make lab)"
                }
                exitWith = .failed(message)
            case .failedEntry(let reason):
                exitWith = .failed("vCPU \(vcpu.id) could not enter the guest (hardware entry failure reason 0x\(String(reason, radix: 16)))")
            case .interrupted:
                continue
            case .other(let reason):
                exitWith = .failed("vCPU \(vcpu.id) stopped with unexpected KVM exit reason \(reason)")
            }
        }
        if let exitWith { finish(exitWith) }
    }

    private func noteFirstRun() {
        let now = monotonicNanoseconds()
        let first = state.withLock { state -> Bool in
            guard state.firstRunAt == nil else { return false }
            state.firstRunAt = now
            return true
        }
        if first { configuration.onFirstRun?(now) }
    }

    var firstRunAt: UInt64? { state.withLock { $0.firstRunAt } }

    /// Records how the machine ended (the first report wins), kicks every vCPU out of KVM_RUN and signals `ended`.
    /// Any thread may call it; it only makes system calls every filter allows (tgkill, write).
    func finish(_ exit: MachineExit) {
        let first = state.withLock { state -> Bool in
            guard state.exit == nil else { return false }
            state.exit = exit
            return true
        }
        guard first else { return }
        finished.store(true, ordering: .releasing)
        pauseGate.cancel()
        let threads = state.withLock { $0.threads }
        for vcpu in vcpus { vcpu.requestExit() }
        for thread in threads { thread.send(signal: KickSignal.number) }
        ended.signal()
    }

    /// Stops every vCPU: each leaves KVM_RUN and parks until `resume()`. The guest's kvmclock is saved, so that its
    /// time stops too. Then the device loop parks once the round it is in has finished: requests in flight are done
    /// (the engines are synchronous), and nothing new is taken until `resume()`. Returns when all have parked.
    func pause() throws(SwiftletError) {
        try pauseLock.withLock { (paused) throws(SwiftletError) in
            guard state.withLock({ $0.started && $0.exit == nil }) else {
                throw SwiftletError(.invalidConfiguration, "the VM is not running")
            }
            guard paused == nil else { return }
            pauseGate.close()
            let threads = state.withLock { $0.threads }
            for vcpu in vcpus { vcpu.requestExit() }
            for thread in threads { thread.send(signal: KickSignal.number) }
            guard pauseGate.waitForParked(vcpus.count) else {
                throw SwiftletError(.invalidConfiguration, "the VM ended while it was being paused")
            }
            paused = try GuestTime.read(vm: vm, vcpus: vcpus)
            eventLoop?.pause()
        }
    }

    /// Lets the vCPUs run again, with the guest's clock going on from where `pause()` stopped it.
    func resume() throws(SwiftletError) {
        try pauseLock.withLock { (paused) throws(SwiftletError) in
            guard let time = paused else { return }
            try time.set(vm: vm, vcpus: vcpus)
            paused = nil
            eventLoop?.resume()
            pauseGate.open()
        }
    }

    var isPaused: Bool { pauseLock.withLock { $0 != nil } }

    /// Waits until the machine has ended. The wait is a thread's poll on `ended`, started from the caller (a thread
    /// under the process filter only), which then resumes the caller.
    func wait() async -> MachineExit {
        if let exit = state.withLock({ $0.exit }) { return exit }
        let ended = self.ended
        return await withCheckedContinuation { continuation in
            do {
                try HostThread(name: "wait") { [self] in
                    var descriptor = pollfd(fd: ended.rawValue, events: Int16(POLLIN), revents: 0)
                    var exit = state.withLock { $0.exit }
                    while exit == nil {
                        _ = poll(&descriptor, 1, -1)
                        exit = state.withLock { $0.exit }
                    }
                    continuation.resume(returning: exit ?? .stopped)
                }.detach()
            } catch {
                continuation.resume(returning: .failed("cannot start a thread to wait for the VM: \(error)"))
            }
        }
    }

    /// Joins the vCPU and console threads after `finish`, and restores the terminal. Blocks briefly. Safe to call
    /// from several tasks: the teardown lock makes a second caller wait until the first has finished, so nobody
    /// returns (and lets the process exit) while the terminal is still raw.
    func tearDown() {
        teardown.withLock { done in
            guard !done else { return }
            done = true
            let (threads, input) = state.withLock { state in
                let result = (state.threads, state.input)
                state.threads = []
                state.input = nil
                return result
            }
            input?.shutdown()
            eventLoop?.stop()
            for slot in virtioDevices { slot.device.shutDown() }
            // A vCPU may be between its finished check and KVM_RUN; immediate_exit covers that, the kick the rest.
            for thread in threads { thread.join() }
        }
    }
}

/// A virtio device on the MMIO bus: its 4 KiB register window, its interrupt line and its queue notifications.
struct VirtioSlot: Sendable {
    let name: String
    let base: GuestAddress
    let irq: UInt32
    let device: any LoopDevice
    let transport: MmioTransport
    let interruptLine: EventFd

    /// Wires `device` where the machine description places it: an irqfd on its GSI, and one ioeventfd per queue on
    /// QueueNotify, matching the queue index the driver writes there.
    init(name: String, placement: MachineDescription.VirtioDevice, device: any LoopDevice, vm: SwiftletKVM.VirtualMachine, memory: GuestMemory) throws(SwiftletError) {
        (base, irq) = (placement.window.start, placement.interrupt)
        self.name = name
        self.device = device
        do { interruptLine = try EventFd() } catch {
            throw SwiftletError(.systemCall, "cannot create the interrupt eventfd of \(name)", cause: error)
        }
        try vm.registerIrqfd(interruptLine, gsi: irq)
        transport = MmioTransport(device: device, interrupt: VirtioInterrupt(line: interruptLine), memory: memory)
        for (queue, event) in device.queueEvents.enumerated() {
            try vm.registerIoeventfd(event, address: base.rawValue + UInt64(MmioTransport.Register.queueNotify), length: 4,
                                     datamatch: UInt64(queue))
        }
    }
}

/// Lets a device reach the machine that owns it without a reference cycle.
final class WeakMachine: Sendable {
    private let reference = Mutex<Weak?>(nil)
    private struct Weak: @unchecked Sendable { weak var machine: Machine? } // @unchecked: only read under the mutex.
    func set(_ machine: Machine) { reference.withLock { $0 = Weak(machine: machine) } }
    var machine: Machine? { reference.withLock { $0?.machine } }
}
