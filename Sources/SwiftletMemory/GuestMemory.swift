import Glibc
import SwiftletHost

/// One contiguous range of guest RAM backed by its own anonymous mapping, which it owns and unmaps.
public final class GuestRegion: Sendable {
    public let start: GuestAddress
    public let size: UInt64
    /// Where the region starts in this process. Shared with KVM and device threads: the mapping lives as long as the
    /// region, and guest RAM is by nature written concurrently by the guest, so no Swift exclusivity applies to it.
    public nonisolated(unsafe) let host: UnsafeMutableRawPointer
    /// The pages of this region the host wrote, when the memory tracks dirty pages (`GuestMemory.tracksDirtyPages`).
    public let hostWrites: DirtyPages?
    static let hugePageSize = 2 << 20

    init(start: GuestAddress, size: UInt64, tracked: Bool = false) throws(SwiftletError) {
        guard size > 0, size % UInt64(Glibc.sysconf(Int32(_SC_PAGESIZE))) == 0 else {
            throw SwiftletError(.invalidConfiguration, "guest memory region size \(size) is not a whole number of pages")
        }
        guard start.adding(size) != nil else {
            throw SwiftletError(.invalidConfiguration, "guest memory region at \(start) of \(size) bytes wraps around")
        }
        // Aligned to 2 MiB and marked for transparent huge pages, as QEMU does: every first touch of guest RAM is
        // a fault in the host, and under nested virtualization a costly one, so 2 MiB pages make a guest's boot
        // measurably faster. The mark also keeps the kernel from merging this mapping with a neighbouring one.
        let alignment = GuestRegion.hugePageSize
        let reserved = Int(size) + alignment
        let raw = mmap(nil, reserved, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let raw, raw != MAP_FAILED else {
            throw SwiftletError(.outOfMemory, "cannot map \(size >> 20) MiB of guest memory (lower --memory)",
                                cause: .init(rawValue: errno))
        }
        let base = UInt(bitPattern: raw)
        let aligned = (base + UInt(alignment - 1)) & ~UInt(alignment - 1)
        let head = Int(aligned - base)
        if head > 0 { munmap(raw, head) }
        let tail = reserved - head - Int(size)
        if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: aligned + UInt(size)), tail) }
        let pointer = UnsafeMutableRawPointer(bitPattern: aligned)!
        _ = madvise(pointer, Int(size), MADV_HUGEPAGE)
        self.start = start
        self.size = size
        self.host = pointer
        hostWrites = tracked ? DirtyPages(pageCount: Int(size / hostPageSize)) : nil
    }

    /// A region whose contents are `size` bytes of `file` at `offset`, mapped MAP_PRIVATE: pages load from the file
    /// when first touched, the guest's writes stay in this process, and processes that map the same file share the
    /// pages neither has written (a snapshot's clones).
    init(start: GuestAddress, size: UInt64, file: Int32, offset: UInt64, tracked: Bool = false) throws(SwiftletError) {
        guard size > 0, size % hostPageSize == 0, offset % hostPageSize == 0 else {
            throw SwiftletError(.invalidConfiguration, "guest memory region size \(size) at file offset \(offset) is not a whole number of pages")
        }
        guard start.adding(size) != nil else {
            throw SwiftletError(.invalidConfiguration, "guest memory region at \(start) of \(size) bytes wraps around")
        }
        let raw = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, file, off_t(offset))
        guard let raw, raw != MAP_FAILED else {
            throw SwiftletError(.outOfMemory, "cannot map \(size >> 20) MiB of the memory file", cause: .init(rawValue: errno))
        }
        self.start = start
        self.size = size
        self.host = raw
        hostWrites = tracked ? DirtyPages(pageCount: Int(size / hostPageSize)) : nil
    }

    deinit { munmap(host, Int(size)) }

    /// The first address after the region.
    public var end: GuestAddress { GuestAddress(start.rawValue + size) }

    public func contains(_ address: GuestAddress, count: UInt64) -> Bool {
        guard address >= start else { return false }
        let offset = address.rawValue - start.rawValue
        return offset <= size && count <= size - offset
    }
}

