import Glibc
import SystemPackage

/// A file descriptor with exactly one owner, closed when the owner goes away.
public final class OwnedFileDescriptor: Sendable {
    public let rawValue: Int32

    /// Takes ownership of `rawValue`.
    public init(taking rawValue: Int32) {
        self.rawValue = rawValue
    }

    /// Opens `path`. The corresponding C function is `open`.
    public convenience init(opening path: String, flags: Int32, mode: mode_t = 0) throws(Errno) {
        let fd = try retryingSystemCall { open(path, flags | O_CLOEXEC, mode) }
        self.init(taking: fd)
    }

    deinit { close(rawValue) }

    /// Writes all of `bytes`, retrying short writes and EINTR. The corresponding C function is `write`.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(Errno) {
        var offset = 0
        while offset < bytes.count {
            let written = try retryingSystemCall { write(rawValue, bytes.baseAddress! + offset, bytes.count - offset) }
            offset += written
        }
    }

    /// The size of a regular file, or of a block device (whose `st_size` is 0: its end is found with `lseek`,
    /// which moves the file offset; callers here use positioned I/O). The corresponding C functions are `fstat`
    /// and `lseek`.
    public func fileSize() throws(Errno) -> Int {
        var info = stat()
        _ = try retryingSystemCall { fstat(rawValue, &info) }
        if info.st_mode & S_IFMT == S_IFBLK {
            return Int(try retryingSystemCall { lseek(rawValue, 0, SEEK_END) })
        }
        return Int(info.st_size)
    }

    /// Whether this is a regular file or a block device: something with a size that positioned I/O can address.
    /// The corresponding C function is `fstat`.
    public func isFileOrBlockDevice() throws(Errno) -> Bool {
        var info = stat()
        _ = try retryingSystemCall { fstat(rawValue, &info) }
        return info.st_mode & S_IFMT == S_IFREG || info.st_mode & S_IFMT == S_IFBLK
    }

    /// Reads exactly `buffer.count` bytes at `offset`; fails with EIO on a short file. The corresponding C function is `pread`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(Errno) {
        var done = 0
        while done < buffer.count {
            let count = try retryingSystemCall { pread(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done)) }
            if count == 0 { throw Errno.ioError }
            done += count
        }
    }

    /// Writes all of `bytes` at `offset`, retrying short writes and EINTR (`positionedWriteAll`).
    public func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(Errno) {
        try positionedWriteAll(rawValue, bytes, at: offset)
    }
}
