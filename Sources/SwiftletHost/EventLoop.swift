import CSwiftlet
import Glibc
import Synchronization
import SystemPackage

/// An epoll loop on a dedicated thread: device work (queue notifications arriving as ioeventfds, TAP and socket
/// fds, timers) runs here, never on vCPU threads. Sources are registered before `start()`; the table of handlers
/// is then fixed, so dispatching an event takes no lock.
public final class EventLoop: Sendable {
    public typealias Handler = @Sendable (_ events: UInt32) -> Void

    private let epoll: OwnedFileDescriptor
    private let stopEvent: EventFd
    /// `pause()`: the loop parks at the end of its round, at `pauseGate`, until `resume()`.
    private let pauseEvent: EventFd
    private let pauseGate = ParkingGate()
    private let handlers = Mutex<[Handler]>([])
    private let roundEndHandlers = Mutex<[@Sendable () -> Void]>([])
    private let pauseHandlers = Mutex<[@Sendable () -> Void]>([])
    private let thread = Mutex<HostThread?>(nil)
    private let counters = Counters()
    public let name: String

    /// The loop's rounds (wake-ups that handled at least one source), those it ran under SCHED_BATCH, and how
    /// often it switched to SCHED_BATCH (`ThreadScheduling.adaptive`).
    public struct Statistics: Sendable, Equatable {
        public var rounds: UInt64
        public var batchRounds: UInt64
        public var batchSwitches: UInt64
        public init(rounds: UInt64, batchRounds: UInt64, batchSwitches: UInt64) {
            self.rounds = rounds
            self.batchRounds = batchRounds
            self.batchSwitches = batchSwitches
        }
    }
    public var statistics: Statistics {
        Statistics(rounds: counters.rounds.load(ordering: .relaxed), batchRounds: counters.batchRounds.load(ordering: .relaxed),
                   batchSwitches: counters.batchSwitches.load(ordering: .relaxed))
    }
    final class Counters: Sendable {
        let rounds = Atomic<UInt64>(0)
        let batchRounds = Atomic<UInt64>(0)
        let batchSwitches = Atomic<UInt64>(0)
    }

    public init(name: String) throws(SwiftletError) {
        self.name = name
        do {
            epoll = OwnedFileDescriptor(taking: try retryingSystemCall { epoll_create1(Int32(EPOLL_CLOEXEC)) })
            stopEvent = try EventFd(nonBlocking: true)
            pauseEvent = try EventFd(nonBlocking: true)
        } catch {
            throw SwiftletError(.systemCall, "cannot create the \(name) event loop", cause: error)
        }
        try add(stopEvent.rawValue, token: Self.stopToken, events: UInt32(EPOLLIN.rawValue))
        try add(pauseEvent.rawValue, token: Self.pauseToken, events: UInt32(EPOLLIN.rawValue))
    }

    private static let stopToken = UInt64.max, pauseToken = UInt64.max - 1

    private func add(_ fd: Int32, token: UInt64, events: UInt32) throws(SwiftletError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        do { _ = try retryingSystemCall { epoll_ctl(epoll.rawValue, EPOLL_CTL_ADD, fd, &event) } } catch {
            throw SwiftletError(.systemCall, "cannot add fd \(fd) to the \(name) event loop", cause: error)
        }
    }

    /// A registered source, for changing what it waits for (`setInterest`).
    public struct Registration: Sendable {
        public let fd: Int32
        let token: UInt64
    }

    /// Calls `handler` on the loop thread whenever `fd` is ready (level-triggered unless `events` says otherwise).
    /// The caller keeps `fd` open while the loop runs.
    @discardableResult
    public func register(_ fd: Int32, events: UInt32 = UInt32(EPOLLIN.rawValue), _ handler: @escaping Handler) throws(SwiftletError) -> Registration {
        let token = try handlers.withLock { (handlers) throws(SwiftletError) -> Int in
            guard thread.withLock({ $0 == nil }) else {
                throw SwiftletError(.invalidConfiguration, "event sources must be registered before the \(name) loop starts")
            }
            handlers.append(handler)
            return handlers.count - 1
        }
        try add(fd, token: UInt64(token), events: events)
        return Registration(fd: fd, token: UInt64(token))
    }

    /// Calls `handler` on the loop thread after each round: once the sources that one epoll_wait reported ready
    /// have all been handled. A device that completed work for several of its sources in a round raises one
    /// interrupt for all of it here. Registered before `start()`, like the sources.
    public func registerRoundEnd(_ handler: @escaping @Sendable () -> Void) throws(SwiftletError) {
        guard thread.withLock({ $0 == nil }) else {
            throw SwiftletError(.invalidConfiguration, "event sources must be registered before the \(name) loop starts")
        }
        roundEndHandlers.withLock { $0.append(handler) }
    }

    /// Calls `handler` on the loop thread when a `pause()` parks it, before it parks: a device with work in flight
    /// outside the loop's rounds (the block device's io_uring requests) finishes it there, so that a paused machine
    /// has nothing in flight. Registered before `start()`, like the sources.
    public func registerPause(_ handler: @escaping @Sendable () -> Void) throws(SwiftletError) {
        guard thread.withLock({ $0 == nil }) else {
            throw SwiftletError(.invalidConfiguration, "event sources must be registered before the \(name) loop starts")
        }
        pauseHandlers.withLock { $0.append(handler) }
    }

