import CSwiftlet
import Glibc
import SystemPackage

/// Runs a system call that returns -1 and sets errno on failure, retrying on EINTR, and throws the errno.
@inline(__always)
public func retryingSystemCall<T: FixedWidthInteger>(_ body: () -> T) throws(Errno) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno(rawValue: errno)
        if error != .interrupted { throw error }
    }
}

/// Writes all of `bytes` to `fd` at `offset`, retrying short writes and EINTR; a write of nothing is an I/O error
/// (no progress). The corresponding C function is `pwrite`.
public func positionedWriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) throws(Errno) {
    var done = 0
    while done < bytes.count {
        let count = try retryingSystemCall { pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done)) }
        guard count > 0 else { throw Errno.ioError }
        done += count
    }
}

/// checkedIoctl(2) with a pointer argument. Does not retry EINTR: KVM_RUN reports a kick that way.
/// The corresponding C function is `ioctl`.
@inline(__always)
public func checkedIoctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) throws(Errno) -> Int32 {
    let result = CSwiftlet_ioctl_ptr(fd, request, argument)
    if result == -1 { throw Errno(rawValue: errno) }
    return result
}

/// checkedIoctl(2) with an integer argument. The corresponding C function is `ioctl`.
@inline(__always)
public func checkedIoctl(_ fd: Int32, _ request: UInt, value: UInt) throws(Errno) -> Int32 {
    let result = CSwiftlet_ioctl_value(fd, request, value)
    if result == -1 { throw Errno(rawValue: errno) }
    return result
}

/// checkedIoctl(2) with a typed in/out argument. The corresponding C function is `ioctl`.
@inline(__always)
public func ioctl<T>(_ fd: Int32, _ request: UInt, _ argument: inout T) throws(Errno) -> Int32 {
    let result = withUnsafeMutablePointer(to: &argument) { CSwiftlet_ioctl_ptr(fd, request, $0) }
    if result == -1 { throw Errno(rawValue: errno) }
    return result
}
