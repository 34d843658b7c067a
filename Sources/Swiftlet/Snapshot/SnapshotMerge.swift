import Glibc
import SwiftletHost
import SwiftletSnapshot
import SystemPackage

extension MicroVMSnapshot {
    /// `.diff` when the state file lists the pages its memory file holds (its `dirt` record), `.full` otherwise.
    public var kind: SnapshotKind { body.contains("dirt") ? .diff : .full }

    /// What `mergeDiff` did.
    public struct MergeStatistics: Sendable, Equatable {
        /// Bytes of the base copied to a new output (0 when merged in place).
        public var copiedBytes: UInt64
        /// Bytes of the diff's pages written over the base.
        public var mergedBytes: UInt64
    }

    /// Builds the full memory file this diff snapshot restores from: `base` (the memory file of the snapshot before
    /// it, already full: the first full snapshot, or earlier diffs merged onto it in order) with this snapshot's
    /// pages over it, read from its memory file. With `output` equal to `base` (the same file) the pages are written
    /// into it in place: a VM restored from that file, still running, would see its unwritten pages change, so merge
    /// in place only a base no VM maps. Otherwise `output` is created (or replaced) as a sparse copy of `base` first.
    /// Then `MicroVMSnapshot(SnapshotPaths(state: <this state file>, memory: output))` restores.
    @discardableResult
    public func mergeDiff(base: String, output: String) throws(SwiftletError) -> MergeStatistics {
        let (pageSize, bitmaps) = try diffPages()
        let layout = try configuration.machineDescription(for: .x86_64).memory
        guard bitmaps.count == layout.count else {
            throw SwiftletError(.invalidConfiguration, "\(paths.state) lists the pages of \(bitmaps.count) memory regions, and its machine has \(layout.count): the state file is malformed")
        }
        for (bits, region) in zip(bitmaps, layout) where bits.count != Int((region.size / pageSize + 63) / 64) {
            throw SwiftletError(.invalidConfiguration, "\(paths.state) lists \(bits.count * 64) pages for a memory region of \(region.size / pageSize): the state file is malformed")
        }
        let total = layout.reduce(UInt64(0)) { $0 + $1.size }
        let diff = try Self.openMemoryFile(paths.memory, what: "the diff's memory file", flags: O_RDONLY, size: total)
        let baseFile = try Self.openMemoryFile(base, what: "the base memory file", flags: O_RDONLY, size: total)
        var baseInfo = stat(), diffInfo = stat()
        fstat(baseFile.rawValue, &baseInfo)
        fstat(diff.rawValue, &diffInfo)
        guard baseInfo.st_dev != diffInfo.st_dev || baseInfo.st_ino != diffInfo.st_ino else {
            throw SwiftletError(.invalidConfiguration, "\(base) is the diff's own memory file: give the memory file of the snapshot before it")
        }
        var outputInfo = stat()
        let outputExists = stat(output, &outputInfo) == 0
        let inPlace = outputExists && outputInfo.st_dev == baseInfo.st_dev && outputInfo.st_ino == baseInfo.st_ino
        if outputExists && outputInfo.st_dev == diffInfo.st_dev && outputInfo.st_ino == diffInfo.st_ino {
            throw SwiftletError(.invalidConfiguration, "\(output) is the diff's memory file, which the merge reads: write to another file")
        }
        let target: OwnedFileDescriptor
        var statistics = MergeStatistics(copiedBytes: 0, mergedBytes: 0)
        if inPlace {
            target = try Self.openMemoryFile(base, what: "the base memory file", flags: O_RDWR, size: total)
        } else {
            do { target = try OwnedFileDescriptor(opening: output, flags: O_RDWR | O_CREAT | O_TRUNC, mode: 0o600) } catch {
                throw SwiftletError(.io, "cannot create \(output)", cause: error)
            }
            guard ftruncate(target.rawValue, off_t(total)) == 0 else {
                throw SwiftletError(.io, "cannot size \(output) to \(total) bytes", cause: .init(rawValue: errno))
            }
            statistics.copiedBytes = try Self.copyPages(from: baseFile, to: target, total: total, pageSize: pageSize,
                                                        skippingZeroPages: true, names: (base, output)) { _ in true }
        }
        var regionOffset: UInt64 = 0
        for (bits, region) in zip(bitmaps, layout) {
            let start = regionOffset / pageSize
            statistics.mergedBytes += try Self.copyPages(from: diff, to: target, total: regionOffset + region.size, pageSize: pageSize,
                                                         first: start, skippingZeroPages: false, names: (paths.memory, inPlace ? base : output)) { page in
                let index = Int(page - start)
                return bits[index / 64] & (UInt64(1) << UInt64(index % 64)) != 0
            }
            regionOffset += region.size
        }
        return statistics
    }

