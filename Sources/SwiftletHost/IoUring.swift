import CSwiftlet
import Glibc
import SystemPackage

/// An io_uring instance (io_uring(7)) for positioned, vectored reads and writes and data syncs on registered
/// ("fixed") files, its completions announced on an eventfd: what the block device's io_uring engine submits to.
///
/// Confined before it is enabled. The ring is created disabled (IORING_SETUP_R_DISABLED), its files and eventfd are
/// registered, and then restrictions (IORING_REGISTER_RESTRICTIONS) allow only READV, WRITEV and FSYNC, only on
/// fixed files (optionally drained), and of the registration calls only replacing a fixed file. A thread that took
/// over the device loop could otherwise use the ring for what its seccomp filter forbids (openat, connect, ...):
/// seccomp sees `io_uring_enter`, not the operations it submits.
///
/// Bounded by construction: the submission queue has `entries` slots and the completion queue twice as many, and the
/// owner keeps at most `entries` operations in flight, so a completion can never be dropped.
///
/// Not thread-safe: one owner (the block device, under its lock) uses it at a time.
public final class IoUring: @unchecked Sendable {
    public enum Operation: Sendable {
        /// IORING_OP_READV: `count` iovecs at `vectors`, from the file at `offset`.
        case read
        /// IORING_OP_WRITEV.
        case write
        /// IORING_OP_FSYNC with IORING_FSYNC_DATASYNC (fdatasync).
        case dataSync
    }

    /// Submission queue slots (a power of two; the kernel rounds up).
    public let entries: UInt32
    /// Signalled by the kernel whenever completions are posted (IORING_REGISTER_EVENTFD).
    public let completionEvent: EventFd
    let ring: OwnedFileDescriptor
    private let rings: UnsafeMutableRawPointer
    private let ringsLength: Int
    private let submissions: UnsafeMutableRawPointer
    private let submissionsLength: Int
    private let submissionHead: UnsafeMutableRawPointer
    private let submissionTail: UnsafeMutableRawPointer
    private let submissionMask: UInt32
    private let completionHead: UnsafeMutableRawPointer
    private let completionTail: UnsafeMutableRawPointer
    private let completionMask: UInt32
    private let completionEntries: UnsafeMutableRawPointer
    /// The submission tail as this side sees it: entries up to here are filled, the kernel has taken those up to the
    /// shared head.
    private var tail: UInt32 = 0
    /// Operations the kernel has taken and not yet completed (or whose completion was not yet reaped).
    public private(set) var inFlight = 0

