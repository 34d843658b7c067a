/// The drain protocol, in one place for every device and both ring layouts (virtio 1.2 §2.7.13–§2.7.14 for the
/// split ring, §2.8.13–§2.8.14 for the packed one):
/// - pop the chains the driver made available, in order;
/// - a malformed chain (`QueueError.invalidChain`) goes back at once with length 0 and is counted as the guest's error;
/// - a corrupt ring (avail->idx more than the queue size ahead, a head beyond the table) stops the drain: nothing more
///   can be trusted, and the device must be reset (DEVICE_NEEDS_RESET); in a packed ring also a chain that runs into
///   a descriptor not made available, or more descriptors out than the ring holds;
/// - when the ring runs dry, notifications are asked for again (EVENT_IDX's avail_event) and the ring is looked at
///   once more, so that a buffer posted meanwhile is not left waiting for a notification that will not come
///   (EVENT_IDX's avail_event, or the packed ring's device event suppression);
/// - the driver gets an interrupt when a chain was used and it wants one (§2.7.7.2);
/// - at most `budget` chains are handled per call, so that one flooded queue cannot keep the device loop from the
///   other sources it serves: the caller comes back for the rest (`DrainResult.more`).
public struct DrainResult: Sendable, Equatable {
    /// Raise the queue's interrupt.
    public var interrupt = false
    /// The ring is corrupt: the device must be reset.
    public var fatal = false
    /// The budget ran out with chains still available: drain again after the loop's other sources had their turn.
    public var more = false
    public init() {}
}

/// What a drain's handler reports: chains it used (returned to the driver), directly or on its behalf.
public struct DrainCompletion {
    private let queue: any Virtqueue
    public private(set) var completed = false
    init(queue: any Virtqueue) { self.queue = queue }

    /// Returns chain `head` to the driver with `length` bytes written into its device-writable buffers.
    public mutating func use(_ head: UInt16, length: UInt32) {
        queue.addUsed(head: head, length: length)
        completed = true
    }
}

public enum Drain {
    /// Chains one drain handles at most: a ring's worth (every queue here has 256 entries).
    public static let budget = 256
}

extension Virtqueue {
    /// Pops the next well-formed chain into `chain`, returning malformed ones with length 0 on the way (each one
    /// `onMalformed`, and `completed` set). false when the ring is empty, or after `size` malformed chains in a row
    /// (a bound per call whatever the guest keeps posting; the rest waits for the next call). Throws only when the
    /// ring is corrupt. The pop of `drain`, for devices that hold chains across calls (receive queues).
    public func popValid(into chain: inout DescriptorChain, completed: inout Bool,
                         onMalformed: () -> Void) throws(QueueError) -> Bool {
        for _ in 0..<Int(size) {
            do {
                return try pop(into: &chain)
            } catch .invalidChain(let head, _) {
                onMalformed()
                addUsed(head: head, length: 0)
                completed = true
            }
        }
        return false
    }

    /// Drains the queue: `handle` gets each well-formed chain (in `state[keyPath: chain]`) and returns it with
    /// `completion.use(head, length:)`, or keeps it. `onMalformed` counts each malformed chain and the corrupt ring.
    /// The state is passed through, so a handler can reach the device's state that holds the chain. Malformed
    /// chains count against the budget too.
    public func drain<State>(_ state: inout State, chain: WritableKeyPath<State, DescriptorChain>,
                             budget: Int = Drain.budget, onMalformed: () -> Void,
                             handle: (inout State, inout DrainCompletion) -> Void) -> DrainResult {
        var result = DrainResult()
        var completion = DrainCompletion(queue: self)
        var handled = 0
        repeat {
            while true {
                guard handled < budget else {
                    result.more = hasAvailable || enableNotification()
                    result.interrupt = completion.completed && needsInterrupt()
                    return result
                }
                let popped: Bool
                do {
                    popped = try pop(into: &state[keyPath: chain])
                } catch .invalidChain(let head, _) {
                    onMalformed()
                    completion.use(head, length: 0)
                    handled += 1
                    continue
                } catch {
                    onMalformed()
                    result.fatal = true
                    result.interrupt = completion.completed && needsInterrupt()
                    return result
                }
                guard popped else { break }
                handled += 1
                handle(&state, &completion)
            }
        } while enableNotification()
        result.interrupt = completion.completed && needsInterrupt()
        return result
    }
}
