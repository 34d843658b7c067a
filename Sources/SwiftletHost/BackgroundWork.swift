import Synchronization

/// Work started on its own thread now and collected later with `result()`, which joins the thread.
/// Used to overlap loading the kernel into guest memory with KVM's own set-up.
public final class BackgroundWork<Value: Sendable>: Sendable {
    private final class Box: Sendable {
        let outcome = Mutex<Result<Value, SwiftletError>?>(nil)
    }
    private let box = Box()
    private let thread: HostThread

    public init(name: String, _ body: @escaping @Sendable () throws(SwiftletError) -> Value) throws(SwiftletError) {
        let box = self.box
        do {
            thread = try HostThread(name: name) {
                let result = Result { () throws(SwiftletError) in try body() }
                box.outcome.withLock { $0 = result }
            }
        } catch {
            throw SwiftletError(.systemCall, "cannot start the \(name) thread", cause: error)
        }
    }

    /// Waits for the work to finish and returns its value or rethrows its error. Call it exactly once.
    public func result() throws(SwiftletError) -> Value {
        thread.join()
        guard let result = box.outcome.withLock({ $0 }) else {
            throw SwiftletError(.systemCall, "background work ended without a result")
        }
        return try result.get()
    }
}
