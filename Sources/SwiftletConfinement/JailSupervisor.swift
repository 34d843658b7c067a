import CJail
import Glibc
import SwiftletHost
import SystemPackage

/// The jail's supervisor: checks a `JailConfiguration`, makes its cgroup, starts the jailed VMM and removes what it
/// leaves. It runs as root in the host's namespaces, and does nothing the guest can reach: it waits for one child.
public final class JailSupervisor: Sendable {
    public let jail: JailConfiguration
    /// The jailed VMM, as the host's PID namespace numbers it.
    public let child: pid_t
    private let madeDev: Bool

    /// Checks `jail` (the errors say what to change) and starts this executable again with `arguments` (argv,
    /// the program's name first) as the jailed VMM; it returns once that process runs the new program.
    public init(_ jail: JailConfiguration, arguments: [String]) throws(SwiftletError) {
        self.jail = jail
        try JailSupervisor.check(jail)
        var netns: Int32 = -1
        if let path = jail.networkNamespace { netns = try JailSupervisor.openNetworkNamespace(path) }
        defer { if netns >= 0 { close(netns) } }
        let dev = jail.directory + "/dev"
        var status = stat()
        if lstat(dev, &status) != 0 {
            guard errno == ENOENT, mkdir(dev, 0o755) == 0 else {
                throw SwiftletError(.systemCall, "--jail \(jail.directory): cannot make \(dev), where the KVM device goes", cause: Errno(rawValue: errno))
            }
            madeDev = true
        } else {
            guard status.st_mode & S_IFMT == S_IFDIR else {
                throw SwiftletError(.invalidConfiguration, "--jail \(jail.directory): \(dev) is not a directory; the jail puts the KVM device there")
            }
            madeDev = false
        }
        let cgroup: Cgroup?
        do { cgroup = try jail.cgroup.map { configuration throws(SwiftletError) in try Cgroup(configuration) } } catch {
            if madeDev { rmdir(dev) }
            throw error
        }
        do {
            child = try JailSupervisor.spawn(arguments: arguments, netns: netns, cgroup: cgroup)
        } catch {
            cgroup?.remove()
            if madeDev { rmdir(dev) }
            throw error
        }
    }

    /// Sends `signal` to the jailed VMM (which handles SIGINT, SIGTERM and SIGHUP by stopping its guest).
    public func signal(_ signal: Int32) { kill(child, signal) }

    /// Waits for the jailed VMM to end: its exit status, or 128 + the signal that ended it.
    public func wait() -> Int32 {
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 {
            guard errno == EINTR else { return 1 }
        }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// After `wait()`: removes the sockets the VMM made at `sockets` (host paths) if they are still there, the
    /// directory made for the KVM device, and the cgroup. Returns what could not be removed, in words.
    public func removeLeftovers(sockets: [String]) -> [String] {
        var problems: [String] = []
        for path in sockets {
            // Only what is still inside the jail (the VMM could have replaced a directory of its own on the way).
            guard jail.pathInside(path) != nil else { continue }
            var status = stat()
            if lstat(path, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK, unlink(path) != 0 {
                problems.append("cannot remove the socket \(path): \(Errno(rawValue: errno))")
            }
        }
        let dev = jail.directory + "/dev"
        if madeDev, rmdir(dev) != 0 { problems.append("cannot remove \(dev): \(Errno(rawValue: errno))") }
        if let configuration = jail.cgroup, let problem = Cgroup.remove(configuration.path) { problems.append(problem) }
        return problems
    }

    /// The checks that need no change on the host.
    static func check(_ jail: JailConfiguration) throws(SwiftletError) {
        var status = stat()
        guard stat(jail.directory, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
            throw SwiftletError(.invalidConfiguration, "--jail \(jail.directory) is not a directory: make it first (it becomes the VMM's root, and holds its sockets)")
        }
        guard jail.directory != "/" else { throw SwiftletError(.invalidConfiguration, "--jail / is the host's root: give the VM a directory of its own") }
        guard jail.uid != 0, jail.gid != 0 else {
            throw SwiftletError(.invalidConfiguration, "--uid \(jail.uid) --gid \(jail.gid): a jailed VMM runs as an unprivileged user and group; uid and gid 0 would keep root's powers")
        }
        guard stat(jail.kvmDevice, &status) == 0, status.st_mode & S_IFMT == S_IFCHR else {
            throw SwiftletError(.kvmUnavailable, "--kvm \(jail.kvmDevice) is not a character device", cause: Errno(rawValue: errno))
        }
        // The jailed VMM opens the KVM device as uid:gid, with no supplementary groups.
        let mode = status.st_mode & 0o777
        let allowed = status.st_uid == jail.uid ? mode & 0o600 == 0o600 : status.st_gid == jail.gid ? mode & 0o060 == 0o060 : mode & 0o006 == 0o006
        guard allowed else {
            throw SwiftletError(.kvmUnavailable, "--uid \(jail.uid) --gid \(jail.gid) cannot open \(jail.kvmDevice) (mode \(String(mode, radix: 8)), owner \(status.st_uid), group \(status.st_gid)): "
                + "the jailed VMM opens it as that user with no other groups; "
                + (status.st_gid == jail.gid ? "let its group read and write it (chmod g+rw)" : "use --gid \(status.st_gid) if its group may read and write it, or change its owner or mode"))
        }
    }

    /// Opens `path` and checks that it is a network namespace.
    static func openNetworkNamespace(_ path: String) throws(SwiftletError) -> Int32 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SwiftletError(.invalidConfiguration, "--netns \(path): cannot open it", cause: Errno(rawValue: errno)) }
        guard CJail_filesystem_type(nil, fd) == CJail_NSFS_MAGIC, CJail_namespace_type(fd) == Int32(CJail_CLONE_NEWNET) else {
            close(fd)
            throw SwiftletError(.invalidConfiguration, "--netns \(path) is not a network namespace: give a file from `ip netns add NAME` (/run/netns/NAME) or /proc/PID/ns/net")
        }
        return fd
    }

