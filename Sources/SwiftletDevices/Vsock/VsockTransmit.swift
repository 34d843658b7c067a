import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletVirtio
import SystemPackage

/// Guest to host: the transmit queue's packets, checked and turned into connections, data and control.
extension Vsock.State {
    // MARK: Guest to host (tx queue)

    /// Pops the next valid chain into `chain` (Virtqueue.popValid: malformed ones go back with length 0 and are
    /// counted). false when the ring is empty, nil when it is corrupt beyond use (the device then needs a reset).
    mutating func popChain(_ device: Vsock, _ queue: any Virtqueue, completed: inout Bool) -> Bool? {
        do {
            return try queue.popValid(into: &chain, completed: &completed) { device.counters.errorCount.add(1, ordering: .relaxed) }
        } catch {
            device.counters.errorCount.add(1, ordering: .relaxed)
            return nil
        }
    }

    /// The guest's packets (Virtqueue.drain: malformed chains, a corrupt ring, the budget per round).
    mutating func receiveFromGuest(_ device: Vsock) -> Outcome {
        var outcome = Outcome()
        guard let queue = transmit else { return outcome }
        let result = queue.drain(&self, chain: \.chain, onMalformed: { device.counters.errorCount.add(1, ordering: .relaxed) }) { state, completion in
            state.handleTransmitChain(device)
            completion.use(state.chain.head, length: 0)
        }
        if result.more { device.counters.resume(queue: Vsock.transmitQueue, device.queueEvents[Vsock.transmitQueue]) }
        outcome.interrupt = result.interrupt
        outcome.fatal = result.fatal
        return outcome
    }

    /// Gathers the header from the chain's first readable bytes (ChainReader); nil when the chain is too short.
    mutating func readHeader() -> VsockHeader? {
        var reader = ChainReader(chain)
        guard headerBytes.withUnsafeMutableBytes({ reader.read(into: $0) }) == VsockHeader.size else { return nil }
        return headerBytes.withUnsafeBytes { VsockHeader($0) }
    }

    /// The payload after the header in the chain's readable buffers, up to `length` bytes, as iovecs in `vectors`.
    mutating func readablePayloadVectors(length: Int) {
        vectors.removeAll(keepingCapacity: true)
        var reader = ChainReader(chain)
        reader.skip(VsockHeader.size)
        reader.vectors(length, into: &vectors)
    }

    mutating func handleTransmitChain(_ device: Vsock) {
        // A tx chain is device-readable only: the header, then the payload.
        guard chain.readableCount == chain.buffers.count, let header = readHeader() else {
            device.counters.errorCount.add(1, ordering: .relaxed)
            return
        }
        let available = chain.readableLength - UInt64(VsockHeader.size)
        guard header.sourceCID == device.configuration.guestCID else {
            device.counters.errorCount.add(1, ordering: .relaxed) // spoofed source: dropped
            return
        }
        let ports = PortPair(local: header.destinationPort, peer: header.sourcePort)
        let operation = header.op
        guard header.destinationCID == Vsock.hostCID, header.type == VsockHeader.typeStream,
              UInt64(header.length) <= available, Int(header.length) <= Vsock.maximumPayload,
              operation != nil, operation != .invalid else {
            device.counters.errorCount.add(1, ordering: .relaxed)
            // The guest hears RST for these ports, so a connection on them ends here too: the host socket
            // closes, and guest and device agree that it is gone (it used to stay open and go on delivering).
            if let connection = byPorts[ports].flatMap({ connections[$0] }) {
                if operation == .reset { remove(device, connection) } else { reset(device, connection) }
            } else if operation != .reset {
                resetUnknown(device, header)
            }
            return
        }
        let connection = byPorts[ports].flatMap { connections[$0] }
        if operation == .request {
            guard connection == nil else {
                device.counters.errorCount.add(1, ordering: .relaxed)
                if let connection { reset(device, connection) }
                return
            }
            return connectToHost(device, header, ports)
        }
        guard let connection else {
            if operation != .reset { resetUnknown(device, header) }
            return
        }
        connection.credit.update(peerBufferAllocation: header.bufferAllocation, peerForwardCount: header.forwardCount)
        // Any packet may carry new credit: a connection that stopped for the lack of it goes on.
        if connection.hostReadable && connection.credit.peerFree > 0 { enqueueData(connection) }
        switch operation! {
        case .response:
            guard connection.phase == .connecting else {
                device.counters.errorCount.add(1, ordering: .relaxed)
                return reset(device, connection)
            }
            connection.phase = .connected
            // The host program learns the connection is up, then reads the guest's bytes after this line.
            let reply = Array("OK \(connection.ports.local)\n".utf8)
            connection.pending.append(contentsOf: reply)
            connection.ownPending += reply.count
            flushPending(device, connection)
            if connections[connection.id] != nil {
                connection.hostReadable = true
                enqueueData(connection)
            }
        case .reset:
            remove(device, connection)
        case .shutdown:
            connection.guestShutdown |= header.flags & (VsockHeader.shutdownReceive | VsockHeader.shutdownSend)
            // The guest closed (both flags): once the bytes still waiting for the host socket are out, the host
            // end closes and the guest's close completes with RST (afterForwarding).
            afterForwarding(device, connection)
        case .readWrite:
            guard connection.phase == .connected, connection.guestShutdown & VsockHeader.shutdownSend == 0 else {
                device.counters.errorCount.add(1, ordering: .relaxed)
                return reset(device, connection)
            }
            deliver(device, connection, length: Int(header.length))
        case .creditUpdate:
            if connection.hostReadable { enqueueData(connection) }
        case .creditRequest:
            if !connection.creditUpdateQueued {
                connection.creditUpdateQueued = true
                queueControl(device, connection, .creditUpdate)
            }
        case .request, .invalid:
            break // handled above
        }
        device.counters.requestCount.add(1, ordering: .relaxed)
    }

