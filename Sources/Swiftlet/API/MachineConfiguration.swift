import SwiftletBoot
import SwiftletConfinement
import SwiftletDevices
import SwiftletHost

/// A virtio-blk disk: a raw image file, optionally read-only, with a serial.
public typealias DiskConfiguration = BlockConfiguration
/// How a disk's requests reach its image: synchronously, or through io_uring.
public typealias DiskEngine = BlockEngine

/// A virtio-net NIC on a TAP: attached by name, or created (and gone at exit) when no such interface exists.
public typealias NetworkConfiguration = NetConfiguration

/// A virtio-vsock device bridged to a Unix socket (Firecracker's hybrid vsock), which `MicroVM.exec` talks to the
/// guest agent through.
public typealias SocketConfiguration = VsockConfiguration

/// A virtio-balloon device: its starting size, deflate-on-OOM, free page reporting and statistics interval.
public typealias MemoryBalloonConfiguration = BalloonConfiguration

/// A virtio-rng device: the guest's `/dev/hwrng`, filled from the host's getrandom, with an optional rate limit.
public typealias EntropyConfiguration = RngConfiguration

/// How the device thread is scheduled against the vCPU threads when they share a CPU: `.batch` (SCHED_BATCH) lets a
/// running vCPU go on until the guest idles and the device then takes everything queued at once; `.normal`
/// (SCHED_OTHER) lets the device thread preempt the vCPU whenever a notification wakes it; `.adaptive`, the
/// default, is `.batch` while the devices stream and `.normal` otherwise.
public typealias DeviceThreadScheduling = ThreadScheduling

/// How an x86_64 guest finds its vCPUs and virtio-mmio devices: `.both` (ACPI tables, and the command line's
/// `virtio_mmio.device=` entries and the MP table; the default), `.acpi` (ACPI only), `.legacy` (no ACPI tables).
public typealias DeviceDiscovery = MachineDescription.Discovery

/// Everything a microVM is made from. Sizes are in bytes.
public struct MachineConfiguration: Sendable {
    public enum Console: Sendable, Equatable {
        /// The guest's serial console on this process's stdout; stdin goes to the guest when it is a terminal or pipe.
        case stdio
        /// The console is discarded.
        case none
        /// The console is written to a file (created or truncated), up to `consoleFileMaximumSize` bytes.
        case file(String)
    }

    public var kernelPath: String
    public var initrdPath: String?
    public var commandLine: String
    public var cpus: Int
    public var memorySize: UInt64
    public var console: Console
    /// The most bytes a console file receives (`.file`); past it the guest's output is dropped and counted
    /// (`MicroVM.consoleStatistics`), so a guest printing in a loop cannot fill the host's disk.
    public var consoleFileMaximumSize: UInt64 = MachineConfiguration.defaultConsoleFileMaximumSize
    public var kvmPath: String
    /// virtio-blk disks, in the order the guest sees them (/dev/vda, /dev/vdb, ...).
    public var disks: [DiskConfiguration] = []
    /// virtio-net NICs, in the order the guest sees them (eth0, eth1, ...).
    public var networks: [NetworkConfiguration] = []
    /// The vsock device, if any.
    public var vsock: SocketConfiguration?
    /// A memory balloon (after the disks, NICs and vsock on the virtio-mmio bus); nil for none.
    public var balloon: MemoryBalloonConfiguration?
    /// An entropy device (virtio-rng), after the balloon; nil for none.
    public var entropy: EntropyConfiguration?
    /// x86_64: how the guest finds its vCPUs and devices (`DeviceDiscovery`).
    public var discovery: DeviceDiscovery = .both
    /// Records the pages the guest and the devices write (KVM's dirty log, and the host's own marks), so that a diff
    /// snapshot can save only what changed since the last snapshot (`MicroVM.snapshot(to:kind: .diff)`). It costs
    /// the guest some speed: KVM maps guest RAM with 4 KiB pages and takes a fault on the first write to each page
    /// after every snapshot. Firecracker's `track_dirty_pages`.
    public var trackDirtyPages = false
    /// How the device thread (every virtio device's event loop) is scheduled; see `DeviceThreadScheduling`.
    public var deviceScheduling: DeviceThreadScheduling = .adaptive
    /// Seccomp filters on the VM's own threads (vCPUs, the device loop, the console input), each with the system
    /// calls its class needs after set-up (SwiftletConfinement.SeccompPolicy). `.off` turns them off.
    public var seccomp: SeccompMode = .on
    /// Also load the process filter on every thread of this process at start (what `swiftlet run` does). Off by
    /// default when embedded: it confines the embedding app's own threads as well. At most one VM per process can
    /// do this, the first: later threads keep their creators' filters, which a second process filter cannot cover.
    public var confineProcess = false
    /// Called once during set-up, on the thread that builds the machine, when it has opened everything it names by
    /// path on the host (kernel, initrd, console file, disk images) and its TAPs, and before it opens `kvmPath`, binds
    /// the vsock socket or maps guest memory: where a jail drops privileges (`SwiftletConfinement.Jail.enter`, what
    /// `swiftlet run --jail` does). An error ends the set-up with that error.
    public var afterOpeningHostFiles: (@Sendable () throws(SwiftletError) -> Void)?
    /// Called once, on vCPU 0's thread, just before its first KVM_RUN, with CLOCK_MONOTONIC nanoseconds. With
    /// `seccomp` on, that thread runs under the vCPU filter: `write` works, but opening files, creating threads or
    /// resuming Swift concurrency (which may create one) end the process (SeccompPolicy.rules(.vcpu)).
    public var onFirstRun: (@Sendable (UInt64) -> Void)?

    public static let defaultCommandLine = "console=ttyS0 reboot=k panic=1"
    /// 64 MiB: a verbose boot log is well under 1 MiB.
    public static let defaultConsoleFileMaximumSize: UInt64 = 64 << 20
    public static let minimumMemory: UInt64 = 64 << 20
    public static let maximumCPUs = 64

    /// How many virtio-mmio devices the machine has, in slot order: disks, NICs, then vsock.
    public var virtioDeviceCount: Int {
        disks.count + networks.count + (vsock == nil ? 0 : 1) + (balloon == nil ? 0 : 1) + (entropy == nil ? 0 : 1)
    }

    public init(kernelPath: String, initrdPath: String? = nil, commandLine: String = MachineConfiguration.defaultCommandLine,
                cpus: Int = 1, memorySize: UInt64 = 256 << 20, console: Console = .stdio, kvmPath: String = "/dev/kvm") {
        self.kernelPath = kernelPath
        self.initrdPath = initrdPath
        self.commandLine = commandLine
        self.cpus = cpus
        self.memorySize = memorySize
        self.console = console
        self.kvmPath = kvmPath
    }
}

/// How a guest ended.
public enum MachineExit: Sendable, Equatable {
    /// The guest asked for a reset (i8042 reset, KVM system-event reset) or a power-off: a clean end.
    case reset
    case powerOff
    /// The guest triple-faulted, which is also how Linux reboots with `reboot=t`.
    case tripleFault
    /// The guest kernel said it panicked, through the pvpanic device (the event byte it wrote: PANICKED, and
    /// CRASH_LOADED if a crash kernel was loaded). Only a guest that finds pvpanic in ACPI can say so.
    case guestPanic(UInt8)
    /// Stopped from the host (`stop()`).
    case stopped
    /// A vCPU failed; the message says what happened and what to do.
    case failed(String)
}
