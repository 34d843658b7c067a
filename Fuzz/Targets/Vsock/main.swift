import FuzzSupport
import Glibc
@testable import SwiftletDevices
import SwiftletHost
import SwiftletVirtio

// virtio-vsock: packets from the guest (any op, type, ports, CIDs, len, flags, in any buffer layout), receive buffer
// layouts (header-only ones included), host-side clients of the hybrid socket sending fuzzed `CONNECT` lines, and
// a host listener that accepts the guest's connections and writes to them.

nonisolated(unsafe) let guest = FuzzGuest()
let socketPath = "/tmp/swiftlet-fuzz-vsock-\(getpid()).sock"
let listenPort: UInt32 = 1024
nonisolated(unsafe) let vsock = try! Vsock(VsockConfiguration(guestCID: 3, socketPath: socketPath), clock: { 0 })
let fatal = FatalFlag()
vsock.attach(interrupt: VirtioInterrupt(line: CountingLine())) { fatal.raise() }
/// A host program listening on port 1024, as `<socket>_1024`.
let listener = try! UnixSocket.listen(path: "\(socketPath)_\(listenPort)")
_ = fcntl(listener.rawValue, F_SETFL, fcntl(listener.rawValue, F_GETFL) | O_NONBLOCK)
atexit {
    unlink(socketPath)
    unlink("\(socketPath)_\(listenPort)")
}
/// Heap one input may make the device hold at once: the queues and chains, the connections this input can open
/// (one per packet at most, and each buffers at most Vsock.maximumPayload bytes on its way to the guest), the
/// pending control packets, and the host clients this harness connects. Bounded by the queue size and payload
/// limit, not by the lengths the guest writes.
nonisolated let memoryBound = 8 << 20

/// A well-formed-looking packet header in a template slot, with fuzzed fields (struct virtio_vsock_hdr, 44 bytes).
func header(_ input: inout FuzzInput, _ slot: UnsafeMutableRawBufferPointer) {
    let choice = input.u8()
    slot.storeBytes(of: choice & 1 != 0 ? 3 : input.u64(), toByteOffset: 0, as: UInt64.self)   // src_cid
    slot.storeBytes(of: choice & 2 != 0 ? 2 : input.u64(), toByteOffset: 8, as: UInt64.self)   // dst_cid
    slot.storeBytes(of: choice & 4 != 0 ? UInt32(input.u8() % 4) + 5000 : input.u32(), toByteOffset: 16, as: UInt32.self) // src_port
    slot.storeBytes(of: choice & 8 != 0 ? listenPort + UInt32(input.u8() % 2) : input.u32(), toByteOffset: 20, as: UInt32.self) // dst_port
    slot.storeBytes(of: choice & 16 != 0 ? UInt32(input.u8() % 20) : input.u32(), toByteOffset: 24, as: UInt32.self) // len
    slot.storeBytes(of: choice & 32 != 0 ? UInt16(1) : input.u16(), toByteOffset: 28, as: UInt16.self) // type
    slot.storeBytes(of: choice & 64 != 0 ? UInt16(input.u8() % 8) : input.u16(), toByteOffset: 30, as: UInt16.self) // op
    slot.storeBytes(of: input.u32() & 3, toByteOffset: 32, as: UInt32.self) // flags
    slot.storeBytes(of: choice & 128 != 0 ? UInt32(256 << 10) : input.u32(), toByteOffset: 36, as: UInt32.self) // buf_alloc
    slot.storeBytes(of: input.u32(), toByteOffset: 40, as: UInt32.self) // fwd_cnt
    for index in 44..<slot.count { slot[index] = input.u8() }
}

Fuzz.main { input in
    guest.clear()
    fatal.clear()
    vsock.reset()
    let features = input.features(offered: vsock.offeredFeatures)
    let indirect = features & VirtioFeature.indirectDescriptors != 0
    Fuzz.beginMemoryAccounting()
    guest.fillSlots(&input, header)
    var receive = FuzzDriverQueue(guest: guest, index: 0, size: FuzzDriverQueue.size(&input, maximumSize: Vsock.queueSize))
    var transmit = FuzzDriverQueue(guest: guest, index: 1, size: FuzzDriverQueue.size(&input, maximumSize: Vsock.queueSize))
    let event = FuzzDriverQueue(guest: guest, index: 2, size: 4)
    let queues = [receive.queue(maximumSize: Vsock.queueSize, features: features),
                  transmit.queue(maximumSize: Vsock.queueSize, features: features),
                  event.queue(maximumSize: Vsock.queueSize, features: features)]
    if queues[0] != nil { receive.post(&input, indirect: indirect) }
    if queues[1] != nil { transmit.post(&input, indirect: indirect) }
    receive.snapshot() // the transmit tables may have changed what receive chains read
    do {
        try vsock.activate(VirtioActivation(queues: queues, features: features, memory: guest.memory))
    } catch {
        return
    }
    var clients: [Int32] = [], accepted: [Int32] = []
    for _ in 0..<Int(input.u8() % 8) {
        switch input.u8() % 5 {
        case 0: vsock.transmitQueueNotified()
        case 1: vsock.receiveQueueNotified()
        case 2: // a host client connects to the hybrid socket and sends a fuzzed line (CONNECT <port>\n, or not)
            guard clients.count < 4, let client = try? UnixSocket.connect(path: socketPath) else { continue }
            let fd = dup(client.rawValue)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            clients.append(fd)
            let line = input.bool() ? Array("CONNECT \(1024 + UInt32(input.u8() % 4))\n".utf8) : Array(input.take(Int(input.u8())))
            _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            vsock.pollerReady()
        case 3: // the host listener accepts what the guest connected, and writes to it
            while accepted.count < 8 {
                let fd = accept(listener.rawValue, nil, nil)
                guard fd >= 0 else { break }
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                accepted.append(fd)
            }
            let bytes = input.take(Int(input.u16() % 4096))
            for fd in accepted + clients { _ = send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
            vsock.pollerReady()
        default:
            if input.bool() { receive.publish(&input, indirect: indirect) } else { transmit.publish(&input, indirect: indirect) }
            receive.snapshot()
            transmit.snapshot()
            if input.bool() { vsock.receiveQueueNotified() } else { vsock.transmitQueueNotified() }
        }
    }
    vsock.transmitQueueNotified()
    vsock.pollerReady()
    if queues[0] != nil { receive.checkUsed("virtio-vsock receive") }
    if queues[1] != nil { transmit.checkUsed("virtio-vsock transmit") }
    Fuzz.check(vsock.connectionCount <= Vsock.maximumConnections, "\(vsock.connectionCount) connections open")
    Fuzz.checkMemory(bound: memoryBound, "virtio-vsock")
    for fd in clients + accepted { close(fd) }
    // Whatever the guest connected and this input did not accept is refused now, so the next input starts clean.
    while true {
        let fd = accept(listener.rawValue, nil, nil)
        guard fd >= 0 else { break }
        close(fd)
    }
    vsock.reset()
    vsock.pollerReady() // the host sockets closed by reset and by this harness are forgotten
}