/// Guest RAM: a set of non-overlapping regions. Every access is bounds-checked against them; an access that is not
/// wholly inside one region throws instead of touching host memory.
public final class GuestMemory: Sendable {
    public let regions: [GuestRegion]
    /// Whether the host's writes to guest RAM are recorded (`markDirty`, `takeHostWrites`), for diff snapshots.
    /// Every write this type makes marks itself; code that writes through a host pointer it got from here (a
    /// virtqueue's device-writable buffers and used ring) marks what it writes.
    public let tracksDirtyPages: Bool

    /// Maps `layout` (start, size) pairs. They must be sorted and must not overlap.
    public init(layout: [(start: GuestAddress, size: UInt64)], tracksDirtyPages: Bool = false) throws(SwiftletError) {
        var regions: [GuestRegion] = []
        for (start, size) in layout {
            if let last = regions.last, start < last.end {
                throw SwiftletError(.invalidConfiguration, "guest memory regions overlap at \(start)")
            }
            regions.append(try GuestRegion(start: start, size: size, tracked: tracksDirtyPages))
        }
        self.regions = regions
        self.tracksDirtyPages = tracksDirtyPages
    }

    /// Guest RAM laid out as `layout`, whose contents are the memory file `file` (written by `save(to:)`): region
    /// after region from offset 0, each mapped MAP_PRIVATE (see `GuestRegion`), so nothing is read until the guest
    /// touches it. A file shorter than the layout is refused: the guest would fault (SIGBUS) on the pages past its end.
    /// `discard` on such memory drops the guest's private copies: those pages read as the file's again, not as zeroes
    /// (the balloon, its one user, does not rely on either).
    public init(layout: [(start: GuestAddress, size: UInt64)], restoringFrom file: Int32, tracksDirtyPages: Bool = false) throws(SwiftletError) {
        var info = stat()
        guard fstat(file, &info) == 0 else {
            throw SwiftletError(.systemCall, "cannot stat the memory file", cause: .init(rawValue: errno))
        }
        // The layout comes from a snapshot's state file: a sum that wraps would pass the size check below.
        var total: UInt64 = 0
        for (_, size) in layout {
            let (sum, overflow) = total.addingReportingOverflow(size)
            guard !overflow else { throw SwiftletError(.invalidConfiguration, "the guest memory layout adds up to more than 2^64 bytes") }
            total = sum
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw SwiftletError(.invalidConfiguration, "the memory file is not a regular file")
        }
        guard UInt64(info.st_size) >= total else {
            throw SwiftletError(.invalidConfiguration, "the memory file is \(info.st_size) bytes, smaller than the \(total) bytes of guest RAM it should hold: it is truncated, or belongs to another snapshot")
        }
        var regions: [GuestRegion] = []
        var offset: UInt64 = 0
        for (start, size) in layout {
            if let last = regions.last, start < last.end {
                throw SwiftletError(.invalidConfiguration, "guest memory regions overlap at \(start)")
            }
            regions.append(try GuestRegion(start: start, size: size, file: file, offset: offset, tracked: tracksDirtyPages))
            offset += size
        }
        self.regions = regions
        self.tracksDirtyPages = tracksDirtyPages
    }

    /// Records that the host wrote `count` bytes at `address` (nothing unless `tracksDirtyPages`). The range may
    /// span touching regions; what lies outside guest RAM is ignored (the caller checked its access).
    @inline(__always)
    public func markDirty(_ address: GuestAddress, count: UInt64) {
        guard tracksDirtyPages, count > 0 else { return }
        markDirtySlow(address, count: count)
    }

    private func markDirtySlow(_ address: GuestAddress, count: UInt64) {
        let end = address.rawValue &+ count < address.rawValue ? UInt64.max : address.rawValue + count
        for region in regions where region.start.rawValue < end && address.rawValue < region.end.rawValue {
            let first = max(address.rawValue, region.start.rawValue) - region.start.rawValue
            let last = min(end, region.end.rawValue) - region.start.rawValue
            let firstPage = first / hostPageSize
            let endPage = (last + hostPageSize - 1) / hostPageSize
            region.hostWrites?.mark(first: Int(firstPage), count: Int(endPage - firstPage))
        }
    }

    /// Each region's host-written pages since the last call (64-page words), cleared; empty unless tracking.
    public func takeHostWrites() -> [[UInt64]] {
        regions.map { $0.hostWrites?.take() ?? [] }
    }

