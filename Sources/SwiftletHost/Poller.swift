import CSwiftlet
import Glibc
import SystemPackage

/// An epoll set that one device owns for sources that come and go while the device loop runs (a vsock device's
/// connections). The poller's own fd is registered once on the device `EventLoop`; when it is readable the device
/// drains it with `poll(into:)`, which never blocks.
public final class Poller: Sendable {
    public let descriptor: OwnedFileDescriptor
    public var rawValue: Int32 { descriptor.rawValue }

    public init() throws(SwiftletError) {
        do {
            descriptor = OwnedFileDescriptor(taking: try retryingSystemCall { epoll_create1(Int32(EPOLL_CLOEXEC)) })
        } catch {
            throw SwiftletError(.systemCall, "cannot create an epoll set", cause: error)
        }
    }

    /// Adds `fd` with `token`. The corresponding C function is `epoll_ctl(EPOLL_CTL_ADD)`.
    public func add(_ fd: Int32, token: UInt64, events: UInt32) throws(Errno) {
        try control(EPOLL_CTL_ADD, fd, token: token, events: events)
    }

    /// The corresponding C function is `epoll_ctl(EPOLL_CTL_MOD)`.
    public func modify(_ fd: Int32, token: UInt64, events: UInt32) throws(Errno) {
        try control(EPOLL_CTL_MOD, fd, token: token, events: events)
    }

    /// The corresponding C function is `epoll_ctl(EPOLL_CTL_DEL)`.
    public func remove(_ fd: Int32) {
        _ = epoll_ctl(rawValue, EPOLL_CTL_DEL, fd, nil)
    }

    private func control(_ operation: Int32, _ fd: Int32, token: UInt64, events: UInt32) throws(Errno) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        _ = try retryingSystemCall { epoll_ctl(rawValue, operation, fd, &event) }
    }

    /// The ready sources, as (token, events), without waiting. The corresponding C function is `epoll_wait`.
    public func poll(into ready: inout [(token: UInt64, events: UInt32)], maximum: Int = 64) {
        ready.removeAll(keepingCapacity: true)
        var events = [epoll_event](repeating: epoll_event(), count: maximum)
        let count = events.withUnsafeMutableBufferPointer { epoll_wait(rawValue, $0.baseAddress, Int32($0.count), 0) }
        guard count > 0 else { return }
        for index in 0..<Int(count) { ready.append((events[index].data.u64, events[index].events)) }
    }
}

/// A timerfd on CLOCK_MONOTONIC, non-blocking: readable each time it expires.
public final class TimerFd: Sendable {
    public let descriptor: OwnedFileDescriptor
    public var rawValue: Int32 { descriptor.rawValue }

    public init() throws(SwiftletError) {
        do {
            descriptor = OwnedFileDescriptor(taking: try retryingSystemCall {
                timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK) | Int32(TFD_CLOEXEC))
            })
        } catch {
            throw SwiftletError(.systemCall, "cannot create a timerfd", cause: error)
        }
    }

    /// Fires after `initial` nanoseconds, then every `interval` nanoseconds (0: once); 0 and 0 disarm it.
    /// The corresponding C function is `timerfd_settime`.
    public func arm(initial: UInt64, interval: UInt64 = 0) {
        var spec = itimerspec()
        spec.it_value = timespec(tv_sec: Int(initial / 1_000_000_000), tv_nsec: Int(initial % 1_000_000_000))
        spec.it_interval = timespec(tv_sec: Int(interval / 1_000_000_000), tv_nsec: Int(interval % 1_000_000_000))
        _ = timerfd_settime(rawValue, 0, &spec, nil)
    }

    /// Reads the expiry count; nil when it has not fired. The corresponding C function is `read`.
    public func consume() -> UInt64? {
        var value: UInt64 = 0
        guard Glibc.read(rawValue, &value, 8) == 8 else { return nil }
        return value
    }
}
