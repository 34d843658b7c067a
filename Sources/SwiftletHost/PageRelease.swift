import Glibc
import SystemPackage

/// Gives `count` bytes of a private anonymous mapping at `pointer` back to the kernel: the memory is freed now and
/// reads as zeroes when next touched. `pointer` and `count` must be multiples of the host page size.
/// The corresponding C function is `madvise(MADV_DONTNEED)`.
public func discardAnonymousPages(_ pointer: UnsafeMutableRawPointer, count: Int) throws(Errno) {
    _ = try retryingSystemCall { madvise(pointer, count, MADV_DONTNEED) }
}

/// The host's page size in bytes. The corresponding C function is `sysconf(_SC_PAGESIZE)`.
public let hostPageSize: UInt64 = UInt64(sysconf(Int32(_SC_PAGESIZE)))
