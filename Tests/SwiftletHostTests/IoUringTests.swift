import CSwiftlet
import Glibc
@testable import SwiftletHost
import SystemPackage
import Testing

/// A ring on a temporary file, or nil where this kernel refuses io_uring.
private func makeRing(_ path: String) -> (IoUring, Int32)? {
    let fd = open(path, O_RDWR)
    guard fd >= 0, let ring = try? IoUring(entries: 8, files: [fd]) else { return nil }
    return (ring, fd)
}

private let available: Bool = {
    var template = Array("/tmp/swiftlet-uring-XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    defer { close(fd); unlink(String(cString: template)) }
    return (try? IoUring(entries: 2, files: [fd])) != nil
}()

/// `IoUring`: positioned vectored I/O on a fixed file, completions on the eventfd, and the restrictions that keep the
/// ring to what the block engine needs.
@Suite(.enabled(if: available, "io_uring is refused on this host"))
final class IoUringTests {
    let path: String

    init() {
        var template = Array("/tmp/swiftlet-uring-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        path = String(cString: template)
        let bytes = [UInt8](repeating: 0x11, count: 8192)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
    deinit { unlink(path) }

    /// Every completion posted, after waiting for `count`.
    func results(_ ring: IoUring, count: Int) -> [UInt64: Int32] {
        #expect(ring.wait(forCompletions: count) == nil)
        var results: [UInt64: Int32] = [:]
        ring.reap { results[$0] = $1 }
        return results
    }

    @Test func writesReadsAndSyncsOnTheFixedFile() throws {
        let (ring, fd) = try #require(makeRing(path))
        defer { close(fd) }
        var out = [UInt8](repeating: 0xab, count: 1024)
        var back = [UInt8](repeating: 0, count: 4096)
        out.withUnsafeMutableBytes { outBytes in
            back.withUnsafeMutableBytes { backBytes in
                var write = iovec(iov_base: outBytes.baseAddress, iov_len: 1024)
                #expect(ring.prepare(.write, file: 0, offset: 512, vectors: &write, count: 1, userData: 1))
                #expect(ring.submit() == nil && ring.inFlight == 1)
                #expect(results(ring, count: 1) == [1: 1024])
                var read = [iovec(iov_base: backBytes.baseAddress, iov_len: 2048),
                            iovec(iov_base: backBytes.baseAddress! + 2048, iov_len: 2048)]
                // The file is 8 KiB: a read from 6 KiB comes back short, at its end.
                #expect(ring.prepare(.read, file: 0, offset: 6144, vectors: &read, count: 2, userData: 2))
                #expect(ring.prepare(.dataSync, file: 0, offset: 0, vectors: nil, count: 0, drain: true, userData: 3))
                #expect(ring.submit() == nil)
                #expect(results(ring, count: 2) == [2: 2048, 3: 0])
                #expect(ring.inFlight == 0)
            }
        }
        var check = [UInt8](repeating: 0, count: 1026)
        _ = check.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 1026, 511) }
        #expect(check.first == 0x11 && check.last == 0x11 && check[1...1024].allSatisfy { $0 == 0xab })
        #expect(back[0..<2048].allSatisfy { $0 == 0x11 })
        var event = pollfd(fd: ring.completionEvent.rawValue, events: Int16(POLLIN), revents: 0)
        #expect(poll(&event, 1, 0) == 1) // the completions were announced
    }

    @Test func operationsOutsideTheRestrictionsAreRefused() throws {
        let (ring, fd) = try #require(makeRing(path))
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        buffer.withUnsafeMutableBytes { bytes in
            var vector = iovec(iov_base: bytes.baseAddress, iov_len: 512)
            // NOP is not among READV, WRITEV and FSYNC; a READV on a plain fd lacks IOSQE_FIXED_FILE, which every
            // submission must have.
            #expect(ring.prepare(opcode: 0, flags: CSwiftlet_IOSQE_FIXED_FILE, fd: 0, offset: 0, vectors: nil, count: 0,
                                 operationFlags: 0, userData: 1))
            #expect(ring.prepare(opcode: CSwiftlet_IORING_OP_READV, flags: 0, fd: fd, offset: 0, vectors: &vector, count: 1,
                                 operationFlags: 0, userData: 2))
            #expect(ring.submit() == nil)
            #expect(results(ring, count: 2) == [1: -EACCES, 2: -EACCES])
        }
        // Registering anything but a fixed file's replacement is refused too (another eventfd, here).
        var event = ring.completionEvent.rawValue
        #expect(CSwiftlet_io_uring_register(ring.ring.rawValue, CSwiftlet_IORING_REGISTER_EVENTFD, &event, 1) == -EACCES)
    }

    @Test func aReplacedFileTakesTheNextSubmissions() throws {
        let (ring, fd) = try #require(makeRing(path))
        defer { close(fd) }
        var template = Array("/tmp/swiftlet-uring-XXXXXX".utf8CString)
        let other = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        defer { close(other); unlink(String(cString: template)) }
        let bytes = [UInt8](repeating: 0x22, count: 512)
        _ = bytes.withUnsafeBytes { write(other, $0.baseAddress, 512) }
        try ring.replaceFile(at: 0, with: other)
        var buffer = [UInt8](repeating: 0, count: 512)
        buffer.withUnsafeMutableBytes { raw in
            var vector = iovec(iov_base: raw.baseAddress, iov_len: 512)
            #expect(ring.prepare(.read, file: 0, offset: 0, vectors: &vector, count: 1, userData: 7))
            #expect(ring.submit() == nil)
            #expect(results(ring, count: 1) == [7: 512])
        }
        #expect(buffer.allSatisfy { $0 == 0x22 })
    }
}
