import CSwiftlet
import SystemPackage

/// How a device thread is scheduled against the vCPU threads when they share a CPU.
///
/// A guest notification (an ioeventfd) wakes the device thread. Under Linux's default policy (SCHED_OTHER) the woken
/// thread usually preempts the vCPU thread on the spot when they share a CPU: the device then handles the one
/// request just queued, the guest resumes, queues the next, exits again, and the two go in lock step, one request
/// and several context switches at a time. Under SCHED_BATCH a woken thread never preempts the running one; it runs
/// when the vCPU thread blocks (the guest went idle, HLT) or at the scheduler tick, and then finds everything the
/// guest queued meanwhile, while the guest, seeing the device busy (EVENT_IDX), stopped notifying. That is what a
/// stream wants; a lone small request wants the opposite, since it waits for the guest to go idle first.
/// Where the device thread finds an idle CPU when it wakes, the policies behave alike: nothing is preempted.
public enum ThreadScheduling: String, Sendable, CaseIterable {
    /// SCHED_BATCH while the devices stream (a round of the loop moved at least `EventLoop.streamingRoundBytes`, in
    /// requests of `EventLoop.streamingRequestBytes` or more on average, in the last
    /// `EventLoop.streamingWindowNanoseconds`) and batching pays (batched rounds average at least
    /// `EventLoop.payingRoundBytes`, else SCHED_OTHER for `EventLoop.holdOffNanoseconds`), SCHED_OTHER otherwise:
    /// batches under load, answers a lone request at once. The default for device threads.
    case adaptive
    /// SCHED_BATCH always: batches device work behind a running vCPU on a shared CPU.
    case batch
    /// SCHED_OTHER always: the device thread preempts a vCPU that shares its CPU as soon as it wakes.
    case normal

    /// Sets the calling thread's policy: SCHED_BATCH when `batch`, SCHED_OTHER otherwise. The corresponding C
    /// function is `sched_setscheduler(0, ...)`, which on Linux applies to the calling thread only.
    public static func setCurrentThread(batch: Bool) throws(Errno) {
        let result = CSwiftlet_set_thread_batch(batch ? 1 : 0)
        if result < 0 { throw Errno(rawValue: -result) }
    }

    /// Whether the calling thread runs under SCHED_BATCH. The corresponding C function is `sched_getscheduler(0)`.
    public static var currentThreadIsBatch: Bool { CSwiftlet_thread_is_batch() == 1 }
}

extension EventLoop {
    /// The loop thread's scheduling policy, switched between SCHED_OTHER and SCHED_BATCH under `.adaptive`.
    struct SchedulingState {
        let adaptive: Bool
        let workProbe: (@Sendable () -> LoopWork)?
        let counters: Counters
        let onError: (@Sendable (Errno) -> Void)?
        private(set) var batch = false
        private var failed = false
        private var lastWork = LoopWork(bytes: 0, requests: 0)
        private var lastStreaming: UInt64 = 0
        /// Moving average (weight 1/4) of the counted rounds' bytes under SCHED_BATCH.
        private var batchedAverage: UInt64 = 0
        /// No SCHED_BATCH before this (CLOCK_MONOTONIC ns), after batching did not pay.
        private var holdUntil: UInt64 = 0

        init(_ scheduling: ThreadScheduling, workProbe: (@Sendable () -> LoopWork)?, counters: Counters,
             onError: (@Sendable (Errno) -> Void)?) {
            adaptive = scheduling == .adaptive && workProbe != nil
            self.workProbe = adaptive ? workProbe : nil
            self.counters = counters
            self.onError = onError
            lastWork = self.workProbe?() ?? LoopWork(bytes: 0, requests: 0)
            if scheduling == .batch { set(batch: true) }
        }

        private mutating func set(batch: Bool) {
            guard !failed else { return }
            do throws(Errno) {
                try ThreadScheduling.setCurrentThread(batch: batch)
                self.batch = batch
                if batch { counters.batchSwitches.add(1, ordering: .relaxed) }
            } catch {
                failed = true
                onError?(error)
            }
        }

        /// epoll_wait's timeout: under adaptive SCHED_BATCH, when the streaming window ends (-1: none).
        func timeoutMilliseconds(now: UInt64) -> Int32 {
            guard adaptive && batch else { return -1 }
            let end = lastStreaming + EventLoop.streamingWindowNanoseconds
            return now >= end ? 0 : Int32((end - now + 999_999) / 1_000_000)
        }

        /// After a round (or a timeout, `round` false): SCHED_BATCH if it streamed, SCHED_OTHER once the window passed
        /// or when batched rounds stay small (then not again for a while).
        mutating func update(now: UInt64, round: Bool) {
            guard adaptive, let workProbe else { return }
            if round {
                let work = workProbe()
                let moved = work.bytes &- lastWork.bytes
                let requests = max(work.requests &- lastWork.requests, 1)
                lastWork = work
                if batch && moved >= EventLoop.countedRoundBytes {
                    batchedAverage = (batchedAverage * 3 + moved) / 4
                    if batchedAverage < EventLoop.payingRoundBytes {
                        set(batch: false)
                        holdUntil = now + EventLoop.holdOffNanoseconds
                        return
                    }
                }
                if moved >= EventLoop.streamingRoundBytes && moved / requests >= EventLoop.streamingRequestBytes {
                    lastStreaming = now
                    if !batch && now >= holdUntil {
                        set(batch: true)
                        batchedAverage = 2 * EventLoop.payingRoundBytes // a few small rounds are not yet a verdict
                    }
                    return
                }
            }
            if batch && now &- lastStreaming >= EventLoop.streamingWindowNanoseconds { set(batch: false) }
        }
    }
}

/// Running totals of what a loop's sources moved: bytes, and the requests (frames, block requests, packets) they
/// came in.
public struct LoopWork: Sendable, Equatable {
    public var bytes: UInt64
    public var requests: UInt64
    public init(bytes: UInt64, requests: UInt64) {
        self.bytes = bytes
        self.requests = requests
    }
}