    private static func spawn(arguments: [String], netns: Int32, cgroup: Cgroup?) throws(SwiftletError) -> pid_t {
        guard let executable = JailConfiguration.realPath("/proc/self/exe") else {
            throw SwiftletError(.systemCall, "--jail: cannot find this executable (/proc/self/exe)", cause: Errno(rawValue: errno))
        }
        var release: [Int32] = [-1, -1], report: [Int32] = [-1, -1]
        guard CJail_pipe(&release) == 0 else { throw SwiftletError(.systemCall, "--jail: cannot make a pipe", cause: Errno(rawValue: errno)) }
        guard CJail_pipe(&report) == 0 else {
            release.forEach { close($0) }
            throw SwiftletError(.systemCall, "--jail: cannot make a pipe", cause: Errno(rawValue: errno))
        }
        defer { close(release[1]); close(report[0]) }
        var environment: [String] = []
        var index = 0
        while let entry = environ[index] {
            let text = String(cString: entry)
            if !text.hasPrefix(JailConfiguration.stageVariable + "=") { environment.append(text) }
            index += 1
        }
        environment.append(JailConfiguration.stageVariable + "=child")
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        let flags = CJail_CLONE_NEWNS | CJail_CLONE_NEWPID | CJail_CLONE_NEWIPC | CJail_CLONE_NEWUTS
        let pid = CJail_spawn(flags, release[0], release[1], netns, report[1], executable, argv, envp)
        close(release[0])
        close(report[1])
        guard pid > 0 else { throw SwiftletError(.systemCall, "--jail: cannot start the VMM in new namespaces (clone)", cause: Errno(rawValue: -pid)) }
        func abandon() {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        if let cgroup {
            do { try cgroup.add(pid) } catch {
                abandon()
                throw error
            }
        }
        var go: UInt8 = 1
        guard write(release[1], &go, 1) == 1 else {
            abandon()
            throw SwiftletError(.systemCall, "--jail: cannot release the VMM", cause: Errno(rawValue: errno))
        }
        var failure: (Int32, Int32) = (0, 0)
        var got = 0
        repeat { got = withUnsafeMutableBytes(of: &failure) { read(report[0], $0.baseAddress, $0.count) } } while got < 0 && errno == EINTR
        guard got == 0 else {
            abandon()
            let stage: String
            switch failure.0 {
            case Int32(CJail_stage_netns): stage = "join the network namespace"
            case Int32(CJail_stage_exec): stage = "run \(executable)"
            case Int32(CJail_stage_release): stage = "wait for the supervisor"
            default: stage = "set up its signals and NO_NEW_PRIVS"
            }
            throw SwiftletError(.systemCall, "--jail: the VMM could not \(stage)", cause: got == MemoryLayout.size(ofValue: failure) ? Errno(rawValue: failure.1) : nil)
        }
        return pid
    }
}

/// A cgroup v2 group made for one VM (`CgroupConfiguration`).
struct Cgroup {
    let configuration: CgroupConfiguration