    /// An RST for a packet that belongs to no connection (§5.10.6.4: a request to an unbound port, or a stray).
    mutating func resetUnknown(_ device: Vsock, _ header: VsockHeader) {
        guard control.count - controlStart < 4 * Vsock.maximumConnections else { return } // a flood: dropped
        let reply = VsockHeader(sourceCID: Vsock.hostCID, destinationCID: device.configuration.guestCID,
                                sourcePort: header.destinationPort, destinationPort: header.sourcePort, operation: .reset)
        control.append(ControlPacket(header: reply, connection: nil))
    }

    /// A guest connection to host port P reaches the Unix listener at `<path>_<P>`; none there is RST.
    mutating func connectToHost(_ device: Vsock, _ header: VsockHeader, _ ports: PortPair) {
        guard connections.count < Vsock.maximumConnections,
              let socket = try? UnixSocket.connect(path: "\(device.configuration.socketPath)_\(ports.local)") else {
            return resetUnknown(device, header)
        }
        let connection = Connection(id: takeID(), ports: ports, socket: socket, phase: .connected, deadline: nil)
        connection.credit.update(peerBufferAllocation: header.bufferAllocation, peerForwardCount: header.forwardCount)
        guard add(device, connection) else { return resetUnknown(device, header) }
        queueControl(device, connection, .response)
        connection.hostReadable = true
        enqueueData(connection)
    }

    /// Moves an RW payload to the host socket: straight from guest memory while the socket takes it, into the
    /// connection's bounded buffer when it does not.
    mutating func deliver(_ device: Vsock, _ connection: Connection, length: Int) {
        guard connection.credit.receive(UInt32(length)) else {
            device.counters.errorCount.add(1, ordering: .relaxed) // more than the credit it was given
            return reset(device, connection)
        }
        guard length > 0 else { return }
        device.counters.addBytes(length)
        readablePayloadVectors(length: length)
        var written = 0
        if connection.pendingCount == 0 {
            let count = vectors.withUnsafeBufferPointer { writev(connection.socket.rawValue, $0.baseAddress, Int32($0.count)) }
            if count < 0 && errno != EAGAIN && errno != EINTR {
                return reset(device, connection) // the host end is gone
            }
            written = max(count, 0)
            connection.credit.didForward(UInt32(written))
        }
        if written < length {
            var skip = written
            for vector in vectors {
                if skip >= vector.iov_len { skip -= vector.iov_len; continue }
                let bytes = UnsafeRawBufferPointer(start: vector.iov_base! + skip, count: vector.iov_len - skip)
                connection.pending.append(contentsOf: bytes)
                skip = 0
            }
            watchWritable(device, connection, true)
        } else {
            afterForwarding(device, connection)
        }
    }
}
