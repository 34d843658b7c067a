import Glibc
import SwiftletHost
import SwiftletVirtio
import SystemPackage

/// The io_uring engine's requests in flight (`BlockEngine.ioUring`): a fixed table of `Block.ringDepth` slots, each
/// a request submitted to the disk's `IoUring` and not yet completed: the chain's head, its status byte, and its
/// iovecs (into guest memory: zero-copy) in a table allocated once.
///
/// Requests complete in any order; each completion writes its request's status byte and uses its chain
/// (`Virtqueue.addUsed` takes any head, in either ring layout). A short transfer (the image shrank, a signal) is
/// submitted again for the rest, at most `resubmissionMaximum` times; EINTR and EAGAIN likewise. What the guest
/// controls (how many chains it posts) is bounded by the table: with every slot taken, the drain stops and the rest
/// waits in the ring for a completion (`waiting`).
///
/// Used only under the block device's lock (the device loop, reset, pause).
final class BlockRing: @unchecked Sendable {
    private struct Slot {
        var inUse = false
        var head: UInt16 = 0
        var status: UnsafeMutableRawPointer?
        var write = false
        var flush = false
        var offset: UInt64 = 0
        var length: UInt64 = 0
        /// Bytes transferred so far, and the first iovec not wholly transferred.
        var done: UInt64 = 0
        var first = 0
        var count = 0
        var resubmissions = 0
    }

    /// Submissions of one request at most: its first and this many more after short transfers or EINTR/EAGAIN.
    static let resubmissionMaximum = 16
    /// iovecs per slot: a chain has at most a queue's worth of descriptors.
    static let vectorsPerSlot = Int(Block.queueSize)

    private let ring: IoUring
    var completionEvent: EventFd { ring.completionEvent }
    private var slots: [Slot]
    private var free: [Int]
    private let vectors: UnsafeMutablePointer<iovec>
    /// The image generation fixed file 0 refers to.
    private var generation: UInt64 = 0
    /// The drain stopped with chains available and no free slot: a completion drains again.
    var waiting = false
    var freeSlots: Int { free.count }
    var hasFreeSlot: Bool { !free.isEmpty }
    var inFlight: Int { ring.inFlight }

    init(file: Int32) throws(Errno) {
        ring = try IoUring(entries: UInt32(Block.ringDepth), files: [file])
        slots = Array(repeating: Slot(), count: Block.ringDepth)
        free = Array((0..<Block.ringDepth).reversed())
        vectors = .allocate(capacity: Block.ringDepth * Self.vectorsPerSlot)
    }

    deinit {
        abandon()
        vectors.deallocate()
    }

    /// Points fixed file 0 at `image` when a `replaceImage` attached a new one (requests in flight keep the old
    /// file). false when that failed: this round's requests are done synchronously, on the right file.
    func use(_ image: Block.Image) -> Bool {
        guard image.generation != generation else { return true }
        do { try ring.replaceFile(at: 0, with: image.file.rawValue) } catch { return false }
        generation = image.generation
        return true
    }

    /// Takes a slot for a planned transfer or flush and prepares its submission (`submitPrepared` hands it to the
    /// kernel). false when there is no slot, or nothing to submit (a transfer of no bytes): the caller does it
    /// synchronously.
    func submit(_ request: Block.Request, head: UInt16, vectors requestVectors: [iovec]) -> Bool {
        var slot = Slot(inUse: true, head: head, status: request.status)
        switch request.work {
        case .transfer(let write, let offset, let length):
            guard length > 0, requestVectors.count <= Self.vectorsPerSlot else { return false }
            slot.write = write
            slot.offset = offset
            slot.length = length
            slot.count = requestVectors.count
        case .flush:
            slot.flush = true
        case .finished:
            return false
        }
        guard let index = free.popLast() else { return false }
        if !slot.flush {
            requestVectors.withUnsafeBufferPointer { source in
                (vectors + index * Self.vectorsPerSlot).update(from: source.baseAddress!, count: source.count)
            }
        }
        slots[index] = slot
        guard prepare(index) else {
            release(index)
            return false
        }
        return true
    }

    private func prepare(_ index: Int) -> Bool {
        let slot = slots[index]
        if slot.flush {
            // After everything submitted before it, as the sync engine's fdatasync comes after the writes it did.
            return ring.prepare(.dataSync, file: 0, offset: 0, vectors: nil, count: 0, drain: true, userData: UInt64(index))
        }
        return ring.prepare(slot.write ? .write : .read, file: 0, offset: slot.offset + slot.done,
                            vectors: vectors + index * Self.vectorsPerSlot + slot.first, count: slot.count - slot.first,
                            userData: UInt64(index))
    }

