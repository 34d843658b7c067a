import CSwiftlet
import Glibc
import Synchronization
import SwiftletHost
import SwiftletMemory
import SwiftletVirtio
import SystemPackage

/// How a disk's requests reach its image.
public enum BlockEngine: String, Sendable, Equatable, CaseIterable {
    /// Each request is one preadv/pwritev/fdatasync on the device thread, done before the next is looked at.
    case sync
    /// Requests go to an io_uring (`IoUring`): up to `Block.ringDepth` in flight at once, their completions
    /// handled on the same device thread. Where the kernel has no io_uring or refuses it, the disk uses `sync`.
    case ioUring = "io_uring"
}

/// How a disk is attached.
public struct BlockConfiguration: Sendable, Equatable {
    public var path: String
    public var readOnly: Bool
    /// What GET_ID returns (at most 20 bytes).
    public var serial: String?
    /// Offer VIRTIO_F_EVENT_IDX (on by default; off for comparisons).
    public var eventIndex: Bool
    /// Offer VIRTIO_F_RING_PACKED (on by default): the guest's driver then picks the packed or the split layout.
    public var packedRing: Bool
    /// The engine asked for (`Block.engine` says which one the disk got).
    public var engine: BlockEngine

    public init(path: String, readOnly: Bool = false, serial: String? = nil, eventIndex: Bool = true, packedRing: Bool = true,
                engine: BlockEngine = .sync) {
        self.path = path
        self.readOnly = readOnly
        self.serial = serial
        self.eventIndex = eventIndex
        self.packedRing = packedRing
        self.engine = engine
    }
}

/// virtio-blk on a raw image file (virtio 1.2 §5.2). Every request moves data straight between the file and the
/// guest's buffers (no copy), on the device's event loop thread, by one of two engines (`BlockEngine`): the
/// synchronous one does each request before it looks at the next; the io_uring one submits up to `ringDepth` and
/// uses each chain when its completion arrives, in whatever order they finish (BlockRing.swift).
public final class Block: VirtioDevice, ConfigurationChanging {
    public static let sectorSize: UInt64 = 512
    public static let queueSize: UInt16 = 256
    /// Segments per request: the queue size less the header and status descriptors (SEG_MAX).
    static let segmentMaximum: UInt32 = UInt32(queueSize) - 2
    /// Largest single segment (SIZE_MAX).
    static let segmentSizeMaximum: UInt32 = 1 << 20
    static let discardSegmentMaximum: UInt32 = 1
    static let discardSectorMaximum: UInt32 = UInt32.max / 512
    /// Requests the io_uring engine keeps in flight at most (a fixed table; more wait in the ring until one is done).
    public static let ringDepth = 128

    // Feature bits (§5.2.3).
    public enum Feature {
        public static let sizeMaximum: UInt64 = 1 << 1, segmentMaximum: UInt64 = 1 << 2, readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6, flush: UInt64 = 1 << 9, discard: UInt64 = 1 << 13
        public static let writeZeroes: UInt64 = 1 << 14
    }

    public let configuration: BlockConfiguration
    /// The disk's size now: the image's, in whole sectors (`replaceImage` changes it).
    public var capacityBytes: UInt64 { image.withLock { $0.capacityBytes } }
    /// The path of the image attached now.
    public var imagePath: String { image.withLock { $0.path } }
    public let counters = DeviceCounters()
    public let queueEvents: [EventFd]
    public let offeredFeatures: UInt64
    public var deviceType: UInt32 { 2 }
    public var queueMaximumSizes: [UInt16] { [Self.queueSize] }
    /// The engine the disk runs: the one configured, or `sync` where io_uring could not be set up (`engineProblem`).
    public let engine: BlockEngine
    /// Why a disk configured for io_uring runs the synchronous engine; nil otherwise.
    public let engineProblem: String?
    /// The io_uring engine's completions (nil with the synchronous engine): a source of the device loop.
    public let completionEvent: EventFd?
    /// Requests submitted to io_uring and not yet completed (0 with the synchronous engine), at most `ringDepth`.
    public var requestsInFlight: Int { state.withLock { $0.ring.map { Block.ringDepth - $0.freeSlots } ?? 0 } }
    /// The attached image. A drain round takes it once and keeps it to the end, so a `replaceImage` never splits a
    /// request, and the old file closes when the last round on it lets go of it.
    private let image: Mutex<Image>
    private let configurationSpace: Mutex<ConfigurationSpace>
    private let configurationNotifier = Mutex<Callback?>(nil)
    private let serial: [UInt8]
    private let link = DeviceLink()

