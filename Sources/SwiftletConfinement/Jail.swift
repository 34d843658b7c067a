import CJail
import Glibc
import SwiftletHost
import SystemPackage

/// The jail (docs/SECURITY.md, "The jail"): where a VMM runs once it has opened what needs privilege.
///
/// Two processes take part. The supervisor (`JailSupervisor`, the `swiftlet run --jail` the user started, as root)
/// checks the request, makes the cgroup and starts the VMM as a child in new mount, PID, IPC and UTS namespaces, in
/// the network namespace asked for, with NO_NEW_PRIVS; then it forwards signals, waits, and removes what the VM left
/// (sockets, the cgroup, the directories it made). The child runs the same command again; its machine opens the
/// kernel, initrd, disk images, console file and TAPs as root from the host's paths, then calls `Jail.enter`, which
/// pivots into the jail directory (holding only the KVM device and the VM's sockets), drops to the uid and gid with
/// no groups and no capabilities, and sets the resource limits. /dev/kvm is opened after that, as the jailed uid,
/// and the sockets are bound inside the jail.
public struct JailConfiguration: Sendable, Equatable {
    /// The jail's root on the host: an existing directory, as an absolute path without symbolic links.
    public var directory: String
    public var uid: uid_t
    public var gid: gid_t
    /// A network namespace to run in (a file from `ip netns add`, or /proc/PID/ns/net); nil keeps the host's.
    public var networkNamespace: String?
    public var cgroup: CgroupConfiguration?
    /// The KVM device on the host, bind-mounted at `JailConfiguration.kvmPath` inside the jail.
    public var kvmDevice: String = "/dev/kvm"
    /// RLIMIT_FSIZE: the furthest offset the VMM may write in a regular file (its writable disks, its console file).
    public var fileSizeLimit: UInt64
    /// RLIMIT_NPROC: the threads the jailed uid may have (every vCPU and the VMM's own threads).
    public var threadLimit: UInt64

    /// Where the KVM device is inside the jail.
    public static let kvmPath = "/dev/kvm"
    /// RLIMIT_NOFILE: the vsock device's 1024 connections and 64 pending clients, plus 64 vCPUs and 128 for the
    /// rest (KVM, devices, eventfds, the console, the control socket's clients).
    public static let fileLimit: UInt64 = 1024 + 64 + 64 + 128
    /// Threads the VMM runs besides its vCPUs: the device loop, console input, signals, wait, control, the boot
    /// loader, the main thread and the Swift concurrency pool (one per CPU, at most 64 here) with room to spare.
    public static func threadLimit(cpus: Int) -> UInt64 { UInt64(cpus) + 96 }
    /// The environment variable that tells the child it is the jailed VMM (checked with `getpid() == 1`).
    static let stageVariable = "SWIFTLET_JAIL_STAGE"

    public init(directory: String, uid: uid_t, gid: gid_t, networkNamespace: String? = nil, cgroup: CgroupConfiguration? = nil,
                kvmDevice: String = "/dev/kvm", fileSizeLimit: UInt64, threadLimit: UInt64) {
        self.directory = directory
        self.uid = uid
        self.gid = gid
        self.networkNamespace = networkNamespace
        self.cgroup = cgroup
        self.kvmDevice = kvmDevice
        self.fileSizeLimit = fileSizeLimit
        self.threadLimit = threadLimit
    }

    /// `path` (a host path under the jail directory) as the jailed VMM sees it; nil when it is outside the jail.
    /// The path's directory must exist (symbolic links in it are resolved); its last component is kept as it is.
    public func pathInside(_ path: String) -> String? {
        let absolute = path.hasPrefix("/") ? path : JailConfiguration.currentDirectory() + "/" + path
        let (parent, name) = JailConfiguration.split(absolute)
        guard !name.isEmpty, name != ".", name != "..", let resolved = JailConfiguration.realPath(parent) else { return nil }
        if resolved == directory { return "/" + name }
        guard resolved.hasPrefix(directory + "/") else { return nil }
        return String(resolved.dropFirst(directory.count)) + "/" + name
    }

    static func split(_ path: String) -> (String, String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let parent = String(path[..<slash])
        return (parent.isEmpty ? "/" : parent, String(path[path.index(after: slash)...]))
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    static func currentDirectory() -> String {
        guard let cwd = getcwd(nil, 0) else { return "/" }
        defer { free(cwd) }
        return String(cString: cwd)
    }
}

/// `--cgroup NAME[,memory=SIZE][,cpus=N][,pids=N]`: a cgroup v2 group made for the VM under /sys/fs/cgroup and
/// removed after it.
public struct CgroupConfiguration: Sendable, Equatable {
    /// Relative to the cgroup v2 root: components of letters, digits, '.', '_' and '-'; the parent must exist.
    public var name: String
    /// memory.max in bytes.
    public var memoryMax: UInt64?
    /// cpu.max: microseconds of CPU time per 100 ms period (100000 is one CPU).
    public var cpuQuota: UInt64?
    /// pids.max: processes and threads.
    public var pidsMax: UInt64?

