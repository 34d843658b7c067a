/// A callback that can sit in a `Mutex`. A closure stored as `Mutex<(() -> Void)?>` is re-wrapped in reabstraction
/// thunks on the write-back of every `withLock` (the lock's value is generic, the closure's type concrete), so each
/// read makes the next call deeper: a callback a guest can trigger again and again (a device's fatal-error report)
/// grew without bound. A class reference is stored as it is.
public final class Callback: Sendable {
    private let body: @Sendable () -> Void
    public init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    public func callAsFunction() { body() }
}