    /// What `save(to:)` wrote.
    public struct SaveStatistics: Equatable, Sendable {
        /// Guest RAM, and the file's length.
        public var totalBytes: UInt64
        /// The bytes written: every page that is not all zeroes. The rest are holes in the file.
        public var writtenBytes: UInt64
    }

    /// Writes guest RAM to `file` (empty, or truncated here), region after region from offset 0, as
    /// `init(layout:restoringFrom:)` maps it. Pages that read as zeroes (never touched, or given back through the
    /// balloon) are not written: they stay holes, so the file takes the space of the memory the guest used. The
    /// guest must not run meanwhile (its vCPUs paused).
    public func save(to file: Int32) throws(SwiftletError) -> SaveStatistics {
        try writePages(to: file) { region, index in
            !Self.isZero(regions[region].host + index * Int(hostPageSize), count: Int(hostPageSize))
        }
    }

    /// Writes the pages `dirty` marks (one bitmap of 64-page words per region, as `takeHostWrites` and KVM's dirty
    /// log give them) at their offsets in a memory file laid out as `save(to:)` lays it out, zero pages included: a
    /// diff snapshot's memory. What is not written stays a hole. `writtenBytes` are the dirty pages'.
    public func saveDirty(to file: Int32, dirty: [[UInt64]]) throws(SwiftletError) -> SaveStatistics {
        precondition(dirty.count == regions.count, "one dirty bitmap per region")
        return try writePages(to: file) { region, index in
            let bitmap = dirty[region]
            return index / 64 < bitmap.count && bitmap[index / 64] & (UInt64(1) << UInt64(index % 64)) != 0
        }
    }

    /// Sizes `file` to all of guest RAM (emptied first) and writes the pages `selected` picks (a region's index and
    /// a page's index in it) at their offsets, each run of consecutive ones with as few pwrite calls as the kernel
    /// needs.
    private func writePages(to file: Int32, selected: (Int, Int) -> Bool) throws(SwiftletError) -> SaveStatistics {
        guard ftruncate(file, 0) == 0, ftruncate(file, off_t(totalSize)) == 0 else {
            throw SwiftletError(.io, "cannot size the memory file to \(totalSize) bytes", cause: .init(rawValue: errno))
        }
        let page = Int(hostPageSize)
        var written: UInt64 = 0
        var fileOffset: UInt64 = 0
        for (number, region) in regions.enumerated() {
            var index = 0
            let pages = Int(region.size) / page
            while index < pages {
                guard selected(number, index) else {
                    index += 1
                    continue
                }
                var end = index + 1
                while end < pages && selected(number, end) { end += 1 }
                let length = (end - index) * page
                let offset = fileOffset + UInt64(index * page)
                do { try positionedWriteAll(file, UnsafeRawBufferPointer(start: region.host + index * page, count: length), at: Int(offset)) } catch {
                    throw SwiftletError(.io, "cannot write the memory file at offset \(offset)", cause: error)
                }
                written += UInt64(length)
                index = end
            }
            fileOffset += region.size
        }
        return SaveStatistics(totalBytes: totalSize, writtenBytes: written)
    }

    /// Whether `count` bytes (a multiple of 8) at `pointer` are all zero.
    private static func isZero(_ pointer: UnsafeMutableRawPointer, count: Int) -> Bool {
        var any: UInt64 = 0
        for offset in stride(from: 0, to: count, by: 8) { any |= pointer.load(fromByteOffset: offset, as: UInt64.self) }
        return any == 0
    }

    /// The total size of guest RAM in bytes.
    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// The host pointer for `count` bytes at `address`, when they lie wholly inside one region.
    @inline(__always)
    public func hostPointer(_ address: GuestAddress, count: UInt64) throws(SwiftletError) -> UnsafeMutableRawPointer {
        for region in regions where region.contains(address, count: count) {
            return region.host + Int(address.rawValue - region.start.rawValue)
        }
        throw SwiftletError(.guestMemory, "guest access of \(count) bytes at \(address) is outside guest memory")
    }

    /// A host view of `count` bytes of guest memory at `address`.
    public func buffer(_ address: GuestAddress, count: Int) throws(SwiftletError) -> UnsafeMutableRawBufferPointer {
        guard count >= 0 else { throw SwiftletError(.guestMemory, "negative guest access length \(count)") }
        let pointer = try hostPointer(address, count: UInt64(count))
        return UnsafeMutableRawBufferPointer(start: pointer, count: count)
    }