    private func release(_ index: Int) {
        slots[index].inUse = false
        slots[index].status = nil
        free.append(index)
    }

    /// Hands the prepared submissions to the kernel. Those it would not take fail with IOERR and are used at once;
    /// returns how many.
    func submitPrepared(on queue: any Virtqueue, counters: DeviceCounters) -> Int {
        guard ring.unsubmitted > 0, ring.submit() != nil else { return 0 }
        var used = 0
        for userData in ring.withdrawUnsubmitted() {
            let index = Int(truncatingIfNeeded: userData)
            guard slots.indices.contains(index), slots[index].inUse else { continue }
            used += 1
            finish(index, BlockRequestHeader.Status.ioError, on: queue, counters: counters)
        }
        return used
    }

    /// Uses the chains whose requests completed (submitting the rest of short transfers again); returns how many.
    func complete(on queue: any Virtqueue, counters: DeviceCounters) -> Int {
        var used = 0
        ring.reap { userData, result in
            if settle(Int(truncatingIfNeeded: userData), result: result, on: queue, counters: counters) { used += 1 }
        }
        return used + submitPrepared(on: queue, counters: counters)
    }

    /// Waits for every request in flight and uses its chain; returns how many were used.
    func completeAll(on queue: any Virtqueue, counters: DeviceCounters) -> Int {
        var used = submitPrepared(on: queue, counters: counters)
        while ring.inFlight > 0 {
            if ring.wait(forCompletions: 1) != nil { break }
            used += complete(on: queue, counters: counters)
        }
        return used
    }

    /// Waits for every request in flight and forgets it, its chain unused (a reset: the driver no longer expects it).
    func abandon() {
        _ = ring.withdrawUnsubmitted()
        while ring.inFlight > 0 {
            if ring.wait(forCompletions: ring.inFlight) != nil { break }
            ring.reap { _, _ in }
        }
        for index in slots.indices where slots[index].inUse { release(index) }
        waiting = false
    }

    /// Completions that arrived with no queue to use them on (none should: a reset waits for them).
    func discardCompletions() {
        ring.reap { _, _ in }
    }

    /// One completion: true when its chain was used, false when the request went back to the kernel for its rest.
    private func settle(_ index: Int, result: Int32, on queue: any Virtqueue, counters: DeviceCounters) -> Bool {
        guard slots.indices.contains(index), slots[index].inUse else { return false }
        var status = BlockRequestHeader.Status.ok
        if result < 0 {
            if result == -EINTR || result == -EAGAIN, resubmit(index) { return false }
            status = BlockRequestHeader.Status.ioError
        } else if !slots[index].flush {
            let moved = UInt64(result)
            slots[index].done += moved
            let slot = slots[index]
            if moved == 0 || slot.done > slot.length {
                status = BlockRequestHeader.Status.ioError // the image ended early (it shrank under the guest)
            } else if slot.done < slot.length {
                advance(index, by: moved)
                if resubmit(index) { return false }
                status = BlockRequestHeader.Status.ioError
            }
        }
        finish(index, status, on: queue, counters: counters)
        return true
    }

    private func resubmit(_ index: Int) -> Bool {
        guard slots[index].resubmissions < Self.resubmissionMaximum else { return false }
        slots[index].resubmissions += 1
        return prepare(index)
    }

    /// Drops the iovecs a short transfer completed and trims the one it ended in.
    private func advance(_ index: Int, by moved: UInt64) {
        let base = vectors + index * Self.vectorsPerSlot
        var remaining = Int(moved)
        var first = slots[index].first
        while first < slots[index].count && remaining >= base[first].iov_len {
            remaining -= base[first].iov_len
            first += 1
        }
        if remaining > 0 && first < slots[index].count {
            base[first].iov_base += remaining
            base[first].iov_len -= remaining
        }
        slots[index].first = first
    }

    private func finish(_ index: Int, _ status: UInt8, on queue: any Virtqueue, counters: DeviceCounters) {
        let slot = slots[index]
        let data = status == BlockRequestHeader.Status.ok && !slot.write && !slot.flush ? slot.length : 0
        let length = Block.finish(slot.status!, status, data: data, counters: counters)
        queue.addUsed(head: slot.head, length: length)
        release(index)
    }
}