    /// Sets up a ring of `entries` slots on `files` (fixed file indices 0, 1, ...). Throws the errno of the step that
    /// failed: ENOSYS on kernels without io_uring, EPERM where it is disabled (kernel.io_uring_disabled, a seccomp
    /// policy), EINVAL where the kernel lacks a feature this needs (Linux 5.10: disabled rings, restrictions).
    public init(entries: UInt32, files: [Int32]) throws(Errno) {
        var parameters = io_uring_params()
        parameters.flags = CSwiftlet_IORING_SETUP_R_DISABLED
        let fd = CSwiftlet_io_uring_setup(entries, &parameters)
        guard fd >= 0 else { throw Errno(rawValue: -fd) }
        ring = OwnedFileDescriptor(taking: fd)
        // One mapping for both rings (IORING_FEAT_SINGLE_MMAP, Linux 5.4), one for the submission entries.
        guard parameters.features & CSwiftlet_IORING_FEAT_SINGLE_MMAP != 0 else { throw Errno.notSupported }
        completionEvent = try EventFd(nonBlocking: true)
        // Files, eventfd and restrictions while the ring is disabled; then it is enabled, and restricted from then on.
        try files.withUnsafeBufferPointer { (buffer) throws(Errno) in
            try Self.register(fd, CSwiftlet_IORING_REGISTER_FILES, UnsafeMutableRawPointer(mutating: buffer.baseAddress), count: UInt32(buffer.count))
        }
        var event = completionEvent.rawValue
        try Self.register(fd, CSwiftlet_IORING_REGISTER_EVENTFD, &event, count: 1)
        var restrictions = [io_uring_restriction](repeating: io_uring_restriction(), count: 6)
        let allowed: [(UInt16, UInt8)] = [
            (CSwiftlet_IORING_RESTRICTION_REGISTER_OP, UInt8(CSwiftlet_IORING_REGISTER_FILES_UPDATE)),
            (CSwiftlet_IORING_RESTRICTION_SQE_OP, CSwiftlet_IORING_OP_READV),
            (CSwiftlet_IORING_RESTRICTION_SQE_OP, CSwiftlet_IORING_OP_WRITEV),
            (CSwiftlet_IORING_RESTRICTION_SQE_OP, CSwiftlet_IORING_OP_FSYNC),
            (CSwiftlet_IORING_RESTRICTION_SQE_FLAGS_ALLOWED, CSwiftlet_IOSQE_FIXED_FILE | CSwiftlet_IOSQE_IO_DRAIN),
            (CSwiftlet_IORING_RESTRICTION_SQE_FLAGS_REQUIRED, CSwiftlet_IOSQE_FIXED_FILE),
        ]
        for (index, rule) in allowed.enumerated() {
            CSwiftlet_io_uring_restriction(&restrictions[index], rule.0, rule.1)
        }
        try restrictions.withUnsafeMutableBufferPointer { (buffer) throws(Errno) in
            try Self.register(fd, CSwiftlet_IORING_REGISTER_RESTRICTIONS, buffer.baseAddress, count: UInt32(buffer.count))
        }
        try Self.register(fd, CSwiftlet_IORING_REGISTER_ENABLE_RINGS, nil, count: 0)

        let submissionRingLength = Int(parameters.sq_off.array) + Int(parameters.sq_entries) * 4
        let completionRingLength = Int(parameters.cq_off.cqes) + Int(parameters.cq_entries) * MemoryLayout<io_uring_cqe>.size
        let ringsLength = max(submissionRingLength, completionRingLength)
        guard let mapped = mmap(nil, ringsLength, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, off_t(CSwiftlet_IORING_OFF_SQ_RING)),
              mapped != MAP_FAILED else { throw Errno(rawValue: errno) }
        let submissionsLength = Int(parameters.sq_entries) * MemoryLayout<io_uring_sqe>.size
        guard let entriesMapped = mmap(nil, submissionsLength, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                                       off_t(CSwiftlet_IORING_OFF_SQES)), entriesMapped != MAP_FAILED else {
            let error = Errno(rawValue: errno)
            munmap(mapped, ringsLength)
            throw error
        }
        // Nothing below throws: from here on the mappings are the deinit's to undo.
        rings = mapped
        self.ringsLength = ringsLength
        submissions = entriesMapped
        self.submissionsLength = submissionsLength
        self.entries = parameters.sq_entries
        submissionHead = mapped + Int(parameters.sq_off.head)
        submissionTail = mapped + Int(parameters.sq_off.tail)
        submissionMask = (mapped + Int(parameters.sq_off.ring_mask)).load(as: UInt32.self)
        completionHead = mapped + Int(parameters.cq_off.head)
        completionTail = mapped + Int(parameters.cq_off.tail)
        completionMask = (mapped + Int(parameters.cq_off.ring_mask)).load(as: UInt32.self)
        completionEntries = mapped + Int(parameters.cq_off.cqes)
        tail = submissionTail.load(as: UInt32.self)
        // Slot i of the submission array always names entry i: entries are filled in ring order.
        let array = (mapped + Int(parameters.sq_off.array)).assumingMemoryBound(to: UInt32.self)
        for index in 0..<Int(parameters.sq_entries) { array[index] = UInt32(index) }
    }

    deinit {
        // The kernel may still be writing into buffers the owner gave it: wait for them before the owner's memory
        // can go (the owner normally has waited already, `waitForAll`).
        while inFlight > 0 {
            let result = CSwiftlet_io_uring_enter(ring.rawValue, 0, UInt32(inFlight), CSwiftlet_IORING_ENTER_GETEVENTS)
            if result < 0 && result != -EINTR { break }
            reap { _, _ in }
        }
        munmap(submissions, submissionsLength)
        munmap(rings, ringsLength)
    }

    private static func register(_ fd: Int32, _ operation: UInt32, _ argument: UnsafeMutableRawPointer?, count: UInt32) throws(Errno) {
        let result = CSwiftlet_io_uring_register(fd, operation, argument, count)
        if result < 0 { throw Errno(rawValue: -result) }
    }

    /// Puts fixed file `index` to `fd` (IORING_REGISTER_FILES_UPDATE). Operations already submitted keep the file
    /// they were submitted on.
    public func replaceFile(at index: UInt32, with fd: Int32) throws(Errno) {
        var descriptor = fd
        try withUnsafeMutablePointer(to: &descriptor) { (pointer) throws(Errno) in
            var update = io_uring_files_update(offset: index, resv: 0, fds: UInt64(UInt(bitPattern: pointer)))
            try Self.register(ring.rawValue, CSwiftlet_IORING_REGISTER_FILES_UPDATE, &update, count: 1)
        }
    }

    /// Entries filled and not yet taken by the kernel.
    public var unsubmitted: Int {
        Int(tail &- CSwiftlet_load_acquire_u32(submissionHead))
    }

