import Glibc

/// Where vCPU threads park while the machine is paused: a pthread mutex and condition (futex only, which every
/// thread's seccomp filter allows). `close()` asks the threads to park, `waitForParked` waits until they all have,
/// `open()` lets them go on.
public final class ParkingGate: @unchecked Sendable { // @unchecked: the pthread objects are only used under `mutex`.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var closed = false
    private var parked = 0
    private var cancelled = false

    public init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    /// Whether threads are asked to park (a cheap check before each KVM_RUN; `park` decides for itself).
    public var isClosed: Bool { locked { closed && !cancelled } }

    /// Asks threads to park at their next `park()`.
    public func close() { locked { closed = true } }

    /// Lets parked threads go on.
    public func open() {
        locked {
            closed = false
            pthread_cond_broadcast(condition)
        }
    }

    /// For good: no thread parks again, and parked ones go on (the machine ends).
    public func cancel() {
        locked {
            cancelled = true
            pthread_cond_broadcast(condition)
        }
    }

    /// Parks the calling thread while the gate is closed; returns at once when it is open or cancelled.
    public func park() {
        locked {
            guard closed && !cancelled else { return }
            parked += 1
            pthread_cond_broadcast(condition)
            while closed && !cancelled { pthread_cond_wait(condition, mutex) }
            parked -= 1
        }
    }

    /// Waits until `count` threads are parked; false if the gate was cancelled or opened first.
    public func waitForParked(_ count: Int) -> Bool {
        locked {
            while parked < count && closed && !cancelled { pthread_cond_wait(condition, mutex) }
            return parked >= count && closed && !cancelled
        }
    }
}
