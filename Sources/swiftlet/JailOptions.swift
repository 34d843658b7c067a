import ArgumentParser
import Glibc
import Swiftlet
import SwiftletConfinement

/// `swiftlet run --jail DIR --uid N --gid N [--netns PATH] [--cgroup NAME,...]` (docs/SECURITY.md, "The jail").
struct JailOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Run the VMM in a jail: DIR (an existing directory) becomes its root, in new mount, PID, IPC and UTS namespaces, as --uid and --gid with no groups, no capabilities and NO_NEW_PRIVS. "
            + "The kernel, initrd, disks, console file and TAPs are opened first, from the host's paths; the jail then holds only the KVM device (DIR/dev/kvm, opened as the uid) and the VM's sockets, which must be under DIR and in a directory the uid may write. "
            + "This command stays outside as root, forwards signals, and removes the sockets, DIR/dev and the cgroup after the VM.",
        valueName: "dir"))
    var jail: String?

    @Option(name: .long, help: ArgumentHelp("The jailed VMM's user id (not 0; one per VM, which RLIMIT_NPROC counts). Needs --jail.", valueName: "n"))
    var uid: UInt32?

    @Option(name: .long, help: ArgumentHelp("The jailed VMM's group id (not 0); it must be able to read and write /dev/kvm (its group, often kvm). Needs --jail.", valueName: "n"))
    var gid: UInt32?

    @Option(name: .long, help: ArgumentHelp("Run in this network namespace (a file from `ip netns add`, or /proc/PID/ns/net); the TAPs are opened, or created, there. Needs --jail.", valueName: "path"))
    var netns: String?

    @Option(name: .long, help: ArgumentHelp(
        "Put the VMM in a new cgroup v2 group /sys/fs/cgroup/NAME (its parent must exist; removed after the VM) with memory.max (memory=SIZE), cpu.max (cpus=N, such as 1 or 0.5) and pids.max (pids=N). Needs --jail.",
        valueName: "name[,memory=size][,cpus=n][,pids=n]"))
    var cgroup: CgroupOption?

    /// The jail these options ask for, for `machine` (nil without --jail).
    func configuration(for machine: MachineConfiguration) throws -> JailConfiguration? {
        guard let jail else {
            for (given, name) in [(uid != nil, "--uid"), (gid != nil, "--gid"), (netns != nil, "--netns"), (cgroup != nil, "--cgroup")] where given {
                throw ValidationError("\(name) needs --jail DIR")
            }
            return nil
        }
        guard let uid, let gid else { throw ValidationError("--jail needs --uid and --gid: the unprivileged user and group the VMM runs as") }
        guard let resolved = realpath(jail, nil) else {
            throw ValidationError("--jail \(jail) does not exist: make the directory first (it becomes the VMM's root, and holds its sockets)")
        }
        let directory = String(cString: resolved)
        free(resolved)
        // RLIMIT_FSIZE: the furthest a write may reach is the end of a writable disk, or the console file's cap.
        var fileSize = max(machine.consoleFileMaximumSize, MachineConfiguration.defaultConsoleFileMaximumSize)
        for disk in machine.disks where !disk.readOnly {
            var status = stat()
            if stat(disk.path, &status) == 0 { fileSize = max(fileSize, UInt64(status.st_size)) }
        }
        return JailConfiguration(directory: directory, uid: uid, gid: gid, networkNamespace: netns, cgroup: cgroup?.configuration,
                                 kvmDevice: machine.kvmPath, fileSizeLimit: fileSize, threadLimit: JailConfiguration.threadLimit(cpus: machine.cpus))
    }
}

/// `--cgroup NAME[,memory=SIZE][,cpus=N][,pids=N]`.
struct CgroupOption: ExpressibleByArgument {
    var configuration: CgroupConfiguration

    init?(argument: String) {
        let parts = argument.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let name = parts.first, CgroupConfiguration.isValidName(name) else { return nil }
        configuration = CgroupConfiguration(name: name)
        for option in parts.dropFirst() {
            let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2 else { return nil }
            switch pair[0] {
            case "memory":
                guard let size = MemorySize(argument: pair[1]), size.bytes >= 1 << 20 else { return nil }
                configuration.memoryMax = size.bytes
            case "cpus":
                guard let cpus = Double(pair[1]), cpus >= 0.01, cpus <= 1024 else { return nil }
                configuration.cpuQuota = UInt64((cpus * Double(CgroupConfiguration.cpuPeriod)).rounded())
            case "pids":
                guard let pids = UInt64(pair[1]), pids >= 1 else { return nil }
                configuration.pidsMax = pids
            default: return nil
            }
        }
    }
}