    /// Makes the group, enabling the controllers its limits need in the parent, and writes the limits.
    init(_ configuration: CgroupConfiguration) throws(SwiftletError) {
        self.configuration = configuration
        let option = "--cgroup \(configuration.name)"
        guard CgroupConfiguration.isValidName(configuration.name) else {
            throw SwiftletError(.invalidConfiguration, "\(option): a cgroup name is a relative path of letters, digits, '.', '_' and '-' (such as swiftlet/vm1)")
        }
        guard CJail_filesystem_type(CgroupConfiguration.root, -1) == CJail_CGROUP2_SUPER_MAGIC else {
            throw SwiftletError(.invalidConfiguration, "\(option): cgroup v2 is not mounted at \(CgroupConfiguration.root) (mount -t cgroup2 none \(CgroupConfiguration.root))")
        }
        let path = configuration.path
        let parent = JailConfiguration.split(path).0
        var status = stat()
        guard stat(parent, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
            throw SwiftletError(.invalidConfiguration, "\(option): cannot create the cgroup: its parent \(parent) does not exist (make it first, or choose another name)")
        }
        guard lstat(path, &status) != 0 else {
            throw SwiftletError(.invalidConfiguration, "\(option): cannot create the cgroup: \(path) exists (another VM's group? choose another name, or rmdir it)")
        }
        let available = Set((Cgroup.read(parent + "/cgroup.controllers") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        let enabled = Set((Cgroup.read(parent + "/cgroup.subtree_control") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        for controller in configuration.controllers where !enabled.contains(controller) {
            guard available.contains(controller) else {
                throw SwiftletError(.invalidConfiguration, "\(option): cannot create the cgroup: \(parent) does not offer the \(controller) controller (its cgroup.controllers has: \(available.sorted().joined(separator: " ")))")
            }
            do { try Cgroup.write("+\(controller)", to: parent + "/cgroup.subtree_control") } catch {
                throw SwiftletError(.systemCall, "\(option): cannot enable the \(controller) controller in \(parent)/cgroup.subtree_control (a group with processes of its own cannot; choose a parent without)", cause: error)
            }
        }
        guard mkdir(path, 0o755) == 0 else {
            throw SwiftletError(.systemCall, "\(option): cannot create the cgroup \(path)", cause: Errno(rawValue: errno))
        }
        for (file, value) in configuration.limitFiles {
            do { try Cgroup.write(value, to: path + "/" + file) } catch {
                _ = Cgroup.remove(path)
                throw SwiftletError(.invalidConfiguration, "\(option): cannot write \(value) to \(path)/\(file)", cause: error)
            }
        }
    }

    func add(_ pid: pid_t) throws(SwiftletError) {
        do { try Cgroup.write("\(pid)", to: configuration.path + "/cgroup.procs") } catch {
            throw SwiftletError(.systemCall, "--cgroup \(configuration.name): cannot move the VMM into \(configuration.path)", cause: error)
        }
    }

    func remove() { _ = Cgroup.remove(configuration.path) }

    /// Removes the (empty) group at `path`, waiting up to 2 s for the kernel to see its last process go; nil, or
    /// what went wrong.
    static func remove(_ path: String) -> String? {
        for _ in 0..<200 {
            if rmdir(path) == 0 || errno == ENOENT { return nil }
            guard errno == EBUSY else { break }
            usleep(10_000)
        }
        return "cannot remove the cgroup \(path): \(Errno(rawValue: errno))"
    }

    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else { return nil }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }

    static func write(_ value: String, to path: String) throws(Errno) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw Errno(rawValue: written < 0 ? errno : EIO) }
    }
}
