/// A run of consecutive 4 KiB guest page frames.
public struct PageRange: Sendable, Equatable {
    public var first: UInt64
    public var count: UInt64

    public init(first: UInt64, count: UInt64) {
        self.first = first
        self.count = count
    }
}

/// Turns the page frame numbers of a balloon request into sorted runs of consecutive frames, so that releasing
/// them costs one madvise per run rather than one per 4 KiB page. Duplicates collapse into one page.
public enum PageRanges {
    /// Sorts `frames` in place (it is the caller's scratch buffer) and appends the runs to `ranges`.
    public static func merge(_ frames: inout [UInt64], into ranges: inout [PageRange]) {
        frames.sort()
        for frame in frames {
            if let last = ranges.last, frame >= last.first, frame < last.first + last.count {
                continue // a duplicate
            }
            if let last = ranges.last, last.first + last.count == frame {
                ranges[ranges.count - 1].count += 1
            } else {
                ranges.append(PageRange(first: frame, count: 1))
            }
        }
    }

    /// The part of `[start, start + length)` (bytes) made of whole pages of `pageSize` bytes: what can be released
    /// on a host whose pages are bigger than 4 KiB. nil when no whole host page lies inside.
    public static func wholePages(start: UInt64, length: UInt64, pageSize: UInt64) -> (start: UInt64, length: UInt64)? {
        let end = start + length
        let alignedStart = (start + pageSize - 1) / pageSize * pageSize
        let alignedEnd = end / pageSize * pageSize
        guard alignedEnd > alignedStart else { return nil }
        return (alignedStart, alignedEnd - alignedStart)
    }
}

/// Which 4 KiB guest page frames are in the balloon: one bit per frame below the end of guest RAM (32 KiB per GiB of
/// address space, allocated once per activation), so that what the balloon reports follows the pages it holds, not
/// the page numbers the guest sent: a page inflated twice counts once, and deflating a page that is not in the
/// balloon counts nothing.
public struct PageSet: Sendable {
    private var words: [UInt64]

    /// A set for frames 0 ..< `frames`.
    public init(frames: UInt64) {
        words = [UInt64](repeating: 0, count: Int((frames + 63) / 64))
    }

    /// The set as a bitmap, 64 frames a word, frame 0 in word 0's lowest bit (what a snapshot keeps).
    public var bitmap: [UInt64] { words }

    /// A set for frames 0 ..< `frames` holding `bitmap`'s frames; nil when the bitmap is not that set's size.
    public init?(frames: UInt64, bitmap: [UInt64]) {
        guard bitmap.count == Int((frames + 63) / 64) else { return nil }
        words = bitmap
        let spare = frames % 64
        if spare != 0, let last = words.last, last >> spare != 0 { return nil } // frames past the end
    }

    /// How many frames the set holds.
    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// Adds the frames of `range`; calls `added` with each run of frames that were not in the set yet (in order).
    /// Frames past the set's end are left out.
    public mutating func insert(_ range: PageRange, added: (PageRange) -> Void) {
        update(range, inserting: true, changed: added)
    }

    /// Removes the frames of `range`; calls `removed` with each run of frames that were in the set.
    public mutating func remove(_ range: PageRange, removed: (PageRange) -> Void) {
        update(range, inserting: false, changed: removed)
    }

    private mutating func update(_ range: PageRange, inserting: Bool, changed: (PageRange) -> Void) {
        let end = min(range.first + range.count, UInt64(words.count) * 64)
        var run: PageRange?
        var frame = range.first
        while frame < end {
            let word = Int(frame / 64), bit: UInt64 = 1 << (frame % 64)
            if (words[word] & bit != 0) != inserting {
                words[word] ^= bit
                if let current = run, current.first + current.count == frame { run!.count += 1 } else {
                    if let current = run { changed(current) }
                    run = PageRange(first: frame, count: 1)
                }
            }
            frame += 1
        }
        if let run { changed(run) }
    }
}
