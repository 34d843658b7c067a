import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import Swiftlet
import SwiftletDevices
import SwiftletHost

/// Firecracker's API: HTTP/1.1 on a Unix socket, parsed by NIOHTTP1 (llhttp) on one event-loop thread. Requests go to
/// a `FirecrackerVMM` one at a time; connections are served side by side, so a slow or stuck client costs only its
/// own connection:
/// - at most `maximumConnections` at once: past that, a new connection closes the one idle the longest (so a client
///   holding idle connections cannot lock others out), or is itself closed when every connection is mid-request;
/// - a request must arrive whole within `requestDeadline` of its first byte (a client sending a byte a second is
///   closed), and an idle connection is closed after `idleTimeout`;
/// - a body over `maximumRequestBody` gets a 400 and the connection is closed.
public final class APIServer: Sendable {
    public static let maximumConnections = 128
    public static let requestDeadline = TimeAmount.seconds(10)
    public static let idleTimeout = TimeAmount.seconds(300)

    public let path: String
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel

    private init(path: String, group: MultiThreadedEventLoopGroup, channel: any Channel) {
        self.path = path
        self.group = group
        self.channel = channel
    }

    /// Starts serving `vmm` on `socket` (from `APISocket.bind`), on a thread of its own. The socket's descriptor is
    /// the server's from here on, also when this throws.
    public static func start(socket: APISocket, vmm: FirecrackerVMM) throws(SwiftletError) -> APIServer {
        let path = socket.path
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let registry = ConnectionRegistry()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: APISocket.backlog)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard registry.opened(channel) else {
                        channel.close(promise: nil)
                        return
                    }
                    channel.closeFuture.whenComplete { _ in registry.closed(channel) }
                    let timer = RequestTimer(registry: registry, channel: channel)
                    try channel.pipeline.syncOperations.addHandler(RequestStartWatcher(timer: timer))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(APIHandler(vmm: vmm, timer: timer))
                }
            }
        do {
            let channel = try bootstrap.withBoundSocket(socket.handOver()).wait()
            return APIServer(path: path, group: group, channel: channel)
        } catch {
            try? group.syncShutdownGracefully()
            unlink(path)
            throw SwiftletError(.systemCall, "cannot serve the API on \(path): \(error)")
        }
    }

    /// Every `interval` from now, on the server's event loop (no thread of its own): `vmm`'s periodic metrics line.
    public func flushMetricsPeriodically(_ vmm: FirecrackerVMM, every interval: TimeAmount = PeriodicMetrics.interval) {
        PeriodicMetrics.schedule(vmm, on: group.next(), every: interval)
    }

    /// Stops serving, removes the socket and ends the thread.
    public func close() {
        try? channel.close().wait()
        unlink(path)
        try? group.syncShutdownGracefully()
    }
}

/// The API's Unix socket, bound and listening before the server (or anything else of the VMM) starts: from `bind`
/// on a client's connect succeeds, and what it sends waits in the socket's backlog until `APIServer.start` serves it.
/// Binding first is what lets a tool that polls for the socket go on at once; the event loop's thread and NIO's
/// set-up (about a millisecond) then overlap the client's first request.
public final class APISocket: @unchecked Sendable { // @unchecked: `descriptor` is read once, by whoever takes it over
    /// Connections the kernel queues before the server accepts them.
    public static let backlog: Int32 = 64

    public let path: String
    private var descriptor: Int32

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    /// A stream socket bound to `path`, listening. `path` must not exist: a socket file left there may belong to a
    /// VMM that is still running, so it is never removed here.
    public static func bind(path: String) throws(SwiftletError) -> APISocket {
        var info = stat()
        if lstat(path, &info) == 0 {
            throw SwiftletError(.invalidConfiguration, "the API socket \(path) already exists: another VMM may be using it; if not, remove it and start again")
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else {
            throw SwiftletError(.invalidConfiguration, "the API socket path \(path) is \(bytes.count) bytes: a Unix socket's path is 1 to \(capacity - 1) bytes; use a shorter one")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SwiftletError(.systemCall, "cannot create the API socket: \(String(cString: strerror(errno)))") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let error = errno
            close(fd)
            throw SwiftletError(.systemCall, "cannot bind the API socket \(path): \(String(cString: strerror(error)))"
                + (error == EADDRINUSE ? " (something created it just now)" : error == ENOENT || error == EACCES ? " (does its directory exist, and may this user write to it?)" : ""))
        }
        guard listen(fd, backlog) == 0 else {
            let error = errno
            close(fd)
            unlink(path)
            throw SwiftletError(.systemCall, "cannot listen on the API socket \(path): \(String(cString: strerror(error)))")
        }
        return APISocket(path: path, descriptor: fd)
    }

    /// The descriptor, now the caller's to close (NIO's channel, which closes it with itself).
    fileprivate func handOver() -> Int32 {
        defer { descriptor = -1 }
        return descriptor
    }

    /// Closes the socket and removes its path, when it is not served after all (the VMM failed before the server
    /// started). A client connected meanwhile sees its connection closed.
    public func discard() {
        if descriptor >= 0 { close(descriptor) }
        descriptor = -1
        unlink(path)
    }
}

/// The open connections, against `APIServer.maximumConnections`, and since when each has been idle (no request in
/// progress). Used only on the server's one event loop (every connection's handlers run there).
final class ConnectionRegistry: @unchecked Sendable { // @unchecked: confined to the event loop
    private struct Entry {
        let channel: any Channel
        var idleSince: NIODeadline?
    }
    private var members: [ObjectIdentifier: Entry] = [:]

