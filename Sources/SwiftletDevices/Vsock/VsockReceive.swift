import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletVirtio
import SystemPackage

/// Host to guest: control packets and connection data into the receive queue's buffers.
extension Vsock.State {
    // MARK: Host to guest (rx queue)

    /// Fills receive buffers: control packets first (they are few and small), then data from connections in
    /// turn, each packet as large as the buffer, the guest's credit and the socket allow. At most
    /// `Vsock.receiveBudget` chains per call: with more to send, `more` brings the loop back after its other sources.
    mutating func sendToGuest(_ device: Vsock) -> Outcome {
        var outcome = Outcome()
        guard let queue = receive else { return outcome }
        var completed = false
        var chains = 0
        budget: while true {
            var ringEmpty = false
            while controlStart < control.count || dataStart < dataReady.count {
                guard chains < Vsock.receiveBudget else {
                    outcome.more = true
                    compact()
                    break budget
                }
                // Data first checks that it can send, so a chain is popped only for a packet that goes.
                var dataConnection: Connection?
                if controlStart == control.count {
                    let id = dataReady[dataStart]
                    guard let connection = connections[id], connection.phase == .connected,
                          connection.hostReadable, !connection.hostEnded, connection.credit.peerFree > 0 else {
                        connections[id]?.queued = false
                        dataStart += 1
                        continue
                    }
                    dataConnection = connection
                }
                guard let popped = popChain(device, queue, completed: &completed) else {
                    outcome.fatal = true
                    return outcome
                }
                guard popped else { ringEmpty = true; break }
                chains += 1
                // A receive chain is device-writable only and holds at least a header.
                guard chain.readableCount == 0, chain.writableLength >= UInt64(VsockHeader.size) else {
                    device.counters.errorCount.add(1, ordering: .relaxed)
                    queue.addUsed(head: chain.head, length: 0)
                    completed = true
                    continue
                }
                if let connection = dataConnection {
                    guard chain.writableLength > UInt64(VsockHeader.size) else {
                        // A buffer with room for the header only can carry no data: it goes back unused and
                        // counted, and the connection stays readable for the guest's next, proper buffer (it
                        // used to be marked not readable here, and its edge-triggered socket never woke it).
                        device.counters.errorCount.add(1, ordering: .relaxed)
                        queue.addUsed(head: chain.head, length: 0)
                        completed = true
                        continue
                    }
                    if let length = sendData(device, connection) {
                        queue.addUsed(head: chain.head, length: UInt32(VsockHeader.size + length))
                        completed = true
                    } else {
                        queue.rewind(1)
                    }
                } else {
                    var packet = control[controlStart]
                    controlStart += 1
                    if let id = packet.connection, let connection = connections[id] {
                        packet.header.bufferAllocation = connection.credit.bufferAllocation
                        packet.header.forwardCount = connection.credit.forwarded
                        connection.credit.didAdvertise()
                        if packet.header.op == .creditUpdate { connection.creditUpdateQueued = false }
                    } else if packet.header.op != .reset {
                        queue.rewind(1) // its connection is gone: only an RST still makes sense
                        continue
                    }
                    writeHeader(packet.header)
                    queue.addUsed(head: chain.head, length: UInt32(VsockHeader.size))
                    completed = true
                }
            }
            compact()
            // Work left and no buffers: ask to be notified when the guest posts some (and look once more).
            if ringEmpty, queue.enableNotification() { continue }
            if !ringEmpty { _ = queue.enableNotification() }
            break
        }
        outcome.interrupt = completed && queue.needsInterrupt()
        return outcome
    }

    /// Reads from the host socket into the chain after a header; the payload length, or nil when nothing was sent
    /// (the chain then goes back).
    mutating func sendData(_ device: Vsock, _ connection: Connection) -> Int? {
        // Never 0: the caller checked the chain has room past the header and the guest has credit. (A readv of
        // nothing would read as the host's end of stream.)
        let limit = min(Int(chain.writableLength) - VsockHeader.size, Int(connection.credit.peerFree), Vsock.maximumPayload)
        guard limit > 0 else { // as the caller's own check does: off the list until credit or a buffer comes
            dataStart += 1
            connection.queued = false
            return nil
        }
        vectors.removeAll(keepingCapacity: true)
        var writer = ChainWriter(chain)
        writer.skip(VsockHeader.size)
        writer.vectors(limit, into: &vectors)
        let count = vectors.withUnsafeBufferPointer { readv(connection.socket.rawValue, $0.baseAddress, Int32($0.count)) }
        if count > 0 {
            device.counters.addBytes(count)
            var header = VsockHeader(sourceCID: Vsock.hostCID, destinationCID: device.configuration.guestCID,
                                     sourcePort: connection.ports.local, destinationPort: connection.ports.peer,
                                     operation: .readWrite, length: UInt32(count))
            header.bufferAllocation = connection.credit.bufferAllocation
            header.forwardCount = connection.credit.forwarded
            connection.credit.didAdvertise()
            connection.credit.didSend(UInt32(count))
            writeHeader(header)
            // Round robin: this connection goes to the back of the list.
            dataStart += 1
            dataReady.append(connection.id)
            return count
        }
        dataStart += 1
        connection.queued = false
        if count == 0 {
            // The host program will send no more: tell the guest (it reads to the end, then closes).
            connection.hostEnded = true
            queueControl(device, connection, .shutdown, flags: VsockHeader.shutdownSend)
        } else if count < 0 && errno != EAGAIN && errno != EINTR {
            reset(device, connection)
        } else {
            connection.hostReadable = false // EAGAIN: the next edge brings it back
        }
        return nil
    }

    /// Writes a header across the chain's first writable buffers (ChainWriter).
    mutating func writeHeader(_ header: VsockHeader) {
        headerBytes.withUnsafeMutableBytes { header.encode(into: $0) }
        var writer = ChainWriter(chain)
        _ = headerBytes.withUnsafeBytes { writer.write($0) }
    }

    mutating func compact() {
        Self.compact(&control, start: &controlStart)
        Self.compact(&dataReady, start: &dataStart)
    }

    /// Drops the consumed front of a list used as a queue (entries before `start`): at once when all were consumed,
    /// otherwise when more than 1024 are, so the lists stay bounded without a shift per packet.
    static func compact<Element>(_ list: inout [Element], start: inout Int) {
        if start == list.count {
            list.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 1024 {
            list.removeFirst(start)
            start = 0
        }
    }
}