    /// Changes the events a source waits for; 0 parks it (a device with nowhere to put input stops reading). Any
    /// thread may call it. The corresponding C function is `epoll_ctl(EPOLL_CTL_MOD)`.
    public func setInterest(_ registration: Registration, events: UInt32) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = registration.token
        _ = epoll_ctl(epoll.rawValue, EPOLL_CTL_MOD, registration.fd, &event)
    }

    /// A round of the loop that moved at least this many bytes (`workProbe`), in requests of `streamingRequestBytes`
    /// or more on average, counts as streaming.
    public static let streamingRoundBytes: UInt64 = 16 << 10
    /// Small requests (1.5 KiB frames without TSO, 4 KiB blocks) do not make a stream: batching them bought nothing
    /// measurable in the lab, and they stay under SCHED_OTHER.
    public static let streamingRequestBytes: UInt64 = 8 << 10
    /// Under `.adaptive`, the loop stays under SCHED_BATCH this long after its last streaming round.
    public static let streamingWindowNanoseconds: UInt64 = 10_000_000
    /// Under `.adaptive`, batching pays while the rounds it yields move this much on average (a moving average over
    /// rounds of at least `countedRoundBytes`); below it, the guest keeps its vCPU busy with other work and the
    /// device only waits for the scheduler tick, so the loop goes back to SCHED_OTHER for `holdOffNanoseconds`.
    public static let payingRoundBytes: UInt64 = 64 << 10
    /// Rounds smaller than this (a lone ACK or control packet) do not count for or against batching.
    public static let countedRoundBytes: UInt64 = 4 << 10
    public static let holdOffNanoseconds: UInt64 = 1_000_000_000

    /// Starts the loop thread, scheduled by `scheduling` (see `ThreadScheduling`). `workProbe`, called on the loop
    /// thread after each round, returns running totals of the bytes and requests its sources moved; `.adaptive` needs it and
    /// behaves as `.normal` without it. `onSchedulingError` is called on the loop thread when the policy cannot be
    /// set; the loop then stays under SCHED_OTHER. `prologue` runs first on the loop thread (its seccomp filter);
    /// when it returns false, the thread ends without running the loop. `clock` (CLOCK_MONOTONIC nanoseconds) times
    /// `.adaptive`'s streaming window and hold-off; tests give one they advance themselves.
    public func start(scheduling: ThreadScheduling = .normal, workProbe: (@Sendable () -> LoopWork)? = nil,
                      onSchedulingError: (@Sendable (Errno) -> Void)? = nil,
                      prologue: (@Sendable () -> Bool)? = nil,
                      clock: @escaping @Sendable () -> UInt64 = { monotonicNanoseconds() }) throws(SwiftletError) {
        let table = handlers.withLock { $0 }
        let roundEnd = roundEndHandlers.withLock { $0 }
        let onPause = pauseHandlers.withLock { $0 }
        let epoll = self.epoll
        let stopFd = stopEvent.rawValue
        let pause = (event: pauseEvent, gate: pauseGate)
        let counters = self.counters
        do {
            let started = try HostThread(name: name) {
                if let prologue, !prologue() { return }
                var policy = SchedulingState(scheduling, workProbe: workProbe, counters: counters, onError: onSchedulingError)
                EventLoop.run(epoll: epoll.rawValue, stopFd: stopFd, pause: pause, handlers: table, roundEnd: roundEnd,
                              onPause: onPause, policy: &policy, clock: clock)
            }
            thread.withLock { $0 = started }
        } catch {
            throw SwiftletError(.systemCall, "cannot start the \(name) event loop thread", cause: error)
        }
    }

    private static func run(epoll: Int32, stopFd: Int32, pause: (event: EventFd, gate: ParkingGate), handlers: [Handler],
                            roundEnd: [@Sendable () -> Void], onPause: [@Sendable () -> Void], policy: inout SchedulingState, clock: @Sendable () -> UInt64) {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        var pauseAsked = false
        pause.gate.park() // paused before it started (a restored machine that stays paused)
        while true {
            if pauseAsked {
                pauseAsked = false
                for handler in onPause { handler() }
                pause.gate.park()
            }
            let timeout = policy.timeoutMilliseconds(now: policy.adaptive ? clock() : 0)
            let count = events.withUnsafeMutableBufferPointer { epoll_wait(epoll, $0.baseAddress, Int32($0.count), timeout) }
            if count < 0 {
                if errno == EINTR { continue }
                return
            }
            for index in 0..<Int(count) {
                let token = events[index].data.u64
                if token == stopToken { return }
                if token == pauseToken {
                    _ = pause.event.consume()
                    pauseAsked = true
                    continue
                }
                handlers[Int(token)](events[index].events)
            }
            if count > 0 {
                for handler in roundEnd { handler() }
                policy.counters.rounds.add(1, ordering: .relaxed)
                if policy.batch { policy.counters.batchRounds.add(1, ordering: .relaxed) }
            }
            if policy.adaptive { policy.update(now: clock(), round: count > 0) }
        }
    }

    /// Parks the loop thread at the end of its current round, once the handlers it is running have returned, and
    /// returns when it has parked: no handler runs until `resume()`, and the sources wait (level-triggered ones are
    /// reported again). Before `start()`, the loop will park before its first round. Called from any thread but the
    /// loop's own.
    public func pause() {
        pauseGate.close()
        guard thread.withLock({ $0 != nil }) else { return } // started later, the thread parks before its first round
        pauseEvent.signal()
        _ = pauseGate.waitForParked(1)
    }

    /// Lets a paused loop go on.
    public func resume() { pauseGate.open() }

    /// Stops the loop and joins its thread; handlers have returned when this does.
    public func stop() {
        guard let running = thread.withLock({ (current: inout HostThread?) -> HostThread? in
            defer { current = nil }
            return current
        }) else { return }
        pauseGate.cancel()
        stopEvent.signal()
        running.join()
    }
}