    public func contains(_ address: GuestAddress, count: UInt64) -> Bool {
        regions.contains { $0.contains(address, count: count) }
    }

    /// Reads a value stored little-endian at `address` (any alignment).
    @inline(__always)
    public func read<T: FixedWidthInteger>(_: T.Type = T.self, at address: GuestAddress) throws(SwiftletError) -> T {
        let pointer = try hostPointer(address, count: UInt64(MemoryLayout<T>.size))
        return T(littleEndian: pointer.loadUnaligned(as: T.self))
    }

    /// Writes `value` little-endian at `address` (any alignment).
    @inline(__always)
    public func write<T: FixedWidthInteger>(_ value: T, at address: GuestAddress) throws(SwiftletError) {
        let pointer = try hostPointer(address, count: UInt64(MemoryLayout<T>.size))
        pointer.storeBytes(of: value.littleEndian, as: T.self)
        markDirty(address, count: UInt64(MemoryLayout<T>.size))
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(_ bytes: UnsafeRawBufferPointer, at address: GuestAddress) throws(SwiftletError) {
        guard bytes.count > 0 else { return }
        let pointer = try hostPointer(address, count: UInt64(bytes.count))
        pointer.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        markDirty(address, count: UInt64(bytes.count))
    }

    public func write(_ bytes: [UInt8], at address: GuestAddress) throws(SwiftletError) {
        guard bytes.count > 0 else { return }
        let pointer = try hostPointer(address, count: UInt64(bytes.count))
        bytes.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        markDirty(address, count: UInt64(bytes.count))
    }

    /// Copies `count` bytes out of guest memory.
    public func read(count: Int, at address: GuestAddress) throws(SwiftletError) -> [UInt8] {
        let source = try buffer(address, count: count)
        return Array(source)
    }

    /// Gives the host memory behind `count` bytes at `address` back to the host kernel (balloon inflation, free page
    /// reporting): the pages are freed now, and the guest reads zeroes there when it next touches them. The range
    /// must start and end on host page boundaries and lie wholly in guest RAM (it may span touching regions).
    ///
    /// Guest RAM is backed by transparent huge pages where the host gives them: discarding part of a 2 MiB huge
    /// page splits its mapping, and the process's RSS drops at once by what was discarded, but the kernel frees the
    /// huge page's memory only when all of it is discarded, or when it splits the page under memory pressure
    /// (the deferred split queue). The corresponding C function is `madvise(MADV_DONTNEED)`.
    public func discard(_ address: GuestAddress, count: UInt64) throws(SwiftletError) {
        guard count > 0 else { return }
        guard address.rawValue % hostPageSize == 0, count % hostPageSize == 0 else {
            throw SwiftletError(.guestMemory, "cannot discard \(count) bytes at \(address): not aligned to the host's \(hostPageSize)-byte pages")
        }
        guard let end = address.adding(count) else {
            throw SwiftletError(.guestMemory, "cannot discard \(count) bytes at \(address): the range wraps around")
        }
        // Check every piece first, so a range that is partly outside guest RAM discards nothing.
        var pieces: [(UnsafeMutableRawPointer, Int)] = []
        var next = address
        while next < end {
            guard let region = regions.first(where: { next >= $0.start && next < $0.end }) else {
                throw SwiftletError(.guestMemory, "cannot discard \(count) bytes at \(address): \(next) is outside guest memory")
            }
            let pieceEnd = min(end.rawValue, region.end.rawValue)
            pieces.append((region.host + Int(next.rawValue - region.start.rawValue), Int(pieceEnd - next.rawValue)))
            next = GuestAddress(pieceEnd)
        }
        // What a discarded page reads as next changes (zeroes, or a restored machine's memory file): it is dirty.
        markDirty(address, count: count)
        for (pointer, length) in pieces {
            do { try discardAnonymousPages(pointer, count: length) } catch {
                throw SwiftletError(.systemCall, "cannot discard \(length) bytes of guest memory", cause: error)
            }
        }
    }

    /// Zeroes `count` bytes at `address`.
    public func zero(_ address: GuestAddress, count: UInt64) throws(SwiftletError) {
        guard count > 0 else { return }
        let pointer = try hostPointer(address, count: count)
        memset(pointer, 0, Int(count))
        markDirty(address, count: count)
    }
}