    public static let root = "/sys/fs/cgroup"
    public static let cpuPeriod: UInt64 = 100_000

    public init(name: String, memoryMax: UInt64? = nil, cpuQuota: UInt64? = nil, pidsMax: UInt64? = nil) {
        self.name = name
        self.memoryMax = memoryMax
        self.cpuQuota = cpuQuota
        self.pidsMax = pidsMax
    }

    public var path: String { CgroupConfiguration.root + "/" + name }

    /// The files this group's limits are written to, with their values, in order.
    public var limitFiles: [(file: String, value: String)] {
        var files: [(String, String)] = []
        if let memoryMax { files.append(("memory.max", "\(memoryMax)")) }
        if let cpuQuota { files.append(("cpu.max", "\(cpuQuota) \(CgroupConfiguration.cpuPeriod)")) }
        if let pidsMax { files.append(("pids.max", "\(pidsMax)")) }
        return files
    }

    /// The controllers the limits need enabled in the parent's cgroup.subtree_control.
    public var controllers: [String] {
        (memoryMax == nil ? [] : ["memory"]) + (cpuQuota == nil ? [] : ["cpu"]) + (pidsMax == nil ? [] : ["pids"])
    }

    /// Whether `name` is a relative cgroup path of plain components.
    public static func isValidName(_ name: String) -> Bool {
        let components = name.split(separator: "/", omittingEmptySubsequences: false)
        guard !name.isEmpty, name.utf8.count <= 200, !components.isEmpty else { return false }
        return components.allSatisfy { component in
            !component.isEmpty && component != "." && component != ".."
                && component.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || $0 == 0x2e || $0 == 0x5f || $0 == 0x2d }
        }
    }
}

/// The jailed VMM's side: `enter` runs once the machine has opened its host files, before it opens /dev/kvm.
public enum Jail {
    /// Whether this process is the VMM a `JailSupervisor` started: the supervisor's variable is set, and the process
    /// is the first of its own PID namespace (which a process the user started by hand is not).
    public static var isJailedChild: Bool {
        guard let value = getenv(JailConfiguration.stageVariable), String(cString: value) == "child" else { return false }
        return getpid() == 1
    }

    /// The signal that makes the main thread drop its privileges (`CJail_drop_thread`); the vCPU kick is SIGRTMIN+1.
    static var dropSignal: Int32 { KickSignal.number + 1 }