    /// Admits `channel`; at the cap, closes the longest-idle connection to make room, or refuses `channel` (false)
    /// when none is idle.
    func opened(_ channel: any Channel) -> Bool {
        if members.count >= APIServer.maximumConnections {
            guard let (id, oldest) = members.filter({ $0.value.idleSince != nil })
                .min(by: { $0.value.idleSince! < $1.value.idleSince! }) else { return false }
            members.removeValue(forKey: id)
            oldest.channel.close(promise: nil)
        }
        members[ObjectIdentifier(channel)] = Entry(channel: channel, idleSince: .now())
        return true
    }

    func closed(_ channel: any Channel) { members.removeValue(forKey: ObjectIdentifier(channel)) }
    func busy(_ channel: any Channel) { members[ObjectIdentifier(channel)]?.idleSince = nil }
    func idle(_ channel: any Channel) { members[ObjectIdentifier(channel)]?.idleSince = .now() }
}

/// One connection's deadline: the idle timeout between requests, the request deadline once a request's first byte
/// has come. Used only on the connection's event loop.
final class RequestTimer {
    private var scheduled: Scheduled<Void>?
    private(set) var requestInProgress = false
    private let registry: ConnectionRegistry
    private let channel: any Channel

    init(registry: ConnectionRegistry, channel: any Channel) {
        self.registry = registry
        self.channel = channel
    }

    func arm(_ timeout: TimeAmount, on context: ChannelHandlerContext) {
        scheduled?.cancel()
        let channel = context.channel
        scheduled = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    func requestStarted(_ context: ChannelHandlerContext) {
        guard !requestInProgress else { return }
        requestInProgress = true
        registry.busy(channel)
        arm(APIServer.requestDeadline, on: context)
    }

    /// The request is whole: no deadline while the VMM works on it.
    func requestReceived() {
        scheduled?.cancel()
        scheduled = nil
    }

    func responseSent(_ context: ChannelHandlerContext) {
        requestInProgress = false
        registry.idle(channel)
        arm(APIServer.idleTimeout, on: context)
    }

    func cancel() { scheduled?.cancel() }
}

/// Sees a connection's raw bytes before the HTTP parser does, to start the request deadline at a request's first byte.
final class RequestStartWatcher: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private let timer: RequestTimer

    init(timer: RequestTimer) { self.timer = timer }

    func channelActive(context: ChannelHandlerContext) {
        timer.arm(APIServer.idleTimeout, on: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        timer.requestStarted(context)
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer.cancel()
        context.fireChannelInactive()
    }
}

/// Collects one request (head and body, up to the limit), has the VMM answer it, writes the answer.
final class APIHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let vmm: FirecrackerVMM
    private let timer: RequestTimer
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(vmm: FirecrackerVMM, timer: RequestTimer) {
        self.vmm = vmm
        self.timer = timer
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let requestHead):
            head = requestHead
            body = []
            tooLarge = false
        case .body(var buffer):
            if body.count + buffer.readableBytes > maximumRequestBody {
                tooLarge = true
                body = []
            } else if !tooLarge, let bytes = buffer.readBytes(length: buffer.readableBytes) {
                body += bytes
            }
        case .end:
            guard let head else { return }
            self.head = nil
            timer.requestReceived()
            if tooLarge {
                respond(context, .fault("the request body is more than the \(maximumRequestBody) bytes this API reads"), keepAlive: false)
                return
            }
            let method = head.method.rawValue, uri = head.uri, body = self.body
            let keepAlive = head.isKeepAlive
            self.body = []
            let promise = context.eventLoop.makePromise(of: APIResponse.self)
            let vmm = self.vmm
            promise.completeWithTask { await vmm.handle(method: method, path: uri, body: body) }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            promise.futureResult.whenSuccess { response in
                let (handler, context) = bound.value
                handler.respond(context, response, keepAlive: keepAlive)
            }
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ response: APIResponse, keepAlive: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "Server", value: "Firecracker API")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        // The specification's one media type, on every answer (a 204 too: the schema's checks expect it).
        headers.add(name: "Content-Type", value: "application/json")
        if response.status != 204 { headers.add(name: "Content-Length", value: String(response.body.count)) }
        let head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if response.status != 204 {
            var buffer = context.channel.allocator.buffer(capacity: response.body.count)
            buffer.writeBytes(response.body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
        timer.responseSent(context)
    }
}

/// Firecracker writes a metrics line every 60 s once the microVM runs, besides each FlushMetrics. With the API, the
/// timer runs on the API's event loop; without it (`--no-api`), on a one-thread event loop of its own.
public final class PeriodicMetrics: Sendable {
    public static let interval = TimeAmount.seconds(60)
    private let group: MultiThreadedEventLoopGroup

    /// The `--no-api` case: a loop of its own for the timer.
    public init(_ vmm: FirecrackerVMM, every interval: TimeAmount = PeriodicMetrics.interval) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        Self.schedule(vmm, on: group.next(), every: interval)
    }

    static func schedule(_ vmm: FirecrackerVMM, on loop: any NIOCore.EventLoop, every interval: TimeAmount) {
        loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            Task { await vmm.writePeriodicMetrics() }
        }
    }

    public func stop() { try? group.syncShutdownGracefully() }
}