    /// Fills the next submission entry: `operation` on fixed file `file` at `offset`, over `count` iovecs at
    /// `vectors` (none for a data sync), after every earlier operation has completed when `drain` (IOSQE_IO_DRAIN).
    /// `userData` comes back with its completion. false when the submission queue is full; `submit()` hands the
    /// entries to the kernel.
    public func prepare(_ operation: Operation, file: UInt32, offset: UInt64, vectors: UnsafePointer<iovec>?, count: Int,
                        drain: Bool = false, userData: UInt64) -> Bool {
        let opcode: UInt8
        var operationFlags: UInt32 = 0
        switch operation {
        case .read: opcode = CSwiftlet_IORING_OP_READV
        case .write: opcode = CSwiftlet_IORING_OP_WRITEV
        case .dataSync:
            opcode = CSwiftlet_IORING_OP_FSYNC
            operationFlags = CSwiftlet_IORING_FSYNC_DATASYNC
        }
        let flags = CSwiftlet_IOSQE_FIXED_FILE | (drain ? CSwiftlet_IOSQE_IO_DRAIN : 0)
        return prepare(opcode: opcode, flags: flags, fd: Int32(bitPattern: file), offset: offset, vectors: vectors,
                       count: count, operationFlags: operationFlags, userData: userData)
    }

    /// Any submission entry (the tests' way to check that the restrictions hold).
    func prepare(opcode: UInt8, flags: UInt8, fd: Int32, offset: UInt64, vectors: UnsafePointer<iovec>?, count: Int,
                 operationFlags: UInt32, userData: UInt64) -> Bool {
        guard unsubmitted < Int(entries) else { return false }
        let entry = submissions + Int(tail & submissionMask) * MemoryLayout<io_uring_sqe>.size
        CSwiftlet_io_uring_prepare(entry, opcode, flags, fd, offset, vectors, UInt32(count), operationFlags, userData)
        tail &+= 1
        return true
    }

    /// Hands the prepared entries to the kernel (io_uring_enter). Returns nil, or the errno when the kernel took
    /// none (EAGAIN: out of resources for now; the entries stay queued for the next call).
    @discardableResult
    public func submit() -> Errno? {
        while unsubmitted > 0 {
            CSwiftlet_store_release_u32(submissionTail, tail)
            let result = CSwiftlet_io_uring_enter(ring.rawValue, UInt32(unsubmitted), 0, 0)
            if result == -EINTR { continue }
            if result < 0 { return Errno(rawValue: -result) }
            if result == 0 { return .resourceTemporarilyUnavailable }
            inFlight += Int(result)
        }
        return nil
    }

    /// Takes back the entries the kernel has not taken (after `submit` failed), returning their user data: the
    /// owner fails those operations itself.
    public func withdrawUnsubmitted() -> [UInt64] {
        let head = CSwiftlet_load_acquire_u32(submissionHead)
        var withdrawn: [UInt64] = []
        var index = head
        while index != tail {
            let entry = submissions + Int(index & submissionMask) * MemoryLayout<io_uring_sqe>.size
            withdrawn.append(entry.load(fromByteOffset: 32, as: UInt64.self)) // io_uring_sqe.user_data
            index &+= 1
        }
        tail = head
        CSwiftlet_store_release_u32(submissionTail, tail)
        return withdrawn
    }

    /// Calls `body(userData, result)` for each completion posted (the result: bytes transferred, or -errno), at
    /// most the completion queue's size per call. Returns how many there were.
    @discardableResult
    public func reap(_ body: (UInt64, Int32) -> Void) -> Int {
        var head = completionHead.load(as: UInt32.self)
        let posted = CSwiftlet_load_acquire_u32(completionTail)
        var count = 0
        while head != posted {
            let entry = completionEntries + Int(head & completionMask) * MemoryLayout<io_uring_cqe>.size
            let userData = entry.load(as: UInt64.self)
            let result = entry.load(fromByteOffset: 8, as: Int32.self)
            head &+= 1
            count += 1
            body(userData, result)
        }
        CSwiftlet_store_release_u32(completionHead, head)
        inFlight -= count
        return count
    }

    /// Blocks until at least `count` completions are posted (or the wait fails with other than EINTR: then returns
    /// the errno).
    @discardableResult
    public func wait(forCompletions count: Int) -> Errno? {
        while true {
            let posted = Int(CSwiftlet_load_acquire_u32(completionTail) &- completionHead.load(as: UInt32.self))
            if posted >= count { return nil }
            let result = CSwiftlet_io_uring_enter(ring.rawValue, 0, UInt32(count), CSwiftlet_IORING_ENTER_GETEVENTS)
            if result < 0 && result != -EINTR { return Errno(rawValue: -result) }
        }
    }
}
