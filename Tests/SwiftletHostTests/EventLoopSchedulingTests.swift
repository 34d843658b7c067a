import Glibc
import Synchronization
import SwiftletHost
import Testing

/// The device loop's scheduling policy, seen from inside its handlers: SCHED_BATCH or SCHED_OTHER, set once
/// (`.batch`, `.normal`) or switched by how much each round moved (`.adaptive`).
@Suite struct EventLoopSchedulingTests {
    /// A started loop with one source: each `round(moving:)` wakes the source, whose handler adds to the work total
    /// the loop probes, and returns whether the handler ran under SCHED_BATCH.
    /// What the loop thread reports back: the work total it probes, the policy each round saw, policy errors.
    final class Record: Sendable {
        let work = Atomic<UInt64>(0)
        let requests = Atomic<UInt64>(0)
        let nextRequests = Atomic<UInt64>(0)
        /// What the next round moves: the handler adds it to `work`, so the total changes only inside rounds.
        let next = Atomic<UInt64>(0)
        let observed = Mutex<[Bool]>([])
        let errors = Mutex<[Int32]>([])
    }

    /// The loop's clock: it moves only when a test advances it, and counts the loop's reads, by which a test knows
    /// the loop has finished a round (it reads the clock twice after its handlers: the update, then epoll_wait's
    /// timeout).
    final class Clock: Sendable {
        let now = Atomic<UInt64>(1_000_000_000_000)
        let reads = Atomic<UInt64>(0)
        /// `reads` when the handler of the latest round ran.
        let readsAtHandler = Atomic<UInt64>(0)

        func read() -> UInt64 {
            reads.add(1, ordering: .sequentiallyConsistent)
            return now.load(ordering: .sequentiallyConsistent)
        }

        /// Waits (at most 10 s) until the loop has read the clock `count` times more than `since`.
        func waitForReads(_ count: UInt64, since: UInt64) {
            for _ in 0..<100_000 where reads.load(ordering: .sequentiallyConsistent) < since + count { usleep(100) }
            #expect(reads.load(ordering: .sequentiallyConsistent) >= since + count, "the loop did not finish its round")
        }
    }

    final class Harness: Sendable {
        let loop: EventLoop
        let source: EventFd
        let done: EventFd
        let record = Record()
        /// The loop's clock, which moves only when a test says: a round that comes late on a busy machine must not
        /// end the streaming window.
        let clock = Clock()
        let readsClock: Bool

        init(_ scheduling: ThreadScheduling, probe: Bool = true) throws {
            loop = try EventLoop(name: "sched-test")
            source = try EventFd(nonBlocking: true)
            done = try EventFd(nonBlocking: false)
            readsClock = scheduling == .adaptive && probe
            let record = self.record
            let clock = self.clock
            try loop.register(source.rawValue) { [source, done] _ in
                clock.readsAtHandler.store(clock.reads.load(ordering: .sequentiallyConsistent), ordering: .sequentiallyConsistent)
                _ = source.consume()
                record.work.add(record.next.exchange(0, ordering: .relaxed), ordering: .relaxed)
                record.requests.add(record.nextRequests.exchange(0, ordering: .relaxed), ordering: .relaxed)
                record.observed.withLock { $0.append(ThreadScheduling.currentThreadIsBatch) }
                done.signal()
            }
            var workProbe: (@Sendable () -> LoopWork)?
            if probe {
                workProbe = { @Sendable in
                    LoopWork(bytes: record.work.load(ordering: .relaxed), requests: record.requests.load(ordering: .relaxed))
                }
            }
            try loop.start(scheduling: scheduling, workProbe: workProbe, onSchedulingError: { error in
                record.errors.withLock { $0.append(error.rawValue) }
            }, clock: { clock.read() })
        }

        /// One round in which the sources moved `bytes`; the policy the handler saw (before the round's own update).
        /// Returns once the loop has updated its policy after the round and waits again.
        func round(moving bytes: UInt64, in requests: UInt64 = 1) -> Bool {
            record.next.store(bytes, ordering: .relaxed)
            record.nextRequests.store(requests, ordering: .relaxed)
            source.signal()
            var value: UInt64 = 0
            _ = read(done.rawValue, &value, 8)
            if readsClock { clock.waitForReads(2, since: clock.readsAtHandler.load(ordering: .sequentiallyConsistent)) }
            return record.observed.withLock { $0.last! }
        }

        /// Moves the loop's clock on by `nanoseconds`, and waits until the loop's epoll_wait has timed out once (it
        /// waits at most the streaming window in real time) and the loop has updated its policy at the new time.
        func pass(_ nanoseconds: UInt64) {
            let since = clock.reads.load(ordering: .sequentiallyConsistent)
            clock.now.add(nanoseconds, ordering: .sequentiallyConsistent)
            clock.waitForReads(2, since: since)
        }

