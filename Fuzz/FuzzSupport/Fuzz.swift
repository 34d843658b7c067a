import CFuzzSupport
import Glibc
import Synchronization
import SwiftletHost

/// A fuzz input, read as little-endian fields. Past its end every read gives zeros, so every input decodes to
/// something and the fuzzer is free to cut inputs anywhere.
public struct FuzzInput {
    private let bytes: UnsafeRawBufferPointer
    public private(set) var offset = 0

    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }
    public var isExhausted: Bool { offset >= bytes.count }

    public mutating func u8() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    public mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    public mutating func bool() -> Bool { u8() & 1 != 0 }

    /// The next `count` bytes (fewer at the end of the input).
    public mutating func take(_ count: Int) -> UnsafeRawBufferPointer {
        let available = max(0, min(count, bytes.count - offset))
        defer { offset += available }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + available])
    }

    /// The rest of the input.
    public mutating func rest() -> UnsafeRawBufferPointer { take(remaining) }
}

/// The entry point of a fuzz target: `Fuzz.main { input in … }` hands each input to the body under libFuzzer
/// (arguments as libFuzzer takes them: corpus directories, `-runs=`, `-max_total_time=`, …).
public enum Fuzz {
    nonisolated(unsafe) private static var body: ((inout FuzzInput) -> Void)?

    public static func main(_ body: @escaping (inout FuzzInput) -> Void) -> Never {
        Self.body = body
        let callback: swiftlet_fuzz_callback = { data, size in
            let bytes = UnsafeRawBufferPointer(start: data, count: size)
            var input = FuzzInput(bytes)
            Fuzz.body!(&input)
            return 0
        }
        exit(swiftlet_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, callback))
    }

    /// An invariant the target checks on every input: a failure aborts, and libFuzzer saves the input as a crash.
    public static func check(_ condition: Bool, _ message: @autoclosure () -> String,
                             file: StaticString = #fileID, line: UInt = #line) {
        guard !condition else { return }
        let text = Array("INVARIANT FAILED (\(file):\(line)): \(message())\n".utf8)
        _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        abort()
    }

    /// SWIFTLET_FUZZ_REPORT_MEMORY=1: print the largest per-input growth seen when the run ends (how the bounds
    /// in the targets were sized: replay a corpus with it).
    nonisolated(unsafe) private static var largestGrowth = 0
    private static let reportsMemory = getenv("SWIFTLET_FUZZ_REPORT_MEMORY") != nil

    /// A line on stderr, unbuffered (an invariant failure aborts right after).
    public static func debug(_ line: String) {
        let text = Array((line + "\n").utf8)
        _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }

    /// Starts measuring what the next input makes the host allocate.
    public static func beginMemoryAccounting() { swiftlet_fuzz_memory_begin() }

    /// The most heap the current input held at once, over what was live when accounting began.
    public static var memoryGrowth: Int { Int(swiftlet_fuzz_memory_growth()) }

    /// Checks that the current input made the host hold at most `bound` bytes of heap at once: a bound that does
    /// not grow with the input (what the guest writes must not decide how much the VMM allocates).
    public static func checkMemory(bound: Int, _ what: String, file: StaticString = #fileID, line: UInt = #line) {
        let growth = memoryGrowth
        if reportsMemory, growth > largestGrowth {
            if largestGrowth == 0 {
                atexit {
                    let text = Array("memory: the most heap one input held at once was \(Fuzz.largestGrowth) bytes\n".utf8)
                    _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
                }
            }
            largestGrowth = growth
        }
        check(growth <= bound, "\(what) held \(growth) bytes of heap at once, over the bound of \(bound)", file: file, line: line)
    }
}

/// An interrupt line that counts its edges (the device's "interrupt the guest").
public final class CountingLine: InterruptLine {
    private let edges = Atomic<Int>(0)
    public init() {}
    public func trigger() { edges.add(1, ordering: .relaxed) }
    public var count: Int { edges.load(ordering: .relaxed) }
}

/// A flag a device's fatal-error callback sets (DEVICE_NEEDS_RESET).
public final class FatalFlag: Sendable {
    private let raised = Atomic<Bool>(false)
    public init() {}
    public func raise() { raised.store(true, ordering: .relaxed) }
    public func clear() { raised.store(false, ordering: .relaxed) }
    public var isRaised: Bool { raised.load(ordering: .relaxed) }
}

extension FuzzInput {
    /// Features a driver accepts: a fuzzed subset of what the device offered, always with VERSION_1 (the transport
    /// refuses FEATURES_OK without it, so a device is never activated without it).
    public mutating func features(offered: UInt64) -> UInt64 {
        (offered & u64()) | (offered & (1 << 32))
    }
}

/// A file for a target's disk image, in /dev/shm when it exists (no disk I/O per input), removed at exit.
public final class FuzzFile {
    public let path: String
    public let fd: Int32
    nonisolated(unsafe) private static var paths: [String] = []

    public init(name: String, size: Int) {
        let directory = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"
        path = "\(directory)/swiftlet-fuzz-\(name)-\(getpid())"
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        precondition(fd >= 0, "cannot create \(path)")
        precondition(ftruncate(fd, off_t(size)) == 0)
        if Self.paths.isEmpty { atexit { for path in FuzzFile.paths { unlink(path) } } }
        Self.paths.append(path)
    }

    /// The whole file's bytes (to check a read-only device wrote nothing).
    public func contents() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        precondition(count == bytes.count, "cannot read \(path)")
        return bytes
    }

    public var size: Int {
        var info = stat()
        fstat(fd, &info)
        return Int(info.st_size)
    }
}
