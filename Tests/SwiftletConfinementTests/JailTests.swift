import Glibc
import SwiftletConfinement
import SwiftletHost
import Testing

/// The jail's checks and path rules; the jail itself (namespaces, pivot, drop) is tested by booting a VM in it
/// (Tests/Integration/tests/swiftlet-jail.sh).
@Suite struct JailTests {
    /// A fresh directory under /tmp, resolved (no symbolic links), removed by `body`'s caller.
    private func withDirectory(_ body: (String) throws -> Void) throws {
        var template = Array("/tmp/swiftlet-jail-test.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let directory = try #require(made.map { String(cString: $0) })
        defer {
            for name in ["run/inner", "run"] { rmdir(directory + "/" + name) }
            rmdir(directory)
        }
        try body(directory)
    }

    private func jail(_ directory: String, uid: uid_t = 1234, gid: gid_t = 1234, kvm: String = "/dev/null",
                      netns: String? = nil, cgroup: CgroupConfiguration? = nil) -> JailConfiguration {
        JailConfiguration(directory: directory, uid: uid, gid: gid, networkNamespace: netns, cgroup: cgroup, kvmDevice: kvm,
                          fileSizeLimit: 64 << 20, threadLimit: JailConfiguration.threadLimit(cpus: 1))
    }

    @Test func socketPathsInsideTheJail() throws {
        try withDirectory { directory in
            #expect(mkdir(directory + "/run", 0o755) == 0)
            #expect(mkdir(directory + "/run/inner", 0o755) == 0)
            let jail = jail(directory)
            #expect(jail.pathInside(directory + "/v.sock") == "/v.sock")
            #expect(jail.pathInside(directory + "/run/v.sock") == "/run/v.sock")
            #expect(jail.pathInside(directory + "/run/inner/../v.sock") == "/run/v.sock")
            #expect(jail.pathInside(directory + "//run///v.sock") == "/run/v.sock")
            // Outside, or escaping with "..", or naming a directory rather than a socket in one.
            #expect(jail.pathInside("/tmp/v.sock") == nil)
            #expect(jail.pathInside(directory + "/run/../../v.sock") == nil)
            #expect(jail.pathInside(directory + "-other/v.sock") == nil)
            #expect(jail.pathInside(directory + "/missing/v.sock") == nil)
            #expect(jail.pathInside(directory + "/run/..") == nil)
            #expect(jail.pathInside(directory) == nil)
        }
    }

    @Test func cgroupNamesAreRelativePlainPaths() {
        for name in ["vm1", "swiftlet/vm-1", "a.b_c"] { #expect(CgroupConfiguration.isValidName(name), "\(name)") }
        for name in ["", "/vm1", "vm1/", "../vm1", "a/../b", ".", "a//b", "vm 1", "vm1;rm", String(repeating: "a", count: 201)] {
            #expect(!CgroupConfiguration.isValidName(name), "\(name)")
        }
    }

    @Test func cgroupLimitsNameTheirFilesAndControllers() {
        let cgroup = CgroupConfiguration(name: "swiftlet/vm1", memoryMax: 512 << 20, cpuQuota: 150_000, pidsMax: 64)
        #expect(cgroup.path == "/sys/fs/cgroup/swiftlet/vm1")
        #expect(cgroup.limitFiles.map { "\($0.file)=\($0.value)" } == ["memory.max=536870912", "cpu.max=150000 100000", "pids.max=64"])
        #expect(cgroup.controllers == ["memory", "cpu", "pids"])
        let pidsOnly = CgroupConfiguration(name: "vm2", pidsMax: 10)
        #expect(pidsOnly.limitFiles.map(\.file) == ["pids.max"])
        #expect(pidsOnly.controllers == ["pids"])
    }

    /// The supervisor refuses a bad request before it changes anything (no cgroup, no directory, no child).
    @Test func badRequestsAreRefusedWithWhatToDo() throws {
        func refusal(_ jail: JailConfiguration) -> SwiftletError? {
            do { _ = try JailSupervisor(jail, arguments: ["swiftlet"]); return nil } catch { return error }
        }
        try withDirectory { directory in
            let missing = refusal(jail(directory + "/missing"))
            #expect(missing?.code == .invalidConfiguration)
            #expect(missing?.message.contains("is not a directory: make it first") == true)
            #expect(refusal(jail("/"))?.message.contains("is the host's root") == true)
            let root = refusal(jail(directory, uid: 0))
            #expect(root?.message.contains("uid and gid 0 would keep root's powers") == true)
            #expect(refusal(jail(directory, gid: 0))?.code == .invalidConfiguration)
            let notDevice = refusal(jail(directory, kvm: directory))
            #expect(notDevice?.code == .kvmUnavailable)
            #expect(notDevice?.message.contains("is not a character device") == true)
            // A KVM node of mode 600 (as on this development host) denies any uid but its owner.
            var status = stat()
            if stat("/dev/kvm", &status) == 0, status.st_mode & 0o077 == 0, status.st_uid == 0 {
                let denied = refusal(jail(directory, kvm: "/dev/kvm"))
                #expect(denied?.code == .kvmUnavailable)
                #expect(denied?.message.contains("--uid 1234 --gid 1234 cannot open /dev/kvm") == true)
            }
            let netns = refusal(jail(directory, netns: "/etc/hostname"))
            #expect(netns?.message.contains("--netns /etc/hostname is not a network namespace") == true)
            let noNetns = refusal(jail(directory, netns: directory + "/missing"))
            #expect(noNetns?.message.contains("cannot open it") == true)
            #expect(noNetns?.cause == .noSuchFileOrDirectory)
            let badName = refusal(jail(directory, cgroup: CgroupConfiguration(name: "../escape", pidsMax: 1)))
            #expect(badName?.message.contains("a cgroup name is a relative path") == true)
            // Nothing was made: the directory is as empty as it was.
            var entry = stat()
            #expect(lstat(directory + "/dev", &entry) != 0)
        }
    }

    /// Jail.enter works only in the child a supervisor started (its own PID namespace); a test process is not one.
    @Test func enterRefusesOutsideAJailedChild() throws {
        try withDirectory { directory in
            #expect(!Jail.isJailedChild)
            do throws(SwiftletError) {
                try Jail.enter(jail(directory))
                Issue.record("Jail.enter ran in a process that is not a jailed child")
            } catch {
                #expect(error.message.contains("runs only in the VMM a JailSupervisor started"))
            }
        }
    }
}
