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

    final class Harness: Sendable {
        let loop: EventLoop
        let source: EventFd
        let done: EventFd
        let record = Record()

        init(_ scheduling: ThreadScheduling, probe: Bool = true) throws {
            loop = try EventLoop(name: "sched-test")
            source = try EventFd(nonBlocking: true)
            done = try EventFd(nonBlocking: false)
            let record = self.record
            try loop.register(source.rawValue) { [source, done] _ in
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
            try loop.start(scheduling: scheduling, workProbe: workProbe) { error in
                record.errors.withLock { $0.append(error.rawValue) }
            }
        }

        /// One round in which the sources moved `bytes`; the policy the handler saw (before the round's own update).
        func round(moving bytes: UInt64, in requests: UInt64 = 1) -> Bool {
            record.next.store(bytes, ordering: .relaxed)
            record.nextRequests.store(requests, ordering: .relaxed)
            source.signal()
            var value: UInt64 = 0
            _ = read(done.rawValue, &value, 8)
            return record.observed.withLock { $0.last! }
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
        // Quiet for longer than the window: the loop's epoll_wait times out and it goes back to SCHED_OTHER.
        usleep(UInt32(EventLoop.streamingWindowNanoseconds / 1000) * 5)
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