    /// Whether this diff snapshot's memory file is still its own, not merged: it holds data only in the pages the
    /// diff lists (the rest are holes). A merged file has the base's pages too, the guest kernel's among them. Found
    /// with SEEK_DATA, extent by extent, stopping at the first data outside the diff's pages; where the filesystem
    /// does not report holes, every file looks merged (the check then never refuses).
    func memoryIsUnmergedDiff() throws(SwiftletError) -> Bool {
        let (pageSize, bitmaps) = try diffPages()
        let file: OwnedFileDescriptor
        do { file = try OwnedFileDescriptor(opening: paths.memory, flags: O_RDONLY) } catch {
            throw SwiftletError(.invalidConfiguration, "cannot open the snapshot's memory file \(paths.memory)", cause: error)
        }
        let layout = try configuration.machineDescription(for: .x86_64).memory
        var firstPage: [UInt64] = []
        var next: UInt64 = 0
        for region in layout {
            firstPage.append(next)
            next += region.size / pageSize
        }
        func listed(_ page: UInt64) -> Bool {
            guard let index = firstPage.lastIndex(where: { $0 <= page }), index < bitmaps.count else { return false }
            let within = Int(page - firstPage[index])
            return within / 64 < bitmaps[index].count && bitmaps[index][within / 64] & (UInt64(1) << UInt64(within % 64)) != 0
        }
        let seekData: Int32 = 3, seekHole: Int32 = 4 // SEEK_DATA, SEEK_HOLE
        var offset: off_t = 0
        while true {
            let data = lseek(file.rawValue, offset, seekData)
            guard data >= 0 else { return true } // ENXIO: no data past offset
            let hole = lseek(file.rawValue, data, seekHole)
            guard hole > data else { return false }
            var page = UInt64(data) / pageSize
            while page * pageSize < UInt64(hole) {
                if !listed(page) { return false }
                page += 1
            }
            offset = hole
        }
    }

    /// The page size and the per-region bitmaps of a diff snapshot's `dirt` record.
    func diffPages() throws(SwiftletError) -> (pageSize: UInt64, bitmaps: [[UInt64]]) {
        guard kind == .diff else {
            throw SwiftletError(.invalidConfiguration, "\(paths.state) is a full snapshot: its memory file restores as it is, there is nothing to merge")
        }
        do throws(SnapshotError) {
            let record = try body.nested("dirt", context: "the diff's pages")
            let pageSize = try record.integer("page")
            guard pageSize == hostPageSize else {
                throw .malformed("its pages are \(pageSize) bytes, and this host's \(hostPageSize)")
            }
            var bitmaps: [[UInt64]] = []
            for region in try record.all("regn", maximum: 8) {
                bitmaps.append(try region.array("bits", of: UInt64.self, maximum: SnapshotFile.maximumSize / 8))
            }
            return (pageSize, bitmaps)
        } catch {
            throw SwiftletError(.invalidConfiguration, "cannot merge \(paths.state): \(error.description)")
        }
    }

    private static func openMemoryFile(_ path: String, what: String, flags: Int32, size: UInt64) throws(SwiftletError) -> OwnedFileDescriptor {
        let file: OwnedFileDescriptor
        do { file = try OwnedFileDescriptor(opening: path, flags: flags) } catch {
            throw SwiftletError(.invalidConfiguration, "cannot open \(what) \(path)", cause: error)
        }
        var info = stat()
        guard fstat(file.rawValue, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw SwiftletError(.invalidConfiguration, "\(what) \(path) is not a regular file")
        }
        guard UInt64(info.st_size) == size else {
            throw SwiftletError(.invalidConfiguration, "\(what) \(path) is \(info.st_size) bytes, and the snapshot's guest RAM \(size): it belongs to another snapshot, or is truncated")
        }
        return file
    }

    /// Copies the pages from `first` up to `total` bytes that `selected` picks, from `source` to `target` at the same
    /// offsets. `skippingZeroPages` when copying a base into a new, sparse target, which reads zeroes there already;
    /// never for a diff's pages, whose zeroes must overwrite the base's. Returns the bytes written. 1 MiB at a time.
    private static func copyPages(from source: OwnedFileDescriptor, to target: OwnedFileDescriptor, total: UInt64, pageSize: UInt64,
                                  first: UInt64 = 0, skippingZeroPages: Bool, names: (String, String),
                                  selected: (UInt64) -> Bool) throws(SwiftletError) -> UInt64 {
        let chunkPages = Int((1 << 20) / pageSize)
        var buffer = [UInt8](repeating: 0, count: chunkPages * Int(pageSize))
        var written: UInt64 = 0
        var page = first
        let endPage = total / pageSize
        while page < endPage {
            guard selected(page) else {
                page += 1
                continue
            }
            var run = UInt64(1)
            while page + run < endPage && run < UInt64(chunkPages) && selected(page + run) { run += 1 }
            let length = Int(run * pageSize)
            let offset = Int(page * pageSize)
            var failure: (String, Errno)?
            buffer.withUnsafeMutableBytes { raw in
                let piece = UnsafeMutableRawBufferPointer(rebasing: raw[0..<length])
                do throws(Errno) { try source.read(into: piece, at: offset) } catch {
                    failure = ("cannot read \(names.0) at offset \(offset)", error)
                    return
                }
                for index in 0..<Int(run) {
                    let bytes = UnsafeRawBufferPointer(rebasing: piece[(index * Int(pageSize))..<((index + 1) * Int(pageSize))])
                    if skippingZeroPages && bytes.allSatisfy({ $0 == 0 }) { continue }
                    do throws(Errno) { try target.writeAll(bytes, at: offset + index * Int(pageSize)) } catch {
                        failure = ("cannot write \(names.1) at offset \(offset + index * Int(pageSize))", error)
                        return
                    }
                    written += pageSize
                }
            }
            if let failure { throw SwiftletError(.io, failure.0, cause: failure.1) }
            page += run
        }
        return written
    }
}
