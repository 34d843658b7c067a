import FuzzSupport
import Glibc
@testable import SwiftletDevices
import SwiftletHost
import SwiftletVirtio

// virtio-net: transmit frames (headers with any gso_type, gso_size, hdr_len, csum_start; frames of any size in any
// number of buffers) and receive buffer layouts, over a socket pair standing in for the TAP. Frames from the "TAP"
// are fuzzed too, and land in whatever receive chains the guest posted.

/// A SOCK_SEQPACKET pair: one frame per message, like a TAP's reads and writes.
final class SocketEndpoint: PacketEndpoint, @unchecked Sendable {
    let device: Int32, peer: Int32
    init() {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        device = fds[0]
        peer = fds[1]
        var room: Int32 = 4 << 20
        setsockopt(device, SOL_SOCKET, SO_SNDBUF, &room, 4)
        setsockopt(peer, SOL_SOCKET, SO_SNDBUF, &room, 4)
    }
    var rawValue: Int32 { device }
    var supportedOffloads: UInt32 { 0x1 | 0x2 | 0x4 | 0x8 } // TUN_F_CSUM, TSO4, TSO6, TSO_ECN
    func setOffloads(_ flags: UInt32) throws(SwiftletError) -> UInt32 { flags & supportedOffloads }

    /// Empties one side, checking every frame's length (MSG_TRUNC: the real length, into a small buffer).
    func drain(_ fd: Int32, check: (Int) -> Void) {
        var byte: UInt8 = 0
        for _ in 0..<4096 {
            let count = recv(fd, &byte, 1, Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC))
            guard count >= 0 else { return }
            check(count)
        }
    }
}

nonisolated(unsafe) let guest = FuzzGuest()
/// Frames from the "TAP" are built here: allocated once, so the memory bound covers the device alone.
nonisolated(unsafe) let frame = UnsafeMutableRawBufferPointer.allocate(byteCount: Net.maximumFrame + 64, alignment: 16)
frame.initializeMemory(as: UInt8.self, repeating: 0)
let endpoint = SocketEndpoint()
nonisolated(unsafe) let net = try! Net(NetConfiguration(tap: "fuzz", mac: [2, 0, 0, 0, 0, 1], mtu: 1500), endpoint: endpoint)
let fatal = FatalFlag()
net.attach(interrupt: VirtioInterrupt(line: CountingLine())) { fatal.raise() }
/// Heap one input may make the device hold at once: the queues, one chain, the transmit iovecs and the held receive
/// vectors (Net.maximumVectors) and chains.
nonisolated let memoryBound = 512 << 10

Fuzz.main { input in
    guest.clear()
    fatal.clear()
    net.reset()
    endpoint.drain(endpoint.device) { _ in }
    let features = input.features(offered: net.offeredFeatures)
    let indirect = features & VirtioFeature.indirectDescriptors != 0
    Fuzz.beginMemoryAccounting()
    var receive = FuzzDriverQueue(guest: guest, index: 0, size: FuzzDriverQueue.size(&input, maximumSize: Net.queueSize))
    var transmit = FuzzDriverQueue(guest: guest, index: 1, size: FuzzDriverQueue.size(&input, maximumSize: Net.queueSize))
    let queues = [receive.queue(maximumSize: Net.queueSize, features: features), transmit.queue(maximumSize: Net.queueSize, features: features)]
    if queues[0] != nil { receive.post(&input, indirect: indirect) }
    if queues[1] != nil { transmit.post(&input, indirect: indirect) }
    receive.snapshot() // the transmit tables may have changed what receive chains read
    do {
        try net.activate(VirtioActivation(queues: queues, features: features, memory: guest.memory))
    } catch {
        return
    }
    for _ in 0..<Int(input.u8() % 8) {
        switch input.u8() % 3 {
        case 0: net.transmitQueueNotified()
        case 1: // the TAP delivers a frame of fuzzed size and bytes
            let size = Int(input.u16()) % (Net.maximumFrame + 64)
            let bytes = input.take(min(size, 64))
            frame.copyMemory(from: bytes) // the rest of the frame is whatever an earlier input left: any bytes
            _ = send(endpoint.peer, frame.baseAddress, size, Int32(MSG_DONTWAIT))
            net.endpointReadable()
        default:
            if input.bool() { receive.publish(&input, indirect: indirect) } else { transmit.publish(&input, indirect: indirect) }
            receive.snapshot()
            transmit.snapshot()
            if input.bool() { net.receiveQueueNotified() } else { net.transmitQueueNotified() }
        }
    }
    net.transmitQueueNotified()
    endpoint.drain(endpoint.peer) { size in
        Fuzz.check(size >= Net.minimumFrame && size <= Net.maximumFrame, "the device sent a frame of \(size) bytes to the TAP")
    }
    if queues[0] != nil { receive.checkUsed("virtio-net receive") }
    if queues[1] != nil { transmit.checkUsed("virtio-net transmit") }
    Fuzz.checkMemory(bound: memoryBound, "virtio-net")
}
