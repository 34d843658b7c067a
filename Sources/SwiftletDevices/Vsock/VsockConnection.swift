import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletVirtio
import SystemPackage

/// One connection between a guest port and a host socket: its state and its credit (§5.10.6.3), and the
/// host sockets still waiting to send their CONNECT line.
extension Vsock {
    struct PortPair: Hashable {
        var local: UInt32 // the host's port
        var peer: UInt32  // the guest's port
    }

    final class Connection {
        enum Phase { case connecting, connected }
        let id: UInt64
        let ports: PortPair
        let socket: UnixSocket
        var phase: Phase
        var credit = VsockCredit(bufferAllocation: Vsock.bufferAllocation)
        /// Guest-to-host bytes the host socket could not take yet, in order, from `pendingStart`.
        var pending: [UInt8] = []
        var pendingStart = 0
        /// How many bytes at the front of `pending` are the device's own (the `OK` line), outside the credit.
        var ownPending = 0
        var watchingWritable = false
        /// The host socket may have bytes to read (edge-triggered: true until a read says EAGAIN).
        var hostReadable = false
        var hostEnded = false
        /// In the round-robin list of connections with data for the guest.
        var queued = false
        /// SHUTDOWN flags received from the guest.
        var guestShutdown: UInt32 = 0
        var creditUpdateQueued = false
        let deadline: UInt64?

        init(id: UInt64, ports: PortPair, socket: UnixSocket, phase: Phase, deadline: UInt64?) {
            self.id = id
            self.ports = ports
            self.socket = socket
            self.phase = phase
            self.deadline = deadline
        }

        var pendingCount: Int { pending.count - pendingStart }
    }

    struct PendingClient {
        let socket: UnixSocket
        var line: [UInt8] = []
        let deadline: UInt64
    }

    /// A packet for the guest that carries no payload.
    struct ControlPacket {
        var header: VsockHeader
        /// The connection whose credit fields it carries, if it still exists when the packet is sent.
        var connection: UInt64?
    }
}