    /// Pivots into the jail, drops privileges and sets the resource limits; see `JailConfiguration`.
    public static func enter(_ jail: JailConfiguration) throws(SwiftletError) {
        guard isJailedChild else {
            throw SwiftletError(.invalidConfiguration, "Jail.enter runs only in the VMM a JailSupervisor started (its own mount and PID namespaces)")
        }
        let root = jail.directory
        func negated(_ result: Int32, _ what: String) throws(SwiftletError) {
            guard result == 0 else { throw SwiftletError(.systemCall, "jail \(root): cannot \(what)", cause: Errno(rawValue: -result)) }
        }
        let dev = root + "/dev"
        func check(_ result: Int32, _ what: String) throws(SwiftletError) {
            guard result == 0 else { throw SwiftletError(.systemCall, "jail \(root): cannot \(what)", cause: Errno(rawValue: errno)) }
        }
        // Mounts made here stay in this namespace: none reaches the host's.
        try check(mount(nil, "/", nil, UInt(MS_REC | MS_PRIVATE), nil), "make the mounts private")
        try check(mount(root, root, nil, UInt(MS_BIND), nil), "bind the jail directory onto itself")
        try check(mount(nil, root, nil, UInt(MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC), nil),
                  "remount the jail nosuid, nodev, noexec")
        var status = stat()
        guard lstat(dev, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
            throw SwiftletError(.invalidConfiguration, "jail \(root): \(dev) is not a directory (the supervisor makes it)")
        }
        try check(mount("tmpfs", dev, "tmpfs", UInt(MS_NOSUID | MS_NOEXEC), "mode=0755,size=16k,nr_inodes=8"), "mount a tmpfs on \(dev)")
        let kvm = root + JailConfiguration.kvmPath
        let placeholder = open(kvm, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard placeholder >= 0 else { throw SwiftletError(.systemCall, "jail \(root): cannot create \(kvm)", cause: Errno(rawValue: errno)) }
        close(placeholder)
        try check(mount(jail.kvmDevice, kvm, nil, UInt(MS_BIND), nil), "bind \(jail.kvmDevice) to \(kvm)")
        try check(mount(nil, kvm, nil, UInt(MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC), nil), "remount \(kvm) nosuid, noexec")
        try check(mount(nil, dev, nil, UInt(MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC), "mode=0755,size=16k,nr_inodes=8"),
                  "make \(dev) read-only")
        // pivot_root(".", "."): the old root is stacked under the new one, then detached (pivot_root(2), NOTES).
        // Where the root is the initramfs (rootfs cannot be pivoted away from: EINVAL), the jail is moved onto "/"
        // and entered with chroot, as runc does there; without CAP_SYS_CHROOT, which the drop below takes, a chroot
        // cannot be left.
        try check(chdir(root), "enter the jail directory")
        if CJail_pivot_root(".", ".") == 0 {
            try check(umount2(".", Int32(MNT_DETACH)), "detach the host's root")
        } else {
            guard errno == EINVAL else { throw SwiftletError(.systemCall, "jail \(root): cannot pivot_root into the jail", cause: Errno(rawValue: errno)) }
            try check(mount(root, "/", nil, UInt(MS_MOVE), nil), "move the jail onto / (the root is the initramfs, which pivot_root cannot leave)")
            try check(chroot("."), "chroot into the jail")
        }
        try check(chdir("/"), "change to the jail's root")

        // Groups, then the gid, then the uid: going from uid 0 to another uid clears every capability set (the
        // kernel does unless SECBIT_KEEP_CAPS). glibc applies set*id to every thread but one it counts as exiting:
        // the main thread, which libdispatch parks in pthread_exit; that one is dropped by a signal of its own.
        try check(setgroups(0, nil), "clear the supplementary groups")
        try negated(CJail_setresgid(jail.gid), "change to gid \(jail.gid)")
        try negated(CJail_setresuid(jail.uid), "change to uid \(jail.uid)")
        try negated(CJail_drop_thread(getpid(), jail.uid, jail.gid, Jail.dropSignal), "change the main thread to uid \(jail.uid)")
        for (tid, name) in [(0, "this thread"), (getpid(), "the main thread")] {
            var effective: UInt64 = 0, permitted: UInt64 = 0, inheritable: UInt64 = 0
            let result = CJail_capabilities(tid, &effective, &permitted, &inheritable)
            guard result == 0, effective | permitted | inheritable == 0 else {
                throw SwiftletError(.systemCall, "jail \(root): \(name) has capabilities left after the change to uid \(jail.uid) (effective \(effective), permitted \(permitted))",
                                    cause: result < 0 ? Errno(rawValue: -result) : nil)
            }
        }
        // A change of uid clears the parent-death signal the supervisor's child set (the main thread's is set again
        // by its handler).
        try negated(CJail_set_parent_death_signal(SIGKILL), "ask for SIGKILL when the supervisor dies")
        // EFBIG, not a core dump, when a write passes RLIMIT_FSIZE.
        signal(SIGXFSZ, SIG_IGN)
        for (resource, value, name) in [(CJail_RLIMIT_NOFILE, JailConfiguration.fileLimit, "NOFILE"),
                                        (CJail_RLIMIT_FSIZE, jail.fileSizeLimit, "FSIZE"),
                                        (CJail_RLIMIT_NPROC, jail.threadLimit, "NPROC")] {
            try negated(CJail_set_limit(resource, value), "set RLIMIT_\(name) to \(value)")
        }
        JailTrigger.probe()
    }
}

/// Test builds only (`-D SWIFTLET_SECCOMP_TRIGGER`, `make trigger`): SWIFTLET_JAIL_PROBE=PATH[:PATH...] makes the
/// jailed VMM try to open each path once it is in the jail, and report `swiftlet: trigger: open PATH: ...` on stderr.
enum JailTrigger {
    static func probe() {
        #if SWIFTLET_SECCOMP_TRIGGER
        guard let value = getenv("SWIFTLET_JAIL_PROBE") else { return }
        for path in String(cString: value).split(separator: ":").map(String.init) {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            let result = fd >= 0 ? "opened" : "errno \(errno) (\(String(cString: strerror(errno))))"
            if fd >= 0 { close(fd) }
            var line = "swiftlet: trigger: open \(path): \(result)\n"
            line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
        }
        #endif
    }
}
