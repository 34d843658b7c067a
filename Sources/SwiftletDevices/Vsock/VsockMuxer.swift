import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletVirtio
import SystemPackage

/// The host side: the hybrid socket's listener and the clients that have not sent `CONNECT` yet, connections
/// added and removed, connect timers, bytes waiting for a host socket, control packets queued for the guest.
extension Vsock.State {
    // MARK: Host side

    mutating func handleHostEvents(_ device: Vsock) {
        device.poller.poll(into: &ready)
        let events = ready
        for (token, flags) in events {
            if token == Vsock.listenerToken {
                acceptClients(device)
            } else if token == Vsock.timerToken {
                _ = device.timer.consume()
                expire(device)
            } else if token & Vsock.clientTokenBit != 0 {
                readConnectLine(device, id: token & ~Vsock.clientTokenBit)
            } else if let connection = connections[token] {
                if flags & UInt32(EPOLLOUT.rawValue) != 0 { flushPending(device, connection) }
                if connections[token] != nil,
                   flags & (UInt32(EPOLLIN.rawValue) | UInt32(EPOLLHUP.rawValue) | UInt32(EPOLLERR.rawValue) | UInt32(EPOLLRDHUP.rawValue)) != 0 {
                    connection.hostReadable = true
                    enqueueData(connection)
                }
            }
        }
    }

    mutating func acceptClients(_ device: Vsock) {
        while true {
            guard let socket = try? device.listener.accept() else { return }
            guard receive != nil, clients.count < Vsock.maximumPendingClients,
                  connections.count < Vsock.maximumConnections else {
                continue // closed at once: the driver is not ready, or too many connections
            }
            let id = takeID()
            guard (try? device.poller.add(socket.rawValue, token: id | Vsock.clientTokenBit, events: UInt32(EPOLLIN.rawValue))) != nil else { continue }
            clients[id] = PendingClient(socket: socket, deadline: device.clock() + Vsock.connectTimeout)
            armTimer(device)
        }
    }

    /// Reads the `CONNECT <port>\n` line a byte at a time, so no byte after it is consumed here.
    mutating func readConnectLine(_ device: Vsock, id: UInt64) {
        guard var client = clients[id] else { return }
        var byte: [UInt8] = [0]
        while true {
            let count: Int?
            do { count = try client.socket.read(into: &byte) } catch {
                return dropClient(device, id)
            }
            guard let count else { clients[id] = client; return } // nothing more yet
            guard count == 1 else { return dropClient(device, id) } // closed before the line ended
            if byte[0] == UInt8(ascii: "\n") { break }
            client.line.append(byte[0])
            guard client.line.count <= 32 else { return dropClient(device, id) }
        }
        clients[id] = nil
        device.poller.remove(client.socket.rawValue)
        guard let port = parseConnectLine(client.line), receive != nil, connections.count < Vsock.maximumConnections else {
            return // closed: not a CONNECT line, or nowhere to connect
        }
        // A host port that no connection uses: the guest tells connections apart by both ports.
        var local = nextLocalPort
        while byPorts[PortPair(local: local, peer: port)] != nil { local &+= 1 }
        nextLocalPort = local &+ 1 < (1 << 30) ? 1 << 30 : local &+ 1
        let connection = Connection(id: takeID(), ports: PortPair(local: local, peer: port), socket: client.socket,
                                    phase: .connecting, deadline: device.clock() + Vsock.connectTimeout)
        guard add(device, connection) else { return }
        queueControl(device, connection, .request)
        armTimer(device)
    }

    mutating func dropClient(_ device: Vsock, _ id: UInt64) {
        guard let client = clients.removeValue(forKey: id) else { return }
        device.poller.remove(client.socket.rawValue)
    }

    mutating func add(_ device: Vsock, _ connection: Connection) -> Bool {
        let events = UInt32(EPOLLIN.rawValue) | UInt32(EPOLLRDHUP.rawValue) | UInt32(EPOLLET.rawValue)
        guard (try? device.poller.add(connection.socket.rawValue, token: connection.id, events: events)) != nil else { return false }
        connections[connection.id] = connection
        byPorts[connection.ports] = connection.id
        return true
    }