        /// Stops the loop (so that its last round's counts are in) and returns its statistics.
        func finish() -> EventLoop.Statistics {
            loop.stop()
            return loop.statistics
        }

        deinit { loop.stop() }
    }

    @Test func batchRunsEveryRoundUnderSchedBatch() throws {
        let harness = try Harness(.batch)
        #expect(harness.round(moving: 0) == true)
        #expect(harness.round(moving: 1 << 20) == true)
        #expect(harness.record.errors.withLock { $0 }.isEmpty)
        #expect(harness.finish() == EventLoop.Statistics(rounds: 2, batchRounds: 2, batchSwitches: 1))
    }

    @Test func normalNeverSwitches() throws {
        let harness = try Harness(.normal)
        #expect(harness.round(moving: 1 << 20) == false)
        #expect(harness.round(moving: 1 << 20) == false)
    }

    @Test func adaptiveBatchesWhileStreamingAndFallsBackWhenQuiet() throws {
        let harness = try Harness(.adaptive)
        let streaming = EventLoop.streamingRoundBytes
        #expect(harness.round(moving: 100) == false)           // a small request: SCHED_OTHER
        #expect(harness.round(moving: 100) == false)
        #expect(harness.round(moving: streaming) == false)     // this round streamed: the next one batches
        #expect(harness.round(moving: 100) == true)            // small rounds within the window stay batched
        #expect(harness.round(moving: streaming * 4) == true)
        // Quiet for longer than the window: the loop's epoll_wait times out, sees the clock past the window and goes
        // back to SCHED_OTHER.
        harness.pass(EventLoop.streamingWindowNanoseconds * 5)
        #expect(harness.round(moving: 100) == false)
        #expect(harness.record.errors.withLock { $0 }.isEmpty)
        // Rounds 4 and 5 ran batched; the timeout that ended the window is not a round.
        #expect(harness.finish() == EventLoop.Statistics(rounds: 6, batchRounds: 2, batchSwitches: 1))
    }

    @Test func adaptiveGivesUpBatchingThatDoesNotPay() throws {
        // Batched rounds that stay small (a guest busy with other work, the device waiting for the tick): back to
        // SCHED_OTHER, and no batching again during the hold-off even for a streaming round.
        let harness = try Harness(.adaptive)
        let small = EventLoop.payingRoundBytes / 8       // counted (at least countedRoundBytes), far below paying
        #expect(small >= EventLoop.countedRoundBytes && small < EventLoop.streamingRoundBytes)
        #expect(harness.round(moving: EventLoop.streamingRoundBytes) == false)
        #expect(harness.round(moving: small) == true)
        #expect(harness.round(moving: small) == true)
        #expect(harness.round(moving: small) == true)     // the average drops below paying here
        #expect(harness.round(moving: EventLoop.streamingRoundBytes * 2) == false)
        #expect(harness.round(moving: EventLoop.streamingRoundBytes * 2) == false) // held off
        #expect(harness.record.errors.withLock { $0 }.isEmpty)
        #expect(harness.finish() == EventLoop.Statistics(rounds: 6, batchRounds: 3, batchSwitches: 1))
    }

    @Test func tinyBatchedRoundsDoNotCount() throws {
        // ACKs and other small packets between the big rounds of a stream neither keep nor end batching.
        let harness = try Harness(.adaptive)
        #expect(harness.round(moving: EventLoop.streamingRoundBytes) == false)
        for _ in 0..<20 {
            #expect(harness.round(moving: EventLoop.countedRoundBytes - 1) == true)
            #expect(harness.round(moving: EventLoop.payingRoundBytes) == true)
        }
        #expect(harness.finish().batchSwitches == 1)
    }

    @Test func smallRequestsDoNotMakeAStream() throws {
        // 1.5 KiB frames (TCP without TSO) or 4 KiB blocks, many to a round: not a stream, never batched.
        let harness = try Harness(.adaptive)
        let small = EventLoop.streamingRequestBytes / 2
        for _ in 0..<10 { #expect(harness.round(moving: small * 16, in: 16) == false) }
        #expect(harness.round(moving: EventLoop.streamingRoundBytes, in: 1) == false) // one large request: a stream
        #expect(harness.round(moving: small * 16, in: 16) == true)
        #expect(harness.finish().batchSwitches == 1)
    }

    @Test func adaptiveWithoutAProbeIsNormal() throws {
        let harness = try Harness(.adaptive, probe: false)
        #expect(harness.round(moving: 1 << 20) == false)
        #expect(harness.round(moving: 1 << 20) == false)
    }

    @Test func aRoundOfSmallRequestsDoesNotCountAsStreaming() throws {
        // Many small rounds add up past the threshold, but no single round moved that much.
        let harness = try Harness(.adaptive)
        for _ in 0..<40 { #expect(harness.round(moving: EventLoop.streamingRoundBytes / 8) == false) }
        #expect(harness.finish() == EventLoop.Statistics(rounds: 40, batchRounds: 0, batchSwitches: 0))
    }
}
