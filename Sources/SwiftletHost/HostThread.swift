import CSwiftlet
import Glibc
import SystemPackage

/// A dedicated OS thread for a blocking loop (KVM_RUN, epoll_wait): never the Swift concurrency pool.
public final class HostThread: Sendable {
    private final class Context {
        let body: () -> Void
        init(body: @escaping () -> Void) { self.body = body }
    }

    private let thread: pthread_t

    /// Starts `body` on a new thread called `name` (at most 15 characters are kept).
    public init(name: String, _ body: @escaping @Sendable () -> Void) throws(Errno) {
        let context = Unmanaged.passRetained(Context(body: {
            _ = String(name.prefix(15)).withCString { CSwiftlet_set_thread_name($0) }
            body()
        }))
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            let context = Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue()
            context.body()
            return nil
        }, context.toOpaque())
        if result != 0 {
            context.release()
            throw Errno(rawValue: result)
        }
        self.thread = thread
    }

    /// Sends `signal` to this thread, to interrupt a blocking system call. The corresponding C function is `pthread_kill`.
    public func send(signal: Int32) {
        pthread_kill(thread, signal)
    }

    /// Lets the thread end on its own, without a `join`: for one-shot workers. The corresponding C function is
    /// `pthread_detach`.
    public func detach() {
        pthread_detach(thread)
    }

    /// Waits for the thread to finish. The corresponding C function is `pthread_join`.
    public func join() {
        pthread_join(thread, nil)
    }
}

/// The signal that kicks vCPU threads out of KVM_RUN. Its handler does nothing: the interrupted ioctl returns EINTR.
public enum KickSignal {
    public static var number: Int32 { SIGRTMIN() + 1 }

    private static let installed: Bool = {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        sigaction(number, &action, nil)
        return true
    }()

    /// Installs the no-op handler once per process.
    public static func install() { _ = installed }

    /// Lets the kick reach the calling thread. A thread inherits its creator's signal mask, and threads of the Swift
    /// concurrency pool (libdispatch workers) block nearly every signal, so a vCPU thread must unblock it itself.
    public static func unblockForCurrentThread() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, number)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}

@_silgen_name("__libc_current_sigrtmin")
private func SIGRTMIN() -> Int32

/// CLOCK_MONOTONIC in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