    mutating func remove(_ device: Vsock, _ connection: Connection) {
        device.poller.remove(connection.socket.rawValue)
        connections[connection.id] = nil
        byPorts[connection.ports] = nil
    }

    /// Ends a connection abruptly: the host socket closes and the guest gets RST.
    mutating func reset(_ device: Vsock, _ connection: Connection) {
        remove(device, connection)
        queueControl(device, connection, .reset)
    }

    mutating func armTimer(_ device: Vsock) {
        guard !timerArmed else { return }
        timerArmed = true
        device.timer.arm(initial: Vsock.connectTimeout / 4, interval: Vsock.connectTimeout / 4)
    }

    mutating func expire(_ device: Vsock) {
        let now = device.clock()
        for (id, client) in clients where client.deadline <= now { dropClient(device, id) }
        var waiting = !clients.isEmpty
        for connection in Array(connections.values) where connection.phase == .connecting {
            if let deadline = connection.deadline, deadline <= now {
                reset(device, connection) // the guest never answered the REQUEST
            } else {
                waiting = true
            }
        }
        if !waiting {
            timerArmed = false
            device.timer.arm(initial: 0)
        }
    }

    mutating func enqueueData(_ connection: Connection) {
        guard !connection.queued, connection.phase == .connected, !connection.hostEnded else { return }
        connection.queued = true
        dataReady.append(connection.id)
    }

    mutating func queueControl(_ device: Vsock, _ connection: Connection, _ operation: VsockHeader.Operation, flags: UInt32 = 0) {
        let header = VsockHeader(sourceCID: Vsock.hostCID, destinationCID: device.configuration.guestCID,
                                 sourcePort: connection.ports.local, destinationPort: connection.ports.peer,
                                 operation: operation, flags: flags)
        control.append(ControlPacket(header: header, connection: connection.id))
    }

    /// Writes what the host socket takes of the bytes already waiting.
    mutating func flushPending(_ device: Vsock, _ connection: Connection) {
        while connection.pendingCount > 0 {
            let written: Int?
            do {
                written = try connection.socket.write(connection.pending, from: connection.pendingStart)
            } catch {
                return reset(device, connection) // the host end is gone
            }
            guard let written else {
                watchWritable(device, connection, true)
                return
            }
            connection.pendingStart += written
            // The OK line at the front is the device's own, not guest bytes under credit.
            let own = min(written, connection.ownPending)
            connection.ownPending -= own
            connection.credit.didForward(UInt32(written - own))
        }
        connection.pending.removeAll(keepingCapacity: connection.pending.capacity <= 64 << 10)
        connection.pendingStart = 0
        watchWritable(device, connection, false)
        afterForwarding(device, connection)
    }

    mutating func watchWritable(_ device: Vsock, _ connection: Connection, _ on: Bool) {
        guard connection.watchingWritable != on else { return }
        connection.watchingWritable = on
        var events = UInt32(EPOLLIN.rawValue) | UInt32(EPOLLRDHUP.rawValue) | UInt32(EPOLLET.rawValue)
        if on { events |= UInt32(EPOLLOUT.rawValue) }
        try? device.poller.modify(connection.socket.rawValue, token: connection.id, events: events)
    }

    /// After bytes reached the host socket: a half-close the guest asked for can happen, and the guest may need
    /// to hear that it has room again.
    mutating func afterForwarding(_ device: Vsock, _ connection: Connection) {
        guard connections[connection.id] != nil, connection.pendingCount == 0 else { return }
        if connection.guestShutdown == VsockHeader.shutdownReceive | VsockHeader.shutdownSend {
            return reset(device, connection)
        }
        if connection.guestShutdown & VsockHeader.shutdownSend != 0 {
            connection.socket.shutdown(reading: false, writing: true)
        }
        if !connection.creditUpdateQueued,
           connection.credit.creditUpdateDue(threshold: UInt32(Vsock.maximumPayload)) {
            connection.creditUpdateQueued = true
            queueControl(device, connection, .creditUpdate)
        }
    }
}
