import Glibc
import SwiftletHost
import SwiftletSnapshot
import SystemPackage

/// A snapshot on disk, read and checked: its state file (vCPUs, interrupt controllers, devices, the machine's
/// configuration) and its memory file (guest RAM, mapped copy-on-write at restore). docs/SNAPSHOT.md has the format.
///
/// ```swift
/// try vm.pause()
/// try vm.snapshot(to: SnapshotPaths(state: "vm.snap", memory: "vm.mem"))
/// let snapshot = try MicroVMSnapshot(SnapshotPaths(state: "vm.snap", memory: "vm.mem"))
/// let clone = try await MicroVM.restore(from: snapshot) { $0.vsock?.socketPath = "/run/clone1.sock" }
/// ```
public struct MicroVMSnapshot: Sendable {
    public let paths: SnapshotPaths
    /// The machine the snapshot was taken of: its vCPUs, memory, devices and their host paths. A restore opens
    /// those paths again unless its overrides change them.
    public let configuration: MachineConfiguration
    let body: SnapshotDecoder

    /// Reads and checks the state file (magic, version, length, checksum, then every record a restore needs);
    /// the memory file is checked against it at restore. An error says what is wrong with which file.
    public init(_ paths: SnapshotPaths) throws(SwiftletError) {
        self.paths = paths
        let bytes = try Self.readStateFile(paths.state)
        do throws(SnapshotError) {
            body = try SnapshotFile.body(of: bytes)
            let architecture = try body.string("arch", maximumBytes: 16)
            guard architecture == "x86_64" else {
                throw .malformed("it is of an \(architecture) machine; this Swiftlet restores x86_64 ones")
            }
            configuration = try SnapshotConfiguration.load(from: body.nested("conf", context: "the machine's configuration"))
        } catch {
            throw SwiftletError(.invalidConfiguration, "cannot restore from \(paths.state): \(error.description)")
        }
    }

    static func readStateFile(_ path: String) throws(SwiftletError) -> [UInt8] {
        let file: OwnedFileDescriptor
        do { file = try OwnedFileDescriptor(opening: path, flags: O_RDONLY) } catch {
            throw SwiftletError(.invalidConfiguration, "cannot open the snapshot's state file \(path)", cause: error)
        }
        let size: Int
        do { size = try file.fileSize() } catch {
            throw SwiftletError(.io, "cannot stat the snapshot's state file \(path)", cause: error)
        }
        guard size <= SnapshotFile.maximumSize else {
            throw SwiftletError(.invalidConfiguration, "\(path) is \(size) bytes, more than a state file's \(SnapshotFile.maximumSize): it is not a Swiftlet snapshot's state file (the memory file is the other one)")
        }
        var bytes = [UInt8](repeating: 0, count: size)
        var failure: Errno?
        bytes.withUnsafeMutableBytes { buffer in
            do throws(Errno) { try file.read(into: buffer, at: 0) } catch { failure = error }
        }
        if let failure { throw SwiftletError(.io, "cannot read the snapshot's state file \(path)", cause: failure) }
        return bytes
    }
}

/// Where a snapshot's two files are: Firecracker's `snapshot_path` and `mem_file_path`.
public struct SnapshotPaths: Sendable, Equatable {
    /// The state file: vCPUs, interrupt controllers, devices, the configuration (kilobytes).
    public var state: String
    /// The memory file: guest RAM, sparse (as large as guest RAM, taking the disk space of the pages in use).
    public var memory: String
    public init(state: String, memory: String) {
        self.state = state
        self.memory = memory
    }
}

/// What a snapshot's memory file holds (Firecracker's `snapshot_type`).
public enum SnapshotKind: String, Sendable, Equatable, CaseIterable {
    /// All of guest RAM (sparse: pages that read as zeroes are holes). Restores on its own.
    case full
    /// Only the pages the guest and its devices wrote since the VM's last snapshot, or since it was restored, at
    /// their offsets (the rest are holes). Needs `MachineConfiguration.trackDirtyPages`. It restores once merged
    /// onto the memory file of the snapshot before it (`MicroVMSnapshot.mergeDiff`, `swiftlet snapshot-merge`).
    case diff
}

/// What `MicroVM.snapshot(to:)` wrote.
public struct SnapshotStatistics: Sendable, Equatable {
    public var stateBytes: Int
    /// Guest RAM: the memory file's length.
    public var memoryBytes: UInt64
    /// The memory file's bytes that were written (pages that are not all zeroes); the rest are holes.
    public var memoryWrittenBytes: UInt64

    public init(stateBytes: Int, memoryBytes: UInt64, memoryWrittenBytes: UInt64) {
        self.stateBytes = stateBytes
        self.memoryBytes = memoryBytes
        self.memoryWrittenBytes = memoryWrittenBytes
    }
}
