import Glibc
import Synchronization
import SwiftletHost
import Testing

/// `EventLoop.pause()`: the loop parks once its round is done, no handler runs until `resume()`, and the source's
/// events wait for it (a snapshot reads the devices' state meanwhile).
@Suite struct EventLoopPauseTests {
    final class Count: Sendable {
        let handled = Atomic<Int>(0)
        func waitFor(_ value: Int) -> Bool {
            for _ in 0..<10_000 where handled.load(ordering: .acquiring) < value { usleep(1000) }
            return handled.load(ordering: .acquiring) >= value
        }
    }

    @Test func aPausedLoopRunsNoHandlerUntilResumed() throws {
        let loop = try EventLoop(name: "pause-test")
        let source = try EventFd(nonBlocking: true)
        let count = Count()
        try loop.register(source.rawValue) { _ in
            _ = source.consume()
            count.handled.add(1, ordering: .releasing)
        }
        try loop.start()
        defer { loop.stop() }
        source.signal()
        #expect(count.waitFor(1))
        loop.pause()
        source.signal()
        usleep(50_000)
        #expect(count.handled.load(ordering: .acquiring) == 1, "a handler ran while the loop was paused")
        loop.resume()
        #expect(count.waitFor(2))
        // Paused again, and stopped while paused: stop does not wait for a resume.
        loop.pause()
    }

    @Test func pauseHandlersRunOnTheLoopThreadBeforeItParks() throws {
        let loop = try EventLoop(name: "pause-hook")
        let source = try EventFd(nonBlocking: true)
        let rounds = Count(), paused = Count()
        let handlerThread = Atomic<UInt64>(0), sourceThread = Atomic<UInt64>(0)
        try loop.register(source.rawValue) { _ in
            _ = source.consume()
            sourceThread.store(UInt64(pthread_self()), ordering: .relaxed)
            rounds.handled.add(1, ordering: .releasing)
        }
        try loop.registerPause {
            handlerThread.store(UInt64(pthread_self()), ordering: .relaxed)
            paused.handled.add(1, ordering: .releasing)
        }
        try loop.start()
        defer { loop.stop() }
        source.signal()
        #expect(rounds.waitFor(1)) // the loop is running its rounds
        loop.pause() // returns once parked: the handler has run by then, on the loop's thread
        #expect(paused.handled.load(ordering: .acquiring) == 1)
        #expect(handlerThread.load(ordering: .relaxed) == sourceThread.load(ordering: .relaxed))
        loop.resume()
        source.signal()
        #expect(rounds.waitFor(2)) // it ran again (a resume and a pause at once may leave it parked throughout)
        loop.pause()
        #expect(paused.handled.load(ordering: .acquiring) == 2)
        loop.resume()
        #expect(throws: SwiftletError.self) { try loop.registerPause {} } // after start: refused
    }

    @Test func aLoopPausedBeforeItStartsParksBeforeItsFirstRound() throws {
        let loop = try EventLoop(name: "pause-early")
        let source = try EventFd(nonBlocking: true)
        let count = Count()
        try loop.register(source.rawValue) { _ in
            _ = source.consume()
            count.handled.add(1, ordering: .releasing)
        }
        source.signal() // pending before the start, as a restored device's queue notifications are
        loop.pause()
        try loop.start()
        defer { loop.stop() }
        usleep(50_000)
        #expect(count.handled.load(ordering: .acquiring) == 0)
        loop.resume()
        #expect(count.waitFor(1))
    }
}