    /// The active queue and the scratch space its requests reuse: touched only by the event loop (and by reset).
    /// @unchecked Sendable: the iovecs point into guest memory and are only used under `state`'s lock.
    private struct Active: @unchecked Sendable {
        var queue: any Virtqueue
        var chain = DescriptorChain(capacity: Int(Block.queueSize))
        var vectors: [iovec] = []
    }
    /// What the device loop, reset and pause touch, under one lock: the active queue, and the io_uring engine's
    /// requests in flight (which outlive a reset: the ring is set up once, before the threads are confined).
    private struct State: @unchecked Sendable {
        var active: Active?
        var ring: BlockRing?
    }
    private let state: Mutex<State>

    /// An open image: the file, its path and its size in whole sectors.
    struct Image: Sendable {
        var file: OwnedFileDescriptor
        var path: String
        var capacityBytes: UInt64
        /// Counts `replaceImage`s: the io_uring engine puts its fixed file to the image of a new generation.
        var generation: UInt64 = 0

        /// Opens the image (read-only or read-write) and takes an exclusive lock on a writable one, so two VMs
        /// cannot write the same image.
        init(path: String, readOnly: Bool) throws(SwiftletError) {
            self.path = path
            do {
                file = try OwnedFileDescriptor(opening: path, flags: readOnly ? O_RDONLY : O_RDWR)
            } catch {
                throw SwiftletError(.invalidConfiguration, "cannot open disk image \(path)"
                    + (error == .permissionDenied && !readOnly ? " for writing (add readonly=on?)" : ""), cause: error)
            }
            if !readOnly && flock(file.rawValue, LOCK_EX | LOCK_NB) != 0 {
                let error = Errno(rawValue: errno)
                throw SwiftletError(.invalidConfiguration, "disk image \(path) is locked by another process "
                    + "(another VM has it open for writing); attach it readonly=on or stop the other VM", cause: error)
            }
            let addressable: Bool
            do {
                addressable = try file.isFileOrBlockDevice()
                capacityBytes = UInt64(try file.fileSize()) / Block.sectorSize * Block.sectorSize
            } catch {
                throw SwiftletError(.io, "cannot stat disk image \(path)", cause: error)
            }
            guard addressable else {
                throw SwiftletError(.invalidConfiguration, "disk image \(path) is neither a regular file nor a "
                    + "block device; give --disk an image file (truncate -s 1G disk.raw makes an empty one) or a block device")
            }
        }
    }

    public init(_ configuration: BlockConfiguration) throws(SwiftletError) {
        self.configuration = configuration
        let opened = try Image(path: configuration.path, readOnly: configuration.readOnly)
        image = Mutex(opened)
        let serialBytes = Array((configuration.serial ?? "").utf8)
        guard serialBytes.count <= 20 else {
            throw SwiftletError(.invalidConfiguration, "disk serial \"\(configuration.serial ?? "")\" is longer than 20 bytes")
        }
        serial = serialBytes
        var events: [EventFd] = []
        do { events.append(try EventFd(nonBlocking: true)) } catch {
            throw SwiftletError(.systemCall, "cannot create the disk's queue eventfd", cause: error)
        }
        queueEvents = events
        var ring: BlockRing?
        var problem: String?
        if configuration.engine == .ioUring {
            do { ring = try BlockRing(file: opened.file.rawValue) } catch {
                problem = "disk \(configuration.path): io_uring is not available here (\(error)); the disk uses the "
                    + "synchronous engine (engine=sync says so and silences this)"
            }
        }
        engine = ring == nil ? .sync : .ioUring
        engineProblem = problem
        completionEvent = ring?.completionEvent
        state = Mutex(State(active: nil, ring: ring))
        var features = VirtioFeature.version1 | VirtioFeature.indirectDescriptors | Feature.sizeMaximum
            | Feature.segmentMaximum | Feature.blockSize | Feature.flush | Feature.discard | Feature.writeZeroes
        if configuration.eventIndex { features |= VirtioFeature.eventIndex }
        if configuration.packedRing { features |= VirtioFeature.ringPacked }
        if configuration.readOnly { features |= Feature.readOnly }
        offeredFeatures = features
        configurationSpace = Mutex(ConfigurationSpace(Self.configurationSpace(capacitySectors: opened.capacityBytes / Self.sectorSize)))
    }

