import Glibc
import Swiftlet
import SwiftletHost
import Synchronization
import Testing

/// `MachineConfiguration.afterOpeningHostFiles` (where a jail drops privileges) runs once the machine has opened what
/// it names by path on the host, and before it opens the KVM device: a jailed VMM opens its images as root and
/// /dev/kvm as the jailed uid. No KVM is needed: the KVM path here does not exist.
@Suite struct SetUpOrderTests {
    private func withFile(_ body: (String) async throws -> Void) async throws {
        let path = "/tmp/swiftlet-order-test-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        try #require(fd >= 0)
        _ = ftruncate(fd, 1 << 20)
        close(fd)
        defer { unlink(path) }
        try await body(path)
    }

    private func configuration(file: String, disk: String) -> MachineConfiguration {
        var configuration = MachineConfiguration(kernelPath: file, memorySize: 64 << 20, console: .none,
                                                 kvmPath: "/nonexistent/swiftlet-order-test/kvm")
        configuration.disks = [DiskConfiguration(path: disk)]
        return configuration
    }

    private func startError(_ configuration: MachineConfiguration) async -> SwiftletError? {
        do throws(SwiftletError) {
            try await MicroVM(configuration).start()
            return nil
        } catch {
            return error
        }
    }

    @Test func theHookRunsAfterTheHostFilesAndBeforeKVM() async throws {
        try await withFile { file in
            let calls = Atomic<Int>(0)
            var configuration = configuration(file: file, disk: file)
            configuration.afterOpeningHostFiles = { calls.add(1, ordering: .relaxed) }
            let error = await startError(configuration)
            #expect(calls.load(ordering: .relaxed) == 1)
            // The hook ran, then the KVM device was opened (and is missing here).
            #expect(error?.code == .kvmUnavailable, "\(String(describing: error))")
        }
    }

    @Test func aHookErrorEndsTheSetUpBeforeKVM() async throws {
        try await withFile { file in
            var configuration = configuration(file: file, disk: file)
            configuration.afterOpeningHostFiles = { () throws(SwiftletError) in
                throw SwiftletError(.invalidConfiguration, "the jail refused")
            }
            let error = await startError(configuration)
            #expect(error?.code == .invalidConfiguration)
            #expect(error?.message == "the jail refused")
        }
    }

    @Test func aMissingDiskFailsBeforeTheHook() async throws {
        try await withFile { file in
            let calls = Atomic<Int>(0)
            var configuration = configuration(file: file, disk: "/nonexistent/swiftlet-order-test/disk.img")
            configuration.afterOpeningHostFiles = { calls.add(1, ordering: .relaxed) }
            let error = await startError(configuration)
            #expect(calls.load(ordering: .relaxed) == 0)
            #expect(error?.cause == .noSuchFileOrDirectory, "\(String(describing: error))")
            #expect(error?.message.contains("/nonexistent/swiftlet-order-test/disk.img") == true)
        }
    }
}