    /// Attaches the image at `path` in place of the current one (Firecracker's drive PATCH), opened the same way
    /// (read-only or not), and tells the driver the capacity changed: a configuration change, after which Linux
    /// re-reads the size (virtio_blk's config_work). A request being served finishes on the old image, every later
    /// one uses the new; the old file is closed when the last request on it is done. On an error the old image
    /// stays attached.
    public func replaceImage(path: String) throws(SwiftletError) {
        var opened = try Image(path: path, readOnly: configuration.readOnly)
        image.withLock {
            opened.generation = $0.generation + 1
            $0 = opened
        }
        configurationSpace.withLock {
            $0 = ConfigurationSpace(Self.configurationSpace(capacitySectors: opened.capacityBytes / Self.sectorSize))
        }
        if state.withLock({ $0.active != nil }) { configurationNotifier.withLock { $0 }?() }
    }

    /// What the device calls when its configuration space changed (the transport's configuration change notice).
    public func attachConfigurationNotifier(_ notify: @escaping @Sendable () -> Void) {
        configurationNotifier.withLock { $0 = Callback(notify) }
    }

    /// struct virtio_blk_config (§5.2.4), the fields up to write_zeroes_may_unmap.
    static func configurationSpace(capacitySectors: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 60)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        put(capacitySectors, 0)
        put(segmentSizeMaximum, 8)
        put(segmentMaximum, 12)
        put(UInt32(sectorSize), 20)           // blk_size
        put(discardSectorMaximum, 36)        // max_discard_sectors
        put(discardSegmentMaximum, 40)       // max_discard_seg
        put(UInt32(1), 44)                   // discard_sector_alignment
        put(discardSectorMaximum, 48)        // max_write_zeroes_sectors
        put(discardSegmentMaximum, 52)       // max_write_zeroes_seg
        bytes[56] = 1                        // write_zeroes_may_unmap
        return bytes
    }

    /// Connects the device to its interrupt and to what it does when the driver broke its queue.
    public func attach(interrupt: VirtioInterrupt, onFatalError: @escaping @Sendable () -> Void) {
        link.attach(interrupt: interrupt, onFatalError: onFatalError)
    }

    public func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        configurationSpace.withLock { $0 }.read(offset: offset, into: data)
    }

    public func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {
        // Nothing in virtio_blk_config is writable without CONFIG_WCE, which is not offered.
    }

    public func activate(_ activation: VirtioActivation) throws(SwiftletError) {
        guard let queue = activation.queues.first ?? nil else {
            throw SwiftletError(.guestFault, "the driver activated virtio-blk without its request queue")
        }
        var active = Active(queue: queue)
        active.vectors.reserveCapacity(Int(Self.queueSize))
        state.withLock { $0.active = active }
        // Requests the driver queued before DRIVER_OK are picked up now.
        queueEvents[0].signal()
    }

    /// Waits for the io_uring engine's requests in flight (their data lands in the guest's buffers, their chains are
    /// not used: the driver has reset the device), then forgets the queue.
    public func reset() {
        state.withLock { Self.deactivate(&$0) }
    }

    private static func deactivate(_ state: inout State) {
        state.ring?.abandon()
        state.active = nil
    }

    /// The machine is going away: nothing may still be writing into guest memory when it is unmapped.
    public func shutDown() {
        state.withLock { Self.deactivate(&$0) }
    }

    /// Every request is done at this point: the synchronous engine's when its drain returns, the io_uring engine's
    /// when the loop paused (`quiesce`). No chain is held.
    public func queuePositions() -> [QueuePosition?] { [state.withLock { $0.active?.queue.position }] }

    /// The event-loop handler of the request queue's ioeventfd.
    public func handleQueueEvent() {
        guard let count = queueEvents[0].consume() else { return }
        counters.countNotifications(queue: 0, count)
        let result = state.withLock { state -> DrainResult in
            guard state.active != nil else { return DrainResult() }
            return serve(&state)
        }
        finishRound(result)
    }

    /// The io_uring engine's completion eventfd: uses the chains whose requests completed, then takes the requests
    /// that waited for a free slot.
    public func handleCompletions() {
        _ = completionEvent?.consume()
        let result = state.withLock { state -> DrainResult in
            guard state.active != nil, let ring = state.ring else {
                state.ring?.discardCompletions()
                return DrainResult()
            }
            let queue = state.active!.queue
            var result = DrainResult()
            if ring.complete(on: queue, counters: counters) > 0 { result.interrupt = queue.needsInterrupt() }
            if ring.waiting && ring.hasFreeSlot {
                let more = serve(&state)
                result.interrupt = result.interrupt || more.interrupt
                result.more = more.more
                result.fatal = more.fatal
            }
            return result
        }
        finishRound(result)
    }

    /// The loop is pausing (a snapshot, `MicroVM.pause`): waits for every request in flight and uses its chain, so
    /// that the paused device holds none.
    public func quiesce() {
        let interrupt = state.withLock { state -> Bool in
            guard let active = state.active, let ring = state.ring else { return false }
            return ring.completeAll(on: active.queue, counters: counters) > 0 && active.queue.needsInterrupt()
        }
        if interrupt { link.signalUsedBuffers() }
    }

    private func finishRound(_ result: DrainResult) {
        if result.interrupt { link.signalUsedBuffers() }
        if result.more { counters.resume(queue: 0, queueEvents[0]) }
        if result.fatal {
            state.withLock { Self.deactivate(&$0) }
            link.reportFatalError()
        }
    }

    /// Drains the queue (Virtqueue.drain: malformed chains, a corrupt ring, the budget), one request per chain:
    /// done at once by the synchronous engine, submitted by the io_uring one, at most as many as it has free slots.
    /// When those run out with chains still available, the rest waits for a completion (`BlockRing.waiting`), not
    /// for another pass of the loop.
    private func serve(_ state: inout State) -> DrainResult {
        let queue = state.active!.queue
        // The image once per round (one lock, not one per request); a replaceImage takes effect from the next round.
        let image = image.withLock { $0 }
        guard let ring = state.ring else {
            return queue.drain(&state.active!, chain: \.chain, onMalformed: { counters.errorCount.add(1, ordering: .relaxed) }) { active, completion in
                let written = execute(active.chain, on: image, vectors: &active.vectors)
                completion.use(active.chain.head, length: written)
                counted(active.chain)
            }
        }
        let fileCurrent = ring.use(image)
        var result = queue.drain(&state.active!, chain: \.chain, budget: min(Drain.budget, ring.freeSlots),
                                 onMalformed: { counters.errorCount.add(1, ordering: .relaxed) }) { active, completion in
            counted(active.chain)
            guard let request = plan(active.chain, on: image, vectors: &active.vectors) else {
                completion.use(active.chain.head, length: 0)
                return
            }
            if case .finished(let status, let data) = request.work {
                completion.use(active.chain.head, length: finish(request.status, status, data: data))
            } else if !fileCurrent || !ring.submit(request, head: active.chain.head, vectors: active.vectors) {
                // No slot (the budget says there is one), nothing to transfer, or the ring still on a replaced
                // image: done here and now instead.
                completion.use(active.chain.head, length: perform(request, on: image, vectors: &active.vectors))
            }
        }
        if ring.submitPrepared(on: queue, counters: counters) > 0 { result.interrupt = result.interrupt || queue.needsInterrupt() }
        ring.waiting = result.more && !ring.hasFreeSlot
        if ring.waiting { result.more = false }
        return result
    }

    private func counted(_ chain: DescriptorChain) {
        counters.requestCount.add(1, ordering: .relaxed)
        counters.addBytes(Int(chain.readableLength + chain.writableLength))
    }

    /// A request read from its chain: where its status byte goes, and what is left to do.
    struct Request {
        enum Work {
            /// Already done (or refused): the status, and the bytes written into the chain's data buffers.
            case finished(UInt8, data: UInt64)
            /// A read (into the writable buffers) or a write (from the readable ones) of `length` bytes at `offset`;
            /// the iovecs are in `vectors`.
            case transfer(write: Bool, offset: UInt64, length: UInt64)
            /// FLUSH: fdatasync.
            case flush
        }
        var status: UnsafeMutableRawPointer
        var work: Work
    }

    /// Writes a request's status byte (counting a failure as the guest's error) and returns the length for its used
    /// element: `data` plus the status byte.
    func finish(_ statusByte: UnsafeMutableRawPointer, _ status: UInt8, data: UInt64 = 0) -> UInt32 {
        Self.finish(statusByte, status, data: data, counters: counters)
    }

    static func finish(_ statusByte: UnsafeMutableRawPointer, _ status: UInt8, data: UInt64 = 0, counters: DeviceCounters) -> UInt32 {
        if status != BlockRequestHeader.Status.ok { counters.errorCount.add(1, ordering: .relaxed) }
        statusByte.storeBytes(of: status, as: UInt8.self)
        return UInt32(data + 1)
    }

    /// The synchronous engine: one request, start to end.
    private func execute(_ chain: DescriptorChain, on image: Image, vectors: inout [iovec]) -> UInt32 {
        guard let request = plan(chain, on: image, vectors: &vectors) else { return 0 }
        return perform(request, on: image, vectors: &vectors)
    }

    /// Does a planned request's transfer or flush here and now, and writes its status.
    private func perform(_ request: Request, on image: Image, vectors: inout [iovec]) -> UInt32 {
        switch request.work {
        case .finished(let status, let data):
            return finish(request.status, status, data: data)
        case .transfer(let write, let offset, let length):
            guard transfer(image.file, vectors: &vectors, offset: offset, length: length, write: write) else {
                return finish(request.status, BlockRequestHeader.Status.ioError)
            }
            return finish(request.status, BlockRequestHeader.Status.ok, data: write ? 0 : length)
        case .flush:
            guard fdatasync(image.file.rawValue) == 0 else { return finish(request.status, BlockRequestHeader.Status.ioError) }
            return finish(request.status, BlockRequestHeader.Status.ok)
        }
    }

    /// Reads a request from its chain and checks it: reads and writes come back as transfers (their iovecs in
    /// `vectors`), flushes as flushes, everything else done here (GET_ID, DISCARD, WRITE_ZEROES: rare, and
    /// synchronous under both engines) or refused. nil when the chain has no device-writable byte for the status:
    /// nothing can be reported, and it is used with length 0.
    func plan(_ chain: DescriptorChain, on image: Image, vectors: inout [iovec]) -> Request? {
        let file = image.file
        func inBounds(sector: UInt64, length: UInt64) -> Bool { Self.inBounds(sector: sector, length: length, capacity: image.capacityBytes) }
        // The status byte is the last byte of the last device-writable buffer; without one nothing can be reported.
        guard let last = chain.writable.last else {
            counters.errorCount.add(1, ordering: .relaxed)
            return nil
        }
        let statusByte = last.host + Int(last.length) - 1
        let dataWritable = chain.writableLength - 1
        func finished(_ status: UInt8, data: UInt64 = 0) -> Request { Request(status: statusByte, work: .finished(status, data: data)) }
        guard let header = BlockRequestHeader.parse(chain) else { return finished(BlockRequestHeader.Status.ioError) }
        let dataReadable = chain.readableLength - UInt64(BlockRequestHeader.size)

        switch header.type {
        case BlockRequestHeader.RequestType.read:
            guard dataReadable == 0, inBounds(sector: header.sector, length: dataWritable) else {
                return finished(BlockRequestHeader.Status.ioError)
            }
            collect(chain, skippingReadable: Int(chain.readableLength), writableLimit: dataWritable, into: &vectors)
            return Request(status: statusByte, work: .transfer(write: false, offset: header.sector * Self.sectorSize, length: dataWritable))
        case BlockRequestHeader.RequestType.write:
            guard !configuration.readOnly, dataWritable == 0, inBounds(sector: header.sector, length: dataReadable) else {
                return finished(BlockRequestHeader.Status.ioError)
            }
            collect(chain, skippingReadable: BlockRequestHeader.size, writableLimit: 0, into: &vectors)
            return Request(status: statusByte, work: .transfer(write: true, offset: header.sector * Self.sectorSize, length: dataReadable))
        case BlockRequestHeader.RequestType.flush:
            // A read-only image has nothing of the guest's to make durable.
            return configuration.readOnly ? finished(BlockRequestHeader.Status.ok) : Request(status: statusByte, work: .flush)
        case BlockRequestHeader.RequestType.getID:
            // The serial, NUL-padded when shorter than 20 bytes, into as much as the driver gave.
            let count = Int(min(dataWritable, 20))
            var remaining = count
            var source = 0
            for buffer in chain.writable where remaining > 0 {
                let take = min(remaining, Int(buffer.length))
                for index in 0..<take {
                    buffer.host.storeBytes(of: source < serial.count ? serial[source] : 0, toByteOffset: index, as: UInt8.self)
                    source += 1
                }
                remaining -= take
            }
            return finished(BlockRequestHeader.Status.ok, data: UInt64(count))
        case BlockRequestHeader.RequestType.discard, BlockRequestHeader.RequestType.writeZeroes:
            guard !configuration.readOnly else { return finished(BlockRequestHeader.Status.ioError) }
            let zeroes = header.type == BlockRequestHeader.RequestType.writeZeroes
            guard let segments = rangeSegments(chain, count: dataReadable), !segments.isEmpty,
                  segments.count <= Int(Self.discardSegmentMaximum) else {
                return finished(BlockRequestHeader.Status.ioError)
            }
            for segment in segments {
                let length = UInt64(segment.sectorCount) * Self.sectorSize
                guard segment.sectorCount <= Self.discardSectorMaximum, inBounds(sector: segment.sector, length: length) else {
                    return finished(BlockRequestHeader.Status.ioError)
                }
                // Discard and unmapping zeroes deallocate; plain write-zeroes keeps the blocks allocated.
                let mode = zeroes && !segment.unmap ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
                                                     : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                if length > 0 && CSwiftlet_fallocate(file.rawValue, Int32(mode), Int64(segment.sector * Self.sectorSize), Int64(length)) != 0 {
                    // A discard is a hint: a file system that cannot punch holes has still kept the data safe.
                    if !zeroes && (errno == EOPNOTSUPP) { continue }
                    return finished(BlockRequestHeader.Status.ioError)
                }
            }
            return finished(BlockRequestHeader.Status.ok)
        default:
            return finished(BlockRequestHeader.Status.unsupported)
        }
    }

    /// Whether [sector, sector + length) lies inside a disk of `capacity` bytes, in whole sectors, without overflow.
    static func inBounds(sector: UInt64, length: UInt64, capacity: UInt64) -> Bool {
        guard length % sectorSize == 0 else { return false }
        let (start, overflow) = sector.multipliedReportingOverflow(by: sectorSize)
        guard !overflow, start <= capacity else { return false }
        return length <= capacity - start
    }

    /// The DISCARD / WRITE_ZEROES segments in the readable data after the header; nil when malformed.
    private func rangeSegments(_ chain: DescriptorChain, count: UInt64) -> [BlockRangeSegment]? {
        guard count % UInt64(BlockRangeSegment.size) == 0, count / UInt64(BlockRangeSegment.size) <= UInt64(Self.discardSegmentMaximum) else {
            return nil
        }
        var reader = ChainReader(chain)
        reader.skip(BlockRequestHeader.size)
        var segments: [BlockRangeSegment] = []
        while let sector = reader.read(UInt64.self), let sectorCount = reader.read(UInt32.self),
              let flags = reader.read(UInt32.self) {
            segments.append(BlockRangeSegment(sector: sector, sectorCount: sectorCount, unmap: flags & 1 != 0))
        }
        return segments
    }

    /// Builds the iovecs for the data part of a request: readable buffers after `skippingReadable` bytes, then up
    /// to `writableLimit` bytes of writable buffers (the status byte excluded).
    private func collect(_ chain: DescriptorChain, skippingReadable: Int, writableLimit: UInt64, into vectors: inout [iovec]) {
        vectors.removeAll(keepingCapacity: true)
        var reader = ChainReader(chain)
        reader.skip(skippingReadable)
        reader.vectors(reader.remaining, into: &vectors)
        var writer = ChainWriter(chain)
        writer.vectors(Int(writableLimit), into: &vectors)
    }

    /// preadv/pwritev of `length` bytes at `offset`, continuing after short transfers. false on an I/O error.
    private func transfer(_ file: OwnedFileDescriptor, vectors: inout [iovec], offset: UInt64, length: UInt64, write: Bool) -> Bool {
        var done: UInt64 = 0
        var first = 0
        while done < length {
            let result = vectors.withUnsafeMutableBufferPointer { buffer -> Int in
                let base = buffer.baseAddress! + first
                // At most queueSize vectors, well under IOV_MAX (1024).
                let count = Int32(buffer.count - first)
                return write ? pwritev(file.rawValue, base, count, off_t(offset + done))
                             : preadv(file.rawValue, base, count, off_t(offset + done))
            }
            if result < 0 {
                if errno == EINTR { continue }
                return false
            }
            if result == 0 { return false } // the image shrank under us
            done += UInt64(result)
            // Drop the vectors that are complete and trim the partial one.
            var consumed = result
            while first < vectors.count && consumed >= vectors[first].iov_len {
                consumed -= vectors[first].iov_len
                first += 1
            }
            if consumed > 0 {
                vectors[first].iov_base += consumed
                vectors[first].iov_len -= consumed
            }
        }
        return true
    }
}
